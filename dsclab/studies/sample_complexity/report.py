"""The sample-complexity study's text report and summary table (read an ``xr.Dataset``; no Prefect).

Values of cells that are not done (``dsclab.study.Status.DONE``) are masked out before any mean.
"""
from __future__ import annotations

import pandas as pd
import xarray as xr

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


def table(ds: xr.Dataset) -> pd.DataFrame:
    """The summary table of the Prefect UI: :func:`score_error_table` with its caption."""
    df = score_error_table(ds)
    df.attrs["caption"] = (f"score_l2 (mean over seeds and t, estimator {ds.estimator.values[0]}): "
                           "rows n, columns d")
    return df


def report(ds: xr.Dataset) -> str:
    """The text report: score_l2 and sliced_w2 (last nfe, per sampler) tables over (n, d), and the
    I-MMSE likelihood gap nll_immse - nll_exact (science.md §6)."""
    est = str(ds.estimator.values[0])
    lines = [f"score_l2 (mean over seeds and t; estimator {est}): rows n, columns d",
             score_error_table(ds).to_string(float_format=lambda v: f"{v:.4g}")]
    sw = _done(ds, "sliced_w2").isel(estimator=0, nfe=-1).mean("seed").load()
    for s in sw.sampler.values:
        df = sw.sel(sampler=s).to_pandas()
        df = df.T if sw.sel(sampler=s).dims[0] == "d" else df
        df.index.name, df.columns.name = "n", "d"
        lines += ["", f"sliced_w2 (mean over seeds; sampler {s}, nfe {int(ds.nfe[-1])}): rows n, columns d",
                  df.to_string(float_format=lambda v: f"{v:.4g}")]
    if "nll_immse" in ds and "nll_exact" in ds:
        gap = (_done(ds, "nll_immse") - ds["nll_exact"]).isel(estimator=0).mean("seed").load()
        df = gap.transpose("n", "d").to_pandas()
        lines += ["", "likelihood gap nll_immse - nll_exact (nats/dim, I-MMSE estimate; mean over seeds): rows n, columns d",
                  df.to_string(float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines)
