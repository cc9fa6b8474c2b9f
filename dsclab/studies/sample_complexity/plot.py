"""The sample-complexity study's figure (reads an ``xr.Dataset``; no Prefect)."""
from __future__ import annotations

import xarray as xr

from dsclab.study import Status


def _band(ax, x, da: xr.DataArray, label: str, **kw):
    """Mean over seeds with a min-max band over seeds."""
    mean, lo, hi = (da.mean("seed"), da.min("seed"), da.max("seed"))
    kw.setdefault("marker", "o")
    (line,) = ax.plot(x, mean, label=label, **kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def plot(ds: xr.Dataset, out: str) -> str:
    """Log-log: score L2 error, quantile error and sliced W2 against n, one line per d, band over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = ds.isel(estimator=0).load()
    ds = ds.where(ds["status"] == Status.DONE)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    n = ds.n.values
    delta = float(ds.delta.values[-1])
    for i, d in enumerate(ds.d.values):
        sel, color = ds.sel(d=d), f"C{i}"
        _band(axes[0], n, sel.score_l2.mean("t"), f"d={d}", color=color)
        _band(axes[1], n, sel.score_quantile.sel(delta=delta).mean("t"), f"d={d}", color=color)
        for k, s in enumerate(ds.sampler.values):
            _band(axes[2], n, sel.sliced_w2.sel(sampler=s).isel(nfe=-1), f"d={d}, {s}", color=color,
                  linestyle=["-", "--", ":", "-."][k % 4], marker="os^v"[k % 4])
    titles = ["L2 score error (mean over t)", f"(1-δ)-quantile score error, δ={delta:g} (mean over t)",
              f"sampling error: sliced W2 at nfe={int(ds.nfe.values[-1])}"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("n (training samples)")
        ax.set_title(title, fontsize=10), ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8), axes[2].legend(fontsize=7)
    fig.suptitle(f"{ds.attrs.get('name', '')}: band = min–max over {ds.sizes['seed']} seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
