"""The far-component figure, per d: (left) P[far-component part > tau] against n at the smallest t,
for √ΔL2 and each Δq_δ (cell minus its control), with Clopper–Pearson bands and (1 - eta)^n;
(right) medians over seeds of the L2 error of p2's networks, its far component's share
``far_l2`` and the control's L2 error (the bulk error), per t, against n."""
from __future__ import annotations

import xarray as xr

from .report import done, far_parts, readings


def plot(ds: xr.Dataset, out: str) -> str:
    from dsclab.figures import figure, save, tight_layout

    dims = list(ds["d"].values)
    fig = figure(figsize=(11, 4.2 * len(dims)))
    axs = fig.subplots(len(dims), 2, squeeze=False)
    n = ds["n"].values.astype(float)
    eta = float(ds.attrs["eta"])
    t0 = float(ds["t"].values[0])
    both = {"p1", "p2"} <= set(ds["truth"].values)
    for i, d in enumerate(dims):
        left, right = axs[i]
        if both:
            ex = readings(ds, d, far_parts(ds, d)).sel(t=t0)
            for j, e in enumerate(ex.error.values):  # thinner lines on top: coinciding curves stay visible
                r = ex.sel(error=e)
                left.plot(n, r.p, "-", marker="os^v"[j % 4], color=f"C{j}", lw=4.0 - 1.2 * j, ms=9 - 2 * j,
                          alpha=0.85, label=str(e))
                left.fill_between(n, r.lo, r.hi, color=f"C{j}", alpha=0.15)
        left.plot(n, ds["p_no_far"], "k--", label="(1 - η)^n: P[no far sample]")
        left.axvline(1 / eta, color="0.6", lw=0.8, ls=":")
        left.set(xscale="log", ylim=(-0.03, 1.03), xlabel="n (samples)", ylabel="P[part > τ] over seeds",
                 title=f"d={d}, t={t0:g}: the far component's part (p2 minus control p1)")
        left.legend(fontsize=8)
        l2 = done(ds, "score_l2").sel(d=d).median("seed")
        far = done(ds, "far_l2").sel(d=d).median("seed")
        for j, t in enumerate(ds["t"].values):
            if "p2" in ds["truth"].values:
                right.plot(n, l2.sel(truth="p2", t=t), "o-", color=f"C{j}", label=f"L2[p2] t={t:g}")
                right.plot(n, far.sel(truth="p2", t=t), "s:", color=f"C{j}", label=f"far_l2[p2] t={t:g}")
            if "p1" in ds["truth"].values:
                right.plot(n, l2.sel(truth="p1", t=t), "^--", color=f"C{j}", alpha=0.7, label=f"L2[p1] (control) t={t:g}")
        right.axvline(1 / eta, color="0.6", lw=0.8, ls=":")
        right.set(xscale="log", yscale="log", xlabel="n (samples)", ylabel="median over seeds",
                  title=f"d={d}: L2 error, its far share, the control (dotted line: n = 1/η)")
        right.legend(fontsize=7, ncol=2)
    tight_layout(fig)
    return save(fig, out, dpi=110)
