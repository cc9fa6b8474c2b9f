"""How a ``denoiser_gap`` store reads: the text report (the figure is :mod:`.plot`)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab.study import Status


def _done_mean(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``var`` averaged over the done seeds (NaN where no seed is done)."""
    return ds[var].where(ds["status"] == Status.DONE).mean("seed")


def report(ds: xr.Dataset) -> str:
    """Per data law and d: the two MSEs and their gap (G3) against t, mean over done seeds, with
    the closed-form linear MSE (G2) beside the measured one."""
    done = int((ds["status"] == Status.DONE).sum())
    lines = [f"denoiser gap study {ds.attrs.get('name', '')}: {done}/{ds['status'].size} cells done",
             "MSE per coordinate of the exact (Tweedie) and best linear denoisers; gap = linear - exact "
             "(zero for Gaussian data)"]
    exact, linear, gap = (_done_mean(ds, v) for v in ("mse_exact", "mse_linear", "gap"))
    se = np.sqrt((ds["gap_se"].where(ds["status"] == Status.DONE) ** 2).mean("seed") / ds.sizes["seed"])
    for data in ds["data"].values:
        for d in ds["d"].values:
            lines.append(f"\n{data}, d={d}")
            lines.append(f"{'t':>8} {'exact':>10} {'linear':>10} {'closed':>10} {'gap':>11} {'gap se':>9}")
            for t in ds["t"].values:
                sel = {"data": data, "d": d, "t": t}
                lines.append(f"{t:8.3g} {float(exact.sel(sel)):10.4g} {float(linear.sel(sel)):10.4g} "
                             f"{float(ds['mse_linear_closed'].sel(sel)):10.4g} {float(gap.sel(sel)):11.3e} "
                             f"{float(se.sel(sel)):9.2e}")
    return "\n".join(lines)
