"""Exact KL routes of the sampler-convergence study: KL(sampler output || q_tmin) per (sampler, NFE).

Direction. The stored ``kl`` is KL(p_out || q_tmin), the output law first (what density
propagation and quadrature give). The convergence theorems (Wu–Chen–Wei 2024; science.md §3)
bound the other direction, KL(q_tmin || p_out); the two share their rate in NFE at small KL
(both are (1/2) chi^2 to leading order) but not their floors. Where both are exact and cheap
(the Gaussian target: closed form both ways, :func:`gaussian_kl_pair`) the reverse is stored
too (``kl_reverse``).

* ``gaussian`` (:func:`gaussian_kl_pair`): every step of every sampler is affine for an affine
  score, so the output law is exactly Gaussian, N(m, C), propagated in float64 by
  ``dsclab.studies.sampler_convergence.gaussian_exact.sampler_law``; both KLs are ``metrics.gaussian_kl`` of (m, C) and
  q_tmin's exact moments, in either order.
* ``product_mixture`` (:func:`product_kl_1d`): samplers act coordinatewise, so KL(output ||
  q_tmin) = d x the 1-D KL, computed once per (score, sampler, NFE) by density propagation on a
  grid and quadrature (``dsclab.studies.sampler_convergence.exact_kl``), then multiplied by d. The grid:
  ``quadrature.pts_per_width`` points per standard deviation of the narrowest component of
  q_tmin, ``n_sd`` standard deviations out, for the SDE samplers (``pts_per_width_ode``,
  ``n_sd_ode`` for noise-free samplers, whose densities stay sharp and which cost one quadrature
  node per step); ``n_area`` Gauss–Hermite nodes in the Levy area, at most ``n_max`` in dW.
  Measured against the library defaults (30 pts/sd, 15 sd, 6 area nodes, 600 max) on the default
  target: relative change of the KL < 1 % for NFE 32..256; at NFE 512 (KL ~ 1e-8, where the
  interpolation error accumulated over 256 steps shows) 7 % for srk, 21 % for shark, 30 % for
  sra1, which moves the fitted slopes (NFE 32..512) by 0.02, 0.06 and 0.08 (sra1 -3.95 instead
  of -4.02). Fewer area nodes (2) or a narrower grid for heun (8 sd) break individual points by
  orders of magnitude; these settings do not. ``kl_mass_defect`` stores 1 - the output mass on
  the grid: above ~1e-4 the law left the grid (an unstable step at small NFE) and that KL is
  rough.

What is NaN. A value is computed exactly when ``spec.kl_exact(target, score, sampler)`` holds
(declared facts: the target, the score kind, the sampler); the curves of a sampler outside
``spec.EXACT_KL_SAMPLERS`` are NaN by declaration and never computed, and both functions refuse
a score kind without an exact route. Nothing is caught: an exception raised while computing an
exact value propagates (one of ``dsclab.errors.NUMERICAL`` marks the cell failed with its reason;
any other, e.g. ``gaussian_exact.step_map``'s ValueError for a step that is not affine, is a
defect and fails the task). An output covariance that lost positive definiteness gives +inf
(``metrics.gaussian_kl``).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from dsclab.studies.sampler_convergence.exact_kl import default_grid, kl_1d, mixture1d, propagate_density_1d
from dsclab.studies.sampler_convergence.gaussian_exact import gaussian_kl, gaussian_score, sampler_law, target_law
from dsclab.samplers import SAMPLERS
from dsclab.studies.sampler_convergence.schemes import grid, is_noise_free
from dsclab.studies.sampler_convergence.spec import EXACT_KL_SCORES, SamplerConvergenceSpec, kl_exact
from dsclab.studies.sampler_convergence.targets import make_target, mixture1d_score, perturb


def _check_score(score_kind: str) -> None:
    if score_kind not in EXACT_KL_SCORES:
        raise ValueError(f"score kind {score_kind!r} has no exact KL (exact: {', '.join(EXACT_KL_SCORES)})")


def gaussian_kl_pair(spec: SamplerConvergenceSpec, d: int, score_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact KL(p_out || q_tmin) and KL(q_tmin || p_out), each (sampler, nfe), for the Gaussian
    target: the output law N(m, C) (``gaussian_exact.sampler_law``, propagated once) against
    q_tmin = N(mt, Ct) (``gaussian_exact.target_law``), ``metrics.gaussian_kl`` in either order.

    NaN for a sampler without an exact KL (``spec.kl_exact``); an output covariance that lost
    positive definiteness gives +inf (both directions); exceptions propagate (module docstring).
    """
    _check_score(score_kind)
    dist = make_target(spec, "gaussian", d)
    score = gaussian_score(dist)
    if score_kind == "perturbed":
        score = perturb(score, spec.eta)
    fwd = np.full((len(spec.sampler), len(spec.nfe)), np.nan)
    rev = np.full_like(fwd, np.nan)
    for i, name in enumerate(spec.sampler):
        if not kl_exact("gaussian", score_kind, name):
            continue
        for j, nfe in enumerate(spec.nfe):
            ts = grid(spec, name, nfe)
            m, C = sampler_law(name, dist, ts, start=spec.start, score=score)
            mt, Ct = target_law(dist, float(ts[-1]))  # q_tmin, tmin = the grid's last time
            fwd[i, j] = gaussian_kl(m, C, mt, Ct)
            rev[i, j] = gaussian_kl(mt, Ct, m, C) if np.isfinite(fwd[i, j]) else math.inf
    return fwd, rev


def gaussian_kl_curves(spec: SamplerConvergenceSpec, d: int, score_kind: str) -> np.ndarray:
    """Exact KL(p_out || q_tmin) (sampler, nfe) for the Gaussian target (:func:`gaussian_kl_pair`)."""
    return gaussian_kl_pair(spec, d, score_kind)[0]


def product_kl_1d(spec: SamplerConvergenceSpec, score_kind: str) -> dict[str, list]:
    """1-D KL and mass defect (sampler, nfe) of one factor of the product target.

    The d-dim KL is d times this (identical factors, coordinatewise samplers and score). For
    ``perturbed`` the 1-D score is s + eta (the coordinate of eta (1, ..., 1)). NaN for a sampler
    without an exact KL (``spec.kl_exact``); exceptions propagate (module docstring). Returns
    plain lists (JSON-able, cheap to pass between tasks).
    """
    _check_score(score_kind)
    p = spec.product_mixture
    mix = mixture1d(p.weights, p.means, p.stds)
    score = mixture1d_score(p.weights, p.means, p.stds)
    if score_kind == "perturbed":
        score = perturb(score, spec.eta)
    q = spec.quadrature
    kl = np.full((len(spec.sampler), len(spec.nfe)), np.nan)
    defect = np.full_like(kl, np.nan)
    for i, name in enumerate(spec.sampler):
        if not kl_exact("product_mixture", score_kind, name):
            continue
        fn = SAMPLERS[name]
        ode = is_noise_free(fn)
        x = default_grid(mix, spec.t_min, pts_per_width=q.pts_per_width_ode if ode else q.pts_per_width,
                         n_sd=q.n_sd_ode if ode else q.n_sd)
        xt = torch.as_tensor(x)[:, None]
        logq = mix.log_prob(xt, spec.t_min).numpy()
        for j, nfe in enumerate(spec.nfe):
            ts = grid(spec, name, nfe)
            if spec.start == "exact":
                p0 = torch.exp(mix.log_prob(xt, float(ts[0]))).numpy()
            else:
                p0 = np.exp(-0.5 * x ** 2) / math.sqrt(2 * math.pi)
            with warnings.catch_warnings():  # an unstable step at small NFE: kl_mass_defect says so
                warnings.simplefilter("ignore", RuntimeWarning)
                dens = propagate_density_1d(fn, score, ts, x, p0, n_area=q.n_area, n_max=q.n_max)
                kl[i, j], defect[i, j] = kl_1d(dens, logq, x)
    return {"kl": kl.tolist(), "defect": defect.tolist()}
