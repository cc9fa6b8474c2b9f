"""Fits and read-offs of curves, shared by the studies' reports (numpy / xarray in, no I/O): the
one place for power-law fits, crossings of a level (n*(eps), NFE to a KL level, n_half of an
overlap), exponents of crossings and bands.

Conventions (stated once). A curve is ``y (N,)`` on an increasing positive grid ``x (N,)`` (NFE,
sample size n, ...); replicates (seeds) stack as ``Y (S, N)``. Error curves are compared on
log-log axes: between grid points log y is interpolated linearly in log x, which is exact for
power laws y = C x^a. Only finite positive values enter a fit.

* :func:`fit_power_law` -- least squares of log y on log x over an x range (the range where the
  asymptotic rate holds is the caller's choice and is reported with the fit);
* :func:`bootstrap_power_law` -- the fit of the replicate-mean curve with a percentile band from
  resampling the replicates (seeds) with replacement;
* :func:`crossing` -- where a curve crosses a level on its grid (a :class:`Crossing`, with
  left/right censoring): a decreasing error curve falling to the level or an increasing one rising
  past it, its first point past the level or the point from which it stays past, interpolated in
  log x and log or linear y; a right-censored crossing is extrapolated along a power-law fit;
* :func:`crossing_exponent`, :func:`exponent_band` -- the exponent b of a crossing that grows
  like c d^b (n*(eps, d) in d), censored crossings left out; :func:`common_levels` -- levels
  every curve of a family crosses on the grid;
* :func:`slope_table`, :func:`crossing_table` -- the same applied along one dim of an
  ``xr.DataArray``, over all its other dims (:func:`crossing_values` reads one field of a table).

Exceedance probabilities P[error > tau] over seeds with a Clopper–Pearson interval
(:func:`exceedance`, :func:`tau_levels`) live in :mod:`dsclab.exceedance` and are re-exported here.

Nothing here knows what x is: the sampler study uses x = NFE (the NFE to reach a KL level), the
score-learning study x = n (n*(eps, d), the smallest n with error <= eps), the sparse-PCA study
x = n (n_half, the n from which the overlap stays above 1/2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from dsclab import noise
from dsclab.exceedance import exceedance, tau_levels
from dsclab.study import Derived, Status

__all__ = ["exceedance", "tau_levels", "PowerFit", "SlopeBand", "Crossing", "fit_power_law", "bootstrap_power_law", "crossing",
           "crossing_exponent", "exponent_band", "common_levels", "slope_table", "crossing_table",
           "crossing_values"]


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
    """Where a curve crosses ``level`` on its grid (:func:`crossing`).

    ``censored``:

    * ``""`` -- ``value`` is the crossing, interpolated between the last grid point before it and
      ``bound``, the first grid point past the level;
    * ``"left"`` -- the first grid point (of those not skipped) is already past the level: the
      true crossing is <= ``bound`` = that point's x, and ``value`` = ``bound``;
    * ``"right"`` -- the last grid point (of those not skipped) is not past the level: the
      crossing is > ``bound`` = that point's x, ``value`` is nan, and ``extrapolated`` is where
      the fitted power law (if one was given) reaches the level beyond the grid;
    * ``"unknown"`` -- a missing value decides it (``missing="unknown"``): ``value`` and
      ``bound`` are nan.
    """

    value: float
    censored: str  # "", "left", "right" or "unknown"
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


UNKNOWN = Crossing(math.nan, "unknown", math.nan)
_OPTIONS = {"direction": ("down", "up"), "y_scale": ("log", "linear"), "rule": ("first", "stays"),
            "missing": ("skip", "unknown")}


def crossing(x, y, level: float, *, direction: str = "down", y_scale: str = "log", rule: str = "first",
             missing: str = "skip", fit: PowerFit | None = None) -> Crossing:
    """Where the curve y(x) crosses ``level`` (see :class:`Crossing`); ``x`` increasing.

    ``direction``: ``"down"``, a decreasing curve (an error) is past the level where y <= level;
    ``"up"``, an increasing curve (an overlap) is past it where y > level (a point at the level
    has not crossed it). Only finite values are ever past the level.

    ``rule``: ``"first"``, the crossing is at the first grid point past the level; ``"stays"``,
    at the first point from which every later point is past the level (the last point must be).

    ``y_scale``: between the point j before the crossing and the point i past it, the crossing
    is x_j^{1-f} x_i^f (linear in log x) with f = (g(level) - g(y_j)) / (g(y_i) - g(y_j)), g =
    log (``"log"``: exact for power laws) or the identity (``"linear"``); f = 1 (x_i) when
    g(y_i) = g(y_j), or on a log scale when y_i or y_j <= 0.

    ``missing`` -- what a non-finite value (or, on a log scale, a value <= 0 with ``"skip"``) does:

    * ``"skip"``: the point is left out (a diverged point at small x counts as above the level);
      every point left out: right-censored at the last grid point;
    * ``"unknown"``: a non-finite value makes the crossing unknown when it lies before the first
      point past the level (rule ``"first"``), or anywhere (rule ``"stays"``, conservatively);
      finite values <= 0 are kept (on a log scale the crossing is then at the grid point).

    A right-censored crossing is extrapolated along ``fit`` when one is given, only beyond the
    grid (an extrapolation that lands inside the grid is discarded).
    """
    for name, value in (("direction", direction), ("y_scale", y_scale), ("rule", rule), ("missing", missing)):
        if value not in _OPTIONS[name]:
            raise ValueError(f"{name} must be one of {_OPTIONS[name]}, got {value!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.diff(x) > 0):
        raise ValueError("x must be increasing")
    finite = np.isfinite(y)
    if missing == "skip":
        keep = np.flatnonzero(finite & (y > 0) if y_scale == "log" else finite)
        if keep.size == 0:
            return Crossing(math.nan, "right", float(x[-1]), math.nan)
    else:
        if rule == "stays" and not finite.all():
            return UNKNOWN
        keep = np.arange(y.size)
    yk = y[keep]
    past = finite[keep] & ((yk <= level) if direction == "down" else (yk > level))
    if rule == "first":
        hits = np.flatnonzero(past)
        k = int(hits[0]) if hits.size else None
        if missing == "unknown" and not finite[: keep[k] if k is not None else y.size].all():
            return UNKNOWN  # a missing value before the first point past the level
    else:
        k = None
        if past[-1]:
            k = past.size - 1
            while k > 0 and past[k - 1]:
                k -= 1
    if k is None:
        last = float(x[keep[-1]])
        ext = fit.solve(level) if fit is not None else math.nan
        if not (np.isfinite(ext) and ext > last):
            ext = math.nan
        return Crossing(math.nan, "right", last, ext)
    i = keep[k]
    if k == 0:
        return Crossing(float(x[i]), "left", float(x[i]))
    j = keep[k - 1]
    yj, yi = float(y[j]), float(y[i])
    if y_scale == "log":
        if yi <= 0 or yj <= 0:
            f = 1.0
        else:
            g0, g1 = math.log(yj), math.log(yi)
            f = 1.0 if g0 == g1 else (g0 - math.log(level)) / (g0 - g1)
    else:
        f = 1.0 if yi == yj else (level - yj) / (yi - yj)
    lx0, lx1 = math.log(x[j]), math.log(x[i])
    return Crossing(float(math.exp(lx0 + f * (lx1 - lx0))), "", float(x[i]))


def crossing_exponent(x, crossings) -> float:
    """Exponent b of a crossing growing like c x^b (e.g. n*(eps, d) in d; ``x`` distinct): least
    squares of log value on log x (:func:`fit_power_law`) over the crossings that are not
    censored; nan with fewer than 2 of them."""
    v = np.array([c.value if c.censored == "" else math.nan for c in crossings], dtype=np.float64)
    return fit_power_law(x, v).slope


def exponent_band(table: xr.DataArray, dim: str = "d", seed_dim: str = "seed") -> tuple[float, float, float]:
    """(min, median, max) over ``seed_dim`` of the per-seed :func:`crossing_exponent` along
    ``dim`` of a :func:`crossing_table` over (dim, seed_dim); nan where no seed has one."""
    vals = [crossing_exponent(table[dim].values, table.sel({seed_dim: s}).transpose(dim).values)
            for s in table[seed_dim].values]
    vals = np.array([v for v in vals if np.isfinite(v)])
    if vals.size == 0:
        return (math.nan, math.nan, math.nan)
    return float(vals.min()), float(np.median(vals)), float(vals.max())


def common_levels(curves: xr.DataArray, dim: str = "n", levels: int = 3) -> list[float]:
    """Levels that every decreasing curve of ``curves`` (along ``dim``, over its other dims)
    crosses on the grid: ``levels`` geometric points strictly between the largest final value and
    the smallest initial value. Curves with a non-finite value are left out; empty if there is no
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


def crossing_table(da: xr.DataArray, x_dim: str, level: float, *, fits: xr.Dataset | None = None,
                   **options) -> xr.DataArray:
    """:func:`crossing` of ``da`` along ``x_dim`` over its other dims, as an object array of
    :class:`Crossing` (``options`` are :func:`crossing`'s; ``fits`` from :func:`slope_table` on
    the same dims enables extrapolation). Coordinates not along ``x_dim`` are kept."""
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
        out[i] = crossing(x, curve, level, fit=fit, **options)
    coords = {k: c for k, c in da.coords.items() if x_dim not in c.dims}
    return xr.DataArray(out.reshape([da.sizes[d] for d in rest]), dims=rest, coords=coords)


def crossing_values(table: xr.DataArray, field: str = "value") -> xr.DataArray:
    """One float field of every :class:`Crossing` of a :func:`crossing_table` (default the
    interpolated value: nan where right-censored or unknown, x[0] where left-censored)."""
    flat = np.array([getattr(c, field) for c in table.values.ravel()], dtype=np.float64)
    return table.copy(data=flat.reshape(table.shape))


def weighted_l2(ds: xr.Dataset) -> xr.DataArray:
    """mean over the t grid of sigma_t^2 score_l2(t): the L2 score error in noise-prediction units
    (the DSM weighting), so that no single noise level dominates; NaN at cells not done."""
    w = xr.DataArray(noise.sigma2(ds.t.values.astype(np.float64)), dims="t", coords={"t": ds.t})
    return (ds["score_l2"].where(ds["status"] == Status.DONE) * w).mean("t")


WEIGHTED_L2 = {"score_l2_weighted": Derived(weighted_l2, needs="score_l2")}
"""The derived metric of the kinds whose store has ``score_l2`` over ``t`` (``StudyKind.derived``)."""

