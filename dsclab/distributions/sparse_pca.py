"""The sparse spiked covariance model of sparse PCA (project issue 10).

    x ~ N(0, I_d + beta u u^T),   u in B_{d,k} = {k-sparse unit vectors with entries in {0, +-1/sqrt(k)}}.

The spike ``u`` is drawn **once per ``support_seed``** from its own ``torch.Generator``: the support
is a uniform k-subset of {0, ..., d-1} (the first k entries of a uniform random permutation) and
the signs are independent fair coins. The same (d, k, support_seed) gives the same u whatever
beta is, so a planted law and its null (beta = 0, the detection variant: N(0, I_d), u then only
labels which direction an estimate is scored against) share u.

Under the OU forward process (``dsclab.noise``) the law stays Gaussian,

    q_t = N(0, I_d + e^{-2t} beta u u^T),

so the score and density are exact at every t (``GaussianMixture`` with K = 1). By
Sherman-Morrison the score has the closed form

    s_t(x) = -x + [e^{-2t} beta / (1 + e^{-2t} beta)] (u^T x) u,

which ``score`` evaluates in O(m d) and ``tests/test_sparse_pca.py`` checks against autograd of
``log_prob`` (the generic ``GaussianMixture`` density). ``sample`` is also O(m d):
x = z + (sqrt(1 + e^{-2t} beta) - 1)(u^T z) u with z ~ N(0, I_d).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dsclab.distributions.gaussian import GaussianMixture
from dsclab.lazy import deferred
from dsclab.seeds import generator

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


def spike_direction(d: int, k: int, support_seed: int) -> torch.Tensor:
    """The k-sparse unit vector u (float64, shape (d,)) drawn from a generator seeded by
    ``support_seed``: support = first k of a uniform permutation, signs i.i.d. fair coins."""
    if not (isinstance(d, int) and isinstance(k, int) and 1 <= k <= d):
        raise ValueError(f"need integers 1 <= k <= d, got d={d}, k={k}")
    g = generator(int(support_seed))
    support = torch.randperm(d, generator=g)[:k]
    signs = torch.randint(0, 2, (k,), generator=g).to(torch.float64) * 2 - 1
    u = torch.zeros(d, dtype=torch.float64)
    u[support] = signs / np.sqrt(k)
    return u


class SparsePCA(GaussianMixture):
    """N(0, I_d + beta u u^T) with a k-sparse spike u (a ``GaussianMixture`` with K = 1).

    Attributes: ``u (d,)`` float64, ``support`` (sorted long tensor of k indices), ``k``, ``beta``,
    ``support_seed``. ``null()`` is the beta = 0 law with the same u.
    """

    def __init__(self, d: int, k: int, beta: float, support_seed: int):
        beta = float(beta)
        if not beta >= 0.0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        u = spike_direction(d, k, support_seed)
        cov = torch.eye(d, dtype=torch.float64) + beta * torch.outer(u, u)
        super().__init__([1.0], np.zeros((1, d)), cov[None].numpy())
        self.u, self.k, self.beta, self.support_seed = u, k, beta, int(support_seed)
        self.support = torch.nonzero(u).flatten()

    def _c(self, t, m: int) -> torch.Tensor:
        """e^{-2t} beta as an (m, 1) float64 column."""
        tt = torch.as_tensor(t, dtype=torch.float64)
        return (self.beta * torch.exp(-2.0 * tt)).expand(m).reshape(m, 1) if tt.ndim == 0 else \
            (self.beta * torch.exp(-2.0 * tt)).reshape(m, 1)

    def sample(self, m: int, generator: torch.Generator, t: float = 0.0) -> torch.Tensor:
        """m exact draws from q_t (float64, (m, d)) in O(m d): x = z + (sqrt(1 + e^{-2t} beta) - 1)(u^T z) u,
        z ~ N(0, I) from ``generator`` (the covariance is I + e^{-2t} beta u u^T)."""
        z = torch.randn(m, self.d, dtype=torch.float64, generator=generator)
        a = self.beta * np.exp(-2.0 * float(t))
        return z + (np.sqrt(1.0 + a) - 1.0) * (z @ self.u)[:, None] * self.u[None, :]

    def score(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """s_t(x) = -x + [c / (1 + c)] (u^T x) u with c = e^{-2t} beta (Sherman-Morrison), O(m d);
        ``t`` a float or (m,) tensor; result in x's dtype."""
        x64 = x.to(torch.float64)
        c = self._c(t, x.shape[0])
        return (-x64 + (c / (1.0 + c)) * (x64 @ self.u)[:, None] * self.u[None, :]).to(x.dtype)

    def null(self) -> "SparsePCA":
        """The detection null: N(0, I_d), the same u."""
        return SparsePCA(self.d, self.k, 0.0, self.support_seed)

    def __repr__(self) -> str:
        return f"SparsePCA(d={self.d}, k={self.k}, beta={self.beta}, support_seed={self.support_seed})"


def sparse_pca(d: int, k: int = 4, beta: float = 1.0, support_seed: int = 0) -> SparsePCA:
    """The family function (``DISTRIBUTIONS['sparse_pca']``): N(0, I_d + beta u u^T), u k-sparse with
    entries +-1/sqrt(k) on a random support drawn once per ``support_seed`` (module docstring)."""
    return SparsePCA(d, int(k), beta, int(support_seed))
