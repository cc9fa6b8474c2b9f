"""What the sampler-convergence report and figure read off a store: fitted slopes, NFE to reach
a KL level, and the acceptance line, over done cells.

KL slopes are least squares on log-log over ``analysis.fit_nfe`` (default NFE 32..512: every
scheme is stable and in its asymptotic regime there, the 2-stage schemes are not below ~16 on the
'exp' grid from T = 5); sampled slopes use the same range, only where the seed mean is above
``floor_factor`` x the Monte Carlo floor, with a bootstrap band over seeds; NFE to reach a KL
level is log-log interpolated, and extrapolated along the fit (marked) when the grid ends first
(``dsclab.analysis``).
"""
from __future__ import annotations

import json
import math

import numpy as np
import xarray as xr

from dsclab import analysis
from dsclab.study import Status
from dsclab.studies.sampler_convergence.spec import SamplerConvergenceSpec


def spec_of(ds: xr.Dataset) -> SamplerConvergenceSpec:
    """The spec a store was made from (``attrs['spec']``)."""
    return SamplerConvergenceSpec.model_validate(json.loads(ds.attrs["spec"]))


def done(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``ds[var]`` over done cells (NaN elsewhere)."""
    return ds[var].where(ds["status"] == Status.DONE)


def has(da: xr.DataArray) -> bool:
    """Whether ``da`` holds a finite value."""
    return bool(np.isfinite(da.values).any())


def kl_fits(ds: xr.Dataset, spec: SamplerConvergenceSpec | None = None, var: str = "kl") -> xr.Dataset:
    """Slopes of log KL against log NFE over ``analysis.fit_nfe`` (exact: no band), per
    (target, d, sampler, score); ``var`` = ``kl_reverse`` for KL(q_tmin || p_out)."""
    spec = spec or spec_of(ds)
    return analysis.slope_table(done(ds, var), "nfe", x_range=spec.analysis.fit_nfe, min_points=3)


def kl_crossings(ds: xr.Dataset, level: float, spec: SamplerConvergenceSpec | None = None,
                 fits: xr.Dataset | None = None) -> xr.DataArray:
    """NFE at which the KL reaches ``level`` (object array of ``analysis.Crossing``), right-censored
    crossings extrapolated along the asymptotic fit."""
    fits = kl_fits(ds, spec) if fits is None else fits
    return analysis.crossing_table(done(ds, "kl"), "nfe", level, fits=fits)


def sampled_fits(ds: xr.Dataset, metric: str = "sliced_w2", spec: SamplerConvergenceSpec | None = None) -> xr.Dataset:
    """Slopes of a sampled metric against NFE with a bootstrap band over seeds, fitted over the
    NFE in ``analysis.fit_nfe`` (the asymptotic range, as for the KL: below it the 2-stage schemes
    are still unstable and a fit would measure the decay of that instability) whose seed mean
    exceeds ``floor_factor`` x the mean Monte Carlo floor (near the floor only noise would be
    fitted). Fewer than 3 such NFE: nan (the curve sits at a floor there)."""
    spec = spec or spec_of(ds)
    da = done(ds, metric).load()
    floor = done(ds, f"{metric}_floor").mean("seed")
    keep = da.mean("seed") > spec.analysis.floor_factor * floor
    return analysis.slope_table(da.where(keep), "nfe", seed_dim="seed", x_range=spec.analysis.fit_nfe,
                                n_boot=spec.analysis.n_boot, level=spec.analysis.band, min_points=3)


def acceptance(ds: xr.Dataset, spec: SamplerConvergenceSpec | None = None, fits=None) -> dict | None:
    """The issue's acceptance numbers on (gaussian, exact score, d = analysis.acceptance_d):
    slope ratio srk / exponential_integrator (>= 1.8 wanted) and NFE ratio to reach
    ``acceptance_level`` (<= 0.5 wanted). A right-censored EI crossing gives the bound
    ratio <= srk / NFE_max (rigorous: the KL is decreasing) and the extrapolated ratio."""
    spec = spec or spec_of(ds)
    a = spec.analysis
    need = {"target": "gaussian", "score": "exact", "d": a.acceptance_d}
    if any(v not in ds[k].values for k, v in need.items()) or not {"srk", "exponential_integrator"} <= set(ds.sampler.values):
        return None
    fits = kl_fits(ds, spec) if fits is None else fits
    f = fits.sel(**need)
    s_srk, s_ei = float(f.slope.sel(sampler="srk")), float(f.slope.sel(sampler="exponential_integrator"))
    cr = kl_crossings(ds, a.acceptance_level, spec, fits).sel(**need)
    c_srk, c_ei = cr.sel(sampler="srk").item(), cr.sel(sampler="exponential_integrator").item()
    est = c_srk.estimate() / c_ei.estimate()
    if c_ei.censored == "right" and c_srk.censored == "":
        bound = c_srk.value / c_ei.bound  # EI needs more than its last grid NFE
    elif c_ei.censored == "" and c_srk.censored in ("", "left"):
        bound = c_srk.bound / c_ei.value if c_srk.censored == "left" else est
    else:
        bound = math.nan
    return {"slope_srk": s_srk, "slope_ei": s_ei, "slope_ratio": s_srk / s_ei,
            "nfe_srk": c_srk, "nfe_ei": c_ei, "nfe_ratio_bound": bound, "nfe_ratio_estimate": est,
            "pass_slope": s_srk / s_ei >= 1.8,
            "pass_nfe": bool(np.isfinite(bound) and bound <= 0.5)}
