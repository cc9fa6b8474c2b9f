"""The ``denoiser_gap`` figure."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab.study import Status
from dsclab_example.denoiser_gap.report import _done_mean


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
