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

Data-set estimates (:func:`gap_terms`, :func:`crossed_estimates`, :func:`data_set_nll`)
-------------------------------------------------------------------------------------
To score models on a held-out set, every model sees the same J log-SNR draws and, per draw and
point, the same eps; the terms T_ji form a crossed (draw x point) design whose SE covers both the
points' sampling and the draws' (:func:`crossed_mean`), optionally paired against the exact
-log p(x_i) of the same points. Draws may be stratified in the logistic's CDF (one per stratum),
which leaves the estimate unbiased and, for the discrete estimator (no reference curve to
subtract), cuts its SE about tenfold at J = 128. Lattice data: denoisers are clamped to the
lattice's box (:func:`clamp_to_box`, never increases the error) and the range is truncated,
which amounts to hard rounding above b (see :func:`data_set_nll`).

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
from dsclab.distributions.rademacher import Rademacher

__all__ = [
    "Denoiser", "Estimate", "EnsembleEstimate", "denoiser_from_score_fn", "channel", "mse_eps_paired",
    "mmse_eps", "loc_scale", "logsnr_range", "sample_logsnr", "mmse_gaussian", "gaussian_entropy",
    "REFERENCES", "nll_continuous", "nll_discrete", "ensemble_nll", "ESTIMATORS", "per_dim",
    "bits_per_dim", "spectrum", "empirical_moments", "moment_matched_gaussian", "GapTerms", "CrossedEstimate",
    "gap_terms", "crossed_mean", "crossed_estimates", "clamp_to_box", "lattice_box", "DataSetNLL", "data_set_nll",
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


ESTIMATORS: dict[str, Callable] = {"continuous": nll_continuous, "discrete": nll_discrete}


# -------------------------------------------------------------------------------------------
# Ensembles and data-set estimates (shared draws, per-point terms)
# -------------------------------------------------------------------------------------------

class GapTerms(NamedTuple):
    """Per-(model, alpha draw, point) terms of the estimators on one data set, all draws shared.

    ``h`` the constant (reference entropy, or the discrete left-tail term); ``alpha, w (J,)`` the
    log-SNR draws and importance weights; ``gaps (K, J, m)`` = mse_k(x_i, alpha_j, eps_ji) - ref_ji,
    with one eps_ji per (draw, point) shared by the K models. Model k's one-draw estimate of
    -log p(x_i) is h + w_j gaps[k, j, i] / 2 (:meth:`values`).
    """
    h: float
    alpha: torch.Tensor
    w: torch.Tensor
    gaps: torch.Tensor
    stratified: bool = False

    def values(self, k: int) -> torch.Tensor:
        """(J, m) one-draw estimates of -log p(x_i) for model k."""
        return self.h + 0.5 * self.w[:, None] * self.gaps[k]


class CrossedEstimate(NamedTuple):
    """Data-set estimates of E_x[-log p(x)] (or of its difference from a per-point offset), nats.

    ``value, se (K,)`` per model; ``ensemble, ensemble_se`` scalars (NaN without members);
    ``choice (J,)`` the model index (into the denoiser list) the ensemble keeps at each draw.
    The SEs cover the sampling of the data set *and* of (alpha, eps); see :func:`crossed_mean`.
    """
    value: torch.Tensor
    se: torch.Tensor
    ensemble: torch.Tensor
    ensemble_se: torch.Tensor
    choice: torch.Tensor


def gap_terms(x: torch.Tensor, denoisers: Sequence[Denoiser], generator: torch.Generator, *, lam=None,
              discrete: bool = False, reference: str = "matched", n_alpha: int = 256, clip: float = 4.0,
              loc: float | None = None, scale: float | None = None, control_variate: bool = True,
              left_tail: bool = False, stratified: bool = False, batch_size: int = 1 << 16,
              dtype=torch.float64) -> GapTerms:
    """All terms of the estimators for ``x (m, d)`` and K denoisers on shared draws (:class:`GapTerms`).

    ``n_alpha`` draws alpha_j (paper's truncated logistic); for each, every point gets one fresh eps
    shared by all models. Continuous data (``discrete=False``): ref_ji = mmse_G(alpha_j), times
    ||eps_ji||^2 / d with the control variate, and h = the reference entropy. Discrete: ref = 0 and
    h = 0, or with ``left_tail`` the Gaussian bound 1/2 sum_i softplus(a + log lam_i) on the dropped
    part below a (as in :func:`nll_discrete`). ``stratified``: the draws are stratified
    (:func:`sample_logsnr`), and SEs use :func:`crossed_mean`'s collapsed-strata form.
    """
    x, lam, loc, scale = _setup(x, lam, loc, scale)
    m, d = x.shape
    K = len(denoisers)
    if K < 1:
        raise ValueError("need at least one denoiser")
    if discrete:
        ref_lam = None
        h = 0.5 * float(F.softplus(logsnr_range(loc, scale, clip)[0] + torch.log(lam)).sum()) if left_tail else 0.0
    else:
        h, ref_lam = REFERENCES[reference](lam)
    alpha, w = sample_logsnr(n_alpha, loc, scale, generator, clip=clip, device=x.device, stratified=stratified)
    gaps = torch.empty(K, n_alpha, m, dtype=torch.float64, device=x.device)
    per_chunk = max(1, batch_size // m)
    for s in range(0, n_alpha, per_chunk):
        a = alpha[s:s + per_chunk]
        c = a.shape[0]
        eps = _randn((c * m, d), generator, x.device)
        arow, xrow = a.repeat_interleave(m), x.repeat(c, 1)
        if ref_lam is None:
            ref = torch.zeros(c, m, dtype=torch.float64, device=x.device)
        elif control_variate:
            ref = mmse_gaussian(a, ref_lam)[:, None] * ((eps * eps).sum(-1) / d).reshape(c, m)
        else:
            ref = mmse_gaussian(a, ref_lam)[:, None].expand(c, m)
        for k, den in enumerate(denoisers):
            gaps[k, s:s + c] = mse_eps_paired(xrow, arow, eps, den, dtype).reshape(c, m) - ref
    return GapTerms(h, alpha, w, gaps, stratified)


def crossed_mean(values: torch.Tensor, stratified: bool = False) -> Estimate:
    """Mean of ``values (J, m)`` (J draws x m points, crossed) and its standard error.

    With T_ji = f(x_i, alpha_j, eps_ji), Var(mean) = s_x^2/m + s_a^2/J + s_e^2/(mJ) (x, alpha and
    residual effects). The sample variance of the point means estimates s_x^2 + s_e^2/J and that
    of the draw means s_a^2 + s_e^2/m, so SE^2 = var(point means)/m + var(draw means)/J counts the
    residual twice: conservative by s_e^2/(mJ). A factor with a single level contributes nothing.
    ``stratified`` (draw j in stratum j, :func:`sample_logsnr`): the draw part is the collapsed-strata
    estimate sum over pairs (c_2k - c_2k+1)^2 / J^2 of the draw means c_j, which also counts the
    difference of neighbouring strata's means, so it is conservative (an odd last stratum is paired
    with the one before).
    """
    J, m = values.shape
    var = torch.zeros((), dtype=torch.float64, device=values.device)
    if m > 1:
        var = var + values.mean(0).var() / m
    if J > 1:
        c = values.mean(1)
        if stratified:
            dif = c[1:J - J % 2:2] - c[0:J - J % 2:2]
            if J % 2:
                dif = torch.cat([dif, c[-1:] - c[-2:-1]])
            var = var + (dif ** 2).sum() / J ** 2
        else:
            var = var + c.var() / J
    return Estimate(values.mean(), var.sqrt())


def crossed_estimates(terms: GapTerms, members: Sequence[int] | None = None,
                      offset: torch.Tensor | None = None) -> CrossedEstimate:
    """Per-model and ensemble estimates of mean_i[-log p(x_i)] from :func:`gap_terms`, with SEs.

    ``members``: indices of the models the ensemble may pick (default all; empty gives NaN). At each
    draw the ensemble keeps the member with the smallest data-averaged gap (as :func:`ensemble_nll`).
    ``offset (m,)``: per-point values subtracted before averaging, e.g. the exact -log p(x_i), so that
    value and SE are those of the paired difference (the data set's sampling largely cancels).
    """
    K, J, m = terms.gaps.shape
    off = 0.0 if offset is None else torch.as_tensor(offset, dtype=torch.float64, device=terms.gaps.device)[None, :]
    vals = [crossed_mean(terms.values(k) - off, terms.stratified) for k in range(K)]
    members = list(range(K)) if members is None else list(members)
    choice = torch.full((J,), -1, dtype=torch.long, device=terms.gaps.device)
    ens = Estimate(torch.tensor(math.nan, dtype=torch.float64), torch.tensor(math.nan, dtype=torch.float64))
    if members:
        idx = torch.as_tensor(members, dtype=torch.long, device=terms.gaps.device)
        best = terms.gaps[idx].mean(-1).argmin(0)  # (J,) position in members
        choice = idx[best]
        chosen = terms.gaps[choice, torch.arange(J, device=terms.gaps.device)]  # (J, m)
        ens = crossed_mean(terms.h + 0.5 * terms.w[:, None] * chosen - off, terms.stratified)
    return CrossedEstimate(torch.stack([v.value for v in vals]), torch.stack([v.se for v in vals]),
                           ens.value, ens.se, choice)


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
    noise for this data set, not the sampling of the data set itself (:func:`crossed_estimates`
    gives both).
    """
    terms = gap_terms(x, denoisers, generator, lam=lam, discrete=discrete, reference=reference, n_alpha=n_alpha,
                      clip=clip, loc=loc, scale=scale, control_variate=control_variate, batch_size=batch_size,
                      dtype=dtype)
    gaps = terms.gaps.mean(-1)  # (K, J): data-averaged
    best, choice = gaps.min(0)
    ens = _summarise(terms.h, (terms.w * best)[None])
    mem = _summarise(terms.h, terms.w[None] * gaps)
    return EnsembleEstimate(ens.value[0], ens.se[0], mem.value, mem.se, terms.alpha, choice)


def clamp_to_box(denoise: Denoiser, lo: float = -1.0, hi: float = 1.0) -> Denoiser:
    """``denoise`` followed by projection onto the box [lo, hi]^d, the convex hull of a lattice
    such as {-1, +1}^d. For data in the box the projection never increases ||x - x_hat|| (it is
    non-expansive and fixes x), so the MSE curve and every estimate can only go down."""
    def clamped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return denoise(x, t).clamp(lo, hi)
    return clamped


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


def lattice_box(dist) -> tuple[float, float] | None:
    """(lo, hi) of the box hull of a lattice-valued law ({-1, +1}^d -> (-1, 1)); None if continuous."""
    return (-1.0, 1.0) if isinstance(dist, Rademacher) else None


class DataSetNLL(NamedTuple):
    """I-MMSE estimates of mean_i[-log p(x_i)] on held-out points for K denoisers, nats per dimension.

    ``value, se, gap, gap_se (K,)``: estimate, SE over points and draws, and the paired difference
    from the exact -log p(x_i) of the same points with its SE (NaN without ``log_prob``);
    ``curve (K, k)``: data-averaged mmse_eps / d on the log-SNR grid; ``ens_*``: the same for the
    ensemble of ``members`` (per-draw, per-grid-point minimum; NaN without members) and ``share (K,)``
    the fraction of draws at which each model is the ensemble's pick; ``exact, exact_se``: mean exact
    -log p(x_i) / d and its SE over the points (NaN without ``log_prob``).
    """
    value: np.ndarray
    se: np.ndarray
    gap: np.ndarray
    gap_se: np.ndarray
    curve: np.ndarray
    ens_value: float
    ens_se: float
    ens_gap: float
    ens_gap_se: float
    ens_curve: np.ndarray
    share: np.ndarray
    exact: float
    exact_se: float


def data_set_nll(x: torch.Tensor, denoisers: Sequence[Denoiser], dist, generator: torch.Generator, *, logsnr,
                 members: Sequence[int] = (), n_alpha: int = 64, clip: float = 4.0, stratified: bool = True,
                 dtype=torch.float64) -> DataSetNLL:
    """Evaluate denoisers as likelihood models on held-out points ``x (m, d)`` of the law ``dist``.

    Continuous laws: :func:`gap_terms` with the matched-Gaussian reference of the spectrum of
    ``dist.cov()``. Lattice laws (:func:`lattice_box`): the discrete estimator with the Gaussian
    left-tail term and every denoiser clamped to the lattice's box. A trained network does not
    snap to the lattice; truncating at b = loc + clip scale amounts to using it up to b and hard
    rounding above, whose share 1/2 int_b^inf 4 gamma Q(sqrt(gamma)) d alpha per coordinate is
    below 1e-15 at the paper's clip = 4 (gamma(b) >= e^4) and is dropped. All models share the
    (alpha, eps) draws, stratified in alpha by default (:func:`sample_logsnr`); then each model's data-averaged curve on ``logsnr`` is computed with one
    fresh eps per (point, grid value), the same eps for every model.
    """
    x = x.to(torch.float64)
    m, d = x.shape
    lam = spectrum(dist.cov())
    box = lattice_box(dist)
    if box is not None:
        denoisers = [clamp_to_box(den, *box) for den in denoisers]
    K = len(denoisers)
    grid = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1)
    with torch.no_grad():
        terms = gap_terms(x, denoisers, generator, lam=lam, discrete=box is not None, left_tail=box is not None,
                          n_alpha=n_alpha, clip=clip, stratified=stratified, dtype=dtype)
        curve_seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        curves = torch.stack([mmse_eps(x, grid, den, torch.Generator().manual_seed(curve_seed), dtype=dtype).mean(0)
                              for den in denoisers]) / d  # (K, k)
    est = crossed_estimates(terms, members)
    nan = math.nan
    gap = CrossedEstimate(torch.full((K,), nan), torch.full((K,), nan), torch.tensor(nan), torch.tensor(nan), est.choice)
    exact = exact_se = nan
    if hasattr(dist, "log_prob"):
        nlp = -dist.log_prob(x).to(torch.float64)
        gap = crossed_estimates(terms, members, offset=nlp)
        exact, exact_se = float(nlp.mean()) / d, float(nlp.std() / math.sqrt(m)) / d
    share = np.array([float((est.choice == k).double().mean()) if k in members else nan for k in range(K)])
    ens_curve = curves[list(members)].min(0).values if members else torch.full_like(grid, nan)
    npy = lambda v: (v.detach().cpu().numpy() / d)
    return DataSetNLL(npy(est.value), npy(est.se), npy(gap.value), npy(gap.se), curves.cpu().numpy(),
                      float(est.ensemble) / d, float(est.ensemble_se) / d, float(gap.ensemble) / d,
                      float(gap.ensemble_se) / d, ens_curve.cpu().numpy(), share, exact, exact_se)
