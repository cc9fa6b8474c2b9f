"""I-MMSE ensembles and data-set estimates: per-point gap terms on shared draws, crossed standard
errors, the best denoiser at each SNR, and the likelihood of a data set (conventions in
``dsclab.immse``)."""
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
from dsclab.seeds import derive_seed, draw_seed, generator as seed_generator
from dsclab.immse.core import (
    REFERENCES, Denoiser, EnsembleEstimate, Estimate, _randn, _setup, _summarise, logsnr_range, mmse_eps,
    mmse_gaussian, mse_eps_paired, nll_discrete, sample_logsnr,
)

__all__ = [
    "ensemble_nll", "per_dim", "bits_per_dim", "spectrum", "empirical_moments", "moment_matched_gaussian",
    "GapTerms", "CrossedEstimate", "gap_terms", "crossed_mean", "crossed_estimates", "clamp_to_box",
    "lattice_box", "lattice_rounding", "completed_above", "rounding_mmse", "rounding_tail", "DataSetNLL",
    "data_set_nll", "held_out_nll",
]

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


def lattice_rounding(origin: float, step: float, lo: float, hi: float) -> Denoiser:
    """Hard rounding onto the lattice origin + step Z, clamped to the box [lo, hi]^d: x_hat is the
    lattice point nearest the rescaled observation e^t x_t = x + eps / sqrt(gamma). It is the limit of
    the Bayes denoiser of any law on the lattice as the SNR grows (the posterior concentrates on the
    nearest point), and the Bayes denoiser of a locally uniform one there."""
    def rounded(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        y = x * torch.exp(t)[:, None]
        return (origin + step * torch.round((y - origin) / step)).clamp(lo, hi)
    return rounded


def completed_above(denoise: Denoiser, above: Denoiser, logsnr_top: float) -> Denoiser:
    """``denoise`` at log-SNR up to ``logsnr_top`` (t >= t_from_logsnr(logsnr_top)), ``above`` at
    higher SNR, row by row. A network is a model only where it was trained: above the top of its
    training range its output is an extrapolation (the Fourier features of ``dsclab.nets`` repeat
    with period 16 in log-SNR, so it even reads those times as low-SNR ones)."""
    t_top = float(noise.t_from_logsnr(float(logsnr_top)))

    def completed(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        high = t < t_top
        out = denoise(x, t)
        if bool(high.any()):
            out = out.clone()
            out[high] = above(x[high], t[high]).to(out.dtype)
        return out
    return completed


def _q(c):
    return 0.5 * torch.special.erfc(c / math.sqrt(2.0))


def _phi(c):
    return torch.exp(-0.5 * c * c) / math.sqrt(2 * math.pi)


def _rounding_terms(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-integers k -+ 1/2 (k = 1..K, K covering |eps| up to 40 steps) as (K,) float64."""
    K = int(math.ceil(40.0 / max(float(s.min()), 1e-3))) + 2
    k = torch.arange(1, K + 1, dtype=torch.float64)
    return k, k - 0.5


def rounding_mmse(alpha, step: float) -> torch.Tensor:
    """Per coordinate, E gamma (r - x)^2 of :func:`lattice_rounding` at an interior lattice point x
    (no clamping): with s = sqrt(gamma) step, the rounding error is k step when eps / s falls in
    (k - 1/2, k + 1/2), so mmse = s^2 sum_{k>=1} k^2 2 [Q((k - 1/2) s) - Q((k + 1/2) s)]."""
    alpha = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    s = torch.exp(alpha / 2) * step
    k, lo = _rounding_terms(s)
    c = s[:, None] * lo[None, :]
    return s ** 2 * (k[None] ** 2 * 2 * (_q(c) - _q(c + s[:, None]))).sum(-1)


def rounding_tail(b: float, step: float) -> float:
    """1/2 int_b^inf :func:`rounding_mmse` d alpha, nats per coordinate: the likelihood term of
    :func:`lattice_rounding` above the estimator's range [a, b]. With d alpha = 2 ds / s and
    G(c) = int_c^inf v Q(v) dv = ((1 - c^2) Q(c) + c phi(c)) / 2, int_b^inf s^2 2 Q(c s) d alpha =
    4 G(c s_b) / c^2, so the term is 2 sum_k k^2 [G((k - 1/2) s_b) / (k - 1/2)^2 - G((k + 1/2) s_b) / (k + 1/2)^2].
    Exact for an interior point; an upper bound for one on a face of the box, where clamping removes
    the outward errors."""
    s = torch.tensor([math.exp(b / 2) * step], dtype=torch.float64)
    k, lo = _rounding_terms(s)

    def G(c):
        return 0.5 * ((1 - c * c) * _q(c) + c * _phi(c))

    hi = lo + 1
    return float(2 * (k ** 2 * (G(lo * s) / lo ** 2 - G(hi * s) / hi ** 2)).sum())


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
        curve_seed = draw_seed(generator)
        # one generator per (denoiser, grid point), from the point's own value: a point's value does
        # not depend on the rest of the grid (a store grows along logsnr in place)
        curves = torch.stack([torch.cat([
            mmse_eps(x, a.reshape(1), den, seed_generator(derive_seed("mmse-curve", curve_seed, float(a))),
                     dtype=dtype).mean(0) for a in grid]) for den in denoisers]) / d  # (K, k)
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


def held_out_nll(x: torch.Tensor, denoisers: Sequence[Denoiser], generator: torch.Generator, *, lam,
                 box: tuple[float, float] | None = None, n_alpha: int = 64, clip: float = 4.0,
                 lattice: tuple[float, float] | None = None, top: float | None = None) -> Estimate:
    """mean_i[-log p(x_i)] of held-out rows ``x (m, d)`` under K denoisers, in bits per dimension,
    with its SE over the points and the draws (``value, se (K,)``), every model on the same
    stratified (alpha, eps) draws (:func:`gap_terms`, :func:`crossed_estimates`). Rows on a
    lattice (``box`` its hull (lo, hi)): the discrete estimator with the Gaussian left-tail term,
    every denoiser clamped to the box; else the continuous one with the reference Gaussian of
    spectrum ``lam``, which also sets the log-SNR proposal (data of no exact law: estimate it from
    training rows, never from ``x``).

    ``lattice = (origin, step)`` with ``top`` (lattice rows only): every denoiser is completed above
    the log-SNR ``top`` by :func:`lattice_rounding` (:func:`completed_above`), and the rounding's term
    above the range's end b, d :func:`rounding_tail` (b, step), is added. A denoiser that does not
    snap to the lattice (a network, a Gaussian) costs 1/2 per coordinate and unit of log-SNR at high
    SNR, so without the completion the estimate grows with b without bound; and ``top`` is where the
    network stops being a fitted model (the top of its training range)."""
    x = x.to(torch.float64)
    if (lattice is None) != (top is None) or (lattice is not None and box is None):
        raise ValueError("lattice and top go together, on lattice rows (box) only")
    if box is not None:
        denoisers = [clamp_to_box(den, *box) for den in denoisers]
    tail = 0.0
    if lattice is not None:
        rounding = lattice_rounding(*lattice, *box)
        denoisers = [completed_above(den, rounding, top) for den in denoisers]
        _, lam_, loc, scale = _setup(x, lam, None, None)
        tail = x.shape[1] * rounding_tail(logsnr_range(loc, scale, clip)[1], lattice[1])
    with torch.no_grad():
        terms = gap_terms(x, denoisers, generator, lam=lam, discrete=box is not None, left_tail=box is not None,
                          n_alpha=n_alpha, clip=clip, stratified=True)
    est = crossed_estimates(terms, members=[])
    return bits_per_dim(Estimate(est.value + tail, est.se), x.shape[1])
