"""The memorization study's figure (reads an ``xr.Dataset``; no Prefect)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab.studies.memorization.report import curves


def _band(ax, x, da: xr.DataArray, label: str, **kw):
    """Mean over seeds with a min-max band over seeds."""
    kw.setdefault("marker", "o")
    (line,) = ax.plot(x, da.mean("seed"), label=label, **kw)
    ax.fill_between(x, da.min("seed"), da.max("seed"), color=line.get_color(), alpha=0.15)


def _images(ax, rows: np.ndarray, shape, title: str, lo: float, hi: float):
    """A strip of images (rows of ``rows``) in one axes."""
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    rows = rows[np.isfinite(rows).all(axis=1)]
    if not len(rows) or not shape:
        return
    H, W = shape
    strip = np.concatenate([np.pad(r.reshape(H, W), 1, constant_values=lo) for r in rows], axis=1)
    ax.imshow(strip, cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")


def _tick_labels(n) -> list[str]:
    """Labels of the n ticks on a log axis, from the largest down: a tick closer than a factor 1.6
    to the last labelled one stays unlabelled (512 and 719 would overlap)."""
    shown, last = set(), None
    for v in sorted(n, reverse=True):
        if last is None or last / v >= 1.6:
            shown.add(v)
            last = v
    return [str(int(v)) if v in shown else "" for v in n]


def plot(ds: xr.Dataset, out: str) -> str:
    """Top row, against n (log), one colour per d, band min–max over seeds: the memorization fraction
    of network a's samples (solid; dashed: held-out test points, the false-positive reference); the
    two networks' similarity (solid) and each one's similarity to its nearest training row (dashed),
    with 0.9 dotted; the held-out NLL in bits/dim (solid; dashed: the moment-matched Gaussian; log scale);
    sliced W2 of the samples to the test part (solid; dotted: its floor, training vs test rows).
    Below: at the largest d, seed 0, the kept samples of network a at the smallest and the largest
    n, their nearest training rows, and network b's samples from the same noise."""
    import matplotlib.ticker

    from dsclab.figures import figure, save

    c = curves(ds)
    fig = figure(figsize=(17, 9.5))
    gs = fig.add_gridspec(2, 4, height_ratios=[1.0, 0.95], hspace=0.35, wspace=0.3)
    axes = [fig.add_subplot(gs[0, i]) for i in range(4)]
    n = c.n.values
    for i, d in enumerate(c.d.values):
        s, col = c.sel(d=d), f"C{i}"
        _band(axes[0], n, s.memorized, f"d={d} samples (a)", color=col)
        _band(axes[0], n, s.memorized_test, f"d={d} test points", color=col, ls="--", marker="x")
        _band(axes[1], n, s.similarity_ab, f"d={d} a vs b", color=col)
        _band(axes[1], n, s.train_similarity, f"d={d} to nearest train", color=col, ls="--", marker="x")
        _band(axes[2], n, s.nll_bpd, f"d={d} network", color=col)
        _band(axes[2], n, s.nll_gauss_bpd, f"d={d} Gaussian", color=col, ls="--", marker="x")
        _band(axes[3], n, s.sliced_w2, f"d={d} samples", color=col)
        axes[3].plot(n, s.sliced_w2_floor.mean("seed"), color=col, ls=":", label=f"d={d} floor")
    axes[1].axhline(0.9, color="gray", ls=":", lw=1)
    axes[0].set_ylim(-0.03, 1.03)
    axes[2].set_yscale("log")  # a Gaussian fitted to a few rows is off the scale of the networks
    for ax, y, title in zip(axes, ["fraction memorized", "cosine similarity (centred)", "bits per dimension",
                                   "sliced W2"],
                            ["Memorization (Gu et al.: r1 < r2/3)", "Generalization (Kadkhodaie et al.)",
                             "Held-out NLL (I-MMSE)", "Samples to the test part"]):
        ax.set_xscale("log")
        ax.set_xticks(n, _tick_labels(n), fontsize=7)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("n (training rows per network)")
        ax.set_ylabel(y)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    shape = [int(v) for v in np.atleast_1d(ds.attrs.get("image_shape", []))]
    if ds.sizes.get("sample", 0) and len(shape) == 2:
        d = int(c.d.values[-1])
        seed = int(ds.seed.values[0])
        lo, hi = float(np.nanmin(ds.samples_nearest.values)), float(np.nanmax(ds.samples_nearest.values))
        inner = gs[1, :].subgridspec(3, 2, wspace=0.08, hspace=0.35)
        for j, nn in enumerate([int(n[0]), int(n[-1])]):
            cell = ds.sel(d=d, n=nn, seed=seed).load()
            _images(fig.add_subplot(inner[0, j]), cell.samples.sel(network="a").values, shape,
                    f"d={d}, n={nn}, seed {seed}: samples of network a", lo, hi)
            _images(fig.add_subplot(inner[1, j]), cell.samples_nearest.values, shape,
                    "their nearest training rows", lo, hi)
            _images(fig.add_subplot(inner[2, j]), cell.samples.sel(network="b").values, shape,
                    "network b (disjoint rows), same initial noise and path", lo, hi)
    fig.suptitle(f"{ds.attrs.get('name', '')}: memorization against n — {ds.attrs.get('data', '')}", fontsize=11)
    return save(fig, out, dpi=90)
