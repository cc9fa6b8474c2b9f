"""How a ``denoiser_gap`` store reads: the text report and the figure."""
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


def plot(ds: xr.Dataset, out: str) -> str:
    """One column per data law. Top: the exact (solid) and linear (dashed) MSE against t, one
    colour per d, the closed form (G2) as dots. Bottom: the relative gap gap / (G2) with two
    standard errors. Returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ds["data"].values)
    fig, axs = plt.subplots(2, len(names), figsize=(4.5 * len(names), 6.4), squeeze=False, sharex=True)
    exact, linear, gap = (_done_mean(ds, v) for v in ("mse_exact", "mse_linear", "gap"))
    se = np.sqrt((ds["gap_se"].where(ds["status"] == Status.DONE) ** 2).mean("seed") / ds.sizes["seed"])
    t = ds["t"].values
    for j, data in enumerate(names):
        top, bottom = axs[0, j], axs[1, j]
        for i, d in enumerate(ds["d"].values):
            col, sel = f"C{i}", {"data": data, "d": d}
            closed = ds["mse_linear_closed"].sel(sel)
            top.plot(t, exact.sel(sel), "-", color=col, label=f"exact, d={d}")
            top.plot(t, linear.sel(sel), "--", color=col, label=f"linear, d={d}")
            top.plot(t, closed, ".", color=col)
            bottom.errorbar(t, gap.sel(sel) / closed, yerr=2 * se.sel(sel) / closed, color=col, marker="o",
                            ms=3, capsize=2, label=f"d={d}")
        top.set_title(str(data))
        top.set_ylabel("MSE per coordinate")
        top.legend(fontsize=7)
        bottom.axhline(0.0, color="0.6", lw=0.8)
        bottom.set_xscale("log")
        bottom.set_xlabel("OU time t")
        bottom.set_ylabel("gap / linear MSE (+- 2 se)")
        bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
