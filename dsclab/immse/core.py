"""I-MMSE core: the Gaussian channel, denoisers, reference Gaussians and the pointwise likelihood
estimators of one denoiser (conventions in ``dsclab.immse``)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from dsclab import noise

__all__ = [
    "Denoiser", "Estimate", "EnsembleEstimate", "denoiser_from_score_fn", "channel", "mse_eps_paired",
    "mmse_eps", "loc_scale", "logsnr_range", "sample_logsnr", "mmse_gaussian", "gaussian_entropy", "REFERENCES",
    "nll_continuous", "nll_discrete", "NLL_ESTIMATORS",
]

LOG_2PI_E = math.log(2 * math.pi * math.e)

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error (same shape), in nats unless converted."""
    value: torch.Tensor
    se: torch.Tensor


class EnsembleEstimate(NamedTuple):
    """Ensemble estimate of E_x[-log p(x)] with its SE, each member's estimate on the same draws,
    the log-SNR points used and, per point, the index of the member with the smallest MSE."""
    value: torch.Tensor
    se: torch.Tensor
    members: torch.Tensor
    members_se: torch.Tensor
    alpha: torch.Tensor
    choice: torch.Tensor


# -------------------------------------------------------------------------------------------
# The channel and the MSE curve
# -------------------------------------------------------------------------------------------

def denoiser_from_score_fn(score: Callable, dtype: torch.dtype | None = None) -> Denoiser:
    """Turn ``score(x, t) -> (M, d)`` into ``denoise(x, t) = e^t (x + sigma_t^2 score(x, t))`` (Tweedie).

    With ``dtype`` (e.g. float32 for a network) the score sees ``x`` in that dtype (t stays
    float64) and Tweedie is done in float64, so only the network runs in low precision.
    """
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if dtype is None:
            return noise.denoiser_from_score(x, score(x, t), t)
        x64, t64 = x.to(torch.float64), torch.as_tensor(t, dtype=torch.float64)
        return noise.denoiser_from_score(x64, score(x.to(dtype), t64).to(torch.float64), t64)
    return denoise


def channel(x: torch.Tensor, alpha: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The OU point and time of z = sqrt(gamma) x + eps: (X_t = e^{-t} x + sigma_t eps, t), rows paired.

    ``x, eps (M, d)``, ``alpha (M,)``; t = softplus(-alpha)/2 so that snr(t) = e^{alpha} exactly.
    """
    t = noise.t_from_logsnr(alpha.to(torch.float64))
    xt = noise.mean_coef(t)[:, None] * x + noise.sigma(t)[:, None] * eps
    return xt, t


def mse_eps_paired(x: torch.Tensor, alpha: torch.Tensor, eps: torch.Tensor, denoise: Denoiser,
                   dtype=torch.float64) -> torch.Tensor:
    """One-draw noise-prediction error ||eps - eps_hat||^2 = gamma ||x - x_hat||^2, shape (M,).

    Row r uses x[r], alpha[r], eps[r]; the denoiser sees x_t and t cast to ``dtype``.
    """
    xt, t = channel(x, alpha, eps)
    xhat = denoise(xt.to(dtype), t.to(dtype)).to(torch.float64)
    return torch.exp(alpha.to(torch.float64)) * ((x - xhat) ** 2).sum(-1)


def _randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=generator).to(device)


def mmse_eps(x: torch.Tensor, alpha, denoise: Denoiser, generator: torch.Generator, *, n_eps: int = 1,
             return_se: bool = False, batch_size: int = 1 << 16, dtype=torch.float64):
    """Pointwise curve mmse_eps(x_i, alpha_j) = E_eps ||eps - eps_hat||^2 by Monte Carlo, shape (m, k).

    ``x (m, d)``, ``alpha (k,)``; ``n_eps`` independent noise draws per (i, j). With
    ``return_se=True`` returns an :class:`Estimate` (SE from the n_eps draws; needs n_eps >= 2).
    """
    x = x.to(torch.float64)
    alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).to(x.device)
    m, d = x.shape
    k = alpha.shape[0]
    ii = torch.arange(m, device=x.device).repeat(k * n_eps)            # row -> data index
    jj = torch.arange(k, device=x.device).repeat_interleave(m).repeat(n_eps)  # row -> alpha index
    out = torch.empty(ii.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, ii.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        eps = _randn((out[sl].shape[0], d), generator, x.device)
        out[sl] = mse_eps_paired(x[ii[sl]], alpha[jj[sl]], eps, denoise, dtype)
    draws = out.reshape(n_eps, k, m).permute(2, 1, 0)  # (m, k, n_eps)
    mean = draws.mean(-1)
    if not return_se:
        return mean
    if n_eps < 2:
        raise ValueError("return_se needs n_eps >= 2")
    return Estimate(mean, draws.std(-1) / math.sqrt(n_eps))


# -------------------------------------------------------------------------------------------
# Log-SNR sampling and the Gaussian reference
# -------------------------------------------------------------------------------------------

def loc_scale(lam) -> tuple[float, float]:
    """(loc, scale) of the logistic proposal from the data covariance eigenvalues ``lam (d,)``.

    loc = -mean(log lam), scale = sqrt(1 + (3/pi) Var(log lam)) (population variance): the
    authors' choice (see the module docstring for why, and for the 3/pi versus 3/pi^2 remark).
    """
    ll = np.log(np.asarray(torch.as_tensor(lam, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1))
    if not np.all(np.isfinite(ll)):
        raise ValueError("eigenvalues must be positive")
    return float(-ll.mean()), float(math.sqrt(1.0 + 3.0 / math.pi * ll.var()))


def logsnr_range(loc: float, scale: float, clip: float = 4.0) -> tuple[float, float]:
    """The truncated integration range [loc - clip scale, loc + clip scale]."""
    return loc - clip * scale, loc + clip * scale


def sample_logsnr(n: int, loc: float, scale: float, generator: torch.Generator, *, clip: float = 4.0,
                  device="cpu", stratified: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha ~ logistic(loc, scale) truncated at loc +- clip scale, and importance weights w (both (n,)).

    Inverse-CDF draw: u ~ U(0, 1), v = logit(sigmoid(-clip) + tanh(clip/2) u), alpha = loc + scale v;
    w = scale tanh(clip/2) / (sigmoid(v) sigmoid(-v)) = 1 / density, so E[w f(alpha)] = int f over the range.
    ``stratified``: u_j = (j + U_j) / n, one draw in each of n equal-probability strata, in order
    (each draw keeps its marginal law on its stratum, so the mean of w f stays unbiased; for a
    smooth f its variance falls from O(1/n) to O(1/n^3)).
    """
    if not (clip > 0 and scale > 0):
        raise ValueError("need clip > 0 and scale > 0")
    u = torch.rand(n, dtype=torch.float64, generator=generator).to(device)
    if stratified:
        u = (torch.arange(n, dtype=torch.float64, device=device) + u) / n
    mass = math.tanh(clip / 2)  # = sigmoid(clip) - sigmoid(-clip)
    p = 1.0 / (1.0 + math.exp(clip)) + mass * u
    v = torch.logit(p).clamp(-clip, clip)
    alpha = loc + scale * v
    w = scale * mass * torch.exp(F.softplus(v) + F.softplus(-v))  # 1 / (sigmoid(v) sigmoid(-v))
    return alpha, w


def mmse_gaussian(alpha: torch.Tensor, lam) -> torch.Tensor:
    """mmse_G(alpha) = sum_i sigmoid(alpha + log lam_i): the expected eps-MMSE of N(mu, diag-lam), shape of alpha."""
    ll = torch.log(torch.as_tensor(lam, dtype=torch.float64)).to(alpha.device)
    return torch.sigmoid(alpha.to(torch.float64)[..., None] + ll).sum(-1)


def gaussian_entropy(lam) -> float:
    """h_G = (d/2) log(2 pi e) + 1/2 sum_i log lam_i (nats)."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    return 0.5 * lam.numel() * LOG_2PI_E + 0.5 * float(torch.log(lam).sum())


def _ref_standard(lam: torch.Tensor) -> tuple[float, torch.Tensor]:
    """N(0, I): h = (d/2) log(2 pi e), lam_ref = 1."""
    return gaussian_entropy(torch.ones_like(lam)), torch.ones_like(lam)


def _ref_matched(lam: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Gaussian with the data's covariance eigenvalues."""
    return gaussian_entropy(lam), lam


REFERENCES: dict[str, Callable] = {"standard": _ref_standard, "matched": _ref_matched}


def _setup(x, lam, loc, scale):
    x = x.to(torch.float64)
    d = x.shape[1]
    lam = torch.ones(d, dtype=torch.float64) if lam is None else torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
    if lam.numel() != d:
        raise ValueError(f"lam has {lam.numel()} eigenvalues, data has d = {d}")
    l0, s0 = loc_scale(lam)
    return x, lam, (l0 if loc is None else float(loc)), (s0 if scale is None else float(scale))


# -------------------------------------------------------------------------------------------
# Pointwise estimators
# -------------------------------------------------------------------------------------------

def _pointwise(x, denoise, generator, n_alpha, loc, scale, clip, ref_lam, control_variate, batch_size, dtype):
    """Per-(point, alpha-draw) terms w (mse - reference), shape (m, n_alpha); reference 0 if ref_lam is None."""
    m, d = x.shape
    M = m * n_alpha
    alpha, w = sample_logsnr(M, loc, scale, generator, clip=clip, device=x.device)
    ii = torch.arange(m, device=x.device).repeat_interleave(n_alpha)
    terms = torch.empty(M, dtype=torch.float64, device=x.device)
    for s in range(0, M, batch_size):
        sl = slice(s, s + batch_size)
        eps = _randn((alpha[sl].shape[0], d), generator, x.device)
        g = mse_eps_paired(x[ii[sl]], alpha[sl], eps, denoise, dtype)
        if ref_lam is not None:
            ref = mmse_gaussian(alpha[sl], ref_lam)
            if control_variate:
                ref = ref * (eps * eps).sum(-1) / d
            g = g - ref
        terms[sl] = w[sl] * g
    return terms.reshape(m, n_alpha)


def _summarise(h: float, terms: torch.Tensor) -> Estimate:
    n = terms.shape[-1]
    return Estimate(h + 0.5 * terms.mean(-1), 0.5 * terms.std(-1) / math.sqrt(n))


def nll_continuous(x: torch.Tensor, denoise: Denoiser, generator: torch.Generator, *, lam=None,
                   reference: str = "matched", n_alpha: int = 256, clip: float = 4.0, loc: float | None = None,
                   scale: float | None = None, control_variate: bool = True, batch_size: int = 1 << 16,
                   dtype=torch.float64) -> Estimate:
    """-log p(x) per point (nats) for continuous data: h + 1/2 int_[a, b] [mmse_eps(x, alpha) - mmse_ref(alpha)] d alpha.

    ``x (m, d)``; ``lam (d,)`` the data covariance eigenvalues (default ones), which set loc/scale
    and, for ``reference="matched"``, the reference Gaussian; ``reference="standard"`` uses N(0, I).
    Each point gets ``n_alpha`` independent (alpha, eps) draws; returns value and SE, shape (m,).
    The integral is over the truncated range only (see :func:`logsnr_range`).
    """
    x, lam, loc, scale = _setup(x, lam, loc, scale)
    h, ref_lam = REFERENCES[reference](lam)
    terms = _pointwise(x, denoise, generator, n_alpha, loc, scale, clip, ref_lam, control_variate, batch_size, dtype)
    return _summarise(h, terms)


def nll_discrete(x: torch.Tensor, denoise: Denoiser, generator: torch.Generator, *, lam=None, n_alpha: int = 256,
                 clip: float = 4.0, loc: float | None = None, scale: float | None = None, left_tail: bool = False,
                 batch_size: int = 1 << 16, dtype=torch.float64) -> Estimate:
    """-log P(x) per point (nats) for lattice data: 1/2 int_[a, b] mmse_eps(x, alpha) d alpha.

    ``lam`` (data covariance eigenvalues) only sets loc/scale. Above b the integrand vanishes when the
    denoiser snaps to the lattice; below a it is dropped, unless ``left_tail=True`` adds
    1/2 sum_i softplus(a + log lam_i) = 1/2 int_{-inf}^a mmse_G, an upper bound in expectation on the
    dropped part (Gaussian MMSE is the largest at a given covariance; as in the authors' code). It is
    not a pointwise bound.
    """
    x, lam, loc, scale = _setup(x, lam, loc, scale)
    terms = _pointwise(x, denoise, generator, n_alpha, loc, scale, clip, None, False, batch_size, dtype)
    h = 0.0
    if left_tail:
        a, _ = logsnr_range(loc, scale, clip)
        h = 0.5 * float(F.softplus(a + torch.log(lam)).sum())
    return _summarise(h, terms)


NLL_ESTIMATORS: dict[str, Callable] = {"continuous": nll_continuous, "discrete": nll_discrete}
"""The two likelihood estimators of one denoiser, by the kind of data: continuous, or on a lattice
(the discrete identity)."""
