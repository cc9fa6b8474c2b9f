"""Generic views of a store, for every study kind (read an ``xr.Dataset``; no Prefect): cell
status counts, failure reasons and a query table. A study's own report, table and plot are its
kind's (``dsclab.study.kind_of(ds).report`` / ``.table`` / ``.plot``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from dsclab.study import Status


def status_table(ds: xr.Dataset) -> str:
    """Counts of done / pending / failed cells along each cell axis."""
    st = ds["status"].load()

    def counts(s: xr.DataArray) -> dict[str, int]:
        return {"done": int((s == Status.DONE).sum()), "pending": int((s == Status.PENDING).sum()),
                "failed": int((s == Status.FAILED).sum())}

    lines = [f"cells: {st.size} | " + " | ".join(f"{k} {v}" for k, v in counts(st).items())]
    for dim in st.dims:
        rows = [{dim: v, **counts(st.sel({dim: v}))} for v in st[dim].values]
        lines += ["", pd.DataFrame(rows).to_string(index=False)]
    failed = failure_lines(ds)
    if failed:
        lines += ["", "failed cells (reason stored in the 'failure' variable):", *failed]
    return "\n".join(lines)


def failed_cells(ds: xr.Dataset) -> list[tuple[dict, str]]:
    """The failed cells as (cell index, reason stored in ``failure``), in store order."""
    st = ds["status"].load()
    reasons = ds["failure"].load() if "failure" in ds.variables else None
    out = []
    for pos in zip(*np.nonzero(st.values == Status.FAILED)):
        sel = dict(zip(st.dims, pos))
        index = {dim: st[dim].values[i].item() for dim, i in sel.items()}
        out.append((index, str(reasons.isel(sel).item()) if reasons is not None else ""))
    return out


def failure_lines(ds: xr.Dataset, limit: int = 20) -> list[str]:
    """One line per failed cell, 'dim=value ...: reason', at most ``limit`` (then a count)."""
    fails = failed_cells(ds)
    out = [" ".join(f"{k}={v}" for k, v in idx.items()) + f": {reason or '(no reason recorded)'}"
           for idx, reason in fails[:limit]]
    if len(fails) > limit:
        out.append(f"... and {len(fails) - limit} more")
    return [f"  {line}" for line in out]


def query_table(ds: xr.Dataset, var: str, sel: dict, mean: list[str]) -> str:
    if var not in ds.data_vars:
        raise KeyError(f"no variable {var!r} (have: {', '.join(ds.data_vars)})")
    da = ds[var]
    for dim, val in sel.items():
        if dim not in da.dims:
            raise KeyError(f"{var} has no dim {dim!r} (dims: {', '.join(da.dims)})")
        values = [c.item() for c in da[dim].values]
        try:
            v = type(values[0])(val) if da[dim].dtype.kind in "iuf" else val
        except ValueError:
            v = None
        if v not in values:
            raise KeyError(f"{dim}={val} is not a value of {dim} (values: {', '.join(map(str, values))})")
        da = da.sel({dim: [v]})
    for dim in mean:
        if dim not in da.dims:
            raise KeyError(f"--mean {dim}: {var} has no dim {dim!r} (dims: {', '.join(da.dims)})")
    if mean:
        da = da.mean(mean)
    return da.load().to_dataframe(name=var)[[var]].to_string(float_format=lambda v: f"{v:.5g}")
