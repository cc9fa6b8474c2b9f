"""The sampler-convergence figure (readings: ``fits``)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab.studies.sampler_convergence.fits import done, has, kl_crossings, kl_fits, spec_of


def plot(ds: xr.Dataset, out: str) -> str:
    """Error against NFE (log-log), one panel per d, one line per sampler: one row per (target,
    score) with data (KL where exact; else sliced W2, seed mean with a min-max band and the
    floor dashed); last row: NFE to reach the acceptance KL level against d per sampler, one
    panel per exact target (hollow markers: power-law extrapolated)."""
    from dsclab.figures import figure, save, tight_layout

    ds = ds.load()
    spec = spec_of(ds)
    kl, sw = done(ds, "kl"), done(ds, "sliced_w2")
    rows = []
    for target in ds.target.values:
        for score in ds.score.values:
            if has(kl.sel(target=target, score=score)):
                rows.append((target, score, "kl"))
            elif has(sw.sel(target=target, score=score)):
                rows.append((target, score, "sliced_w2"))
    exact_targets = [t for t in ds.target.values if "exact" in ds.score.values and has(kl.sel(target=t, score="exact"))]
    nd = ds.sizes["d"]
    ncol = max(nd, len(exact_targets), 1)
    nrow = len(rows) + (1 if exact_targets else 0)
    fig = figure(figsize=(3.8 * ncol, 3.0 * max(nrow, 1)))
    axes = fig.subplots(max(nrow, 1), ncol, squeeze=False)
    nfe = ds.nfe.values
    colors = {s: f"C{i}" for i, s in enumerate(ds.sampler.values)}
    clip = nfe >= spec.analysis.fit_nfe[0] / 2  # the y range shows these NFE (small-NFE blow-ups go off the top)
    for r, (target, score, var) in enumerate(rows):
        for j, d in enumerate(ds.d.values):
            ax = axes[r, j]
            shown = []
            for s in ds.sampler.values:
                if var == "kl":
                    y = kl.sel(target=target, score=score, d=d, sampler=s).values
                    y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
                    ax.plot(nfe, y, marker="o", ms=3, color=colors[s], label=s)
                    shown.append(y[clip])
                    if "kl_reverse" in ds:  # KL(q_tmin || p_out), where exact: dotted, same colour
                        yr = done(ds, "kl_reverse").sel(target=target, score=score, d=d, sampler=s).values
                        yr = np.where(np.isfinite(yr) & (yr > 0), yr, np.nan)
                        if np.isfinite(yr).any():
                            ax.plot(nfe, yr, ls=":", lw=1, color=colors[s])
                else:
                    cur = sw.sel(target=target, score=score, d=d, sampler=s)
                    cur = cur.where(np.isfinite(cur))
                    ax.plot(nfe, cur.mean("seed"), marker="o", ms=3, color=colors[s], label=s)
                    ax.fill_between(nfe, cur.min("seed"), cur.max("seed"), color=colors[s], alpha=0.2)
                    shown.append(cur.max("seed").values[clip])
            vals = np.concatenate(shown) if shown else np.array([np.nan])
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if var == "sliced_w2":
                fl = float(done(ds, "sliced_w2_floor").sel(target=target, score=score, d=d).mean())
                ax.axhline(fl, color="k", ls="--", lw=0.8, label="MC floor")
            lo, hi = spec.analysis.fit_nfe
            if var == "kl":
                ax.axvspan(lo, hi, color="0.94", zorder=0)
            ax.set_xscale("log", base=2), ax.set_yscale("log")
            if vals.size:
                ax.set_ylim(0.3 * vals.min(), 10 * vals.max())
            ax.set_title(f"{target}, {score}, d={int(d)}", fontsize=9)
            ax.set_xlabel("NFE"), ax.set_ylabel("KL(p_out||q) exact (dotted: KL(q||p_out))" if var == "kl"
                                                else "sliced W2", fontsize=8)
            ax.grid(alpha=0.3, which="both")
        for j in range(nd, ncol):
            axes[r, j].axis("off")
    if exact_targets:
        level = spec.analysis.acceptance_level
        fits = kl_fits(ds, spec)
        cr = kl_crossings(ds, level, spec, fits)
        for j, target in enumerate(exact_targets):
            ax = axes[nrow - 1, j]
            for s in ds.sampler.values:
                c = [cr.sel(target=target, score="exact", sampler=s, d=d).item() for d in ds.d.values]
                dv = ds.d.values.astype(float)
                val = np.array([x.value if x.censored == "" else np.nan for x in c])
                ext = np.array([x.extrapolated for x in c])
                ax.plot(dv, val, marker="o", color=colors[s], label=s)
                ax.plot(dv, np.where(np.isfinite(ext), ext, np.nan), marker="o", mfc="none", ls=":", color=colors[s])
            ax.set_xscale("log", base=2), ax.set_yscale("log")
            ax.set_title(f"{target}, exact: NFE to reach KL={level:g}", fontsize=9)
            ax.set_xlabel("d"), ax.set_ylabel("NFE"), ax.grid(alpha=0.3, which="both")
        for j in range(len(exact_targets), ncol):
            axes[nrow - 1, j].axis("off")
    if rows:
        axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"{ds.attrs.get('name', '')}: error vs NFE (shaded: fit range; bands: min-max over seeds; "
                 "dashed: Monte Carlo floor)", fontsize=10)
    tight_layout(fig, rect=(0, 0, 1, 0.985))
    return save(fig, out, dpi=100)
