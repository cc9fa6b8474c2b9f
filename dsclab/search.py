"""Adaptive search of n*(eps, d), the smallest sample size at which an error reaches eps
(science.md §2: "n*(eps, d) = smallest n reaching error eps; report how n* grows with d"), by
geometric bisection in n. Plain numerics (numpy / xarray, no Prefect, no store): the flow
``flows.search`` runs the rounds this module plans, appending each round's cells to one store.

Conventions (stated once).

* The **metric** is an error that decreases in n: a float variable of the study's store over its
  cell dims, averaged over its other dims (``score_l2`` over t; ``sliced_w2`` over sampler and
  nfe), or a derived one the kind declares (``StudyKind.derived``); cells that are not done are NaN
  (:func:`metric_values`). An array of it has dims ``cell_dims``.
* A **curve** is one combination of the cell coordinates other than n and seed (for
  sample_complexity: (d, estimator); for score_learning: (d, estimator, data_mode, model)). Its
  **seed mean** m(n) is the mean over seeds of the metric at each n computed for the curve (an n
  where every seed is NaN is not part of the curve: another curve asked for it, or its cells
  failed).
* The **crossing** of a curve is :func:`dsclab.analysis.crossing` of m(n) at eps (a decreasing
  curve, rule ``first``, log-log interpolation, missing values skipped); its **bracket** is
  [n_j, n_i], the consecutive computed n around it with m(n_j) > eps >= m(n_i).

The search, per curve (:func:`next_n`): start from a coarse geometric grid
(:func:`geometric_grid` with ratio ``factor``, from the spec's smallest to its largest n); each
round adds one n per curve: round(sqrt(n_j n_i)) while the bracket's ratio n_i / n_j exceeds
``ratio`` (the ratio goes r -> about sqrt(r), so a bracket of ratio r_0 needs
ceil(log2(log r_0 / log ratio)) rounds: 3 from 4 to 1.25); n_0 / factor when the first point is
already past eps (left-censored), n_max * factor when the last is not (right-censored), within
:func:`bounds` (one factor beyond the spec's range each way). The search of a curve stops when its
bracket reaches ``ratio``, when it is censored at a bound, or when no integer lies strictly inside
its bracket.

The result (:func:`summarize`) per curve: n* of the seed mean (interpolated inside the final
bracket), the bracket, and an interval over seeds: the smallest and largest per-seed crossing on
the same n (censored ones marked); and (:func:`exponents`) the exponent b of n* ~ c d^b, least
squares of log n* on log d over the curves not censored (:func:`dsclab.analysis.crossing_exponent`),
with the range of the same fit per seed.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from pydantic import Field

from dsclab import analysis
from dsclab.spec import Frozen
from dsclab.study import Status, StudyKind


class SearchSettings(Frozen):
    """What ``dsclab search`` asks for, besides the study spec."""

    metric: str = Field(..., description="store variable (averaged over its non-cell dims) or a derived metric "
                                         "(score_l2_weighted): an error decreasing in n")
    eps: float = Field(..., gt=0, description="the error level whose n* is searched")
    ratio: float = Field(1.25, gt=1, description="stop when the bracket's ratio n_hi / n_lo is at most this")
    factor: float = Field(4.0, gt=1, description="ratio of the coarse geometric n grid (and of steps past its ends)")
    max_rounds: int = Field(12, gt=0, description="at most this many rounds (the coarse grid is round 1)")


def known_metrics(template: xr.Dataset, kind: StudyKind) -> list[str]:
    """The metrics a search of a study of ``kind`` with this store template can use: its float
    variables over every cell dim (``status`` aside), and the kind's derived ones
    (``StudyKind.derived``) whose variable it has."""
    own = [k for k, v in template.data_vars.items()
           if v.dtype.kind == "f" and set(kind.cell_dims) <= set(v.dims)]
    return own + [k for k, m in kind.derived.items() if m.needs in own]


def check(metric: str, template: xr.Dataset, kind: StudyKind) -> None:
    """ValueError with one line when a search by ``metric`` cannot run on this study: no n or no
    seed axis among the cell dims, or a metric it does not have."""
    cell_dims = kind.cell_dims
    if "n" not in cell_dims or "seed" not in cell_dims:
        raise ValueError(f"study kind {template.attrs.get('study', '?')!r} has no n axis to search "
                         f"(its cells are over {', '.join(cell_dims)})")
    known = known_metrics(template, kind)
    if metric not in known:
        raise ValueError(f"metric {metric!r} is not a metric of this study (known: {', '.join(known)})")


def metric_values(ds: xr.Dataset, metric: str, kind: StudyKind) -> xr.DataArray:
    """The metric per cell (dims ``kind.cell_dims``): the variable at done cells (NaN elsewhere),
    or the kind's derived metric of that name, averaged over its other dims (a NaN anywhere makes
    the cell NaN)."""
    cell_dims = kind.cell_dims
    if metric in kind.derived:
        da = kind.derived[metric].compute(ds)
    else:
        da = ds[metric].where(ds["status"] == Status.DONE)
    extra = [d for d in da.dims if d not in cell_dims]
    return da.mean(extra, skipna=False).transpose(*cell_dims).load()


def geometric_grid(lo: int, hi: int, ratio: float) -> list[int]:
    """Integers from ``lo`` to ``hi`` (both included), geometric with the fewest intervals whose
    ratio (hi/lo)^(1/m) is at most ``ratio``, rounded (duplicates after rounding dropped)."""
    if not (1 <= lo <= hi) or ratio <= 1:
        raise ValueError(f"geometric_grid needs 1 <= lo <= hi and ratio > 1, got {lo}, {hi}, {ratio}")
    if lo == hi:
        return [int(lo)]
    m = max(1, math.ceil(math.log(hi / lo) / math.log(ratio) - 1e-9))
    pts = {int(round(lo * (hi / lo) ** (k / m))) for k in range(m + 1)}
    return sorted(pts | {int(lo), int(hi)})


def bounds(n: Sequence[int], factor: float) -> tuple[int, int]:
    """(smallest, largest) n the search may add: one ``factor`` beyond the spec's range each way."""
    return max(1, int(round(min(n) / factor))), int(round(max(n) * factor))


@dataclass(frozen=True)
class Bracket:
    """The computed n around the crossing of one curve: ``lo`` < n* <= ``hi``. Left-censored:
    lo = nan (n* <= hi, the first n); right-censored: hi = inf (n* > lo, the last n)."""

    lo: float
    hi: float
    crossing: analysis.Crossing

    @property
    def ratio(self) -> float:
        return self.hi / self.lo if np.isfinite(self.lo) and np.isfinite(self.hi) else math.inf


def _finite(n, y) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y) & (y > 0)
    return n[ok], y[ok]


def bracket(n, mean, eps: float) -> Bracket | None:
    """The bracket of the curve ``mean`` (m(n) on increasing ``n``; NaN where not computed) at
    ``eps``; None when no value is finite."""
    n, y = _finite(n, mean)
    if n.size == 0:
        return None
    c = analysis.crossing(n, y, eps, direction="down", y_scale="log", rule="first", missing="skip")
    if c.censored == "left":
        return Bracket(math.nan, float(n[0]), c)
    if c.censored == "right":
        return Bracket(float(n[-1]), math.inf, c)
    return Bracket(float(n[n < c.bound].max()), c.bound, c)


def next_n(n, mean, eps: float, *, ratio: float, factor: float, n_bounds: tuple[int, int]) -> int | None:
    """The n to add to one curve next (see the module docstring), or None when its search is over."""
    b = bracket(n, mean, eps)
    if b is None:
        return None
    lo_bound, hi_bound = n_bounds
    if b.crossing.censored == "left":
        new = max(lo_bound, int(round(b.hi / factor)))
        return new if new < b.hi else None
    if b.crossing.censored == "right":
        new = min(hi_bound, int(round(b.lo * factor)))
        return new if new > b.lo else None
    if b.ratio <= ratio * (1 + 1e-12):
        return None
    mid = int(round(math.sqrt(b.lo * b.hi)))
    return mid if b.lo < mid < b.hi else None


def curves(da: xr.DataArray) -> list[tuple[dict, xr.DataArray]]:
    """(coordinates, the curve) for every combination of ``da``'s dims other than n and seed, in
    the order of its coordinates; coordinates as plain Python values."""
    rest = [d for d in da.dims if d not in ("n", "seed")]
    out = []
    for idx in itertools.product(*(da[d].values for d in rest)):
        coords = {d: v.item() if hasattr(v, "item") else v for d, v in zip(rest, idx)}
        out.append((coords, da.sel(coords)))
    return out


def plan(values: xr.DataArray, settings: SearchSettings, n_bounds: tuple[int, int]) -> list[dict]:
    """The cells of the next round: ``{**curve coordinates, "n": n}`` for each curve of ``values``
    (the metric per cell, dims with n and seed) whose search goes on."""
    out = []
    for coords, da in curves(values):
        mean = da.mean("seed")
        new = next_n(da.n.values, mean.values, settings.eps, ratio=settings.ratio, factor=settings.factor,
                     n_bounds=n_bounds)
        if new is not None:
            out.append({**coords, "n": new})
    return out


@dataclass(frozen=True)
class CurveResult:
    """One curve's n*: the seed mean's bracket (with its crossing) and each seed's crossing on the
    n computed for the curve."""

    coords: dict
    n: tuple[int, ...]
    bracket: Bracket
    seeds: tuple[analysis.Crossing, ...] = field(default=())

    @property
    def n_star(self) -> float:
        return self.bracket.crossing.value

    def interval(self) -> tuple[float, float]:
        """(smallest, largest) per-seed n*: a left-censored seed counts at its bound (n* <= it), a
        right-censored one makes the upper end inf."""
        v = [c.bound if c.censored == "left" else (math.inf if c.censored == "right" else c.value)
             for c in self.seeds if c.censored != "unknown"]
        return (min(v), max(v)) if v else (math.nan, math.nan)

    def as_dict(self) -> dict:
        lo, hi = self.interval()
        j = lambda v: None if not np.isfinite(v) else float(v)  # noqa: E731
        return {**self.coords, "n_star": j(self.n_star), "censored": self.bracket.crossing.censored,
                "bracket": [j(self.bracket.lo), j(self.bracket.hi)], "bracket_ratio": j(self.bracket.ratio),
                "seed_interval": [j(lo), j(hi)], "n": list(self.n)}


def summarize(values: xr.DataArray, eps: float) -> list[CurveResult]:
    """:class:`CurveResult` of every curve of ``values`` (the metric per cell, dims with n and seed)."""
    out = []
    for coords, da in curves(values):
        mean = da.mean("seed")
        b = bracket(da.n.values, mean.values, eps)
        if b is None:
            b = Bracket(math.nan, math.nan, analysis.UNKNOWN)
        keep = np.isfinite(mean.values)
        n = da.n.values[keep]
        seeds = tuple(analysis.crossing(n, da.sel(seed=s).values[keep], eps, missing="skip")
                      for s in da.seed.values) if keep.any() else ()
        out.append(CurveResult(coords, tuple(int(v) for v in n), b, seeds))
    return out


def exponents(results: Sequence[CurveResult]) -> list[tuple[dict, float, tuple[float, float]]]:
    """Per combination of the curve coordinates other than d: (coordinates, the exponent b of
    n*(eps, d) ~ c d^b of the seed means, (min, max) of the same fit per seed); nan where fewer
    than two d are not censored. Empty when the curves have no d."""
    if not results or "d" not in results[0].coords:
        return []
    groups: dict[tuple, list[CurveResult]] = {}
    for r in results:
        groups.setdefault(tuple((k, v) for k, v in r.coords.items() if k != "d"), []).append(r)
    out = []
    for key, rs in groups.items():
        d = [r.coords["d"] for r in rs]
        b = analysis.crossing_exponent(d, [r.bracket.crossing for r in rs])
        per_seed = [analysis.crossing_exponent(d, [r.seeds[s] for r in rs])
                    for s in range(min(len(r.seeds) for r in rs))]
        per_seed = [v for v in per_seed if np.isfinite(v)]
        band = (min(per_seed), max(per_seed)) if per_seed else (math.nan, math.nan)
        out.append((dict(key), b, band))
    return out


def _n(v: float) -> str:
    """A sample size: whole above 100, three significant digits below (an interpolated n*)."""
    return "nan" if not np.isfinite(v) else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")


def shared(results: Sequence[CurveResult]) -> dict:
    """The coordinates every curve has in common (left out of per-curve labels)."""
    if not results:
        return {}
    return {k: v for k, v in results[0].coords.items() if all(r.coords[k] == v for r in results)
            and (k != "d" or len(results) == 1)}


def label(coords: dict, common: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in coords.items() if k not in common)


def _seed_text(r: CurveResult) -> str:
    """'[lo, hi]' of the per-seed crossings, a censored end marked ('<=' bound, '>' bound)."""
    ends = [(c.bound, f"<={_n(c.bound)}") if c.censored == "left" else
            (math.inf, f">{_n(c.bound)}", c.bound) if c.censored == "right" else (c.value, _n(c.value))
            for c in r.seeds if c.censored != "unknown"]
    if not ends:
        return "[nan, nan]"
    lo = min(ends, key=lambda e: (e[0], e[-1] if len(e) == 3 else 0))
    hi = max(ends, key=lambda e: (e[0], e[-1] if len(e) == 3 else 0))
    return f"[{lo[1]}, {hi[1]}]"


def curve_line(r: CurveResult, ratio: float, common: dict | None = None) -> str:
    """One curve's line of the report (``common`` coordinates left out)."""
    c, b = r.bracket.crossing, r.bracket
    where = label(r.coords, common or {})
    if c.censored == "left":
        head, br = f"n* <= {_n(b.hi)} (reached at the smallest n searched)", ""
    elif c.censored == "right":
        head, br = f"n* > {_n(b.lo)} (not reached at the largest n searched)", ""
    elif c.censored == "unknown":
        head, br = "n* unknown (no computed value)", ""
    else:
        done = "" if b.ratio <= ratio * (1 + 1e-12) else " (not resolved: no integer inside)"
        head, br = f"n* = {_n(r.n_star)}", f"  bracket [{_n(b.lo)}, {_n(b.hi)}] (ratio {b.ratio:.3f}){done}"
    return f"  {where}: {head}{br}  seeds {_seed_text(r)}  ({len(r.n)} n computed)"


def report(results: Sequence[CurveResult], settings: SearchSettings, rounds: Sequence[int]) -> str:
    """The search's text report: n* per curve with its bracket and seed interval, the exponent of
    n* in d, and the cells computed per round."""
    lines = [f"n*(eps={settings.eps:g}): smallest n with mean over seeds of {settings.metric} <= eps "
             f"(averaged over its non-cell dims; log-log interpolation inside the final bracket; "
             f"target bracket ratio {settings.ratio:g}); seeds: [min, max] of the per-seed crossings "
             "('<=' reached at the smallest n, '>' not reached)"]
    common = shared(results)
    if common:
        lines[0] += f"; every curve at {label(common, {})}"
    lines += [curve_line(r, settings.ratio, common) for r in results]
    for coords, b, (lo, hi) in exponents(results):
        where = label(coords, common)
        fmt = lambda v: "nan" if not np.isfinite(v) else f"{v:.2f}"  # noqa: E731
        lines.append(f"exponent of n* in d{' (' + where + ')' if where else ''}: {fmt(b)} "
                     f"(least squares of log n* on log d; per-seed fits [{fmt(lo)}, {fmt(hi)}]; censored left out)")
    lines.append(f"cells computed: {sum(rounds)} in {len(rounds)} round(s) ({', '.join(str(c) for c in rounds)})")
    return "\n".join(lines)


def plot(values: xr.DataArray, results: Sequence[CurveResult], settings: SearchSettings, out: str) -> str:
    """The figure: left, each curve's seed mean against n (markers at the computed n, band min-max
    over seeds), eps, and the final bracket (shaded) with n* (dotted); right, n* against d with
    its bracket and the fitted power law. Log-log axes."""
    import matplotlib.ticker

    from dsclab.figures import figure, save, tight_layout

    has_d = bool(results) and "d" in results[0].coords
    common = shared(results)
    fig = figure(figsize=(12 if has_d else 6.5, 4.4))
    axes = fig.subplots(1, 2 if has_d else 1, squeeze=False)
    ax = axes[0][0]
    for i, ((coords, da), r) in enumerate(zip(curves(values), results)):
        color = f"C{i % 10}"
        keep = np.isfinite(da.mean("seed").values)
        n, da = da.n.values[keep], da.isel(n=np.flatnonzero(keep))
        ax.plot(n, da.mean("seed"), marker="o", ms=4, color=color, label=label(coords, common) or None)
        ax.fill_between(n, da.min("seed"), da.max("seed"), color=color, alpha=0.15)
        lo = r.bracket.lo if np.isfinite(r.bracket.lo) else r.bracket.hi
        hi = r.bracket.hi if np.isfinite(r.bracket.hi) else r.bracket.lo
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axvspan(lo, hi, color=color, alpha=0.25, lw=0)
        if np.isfinite(r.n_star):
            ax.axvline(r.n_star, color=color, ls=":", lw=1)
    ax.axhline(settings.eps, color="k", ls="--", lw=1, label=f"eps = {settings.eps:g}")
    ax.set(xscale="log", yscale="log", xlabel="n (training samples)",
           ylabel=f"{settings.metric} (mean over seeds)")
    ax.set_title("curves, eps and final brackets (shaded)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if has_d:
        ax = axes[0][1]
        for i, (coords, b, _) in enumerate(exponents(results)):
            rs = [r for r in results if all(r.coords[k] == v for k, v in coords.items())]
            d = np.array([r.coords["d"] for r in rs], dtype=np.float64)
            cens = np.array([r.bracket.crossing.censored for r in rs])
            ns = np.where(cens == "", [r.n_star for r in rs], np.nan)  # censored: left out, as in the fit
            lo = np.array([r.bracket.lo for r in rs])
            hi = np.array([r.bracket.hi for r in rs])
            ok = np.isfinite(ns)
            color, name = f"C{i % 10}", label(coords, common) or "n*"
            ax.errorbar(d[ok], ns[ok], yerr=[ns[ok] - lo[ok], hi[ok] - ns[ok]], fmt="o", capsize=4,
                        color=color, label=f"{name}: exponent {b:.2f}")
            for side, marker, at in (("left", "v", hi), ("right", "^", lo)):  # n* <= hi, n* > lo
                m = cens == side
                if m.any():
                    ax.plot(d[m], at[m], marker, mfc="none", color=color, label=f"{name}: censored ({side})")
            fit = analysis.fit_power_law(d, ns)
            if np.isfinite(fit.slope):
                x = np.geomspace(d[ok].min(), d[ok].max(), 50)
                ax.plot(x, fit(x), color=f"C{i % 10}", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="d", ylabel=f"n*(eps={settings.eps:g}, d)")
        d_all = sorted({r.coords["d"] for r in results})
        ax.set_xticks(d_all, [str(v) for v in d_all])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title("n* against d: final bracket (error bar) and least-squares power law", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    tight_layout(fig)
    return save(fig, out, dpi=110)
