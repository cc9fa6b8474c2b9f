"""The computational-gap figure: MSE(t) per drift against the thresholds, and the law of the
sample norms (variables: ``dsclab.studies.computational_gap.numerics``)."""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from dsclab.study import Status


def plot(ds: xr.Dataset, out: str) -> str:
    """MSE(t) per drift for each (n, k) (first row of panels) with vertical lines at the Bayes
    2k log(n/k), spectral n/2 and thresholding k^2 log(n/k^2) thresholds and the constant's MSE
    (1/2 - 1/(4n) for sparse_spike); at n = 350, k = 20 the published network's min-max band over
    its 6 seeds and the published spectral curve; histograms of sample norms per drift (second
    row). Writes ``out``; returns it."""
    from dsclab.figures import figure, save, tight_layout

    if "budget" in ds.dims:
        return _plot_budget(ds, out)
    done = ds["status"] == Status.DONE
    pairs = [(n, k) for n in ds.n.values for k in ds.k.values]
    fig = figure(figsize=(3.6 * len(pairs), 6.5))
    axes = fig.subplots(2, len(pairs), squeeze=False)
    mse = ds.mse.where(done).mean("seed")
    for j, (n, k) in enumerate(pairs):
        ax = axes[0, j]
        for d in ds.drift.values:
            ax.plot(ds.t.values, mse.sel(n=n, k=k, drift=d).values, marker=".", label=str(d))
        for var, style in (("t_bayes", ":"), ("t_spectral", "--"), ("t_threshold", "-.")):
            v = float(ds[var].sel(n=n, k=k))
            if math.isfinite(v) and v > 0:
                ax.axvline(v, color="k", ls=style, lw=0.8, label=var)
        ax.axhline(float(ds.mse_constant.sel(n=n, k=k)), color="grey", lw=0.8, label="constant E||x - E x||^2")
        if (int(n), int(k)) == (350, 20) and ds.attrs.get("family", "sparse_spike") == "sparse_spike":
            from dsclab.studies.computational_gap.spike.paper import published

            pub = published()
            ax.fill_between(pub["t"], pub["network"].min(0), pub["network"].max(0), color="C0", alpha=0.25,
                            label="published network (min-max, 6 seeds)")
            ax.plot(pub["t"], pub["spectral"], color="k", lw=0.8, ls=(0, (1, 1)), label="published spectral")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.5)  # an undertrained network (or t beyond its training range T) can go far above
        ax.set_title(f"n={int(n)} k={int(k)}", fontsize=9)
        ax.set_xlabel("SL time t")
        if j == 0:
            ax.set_ylabel("MSE(t)")
        ax2 = axes[1, j]
        bins = np.linspace(0, 1.2, 25)
        for d in ds.drift.values:
            v = ds.sample_norm.sel(n=n, k=k, drift=d).where(done.sel(n=n, k=k)).values.ravel()
            v = v[np.isfinite(v)]
            if v.size:
                ax2.hist(np.clip(v, 0, 1.2), bins=bins, histtype="step", label=str(d))
        ax2.set_xlabel("||x_hat||_F")
        if j == 0:
            ax2.set_ylabel("samples")
    axes[0, 0].legend(fontsize=6)
    axes[1, 0].legend(fontsize=6)
    tight_layout(fig)
    return save(fig, out, dpi=80)


def _plot_budget(ds: xr.Dataset, out: str) -> str:
    """On a budget axis, per (n, k): MSE(t) of the baselines (identical across budgets: common random
    numbers) and of the mpnn per budget (seed means); sample-norm histograms of Bayes and of the mpnn
    per budget; and the collapse against the loss: the mpnn's fractions of samples below norm 0.1
    (filled) and near norm 1 (open) against its integrated loss over Bayes', one line per seed
    through its budgets, Bayes' own fractions as horizontal lines."""
    done = ds["status"] == Status.DONE
    pairs = [(n, k) for n in ds.n.values for k in ds.k.values]
    from matplotlib.ticker import NullFormatter

    from dsclab.figures import figure, save, tight_layout

    fig = figure(figsize=(5.5 * len(pairs), 10))
    axes = fig.subplots(3, len(pairs), squeeze=False)
    mse = ds.mse.where(done).mean("seed")
    budgets = [float(b) for b in ds.budget.values]
    for j, (n, k) in enumerate(pairs):
        ax = axes[0, j]
        for d in ds.drift.values:
            if d == "mpnn":
                for i, b in enumerate(budgets):
                    ax.plot(ds.t.values, mse.sel(n=n, k=k, drift=d, budget=b).values, marker=".", color=f"C{3 + i}",
                            label=f"mpnn, budget {b:g}")
            else:
                ax.plot(ds.t.values, mse.sel(n=n, k=k, drift=d).mean("budget").values, marker=".", label=str(d))
        for var, style in (("t_bayes", ":"), ("t_spectral", "--")):
            v = float(ds[var].sel(n=n, k=k))
            if math.isfinite(v) and v > 0:
                ax.axvline(v, color="k", ls=style, lw=0.8, label=var)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
        ax.set_ylim(0, 1.5)
        ax.set_title(f"n={int(n)} k={int(k)}", fontsize=9)
        ax.set_xlabel("SL time t")
        ax.set_ylabel("MSE(t)")
        ax2 = axes[1, j]
        bins = np.linspace(0, 1.2, 25)
        series = [("bayes", None)] if "bayes" in ds.drift.values else []
        for i, (label, b) in enumerate(series + [("mpnn", b) for b in budgets]):
            sel = ds.sample_norm.sel(n=n, k=k, drift=label)
            sel = sel.sel(budget=budgets[0] if b is None else b)
            ok = done.sel(n=n, k=k, budget=budgets[0] if b is None else b)
            v = sel.where(ok).values.ravel()
            v = v[np.isfinite(v)]
            if v.size:
                ax2.hist(np.clip(v, 0, 1.2), bins=bins, histtype="step",  # colours as in the MSE panel
                         color="C0" if b is None else f"C{3 + budgets.index(b)}",
                         label=label if b is None else f"mpnn, budget {b:g}")
        ax2.set_xlabel("||x_hat||_F (all seeds)")
        ax2.set_ylabel("samples")
        ax3 = axes[2, j]
        for i, seed in enumerate(ds.seed.values):
            sel = {"n": n, "k": k, "seed": seed}
            ok = done.sel(sel).values
            x = ds.loss_ratio_bayes.sel(sel).values[ok]
            low = ds.frac_norm_below_tenth.sel(sel).sel(drift="mpnn").values[ok]
            near = ds.frac_norm_near_one.sel(sel).sel(drift="mpnn").values[ok]
            ax3.plot(x, low, marker="o", color=f"C{i}", label=f"seed {int(seed)}: frac(norm<0.1)")
            ax3.plot(x, near, marker="o", mfc="none", ls="--", color=f"C{i}", label=f"seed {int(seed)}: frac(near 1)")
            for xb, yb, b in zip(x, low, np.asarray(budgets)[ok]):
                ax3.annotate(f"{b:g}", (xb, yb), fontsize=6, xytext=(2, 2), textcoords="offset points")
        if "bayes" in ds.drift.values:
            bl = ds.frac_norm_below_tenth.sel(n=n, k=k, drift="bayes").where(done.sel(n=n, k=k)).mean()
            bn = ds.frac_norm_near_one.sel(n=n, k=k, drift="bayes").where(done.sel(n=n, k=k)).mean()
            ax3.axhline(float(bl), color="k", lw=0.8, label="bayes frac(norm<0.1)")
            ax3.axhline(float(bn), color="k", lw=0.8, ls="--", label="bayes frac(near 1)")
        ax3.set_xlabel("integrated loss of mpnn / Bayes' (labels: budget)")
        ax3.set_ylabel("fraction of samples")
        ax3.set_ylim(-0.02, 1.02)
    for r in range(3):
        axes[r, 0].legend(fontsize=6)
    tight_layout(fig)
    return save(fig, out, dpi=80)
