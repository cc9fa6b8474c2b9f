"""The two-scores figure: per d, P[error > tau] against n for the truth p_2 (left: the L2 error
and each quantile error at the smallest t, with Clopper–Pearson bands, and (1 - eta)^n) and the
fraction of wrong picks for both truths (right)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab.studies.two_scores.report import done, readings


def plot(ds: xr.Dataset, out: str) -> str:
    from dsclab.figures import figure, save, tight_layout

    dims = list(ds["d"].values)
    fig = figure(figsize=(11, 4.2 * len(dims)))
    axs = fig.subplots(len(dims), 2, squeeze=False)
    n = ds["n"].values.astype(float)
    eta = float(ds.attrs["eta"])
    t = float(ds["t"].values[0])
    for i, d in enumerate(dims):
        left, right = axs[i]
        if "p2" in ds["truth"].values:
            ex = readings(ds, "p2", d).sel(t=t)
            for j, e in enumerate(ex.error.values):  # thinner lines on top: coinciding curves stay visible
                r = ex.sel(error=e)
                left.plot(n, r.p, "-", marker="os^v"[j % 4], color=f"C{j}", lw=4.0 - 1.2 * j, ms=9 - 2 * j,
                          alpha=0.85, label=str(e))
                left.fill_between(n, r.lo, r.hi, color=f"C{j}", alpha=0.15)
            left.plot(n, ds["p_no_far"], "k--", label="(1 - η)^n: P[no far sample]")
        left.axvline(1 / eta, color="0.6", lw=0.8, ls=":")
        left.set(xscale="log", ylim=(-0.03, 1.03), xlabel="n (samples)", ylabel="P[error > τ] over seeds",
                 title=f"truth p2, d={d}, t={t:g}: ERM over {{s1, s2}}")
        left.legend(fontsize=8)
        for j, truth in enumerate(ds["truth"].values):
            picked = done(ds, "picked").sel(truth=truth, d=d)
            wrong = (picked != (1 if truth == "p1" else 2)).where(picked.notnull()).mean("seed")
            right.plot(n, wrong, "o-", color=f"C{j}", label=f"truth {truth}")
        right.plot(n, ds["p_no_far"], "k--", label="(1 - η)^n: P[no far sample]")
        right.axvline(1 / eta, color="0.6", lw=0.8, ls=":")
        right.set(xscale="log", ylim=(-0.03, 1.03), xlabel="n (samples)", ylabel="fraction of seeds",
                  title=f"wrong picks, d={d} (dotted: n = 1/η)")
        right.legend(fontsize=8)
    tight_layout(fig)
    return save(fig, out, dpi=110)
