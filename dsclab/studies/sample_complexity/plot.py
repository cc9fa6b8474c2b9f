"""The sample-complexity study's figure (reads an ``xr.Dataset``; no Prefect)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab.exceedance import TAU_ATTR
from dsclab.studies.sample_complexity.report import SAMPLING, exceedances, floor_band
from dsclab.study import Status

MARKERS = "osD^v<>p"
STYLES = ["-", "--", ":", "-."]


def seeds_text(m: int) -> str:
    return f"{m} seed" if m == 1 else f"{m} seeds"


def dodge(n: np.ndarray, i: int, count: int, step: float = 0.035) -> np.ndarray:
    """``n`` shifted by a few per cent on the log axis for the i-th of ``count`` curves, so that
    curves with equal values (e.g. P = 0 or 1 at every d) stay visible side by side."""
    return n * np.exp(step * (i - (count - 1) / 2))


def n_axis(ax, n: np.ndarray) -> None:
    """A log n axis labelled at the study's n values only (no crowded minor labels on a short
    range; slanted when there are many)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(n))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(n) > 6:
        ax.tick_params(axis="x", labelrotation=40)
    ax.set_xlabel("n (training samples)")


def _band(ax, x, da: xr.DataArray, label: str, **kw):
    """Mean over seeds with a min-max band over seeds."""
    mean, lo, hi = (da.mean("seed"), da.min("seed"), da.max("seed"))
    kw.setdefault("marker", "o")
    (line,) = ax.plot(x, mean, label=label, **kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def plot(ds: xr.Dataset, out: str) -> str:
    """Top row, log-log: score L2 error, quantile error and sliced W2 against n, one colour per d,
    band min–max over seeds; the sliced-W2 panel draws each d's floor dotted. Bottom row: P[error >
    τ] over seeds against n for √L2 and the largest-δ quantile error (t-averaged; per d at its
    middle derived τ, or at every τ the reader gave with ``--tau``, one line style each:
    ``report.exceedances``; band the Clopper–Pearson 95% interval), and every sampling metric
    divided by its floor (mean + 2 sd of the metric between two exact samples:
    ``report.floor_band``). Curves of equal values are drawn a few per cent apart in n and with
    their own markers, so that none hides another."""
    from matplotlib.lines import Line2D

    from dsclab.figures import figure, save, tight_layout

    ex = exceedances(ds.load())
    bands = {v: floor_band(ds, v) for v in SAMPLING if f"{v}_floor" in ds}
    ds = ds.isel(estimator=0).load()
    ds = ds.where(ds["status"] == Status.DONE)
    fig = figure(figsize=(15, 9.6))
    grid = fig.subplots(2, 3)
    axes = grid[0]
    n = ds.n.values
    dims = list(ds.d.values)
    delta = float(ds.delta.values[-1])
    m_seed = ds.sizes["seed"]
    nfe = int(ds.nfe.values[-1])
    for i, d in enumerate(dims):
        sel, color, x = ds.sel(d=d), f"C{i}", dodge(n, i, len(dims))
        mk = MARKERS[i % len(MARKERS)]
        _band(axes[0], x, sel.score_l2.mean("t"), f"d={d}", color=color, marker=mk, mfc="none")
        _band(axes[1], x, sel.score_quantile.sel(delta=delta).mean("t"), f"d={d}", color=color, marker=mk, mfc="none")
        for k, s in enumerate(ds.sampler.values):
            _band(axes[2], x, sel.sliced_w2.sel(sampler=s).isel(nfe=-1), f"d={d}, {s}", color=color,
                  linestyle=STYLES[k % 4], marker=mk, mfc="none")
        if "sliced_w2" in bands:  # the floor: two exact samples, same size and directions (mean + 2 sd)
            axes[2].axhline(float(bands["sliced_w2"].sel(d=d)), color=color, lw=0.9, ls=(0, (1, 1)))
    titles = ["L2 score error (mean over t)", f"(1-δ)-quantile score error, δ={delta:g} (mean over t)",
              f"sampling error: sliced W2 at nfe={nfe}"]
    ylabels = ["E‖ŝ_t − s_t‖²", f"(1−δ)-quantile of ‖ŝ_t − s_t‖", "sliced W2 to q_t_min"]
    for ax, title, yl in zip(axes, titles, ylabels):
        n_axis(ax, n)
        ax.set_yscale("log"), ax.set_ylabel(yl)
        ax.set_title(title, fontsize=10), ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8), axes[1].legend(fontsize=8)
    handles = [Line2D([], [], color=f"C{i}", marker=MARKERS[i % len(MARKERS)], mfc="none", ls="", label=f"d={d}")
               for i, d in enumerate(dims)]
    handles += [Line2D([], [], color="k", ls=STYLES[k % 4], label=str(s)) for k, s in enumerate(ds.sampler.values)]
    if "sliced_w2" in bands:
        handles.append(Line2D([], [], color="k", lw=0.9, ls=(0, (1, 1)), label="floor (per d: two exact samples)"))
    axes[2].legend(handles=handles, fontsize=7)

    given = TAU_ATTR in ds.attrs  # the reader's levels: every one drawn; else each d's middle one
    errs = ["√L2", f"q δ={delta:g}"]
    for j, err in enumerate(errs):
        ax = grid[1, j]
        taus_seen = []
        for i, (d, e) in enumerate(ex.items()):
            taus = [float(t) for t in e.tau.values] if given else [float(e.tau.values[len(e.tau) // 2])]
            for k, tau in enumerate(taus):
                r = e.sel(error=err, tau=tau)
                x = dodge(e.n.values, i * len(taus) + k, len(ex) * len(taus))
                label = f"d={d}" + ("" if given else f", τ={tau:.3g}")
                (line,) = ax.plot(x, r.p, marker=MARKERS[i % len(MARKERS)], mfc="none", color=f"C{i}",
                                  ls=STYLES[k % 4], label=label if k == 0 else None)
                ax.fill_between(x, r.lo, r.hi, color=line.get_color(), alpha=0.12)
                if tau not in taus_seen:
                    taus_seen.append(tau)
        n_axis(ax, n)
        ax.set_ylim(-0.03, 1.03), ax.set_ylabel(f"P[{err} > τ]")
        ax.set_title(f"P[{err} > τ] over {seeds_text(m_seed)}\n(t-averaged; band: Clopper–Pearson 95%)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        extra = [Line2D([], [], color="k", ls=STYLES[k % 4], label=f"τ={t:.3g}") for k, t in enumerate(taus_seen)] \
            if given else []
        h, _ = ax.get_legend_handles_labels()
        ax.legend(handles=h + extra, fontsize=7)
    ax, s0 = grid[1, 2], ds.sampler.values[0]  # every sampling metric against its own floor
    for j, var in enumerate(bands):
        for i, d in enumerate(dims):
            ratio = ds[var].sel(d=d, sampler=s0).isel(nfe=-1).mean("seed") / float(bands[var].sel(d=d))
            ax.plot(dodge(n, i, len(dims)), ratio, color=f"C{i}", linestyle=STYLES[j % 4],
                    marker=MARKERS[i % len(MARKERS)], mfc="none")
    ax.axhline(1.0, color="k", lw=1.0)
    n_axis(ax, n)
    ax.set_yscale("log"), ax.set_ylabel("metric ÷ its floor")
    ax.set_title(f"sampling metric ÷ its floor ({s0}, nfe={nfe})\n"
                 "floor: mean + 2 sd between two exact samples; ≤ 1: at the floor", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=f"C{i}", marker=MARKERS[i % len(MARKERS)], mfc="none", ls="", label=f"d={d}")
               for i, d in enumerate(dims)]
    handles += [Line2D([], [], color="k", ls=STYLES[j % 4], label=var) for j, var in enumerate(bands)]
    handles.append(Line2D([], [], color="k", lw=1.0, label="floor"))
    ax.legend(handles=handles, fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(f"{ds.attrs.get('name', '')}: band = min–max over {seeds_text(m_seed)}")
    tight_layout(fig)
    return save(fig, out, dpi=110, tight_bbox=True)
