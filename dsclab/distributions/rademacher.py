"""Independent +-1 coordinates: the discrete target of the I-MMSE likelihood checks (science.md §6).

x = (x_1, ..., x_d) with independent x_i in {+1, -1}, P(x_i = +1) = p. Under the OU forward process
(``dsclab.noise``) q_t is the mixture of 2^d Gaussians N(e^{-t} x, sigma_t^2 I) with the product
weights, i.e. a product over coordinates of two-point mixtures, so every quantity is exact and
costs O(d) per point:

* posterior log-odds of x_i = +1 given X_t = x:  2 e^{-t} x_i / sigma_t^2 + logit(p);
* denoiser  E[x_i | X_t = x] = tanh(e^{-t} x_i / sigma_t^2 + logit(p) / 2).
  In the Gaussian channel z = sqrt(gamma) x + eps (z = X_t / sigma_t, sqrt(gamma) = e^{-t} / sigma_t)
  this is the textbook tanh(sqrt(gamma) z_i + logit(p) / 2);
* score s_t(x) = (e^{-t} E[X_0 | X_t = x] - x) / sigma_t^2 (Tweedie inverted; t > 0 only);
* log q_0 is the pmf  sum_i log P(x_i)  (-inf off the lattice), log q_t for t > 0 the density.

Arithmetic is float64; results come back in the input's dtype.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dsclab import noise
from dsclab.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


LOG_2PI = math.log(2 * math.pi)


def _t_col(t, m: int) -> torch.Tensor:
    """Times as a float64 tensor of shape (m, 1)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim == 0:
        t = t.expand(m)
    return t.reshape(m, 1)


class Rademacher:
    """Product of d independent {+1, -1} coordinates with P(+1) = p, pushed through the OU process.

    Same interface as ``GaussianMixture`` where it makes sense: ``d``, ``sample(m, generator, t)``,
    ``denoise(x, t)``, ``score(x, t)``, ``log_prob(x, t)``, ``mean()``, ``cov()``; ``t`` is a float
    or an ``(m,)`` tensor, ``x`` has shape ``(m, d)``.
    """

    def __init__(self, d: int, p: float = 0.5):
        if d < 1:
            raise ValueError(f"d: {d} is not a positive integer")
        if not 0.0 < p < 1.0:
            raise ValueError(f"p: need 0 < p < 1, got {p}")
        self._d, self.p = int(d), float(p)
        self.logit = math.log(p) - math.log1p(-p)

    @property
    def d(self) -> int:
        return self._d

    def mean(self) -> torch.Tensor:
        return torch.full((self.d,), 2 * self.p - 1, dtype=torch.float64)

    def cov(self) -> torch.Tensor:
        """Covariance of q_0: diag(4 p (1 - p))."""
        return torch.eye(self.d, dtype=torch.float64) * (4 * self.p * (1 - self.p))

    def entropy(self) -> float:
        """Shannon entropy of q_0 in nats: d * H(p)."""
        p = self.p
        return -self.d * (p * math.log(p) + (1 - p) * math.log1p(-p))

    def sample(self, m: int, generator: torch.Generator, t: float = 0.0) -> torch.Tensor:
        """m exact draws from q_t (float64, shape (m, d)); all randomness from ``generator``."""
        u = torch.rand(m, self.d, dtype=torch.float64, generator=generator)
        x0 = 2.0 * (u < self.p).to(torch.float64) - 1.0
        if float(t) == 0.0:
            return x0
        z = torch.randn(m, self.d, dtype=torch.float64, generator=generator)
        return noise.mean_coef(float(t)) * x0 + noise.sigma(float(t)) * z

    def denoise(self, x: torch.Tensor, t) -> torch.Tensor:
        """E[X_0 | X_t = x] = tanh(e^{-t} x / sigma_t^2 + logit(p) / 2); the identity at t = 0."""
        x64 = x.to(torch.float64)
        tc = _t_col(t, x.shape[0])
        s2 = -torch.expm1(-2 * tc)
        safe = torch.where(s2 > 0, s2, torch.ones_like(s2))
        post = torch.tanh(torch.exp(-tc) * x64 / safe + 0.5 * self.logit)
        return torch.where(s2 > 0, post, x64).to(x.dtype)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """s_t(x) = (e^{-t} E[X_0 | X_t = x] - x) / sigma_t^2, for t > 0 (q_0 has no density)."""
        tc = _t_col(t, x.shape[0])
        if (tc <= 0).any():
            raise ValueError("the score of a discrete law exists only for t > 0")
        x64 = x.to(torch.float64)
        return noise.score_from_denoiser(x64, self.denoise(x64, tc[:, 0]), tc[:, 0]).to(x.dtype)

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """log q_t(x), shape (m,): the pmf sum_i log P(x_i) at t = 0 (-inf off {+-1}^d), else the density."""
        x64 = x.to(torch.float64)
        tc = _t_col(t, x.shape[0])
        lp, lq = math.log(self.p), math.log1p(-self.p)
        f64 = lambda v: torch.tensor(v, dtype=torch.float64)
        pmf = torch.where(x64 == 1.0, f64(lp), torch.where(x64 == -1.0, f64(lq), f64(-math.inf))).sum(-1)
        a = torch.exp(-tc)
        s2 = -torch.expm1(-2 * tc)
        safe = torch.where(s2 > 0, s2, torch.ones_like(s2))
        base = -0.5 * (LOG_2PI + torch.log(safe))
        dens = torch.logaddexp(lp + base - 0.5 * (x64 - a) ** 2 / safe,
                               lq + base - 0.5 * (x64 + a) ** 2 / safe).sum(-1)
        return torch.where(s2[:, 0] > 0, dens, pmf).to(x.dtype)

    def __repr__(self) -> str:
        return f"Rademacher(d={self.d}, p={self.p})"


def rademacher(d: int, p: float = 0.5) -> Rademacher:
    """Family: d independent coordinates in {+1, -1} with P(+1) = p."""
    return Rademacher(d, p)
