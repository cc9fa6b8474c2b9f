"""n*(eps, d) — the smallest sample size reaching an error eps — and how it grows with d
(science.md §2 "Analysis"; §4a). Reads arrays / xarray objects; no I/O.

Conventions: an error curve is ``err (N,)`` on an increasing grid ``n (N,)``. Between grid
points, log err is interpolated linearly in log n (exact for power laws err = C n^{-a}).
n* is the first crossing of eps from above; it is ``nan`` when the curve never reaches eps on
the grid (right-censored, reported as "> n_max") and ``n[0]`` when the first point is already
below eps (left-censored, reported as "<= n_min"). Censored values are left out of fits.

Meant to be merged into (or imported by) ``dsclab.analysis``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import xarray as xr


def n_star(n: Sequence[float], err: Sequence[float], eps: float) -> float:
    """Smallest n with err(n) <= eps (log-log interpolation between grid points); nan if never."""
    n = np.asarray(n, dtype=np.float64)
    e = np.asarray(err, dtype=np.float64)
    if not np.all(np.diff(n) > 0):
        raise ValueError("n must be increasing")
    for i in range(len(n)):
        if not np.isfinite(e[i]):
            return math.nan  # a missing value before the crossing: unknown
        if e[i] <= eps:
            if i == 0:
                return float(n[0])
            l0, l1 = math.log(e[i - 1]), math.log(e[i])
            if l0 == l1 or e[i] <= 0:
                return float(n[i])
            f = (l0 - math.log(eps)) / (l0 - l1)
            return float(math.exp(math.log(n[i - 1]) + f * (math.log(n[i]) - math.log(n[i - 1]))))
    return math.nan


def n_star_da(err: xr.DataArray, eps: float, dim: str = "n") -> xr.DataArray:
    """:func:`n_star` along ``dim`` for every other index of ``err`` (e.g. (d, seed, model))."""
    return xr.apply_ufunc(lambda e: n_star(err[dim].values, e, eps), err, input_core_dims=[[dim]],
                          vectorize=True, output_dtypes=[np.float64])


def censoring(n_min: float, value: float) -> str:
    """'' for an interior crossing, '<=' at the first grid point, '>' when never reached."""
    if not np.isfinite(value):
        return ">"
    return "<=" if value <= n_min * (1 + 1e-12) else ""


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y on log x over the finite, positive pairs; nan if < 2 pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def nstar_exponent(d: Sequence[float], nstar: Sequence[float], n_min: float | None = None) -> float:
    """Exponent b of n* ~ c d^b (log-log least squares), leaving out censored values
    (nan: not reached; == n_min: reached at the first grid point)."""
    v = np.asarray(nstar, dtype=np.float64).copy()
    if n_min is not None:
        v[v <= n_min * (1 + 1e-12)] = np.nan
    return loglog_slope(d, v)


def exponent_band(nstar: xr.DataArray, n_min: float, dim: str = "d", seed_dim: str = "seed") -> tuple[float, float, float]:
    """(min, median, max) over seeds of the per-seed exponent of n* in ``dim``."""
    vals = [nstar_exponent(nstar[dim].values, nstar.sel({seed_dim: s}).values, n_min) for s in nstar[seed_dim].values]
    vals = np.array([v for v in vals if np.isfinite(v)])
    if vals.size == 0:
        return (math.nan, math.nan, math.nan)
    return float(vals.min()), float(np.median(vals)), float(vals.max())


def common_eps(curves: xr.DataArray, dim: str = "n", levels: int = 3) -> list[float]:
    """Error levels that every curve (mean over seeds) crosses on the grid: geometric points
    between the largest final error and the smallest initial error. Empty if there is no
    common range (then some curve never reaches the others' levels)."""
    flat = np.moveaxis(np.asarray(curves.values, dtype=np.float64), curves.get_axis_num(dim), -1)
    flat = flat.reshape(-1, curves.sizes[dim])
    flat = flat[np.isfinite(flat).all(axis=1)]
    if flat.size == 0:
        return []
    lo = float(np.max(np.min(flat, axis=1)))   # every curve gets at least this low
    hi = float(np.min(flat[:, 0]))             # every curve starts at least this high
    if not lo < hi:
        return []
    return [float(v) for v in np.geomspace(hi, lo, levels + 2)[1:-1]]
