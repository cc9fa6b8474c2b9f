"""Likelihood from the MMSE curve (Kong, Brekelmans & Ver Steeg 2023, "Information-theoretic
diffusion"; science.md §6, project issue 4).

Conventions
-----------
Gaussian channel  z = sqrt(gamma) x + eps,  eps ~ N(0, I_d),  gamma = snr,  alpha = log gamma.
It is the OU forward process of ``dsclab.noise`` read at t = t_from_logsnr(alpha):
X_t = e^{-t} x + sigma_t eps = sigma_t z, because e^{-t} / sigma_t = sqrt(gamma).

A *denoiser* is a callable ``denoise(x_t, t) -> x0_hat`` in OU convention, exactly like
``GaussianMixture.denoise``: ``x_t (M, d)`` and ``t (M,)`` (one time per row; it must accept a
tensor of times) return E[X_0 | X_t = x_t] or an estimate of it, shape ``(M, d)``. A score
``score(x, t)`` becomes a denoiser with :func:`denoiser_from_score_fn` (Tweedie).

The noise-prediction error is  eps - eps_hat = sqrt(gamma) (x_hat - x), so the pointwise curve is

    mmse_eps(x, alpha) = E_eps || eps - eps_hat(z, alpha) ||^2 = gamma E_eps || x - x_hat ||^2 ,

computed as gamma ||x - x_hat||^2 (no cancellation at high SNR). Integrals over alpha are on the
log-SNR axis, which is why the factor gamma appears (d gamma = gamma d alpha).

Estimators (nats; per data point x, pointwise identities of the paper)
------------------------------------------------------------------------
* continuous, reference Gaussian with covariance eigenvalues lam_i (science.md §6):

      -log p(x) = h_G + 1/2 int [ mmse_eps(x, alpha) - sum_i sigmoid(alpha + log lam_i) ] d alpha,
      h_G = (d/2) log(2 pi e) + 1/2 sum_i log lam_i.

  ``reference="matched"`` uses the data spectrum; ``reference="standard"`` is lam_i = 1, i.e.
  h = (d/2) log(2 pi e) and the subtracted curve d sigmoid(alpha). Both identities hold pointwise
  (for every x, not only on average): for the Bayes denoiser of N(mu, Sigma) one finds
  mmse_eps(x, alpha) = sum_i [(y_i^2/lam_i) sigmoid'(alpha + log lam_i) + sigmoid(alpha + log lam_i)^2]
  with y = U^T (x - mu), whose integral reproduces -log N(x; mu, Sigma) exactly.
* discrete (lattice-valued x; the denoiser must snap to the lattice at high SNR):

      -log P(x) = 1/2 int mmse_eps(x, alpha) d alpha        (no constant).

* mismatch: run with the Bayes denoiser of another law Q, the same formulas return -log q(x) at
  every x (the identity is a property of q's denoiser, not of where x came from). Averaged over
  x ~ P this is the cross-entropy H(P) + KL(P || Q) >= H(P).

Integration over alpha (paper's sampler; choice of loc and scale)
-----------------------------------------------------------------
alpha ~ logistic(loc, scale) truncated to [loc - clip scale, loc + clip scale] (clip = 4), with
importance weight w = scale tanh(clip/2) / (sigmoid(v) sigmoid(-v)), v = (alpha - loc)/scale;
tanh(clip/2) = sigmoid(clip) - sigmoid(-clip) is the truncated mass, so E[w f(alpha)] is exactly
the integral of f over the *truncated* range: the estimators are unbiased for the truncated
integral, and the part of the integrand outside the range is dropped (a bias that vanishes as
clip grows; for Gaussian data it is computed in closed form in the tests).

loc = -mean_i log lam_i and scale = sqrt(1 + (3/pi) Var_i(log lam_i)) (population variance over
the d eigenvalues), the choice of the authors' code (kxh001/ITdiffusion, ``dataset_info``). Reason:
for the matched Gaussian the MMSE-gap integrand is a sum of logistic densities in alpha centred at
-log lam_i with unit scale; their mixture has mean -mean(log lam) and variance
pi^2/3 + Var(log lam), which a logistic(scale) matches at scale = sqrt(1 + 3 Var / pi^2). The
authors' code writes 3/pi instead of 3/pi^2, i.e. a wider proposal; we adopt it as published
(wider only reduces the truncation bias). scale >= 1 always, which keeps w f(alpha) bounded:
the gap decays like e^{-|alpha - c|} in both tails while w grows like e^{|alpha - loc| / scale}.

Control variate (our addition, not in the paper; on by default for the continuous estimator)
------------------------------------------------------------------------------------------
At high SNR and continuous data eps_hat -> 0 is impossible: ||eps - eps_hat||^2 -> ||eps||^2, a
chi^2_d variable whose noise, times w ~ e^{v}, makes the variance grow like e^{clip}. Replacing
the subtracted curve mmse_G(alpha) = sum_i sigmoid(alpha + log lam_i) by (||eps||^2 / d) mmse_G(alpha)
with the *same* eps changes nothing in expectation (E ||eps||^2 = d) and cancels that noise.

Ensembles
---------
:func:`ensemble_nll` takes several denoisers; for each alpha it averages each model's MSE over
the data set (same eps for every model) and keeps the smallest, then integrates. For each alpha
the Bayes MMSE is at most every model's data-averaged MSE, hence at most their minimum, so the
result is an upper bound in expectation on the (cross-)entropy E_x[-log p(x)], at least as tight
as each member. Two caveats, documented rather than hidden: (i) with the matched reference
(eigenvalues of the true covariance) truncation keeps it a bound, because the Bayes gap
mmse - mmse_G is <= 0 for every alpha (the Gaussian has the largest MMSE at a given covariance),
so dropping it can only raise the estimate; with the standard reference the sign of the dropped
part is not fixed. (ii) The minimum of Monte Carlo averages is biased low by the order of their
noise; use many data points per alpha. The paper's test-time clamp max(mmse_G - mse, 0) is the
ensemble with the matched-Gaussian denoiser (:func:`moment_matched_gaussian`).

Shapes: data ``x (m, d)``; log-SNR vectors ``alpha (k,)``; estimates come back as
:class:`Estimate` (value and Monte Carlo standard error, float64). Randomness only through the
``torch.Generator`` passed in.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from dsclab import noise
from dsclab.distributions.gaussian import GaussianMixture

__all__ = [
    "Denoiser", "Estimate", "EnsembleEstimate", "denoiser_from_score_fn", "channel", "mse_eps_paired",
    "mmse_eps", "loc_scale", "logsnr_range", "sample_logsnr", "mmse_gaussian", "gaussian_entropy",
    "REFERENCES", "nll_continuous", "nll_discrete", "ensemble_nll", "ESTIMATORS", "per_dim",
    "bits_per_dim", "spectrum", "empirical_moments", "moment_matched_gaussian",
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

def denoiser_from_score_fn(score: Callable) -> Denoiser:
    """Turn ``score(x, t) -> (M, d)`` into ``denoise(x, t) = e^t (x + sigma_t^2 score(x, t))`` (Tweedie)."""
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise.denoiser_from_score(x, score(x, t), t)
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
                  device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """alpha ~ logistic(loc, scale) truncated at loc +- clip scale, and importance weights w (both (n,)).

    Inverse-CDF draw: u ~ U(0, 1), v = logit(sigmoid(-clip) + tanh(clip/2) u), alpha = loc + scale v;
    w = scale tanh(clip/2) / (sigmoid(v) sigmoid(-v)) = 1 / density, so E[w f(alpha)] = int f over the range.
    """
    if not (clip > 0 and scale > 0):
        raise ValueError("need clip > 0 and scale > 0")
    u = torch.rand(n, dtype=torch.float64, generator=generator).to(device)
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


ESTIMATORS: dict[str, Callable] = {"continuous": nll_continuous, "discrete": nll_discrete}


# -------------------------------------------------------------------------------------------
# Ensembles
# -------------------------------------------------------------------------------------------

def ensemble_nll(x: torch.Tensor, denoisers: Sequence[Denoiser], generator: torch.Generator, *, lam=None,
                 discrete: bool = False, reference: str = "matched", n_alpha: int = 256, clip: float = 4.0,
                 loc: float | None = None, scale: float | None = None, control_variate: bool = True,
                 batch_size: int = 1 << 16, dtype=torch.float64) -> EnsembleEstimate:
    """Ensemble estimate of E_x[-log p(x)] over the data set ``x (m, d)`` (nats, a scalar).

    For each of ``n_alpha`` draws alpha_j, every point gets one fresh eps (shared by all models);
    each model's MSE is averaged over the m points and the smallest is kept:
    est = h + 1/2 mean_j w_j [min_k mean_i mse_k(x_i, alpha_j) - mmse_ref(alpha_j)]
    (no reference and h = 0 when ``discrete``). An upper bound in expectation on the entropy
    (cross-entropy for data not from the model family), at least as tight as each member; see the
    module docstring for the truncation and min-of-averages caveats. The SE covers the (alpha, eps)
    noise for this data set, not the sampling of the data set itself.
    """
    x, lam, loc, scale = _setup(x, lam, loc, scale)
    m, d = x.shape
    K = len(denoisers)
    if K < 1:
        raise ValueError("need at least one denoiser")
    if discrete:
        h, ref_lam = 0.0, None
    else:
        h, ref_lam = REFERENCES[reference](lam)
    alpha, w = sample_logsnr(n_alpha, loc, scale, generator, clip=clip, device=x.device)
    gaps = torch.empty(K, n_alpha, dtype=torch.float64, device=x.device)
    per_chunk = max(1, batch_size // m)
    for s in range(0, n_alpha, per_chunk):
        a = alpha[s:s + per_chunk]
        c = a.shape[0]
        eps = _randn((c * m, d), generator, x.device)
        arow, xrow = a.repeat_interleave(m), x.repeat(c, 1)
        if ref_lam is None:
            ref = torch.zeros(c, dtype=torch.float64, device=x.device)
        elif control_variate:
            ref = mmse_gaussian(a, ref_lam) * ((eps * eps).sum(-1) / d).reshape(c, m).mean(-1)
        else:
            ref = mmse_gaussian(a, ref_lam)
        for k, den in enumerate(denoisers):
            gaps[k, s:s + c] = mse_eps_paired(xrow, arow, eps, den, dtype).reshape(c, m).mean(-1) - ref
    best, choice = gaps.min(0)
    ens = _summarise(h, (w * best)[None])
    mem = _summarise(h, w[None] * gaps)
    return EnsembleEstimate(ens.value[0], ens.se[0], mem.value, mem.se, alpha, choice)


# -------------------------------------------------------------------------------------------
# Units and reference models
# -------------------------------------------------------------------------------------------

def per_dim(est: Estimate, d: int) -> Estimate:
    """Nats per dimension."""
    return Estimate(est.value / d, est.se / d)


def bits_per_dim(est: Estimate, d: int) -> Estimate:
    """Bits per dimension."""
    c = d * math.log(2.0)
    return Estimate(est.value / c, est.se / c)


def spectrum(cov) -> torch.Tensor:
    """Eigenvalues of a covariance matrix (ascending, float64): the ``lam`` argument of the estimators."""
    cov = torch.as_tensor(cov, dtype=torch.float64)
    return torch.linalg.eigvalsh(0.5 * (cov + cov.T))


def empirical_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean (d,) and unbiased covariance (d, d) of ``x (m, d)``."""
    x = x.to(torch.float64)
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def moment_matched_gaussian(mean, cov) -> GaussianMixture:
    """N(mean, cov) as a one-component ``GaussianMixture``; its ``.denoise`` is the linear (Wiener)
    denoiser E[X_0 | X_t] = mean + e^{-t} cov (e^{-2t} cov + sigma_t^2 I)^{-1} (x - e^{-t} mean),
    the Bayes denoiser of the moment-matched Gaussian and a mismatched one for non-Gaussian data."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    return GaussianMixture([1.0], mean, cov[None])
