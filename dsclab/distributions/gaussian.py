"""Gaussian and Gaussian-mixture targets with exact q_t (science.md §1).

Under the OU forward process a component N(mu, Sigma) becomes
N(e^{-t} mu, e^{-2t} Sigma + sigma_t^2 I) at time t, so q_t of a mixture is the mixture of the
pushed components with the same weights. With Sigma = U diag(lam) U^T the pushed covariance is
U diag(e^{-2t} lam + sigma_t^2) U^T, which lets every quantity be evaluated with one time per point.

The score of the mixture is sum_k r_k(x) s^{(k)}_t(x) with responsibilities r_k computed in log
space. All internal arithmetic is float64; inputs of another dtype are converted and results are
returned in the input's dtype.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

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


class GaussianMixture:
    """sum_k pi_k N(mu_k, Sigma_k) in R^d; a single Gaussian is the case K = 1.

    Parameters are ``weights (K,)``, ``means (K, d)`` and ``covs (K, d, d)``. Methods take a batch
    ``x (m, d)`` and a time ``t`` (float or ``(m,)``) and use the exact law q_t.
    """

    def __init__(self, weights, means, covs):
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        mu = torch.as_tensor(np.asarray(means, dtype=np.float64))
        cov = torch.as_tensor(np.asarray(covs, dtype=np.float64))
        if mu.ndim != 2 or cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1]) or w.shape != (mu.shape[0],):
            raise ValueError("need weights (K,), means (K, d), covs (K, d, d)")
        if (w <= 0).any():
            raise ValueError("mixture weights must be positive")
        self.weights = w / w.sum()
        self.means = mu
        self.covs = 0.5 * (cov + cov.transpose(-1, -2))
        lam, U = torch.linalg.eigh(self.covs)
        if (lam < 0).any():
            raise ValueError("covariances must be positive semi-definite")
        self.lam, self.U = lam.clamp_min(0.0), U  # (K, d), (K, d, d)

    # -- basic facts ------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Covariance of the data law q_0."""
        m = self.mean()
        dm = self.means - m
        return torch.einsum("k,kij->ij", self.weights, self.covs) + torch.einsum("k,ki,kj->ij", self.weights, dm, dm)

    def at(self, t: float) -> "GaussianMixture":
        """The mixture q_t (scalar t) as a new object."""
        a, s2 = noise.mean_coef(float(t)), noise.sigma2(float(t))
        eye = torch.eye(self.d, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, a * a * self.covs + s2 * eye)

    # -- sampling ---------------------------------------------------------------------------
    def sample(self, m: int, generator: torch.Generator, t: float = 0.0) -> torch.Tensor:
        """m exact draws from q_t (float64, shape (m, d)); all randomness from ``generator``."""
        comp = torch.multinomial(self.weights, m, replacement=True, generator=generator)
        z = torch.randn(m, self.d, dtype=torch.float64, generator=generator)
        a, s2 = noise.mean_coef(float(t)), noise.sigma2(float(t))
        x = torch.empty(m, self.d, dtype=torch.float64)
        for k in range(self.n_components):  # one component at a time: no (m, d, d) temporaries
            rows = comp == k
            std = torch.sqrt(a * a * self.lam[k] + s2)  # (d,)
            x[rows] = a * self.means[k] + (std * z[rows]) @ self.U[k].T
        return x

    # -- exact q_t ----------------------------------------------------------------------------
    def _parts(self, x: torch.Tensor, t):
        """Per-component log densities (m, K), projected residual z (m, K, d) and variances."""
        x = x.to(torch.float64)
        m = x.shape[0]
        tc = _t_col(t, m)  # (m, 1)
        a = torch.exp(-tc)  # (m, 1)
        s2 = -torch.expm1(-2 * tc)
        var = (a * a)[:, None, :] * self.lam[None] + s2[:, None, :]  # (m, K, d)
        r = x[:, None, :] - a[:, None, :] * self.means[None]  # (m, K, d)
        z = torch.einsum("kji,mkj->mki", self.U, r)  # U^T r
        logn = -0.5 * ((z * z / var).sum(-1) + torch.log(var).sum(-1) + self.d * LOG_2PI)
        return logn + torch.log(self.weights)[None], z, var

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """log q_t(x), shape (m,)."""
        lp, _, _ = self._parts(x, t)
        return torch.logsumexp(lp, dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        lp, _, _ = self._parts(x, t)
        return torch.softmax(lp, dim=1)

    def score(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """s_t(x) = grad log q_t(x), shape (m, d)."""
        lp, z, var = self._parts(x, t)
        r = torch.softmax(lp, dim=1)  # (m, K)
        comp = -torch.einsum("kij,mkj->mki", self.U, z / var)  # per-component scores
        return torch.einsum("mk,mki->mi", r, comp).to(x.dtype)

    def denoise(self, x: torch.Tensor, t) -> torch.Tensor:
        """E[X_0 | X_t = x] by Tweedie."""
        s = self.score(x, t).to(torch.float64)
        tc = _t_col(t, x.shape[0])
        return noise.denoiser_from_score(x.to(torch.float64), s, tc[:, 0]).to(x.dtype)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, d={self.d})"


def gaussian(d: int, *, mean: float = 0.0, cond: float = 1.0, scale: float = 1.0) -> GaussianMixture:
    """N(mean * 1, diag(lam)) with eigenvalues log-spaced from scale down to scale / cond.

    ``cond = 1`` gives the isotropic N(mean, scale I); ``cond > 1`` an anisotropic Gaussian.
    """
    lam = scale * np.logspace(0.0, -math.log10(cond), d) if d > 1 else np.array([scale], dtype=float)
    return GaussianMixture([1.0], np.full((1, d), mean), np.diag(lam)[None])


def gaussian_mixture(d: int, *, k: int = 2, separation: float = 4.0, std: float = 1.0,
                     weights: Sequence[float] | None = None) -> GaussianMixture:
    """K isotropic components N(mu_j, std^2 I) with means on the coordinate axes.

    Component j has mean ``(-1)^j (separation / 2) e_{(j // 2) mod d}``: for k = 2 the two modes
    are at +-separation/2 along e_1, whatever d is, so the problem's structure does not change
    with dimension. ``weights`` (length k) default to uniform.
    """
    if k < 1:
        raise ValueError(f"k: {k} is not a positive integer")
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (k,):
        raise ValueError(f"weights: need {k} values, got {len(w)}")
    means = np.zeros((k, d))
    for j in range(k):
        means[j, (j // 2) % d] = (-1) ** j * separation / 2
    covs = np.broadcast_to(std ** 2 * np.eye(d), (k, d, d)).copy()
    return GaussianMixture(w, means, covs)
