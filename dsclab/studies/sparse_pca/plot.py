"""The sparse-PCA figure: overlap against n / (k log d) per estimator, beside the classical sample
sizes (see :mod:`dsclab.studies.sparse_pca`)."""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from dsclab.studies.sparse_pca.report import done
from dsclab.studies.sparse_pca.spec import NETWORK, ORACLE

STYLE = {"pca": ("C0", "o"), "diagonal_thresholding": ("C1", "s"), "covariance_thresholding": ("C2", "^"),
         "exhaustive": ("C3", "D"), "network": ("k", "*"), "oracle": ("0.6", "")}


def plot(ds: xr.Dataset, out: str) -> str:
    """Overlap against n / (k log d), one panel per (k, beta) row and d column, a line per estimator
    (seed mean, min-max band over seeds), with the three classical sizes marked (IT dotted, poly
    dashed, spectral dash-dot) and the level 1/2."""
    from matplotlib.ticker import NullFormatter

    from dsclab.figures import figure, save, tight_layout

    ds = ds.load()
    ov = done(ds, "overlap")
    combos = [(k, b) for k in ds.k.values for b in ds.beta.values]
    nd = ds.sizes["d"]
    fig = figure(figsize=(4.3 * nd, 3.1 * len(combos)))
    axes = fig.subplots(len(combos), nd, squeeze=False, sharey=True)
    for r, (k, beta) in enumerate(combos):
        for c, d in enumerate(ds.d.values):
            ax = axes[r, c]
            scale = float(k) * math.log(float(d))
            x = ds.n.values / scale
            for est in ds.estimator.values:
                if est == ORACLE:
                    continue
                cur = ov.sel(d=d, k=k, beta=beta, estimator=est)
                if not np.isfinite(cur.values).any():
                    continue
                color, marker = STYLE.get(str(est), ("C5", "x"))
                ax.plot(x, cur.mean("seed"), color=color, marker=marker, ms=4, label=str(est),
                        lw=2 if est == NETWORK else 1.2)
                ax.fill_between(x, cur.min("seed"), cur.max("seed"), color=color, alpha=0.12)
            for name, ls in (("it", ":"), ("poly", "--"), ("spectral", "-.")):
                v = float(ds[f"n_{name}"].sel(d=d, k=k, beta=beta))
                if math.isfinite(v):
                    ax.axvline(v / scale, color="0.3", ls=ls, lw=1, label=f"n_{name}" if (r, c) == (0, 0) else None)
            ax.axhline(0.5, color="0.7", lw=0.8)
            ax.axhline(1 / math.sqrt(float(d)), color="0.85", lw=0.8)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # a short range labelled its minor ticks over each other
            ax.set_ylim(0, 1.02)
            ax.set_title(f"d={int(d)} k={int(k)} β={float(beta):g}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if r == len(combos) - 1:
                ax.set_xlabel("n / (k log d)")
            if c == 0:
                ax.set_ylabel("overlap |⟨û, u⟩|")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"{ds.attrs.get('name', '')}: overlap vs n/(k log d); band = min–max over {ds.sizes['seed']} seed{'s' if ds.sizes['seed'] != 1 else ''};\n"
                 "vertical: n_IT (dotted), n_poly (dashed), n_spectral (dash-dot); grey: 1/2 and 1/sqrt(d)",
                 fontsize=10)
    tight_layout(fig, rect=(0, 0.06, 1, 1))
    return save(fig, out, dpi=100, tight_bbox=True)
