"""The sample-complexity study's text report and summary table (read an ``xr.Dataset``; no Prefect).

Values of cells that are not done (``dsclab.study.Status.DONE``) are masked out before any mean.
"""
from __future__ import annotations

import pandas as pd
import xarray as xr

from dsclab import analysis
from dsclab import exceedance as exc
from dsclab.study import Status


def _done(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``var`` with cells that are not done masked out."""
    return ds[var].where(ds["status"] == Status.DONE)


def score_error_table(ds: xr.Dataset) -> pd.DataFrame:
    """Mean over seeds and t of ``score_l2`` (first estimator), rows n, columns d."""
    da = _done(ds, "score_l2").isel(estimator=0).mean(["seed", "t"]).load()
    df = da.to_pandas()
    df = df.T if da.dims[0] == "d" else df
    df.index.name, df.columns.name = "n", "d"
    return df


def exceedances(ds: xr.Dataset, levels: int = 3) -> dict[int, xr.Dataset]:
    """Per d: P[error > tau] over seeds (``analysis.exceedance``, Clopper–Pearson) along n of the
    t-averaged score errors in norm units, (mean_t score_l2)^(1/2) and mean_t of each quantile
    error (``exceedance.score_error_norms``), first estimator; tau: the reader's
    (``exceedance.taus_for``), else ``levels`` levels derived from that d's errors."""
    out = {}
    for d in ds.d.values:
        sub = ds.sel(d=d).isel(estimator=0)
        errs = exc.score_error_norms(_done(sub, "score_l2").mean("t"), _done(sub, "score_quantile").mean("t"))
        taus = exc.taus_for(ds, errs, levels=levels)
        if taus:
            out[int(d)] = analysis.exceedance(errs.reset_coords(drop=True), taus)
    return out


def exceedance_lines(ds: xr.Dataset) -> list[str]:
    """Per d and tau: P[error > tau] against n (rows), one column per error."""
    how = "the reader's (--tau)" if exc.TAU_ATTR in ds.attrs else "geometric levels between the 10th and 90th percentiles"
    lines = [f"P[score error > τ] over the {ds.sizes['seed']} seeds against n ({exc.INTERVAL_NOTE} [lo, hi]; t-averaged "
             f"errors in norm units, estimator {ds.estimator.values[0]}; τ per d: {how})"]
    for d, e in exceedances(ds).items():
        for tau in e.tau.values:
            lines += [f"  d={d}, τ={float(tau):.3g}:"] + exc.table_lines(e.sel(tau=tau).transpose("error", "n"))
    return lines


SAMPLING = ("sliced_w2", "w2", "mmd", "kl_gauss")
"""The sampling metrics, each with its floor ``<metric>_floor`` (two exact samples of q_t_min)."""


def floor_band(ds: xr.Dataset, var: str) -> xr.DataArray:
    """Per d, the upper edge of ``var``'s floor: mean + 2 sd of ``<var>_floor`` over the done cells
    of that d (the floor's law does not depend on n or the estimator: two exact samples of the
    same size). A value at or below it cannot be told from a perfect sampler by this metric."""
    f = _done(ds, f"{var}_floor").stack(cell=[d for d in ds[f"{var}_floor"].dims if d != "d"])
    return (f.mean("cell") + 2 * f.std("cell")).load()


def at_floor(ds: xr.Dataset, var: str, value: xr.DataArray) -> xr.DataArray:
    """Whether ``value`` (a value of ``var``, over d and other dims) is within its floor's spread."""
    return value <= floor_band(ds, var)


def marked_table(ds: xr.Dataset, var: str, value: xr.DataArray) -> str:
    """``value`` over (n, d) as text, each entry at its floor marked ``*``."""
    flag = at_floor(ds, var, value)
    df = value.transpose("n", "d").to_pandas()
    marks = flag.transpose("n", "d").to_pandas()
    text = df.apply(lambda col: [f"{v:.4g}{'*' if m else ' '}" for v, m in zip(col, marks[col.name])])
    text.index.name, text.columns.name = "n", "d"
    return text.to_string()


def floor_lines(ds: xr.Dataset) -> list[str]:
    """Per sampling metric: its floor per d (mean ± sd) and how many (sampler, nfe, n) seed-means
    sit at it."""
    lines = ["sampling metrics against their floors (the metric between two independent exact samples of "
             "q_t_min of the same size, same projections; * = within mean + 2 sd of the floor):"]
    for var in SAMPLING:
        if f"{var}_floor" not in ds:
            continue
        f = _done(ds, f"{var}_floor")
        mean = f.mean([d for d in f.dims if d != "d"]).load()
        sd = f.std([d for d in f.dims if d != "d"]).load()
        vals = _done(ds, var).isel(estimator=0).mean("seed").load()
        hit = at_floor(ds, var, vals)
        per_d = ", ".join(f"d={int(d)}: {float(mean.sel(d=d)):.3g} ± {float(sd.sel(d=d)):.2g} "
                          f"({int(hit.sel(d=d).sum())}/{int(vals.sel(d=d).notnull().sum())} at floor)"
                          for d in ds.d.values)
        lines.append(f"  {var}_floor {per_d}")
    return lines


def table(ds: xr.Dataset) -> pd.DataFrame:
    """The summary table of the Prefect UI: :func:`score_error_table` with its caption."""
    df = score_error_table(ds)
    df.attrs["caption"] = (f"score_l2 (mean over seeds and t, estimator {ds.estimator.values[0]}): "
                           "rows n, columns d")
    return df


def report(ds: xr.Dataset) -> str:
    """The text report: score_l2 over (n, d), P[score error > tau] against n per d
    (:func:`exceedance_lines`), sliced_w2 (last nfe, per sampler) over (n, d) with the values at
    their floor marked, every sampling metric's floor (:func:`floor_lines`), and the I-MMSE
    likelihood gap nll_immse - nll_exact (science.md §6)."""
    est = str(ds.estimator.values[0])
    lines = [f"score_l2 (mean over seeds and t; estimator {est}): rows n, columns d",
             score_error_table(ds).to_string(float_format=lambda v: f"{v:.4g}"), ""] + exceedance_lines(ds)
    sw = _done(ds, "sliced_w2").isel(estimator=0, nfe=-1).mean("seed").load()
    for s in sw.sampler.values:
        lines += ["", f"sliced_w2 (mean over seeds; sampler {s}, nfe {int(ds.nfe[-1])}; * at its floor): rows n, "
                      "columns d", marked_table(ds, "sliced_w2", sw.sel(sampler=s))]
    lines += [""] + floor_lines(ds)
    if "nll_immse" in ds and "nll_exact" in ds:
        gap = (_done(ds, "nll_immse") - ds["nll_exact"]).isel(estimator=0).mean("seed").load()
        df = gap.transpose("n", "d").to_pandas()
        lines += ["", "likelihood gap nll_immse - nll_exact (nats/dim, I-MMSE estimate; mean over seeds): rows n, columns d",
                  df.to_string(float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines)
