"""Fits and read-offs of error curves, shared by the studies' reports (numpy / xarray in, no I/O).

Conventions (stated once). An error curve is ``y (N,)`` on an increasing positive grid
``x (N,)`` (NFE, sample size n, ...); replicates (seeds) stack as ``Y (S, N)``. Curves are
compared on log-log axes: between grid points log y is interpolated linearly in log x, which is
exact for power laws y = C x^a. Only finite positive values enter a fit or an interpolation.

* :func:`fit_power_law` -- least squares of log y on log x over an x range (the range where the
  asymptotic rate holds is the caller's choice and is reported with the fit);
* :func:`bootstrap_power_law` -- the fit of the replicate-mean curve with a percentile band from
  resampling the replicates (seeds) with replacement;
* :func:`crossing` -- the smallest x at which a decreasing curve reaches a level (first crossing
  from above, log-log interpolated), with left/right censoring flags, and the power-law
  extrapolation of a right-censored crossing along a fit;
* :func:`slope_table`, :func:`crossing_table` -- the same applied along one dim of an
  ``xr.DataArray``, over all its other dims.

Nothing here knows what x is: the sampler study uses x = NFE, the sample-complexity analysis
x = n (n*(eps, d) is :func:`crossing` with x = n).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

__all__ = ["PowerFit", "SlopeBand", "Crossing", "fit_power_law", "bootstrap_power_law", "crossing",
           "slope_table", "crossing_table"]


@dataclass(frozen=True)
class PowerFit:
    """y ~ exp(intercept) x^slope, fitted over ``x_min <= x <= x_max`` on ``n`` points."""

    slope: float
    intercept: float
    x_min: float
    x_max: float
    n: int

    def __call__(self, x):
        return np.exp(self.intercept) * np.asarray(x, dtype=np.float64) ** self.slope

    def solve(self, level: float) -> float:
        """x at which the fitted power law equals ``level`` (nan for a flat or undefined fit)."""
        if not (np.isfinite(self.slope) and self.slope != 0.0 and level > 0):
            return math.nan
        return float(math.exp((math.log(level) - self.intercept) / self.slope))


NAN_FIT = PowerFit(math.nan, math.nan, math.nan, math.nan, 0)


def _window(x: np.ndarray, x_range: Sequence[float] | None) -> np.ndarray:
    if x_range is None:
        return np.ones(x.shape, dtype=bool)
    lo, hi = x_range
    return (x >= lo) & (x <= hi)


def _loglog_fit(lx: np.ndarray, ly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of ly (..., N) on lx (N,), vectorised over leading dims."""
    xm = lx.mean()
    dx = lx - xm
    slope = (ly * dx).sum(-1) / (dx * dx).sum()
    return slope, ly.mean(-1) - slope * xm


def fit_power_law(x, y, *, x_range: Sequence[float] | None = None, min_points: int = 2) -> PowerFit:
    """Least-squares line through (log x, log y) over the points with x in ``x_range``
    (inclusive) and y finite and positive. Fewer than ``min_points`` such points: a nan fit."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = _window(x, x_range) & np.isfinite(y) & (y > 0) & (x > 0)
    if ok.sum() < max(2, min_points):
        return NAN_FIT
    s, b = _loglog_fit(np.log(x[ok]), np.log(y[ok]))
    return PowerFit(float(s), float(b), float(x[ok].min()), float(x[ok].max()), int(ok.sum()))


@dataclass(frozen=True)
class SlopeBand:
    """Slope of the replicate-mean curve with a ``level`` percentile bootstrap band over replicates."""

    fit: PowerFit
    lo: float
    hi: float
    level: float
    replicates: int

    @property
    def slope(self) -> float:
        return self.fit.slope


def bootstrap_power_law(x, Y, *, x_range: Sequence[float] | None = None, n_boot: int = 1000,
                        level: float = 0.9, rng: np.random.Generator | int = 0,
                        min_points: int = 2) -> SlopeBand:
    """Power-law fit of the mean over replicates of ``Y (S, N)``, with a bootstrap band.

    The point estimate fits the arithmetic mean over the S replicates (seeds). The band resamples
    the S replicates with replacement ``n_boot`` times, refits the mean curve of each resample on
    the same points and takes the (1 - level)/2 and (1 + level)/2 percentiles of the slopes. The
    points used are those with x in ``x_range`` where every replicate is finite and positive
    (so all resamples share one design). With S = 1 the band collapses to the estimate. The
    percentile band reflects only the spread over replicates: it has about the nominal coverage
    when the replicates are independent and S is not tiny (about (S - 1)/S of the variance).
    """
    x = np.asarray(x, dtype=np.float64)
    Y = np.atleast_2d(np.asarray(Y, dtype=np.float64))
    ok = _window(x, x_range) & (x > 0) & np.all(np.isfinite(Y) & (Y > 0), axis=0)
    S = Y.shape[0]
    if ok.sum() < max(2, min_points):
        return SlopeBand(NAN_FIT, math.nan, math.nan, level, S)
    lx, Yk = np.log(x[ok]), Y[:, ok]
    s, b = _loglog_fit(lx, np.log(Yk.mean(0)))
    fit = PowerFit(float(s), float(b), float(x[ok].min()), float(x[ok].max()), int(ok.sum()))
    if S == 1:
        return SlopeBand(fit, fit.slope, fit.slope, level, S)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    idx = gen.integers(0, S, size=(n_boot, S))
    boot, _ = _loglog_fit(lx, np.log(Yk[idx].mean(1)))  # (n_boot,)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return SlopeBand(fit, float(lo), float(hi), level, S)


@dataclass(frozen=True)
class Crossing:
    """Where a decreasing curve reaches ``level``.

    ``value``: the crossing, log-log interpolated between the bracketing grid points;
    ``x[0]`` when the first point is already at or below the level (``censored == "left"``:
    the true crossing is <= x[0]); nan when no grid point reaches it (``censored == "right"``:
    the crossing is > ``bound`` = the largest x of the curve); ``extrapolated``: for a
    right-censored crossing, where the fitted power law (if one was given) reaches the level.
    """

    value: float
    censored: str  # "", "left" or "right"
    bound: float
    extrapolated: float = math.nan

    def estimate(self) -> float:
        """The interpolated crossing, else the extrapolated one (nan if neither exists)."""
        return self.value if np.isfinite(self.value) else self.extrapolated

    def format(self, digits: int = 0) -> str:
        if self.censored == "left":
            return f"<={self.bound:.{digits}f}"
        if self.censored == "right":
            if np.isfinite(self.extrapolated):
                return f"~{self.extrapolated:.{digits}f}*"
            return f">{self.bound:.{digits}f}"
        if not np.isfinite(self.value):
            return "n/a"
        return f"{self.value:.{digits}f}"


def crossing(x, y, level: float, *, fit: PowerFit | None = None) -> Crossing:
    """Smallest x at which the curve y(x) reaches ``level`` from above (see :class:`Crossing`).

    Non-finite or non-positive values are skipped (a diverged point at small x counts as above
    the level). The crossing is the first grid point i with y_i <= level; between it and the
    previous valid point j the value is exp(lx_j + (log level - ly_j)/(ly_i - ly_j) (lx_i - lx_j)).
    A right-censored crossing is extrapolated along ``fit`` when one is given, only beyond the
    grid (an extrapolation that lands inside the grid is discarded).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.diff(x) > 0):
        raise ValueError("x must be increasing")
    valid = np.isfinite(y) & (y > 0)
    if not valid.any():
        return Crossing(math.nan, "right", float(x[-1]), math.nan)
    prev = None
    for i in np.flatnonzero(valid):
        if y[i] <= level:
            if prev is None:
                return Crossing(float(x[i]), "left", float(x[i]))
            l0, l1 = math.log(y[prev]), math.log(y[i])
            lx0, lx1 = math.log(x[prev]), math.log(x[i])
            f = 1.0 if l0 == l1 else (l0 - math.log(level)) / (l0 - l1)
            return Crossing(float(math.exp(lx0 + f * (lx1 - lx0))), "", float(x[i]))
        prev = i
    last = float(x[valid][-1])
    ext = fit.solve(level) if fit is not None else math.nan
    if not (np.isfinite(ext) and ext > last):
        ext = math.nan
    return Crossing(math.nan, "right", last, ext)


# ----------------------------------------------------------------------------------------------
# xarray wrappers
# ----------------------------------------------------------------------------------------------

def slope_table(da: xr.DataArray, x_dim: str, *, seed_dim: str | None = None,
                x_range: Sequence[float] | None = None, n_boot: int = 1000, level: float = 0.9,
                rng: int = 0, min_points: int = 3) -> xr.Dataset:
    """Power-law fits of ``da`` along ``x_dim`` for every combination of its other dims.

    With ``seed_dim`` the fit is :func:`bootstrap_power_law` over that dim (band ``lo``, ``hi``);
    without, :func:`fit_power_law` (``lo = hi = slope``). Returns a Dataset with ``slope``,
    ``lo``, ``hi``, ``intercept``, ``x_min``, ``x_max`` and ``points`` over the remaining dims.
    """
    da = da.load()
    rest = [d for d in da.dims if d not in (x_dim, seed_dim)]
    order = rest + ([seed_dim] if seed_dim else []) + [x_dim]
    arr = da.transpose(*order).values
    shape = [da.sizes[d] for d in rest]
    flat = arr.reshape((-1,) + arr.shape[len(rest):])
    x = da[x_dim].values.astype(np.float64)
    out = {k: np.full(flat.shape[0], np.nan) for k in ("slope", "lo", "hi", "intercept", "x_min", "x_max", "points")}
    for i, curve in enumerate(flat):
        if seed_dim:
            band = bootstrap_power_law(x, curve, x_range=x_range, n_boot=n_boot, level=level,
                                       rng=np.random.default_rng([rng, i]), min_points=min_points)
            fit, lo, hi = band.fit, band.lo, band.hi
        else:
            fit = fit_power_law(x, curve, x_range=x_range, min_points=min_points)
            lo = hi = fit.slope
        for k, v in (("slope", fit.slope), ("lo", lo), ("hi", hi), ("intercept", fit.intercept),
                     ("x_min", fit.x_min), ("x_max", fit.x_max), ("points", fit.n)):
            out[k][i] = v
    coords = {d: da[d].values for d in rest}
    return xr.Dataset({k: (rest, v.reshape(shape)) for k, v in out.items()}, coords=coords,
                      attrs={"x_dim": x_dim, "x_range": list(x_range) if x_range else "all", "level": level})


def crossing_table(da: xr.DataArray, x_dim: str, level: float, *,
                   fits: xr.Dataset | None = None) -> xr.DataArray:
    """:func:`crossing` of ``da`` along ``x_dim`` over its other dims, as an object array of
    :class:`Crossing` (``fits`` from :func:`slope_table` on the same dims enables extrapolation)."""
    da = da.load()
    rest = [d for d in da.dims if d != x_dim]
    arr = da.transpose(*rest, x_dim).values
    flat = arr.reshape(-1, arr.shape[-1])
    x = da[x_dim].values.astype(np.float64)
    out = np.empty(flat.shape[0], dtype=object)
    for i, curve in enumerate(flat):
        fit = None
        if fits is not None:
            idx = np.unravel_index(i, [da.sizes[d] for d in rest]) if rest else ()
            sel = {d: da[d].values[j] for d, j in zip(rest, idx)}
            f = fits.sel(sel) if sel else fits
            pts = float(f.points)
            fit = PowerFit(float(f.slope), float(f.intercept), float(f.x_min), float(f.x_max),
                           int(pts) if np.isfinite(pts) else 0)
        out[i] = crossing(x, curve, level, fit=fit)
    return xr.DataArray(out.reshape([da.sizes[d] for d in rest]), dims=rest, coords={d: da[d].values for d in rest})
