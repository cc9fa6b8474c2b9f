"""The sample-complexity study's figure (reads an ``xr.Dataset``; no Prefect)."""
from __future__ import annotations

import xarray as xr

from dsclab.studies.sample_complexity.report import SAMPLING, exceedances, floor_band
from dsclab.study import Status


def _band(ax, x, da: xr.DataArray, label: str, **kw):
    """Mean over seeds with a min-max band over seeds."""
    mean, lo, hi = (da.mean("seed"), da.min("seed"), da.max("seed"))
    kw.setdefault("marker", "o")
    (line,) = ax.plot(x, mean, label=label, **kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def plot(ds: xr.Dataset, out: str) -> str:
    """Top row, log-log: score L2 error, quantile error and sliced W2 against n, one line per d, band
    min–max over seeds. Bottom row: P[error > τ] over seeds against n for √L2 and the largest-δ
    quantile error side by side (t-averaged, per d at its middle τ: ``report.exceedances``; band
    the Clopper–Pearson 95% interval), and every sampling metric divided by its floor (mean + 2 sd
    of the metric between two exact samples: ``report.floor_band``); the sliced-W2 panel draws its
    floor per d dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = exceedances(ds.load())
    bands = {v: floor_band(ds, v) for v in SAMPLING if f"{v}_floor" in ds}
    ds = ds.isel(estimator=0).load()
    ds = ds.where(ds["status"] == Status.DONE)
    fig, grid = plt.subplots(2, 3, figsize=(15, 8.4))
    axes = grid[0]
    n = ds.n.values
    delta = float(ds.delta.values[-1])
    for i, d in enumerate(ds.d.values):
        sel, color = ds.sel(d=d), f"C{i}"
        _band(axes[0], n, sel.score_l2.mean("t"), f"d={d}", color=color)
        _band(axes[1], n, sel.score_quantile.sel(delta=delta).mean("t"), f"d={d}", color=color)
        for k, s in enumerate(ds.sampler.values):
            _band(axes[2], n, sel.sliced_w2.sel(sampler=s).isel(nfe=-1), f"d={d}, {s}", color=color,
                  linestyle=["-", "--", ":", "-."][k % 4], marker="os^v"[k % 4])
        if "sliced_w2" in bands:  # the floor: two exact samples, same size and directions (mean + 2 sd)
            axes[2].axhline(float(bands["sliced_w2"].sel(d=d)), color=color, lw=0.8, ls=(0, (1, 1)))
    titles = ["L2 score error (mean over t)", f"(1-δ)-quantile score error, δ={delta:g} (mean over t)",
              f"sampling error: sliced W2 at nfe={int(ds.nfe.values[-1])}"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("n (training samples)")
        ax.set_title(title, fontsize=10), ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8), axes[2].legend(fontsize=7)
    errs = ["√L2", f"q δ={delta:g}"]
    for j, err in enumerate(errs):
        ax = grid[1, j]
        for i, (d, e) in enumerate(ex.items()):
            tau = float(e.tau.values[len(e.tau) // 2])
            r = e.sel(error=err, tau=tau)
            (line,) = ax.plot(e.n.values, r.p, marker="o", color=f"C{i}", label=f"d={d}, τ={tau:.3g}")
            ax.fill_between(e.n.values, r.lo, r.hi, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log"), ax.set_ylim(-0.03, 1.03), ax.set_xlabel("n (training samples)")
        ax.set_title(f"P[{err} > τ] over {ds.sizes['seed']} seeds (t-averaged; Clopper–Pearson 95%)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3), ax.legend(fontsize=7)
    ax, s0 = grid[1, 2], ds.sampler.values[0]  # every sampling metric against its own floor
    for j, var in enumerate(bands):
        for i, d in enumerate(ds.d.values):
            ratio = ds[var].sel(d=d, sampler=s0).isel(nfe=-1).mean("seed") / float(bands[var].sel(d=d))
            ax.plot(n, ratio, color=f"C{i}", linestyle=["-", "--", ":", "-."][j % 4], marker="os^v"[j % 4],
                    label=f"{var}, d={d}")
    ax.axhline(1.0, color="k", lw=1.0, label="floor (mean + 2 sd of two exact samples)")
    ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("n (training samples)")
    ax.set_title(f"sampling metric ÷ its floor ({s0}, nfe={int(ds.nfe.values[-1])}; ≤ 1: at floor)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3), ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{ds.attrs.get('name', '')}: band = min–max over {ds.sizes['seed']} seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
