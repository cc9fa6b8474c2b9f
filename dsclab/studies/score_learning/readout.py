"""What the report (:mod:`.report`) and the figure (:mod:`.plot`) read from a score-learning store:
the values of done cells, bands over seeds, the sigma_t^2-weighted L2 error, n*(eps), paired
ratios and their tables, and which sections the grid supports."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import analysis
from dsclab.study import Status


def done(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``ds[var]`` at done cells, NaN elsewhere."""
    return ds[var].where(ds["status"] == Status.DONE)


def fmt(v: float, spec: str = ".3g") -> str:
    return "nan" if not np.isfinite(v) else format(v, spec)


def band(da: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Median, min and max over seeds."""
    return da.median("seed"), da.min("seed"), da.max("seed")


def band_text(da: xr.DataArray) -> str:
    """'median [min, max]' over seeds of a DataArray with only the seed dim left."""
    med, lo, hi = band(da)
    return f"{fmt(float(med))} [{fmt(float(lo))}, {fmt(float(hi))}]"


def n_star(err: xr.DataArray, eps: float) -> xr.DataArray:
    """n*(eps): the smallest n with err <= eps, log-log interpolated, per index of ``err``'s other
    dims (a table of ``analysis.Crossing``): left-censored at the smallest n, right-censored
    when never reached, unknown when a missing value comes before the crossing."""
    return analysis.crossing_table(err, "n", eps, missing="unknown")


def ratio_table(ds: xr.Dataset, var: str, dim: str, num: str, den: str, sel: dict) -> xr.DataArray:
    """Per-seed ratio var[dim=num] / var[dim=den] of paired cells at ``sel``."""
    da = done(ds, var).sel(sel)
    return da.sel({dim: num}) / da.sel({dim: den})


def ratio_block(ds: xr.Dataset, var: str, dim: str, num: str, den: str, fixed: dict) -> tuple[list[str], xr.DataArray]:
    """Rows n, columns t: 'median [min, max]' over seeds of the paired ratio var[num] / var[den]
    (:func:`ratio_table`; the largest delta of a quantile variable); and the ratio itself."""
    r = ratio_table(ds, var, dim, num, den, fixed)
    if "delta" in r.dims:
        r = r.isel(delta=-1)
    head = "    " + f"{'n':>6} " + " ".join(f"{'t=' + format(float(t), '.3g'):>20}" for t in ds.t.values)
    rows = [head]
    for n in ds.n.values:
        rows.append("    " + f"{int(n):>6} " + " ".join(f"{band_text(r.sel(n=n, t=t)):>20}" for t in ds.t.values))
    return rows, r


def sections(ds: xr.Dataset) -> list[str]:
    """Which parts of the report the grid supports: ``dim`` (>= 2 values of d and of n), ``bsm``
    (dsm and a bootstrapped estimator), ``regime`` (the same with >= 2 values of d: the map over
    (n, d, t), :func:`.bsm_report.regime_section`), ``traj`` (both data modes), ``quantile`` (>= 3 values of n,
    not a d sweep; the first d, estimator, data mode and model)."""
    out = []
    if ds.sizes["d"] >= 2 and ds.sizes["n"] >= 2:
        out.append("dim")
    if "dsm" in ds.estimator.values and any(e != "dsm" for e in ds.estimator.values):
        out.append("bsm")
        if ds.sizes["d"] >= 2:
            out.append("regime")
    if set(ds.data_mode.values) >= {"independent", "trajectory"}:
        out.append("traj")
    if ds.sizes["n"] >= 3 and "dim" not in out:
        out.append("quantile")
    return out
