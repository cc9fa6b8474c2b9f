"""The figure of the I-MMSE study (Figure 1 of Kong, Brekelmans & Ver Steeg 2023, per data law)."""
from __future__ import annotations

import xarray as xr

from dsclab.studies.immse.report import done, gap, seed_mean_se


def plot(ds: xr.Dataset, out: str) -> str:
    """Figure 1 of the paper, per data law (rows): MSE curves against alpha for each denoiser
    (seed 0; trained at every n), the Gaussian reference and the ensemble envelope (largest n),
    one panel per d; last column: the likelihood gap against n per d (mean over seeds, SE bars)."""
    from matplotlib import cm

    from dsclab.figures import figure, save, tight_layout

    ds = ds.load()
    nd, nr = ds.sizes["d"], ds.sizes["data"]
    fig = figure(figsize=(4.2 * (nd + 1), 3.4 * nr))
    axes = fig.subplots(nr, nd + 1, squeeze=False)
    alpha = ds.logsnr.values
    mmse = done(ds, "mmse").isel(seed=0)
    g, g_se = gap(ds).mean("seed"), seed_mean_se(done(ds, "nll_gap_se"))
    fixed = {"exact": ("k", "-"), "gaussian": ("C2", "--"), "mismatched": ("C3", "-.")}
    for i, data in enumerate(ds.data.values):
        for j, d in enumerate(ds.d.values):
            ax = axes[i, j]
            sel = mmse.sel(data=data, d=d)
            ax.axvspan(float(ds.logsnr_min.sel(data=data, d=d)), float(ds.logsnr_max.sel(data=data, d=d)),
                       color="0.93", zorder=0)
            ax.plot(alpha, ds.mmse_gauss.sel(data=data, d=d), color="0.5", lw=3, alpha=0.5, label="Gaussian reference")
            for k, (c, ls) in fixed.items():
                ax.plot(alpha, sel.sel(denoiser=k).isel(n=-1), color=c, ls=ls, label=k)
            for m, n in enumerate(ds.n.values):
                ax.plot(alpha, sel.sel(denoiser="trained", n=n), color=cm.viridis(m / max(1, len(ds.n) - 1)),
                        lw=1, label=f"trained n={int(n)}")
            ax.plot(alpha, sel.sel(denoiser="ensemble").isel(n=-1), color="C1", lw=2.5, ls=":",
                    label=f"ensemble (n={int(ds.n[-1])})")
            top = 1.3 * float(max(ds.mmse_gauss.sel(data=data, d=d).max(),
                                  sel.sel(denoiser=list(fixed)).max()))
            ax.set_ylim(-0.02 * top, top)  # badly overfitted networks (small n) leave the panel
            ax.set_title(f"{data}, d={int(d)}", fontsize=10)
            ax.set_xlabel("log-SNR α"), ax.set_ylabel("E‖ε − ε̂‖² / d")
            ax.grid(alpha=0.3)
        ax = axes[i, nd]
        for j, d in enumerate(ds.d.values):
            for k, ls, mk in [("trained", "-", "o"), ("ensemble", ":", "s")]:
                ax.errorbar(ds.n.values, g.sel(data=data, d=d, denoiser=k), yerr=g_se.sel(data=data, d=d, denoiser=k),
                            color=f"C{j}", ls=ls, marker=mk, capsize=2, label=f"{k}, d={int(d)}")
            ax.axhline(float(g.sel(data=data, d=d, denoiser="exact").mean()), color=f"C{j}", lw=0.8, ls="--")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xscale("log"), ax.set_xlabel("n (training samples)")
        ax.set_ylabel("nll_immse − nll_exact (nats/dim)")
        ax.set_title(f"{data}: likelihood gap (dashed: exact)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    axes[0, nd].legend(fontsize=7)
    fig.suptitle(f"{ds.attrs.get('name', '')}: MSE curves (seed 0; shaded: the log-SNR range the likelihood "
                 "integrates) and likelihood gaps (symlog)")
    tight_layout(fig)
    return save(fig, out, dpi=110)
