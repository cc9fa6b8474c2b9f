"""The computational-gap text report: per drift and (n, k), seed means of the sample statistics and
integrated losses over done cells (variables: ``dsclab.studies.computational_gap.numerics``)."""
from __future__ import annotations

import math

import xarray as xr

from dsclab.study import Status


def report(ds: xr.Dataset) -> str:
    """Per drift and (n, k), seed means over done cells: fraction of samples with norm > 1/2
    (target 1/2), W1 of the norm law to the target's, fraction close to rank-one; then the
    integrated losses of the spectral drift and its gated version side by side."""
    done = ds["status"] == Status.DONE
    mean = lambda v: ds[v].where(done).mean("seed")
    frac, w1, r1, il = mean("frac_norm_above_half"), mean("w1_norm"), mean("frac_rank_one"), mean("integrated_loss")
    dv = mean("frac_diverged")
    drifts = [str(d) for d in ds.drift.values]
    lines = [f"computational gap '{ds.attrs.get('name', '')}': {int(done.sum())}/{done.size} cells done; "
             "seed means; targets: frac(norm>1/2) = 0.5, W1 = 0, frac rank-one = 0.5"]
    lines.append(f"{'n':>4} {'k':>3} {'drift':>16} {'frac(norm>1/2)':>15} {'W1(norm law)':>13} "
                 f"{'frac rank-one':>14} {'integrated loss':>16} {'diverged':>9}")
    skipped = []
    for n in ds.n.values:
        for k in ds.k.values:
            sel = {"n": n, "k": k}
            for d in drifts:
                f = float(frac.sel(sel).sel(drift=d))
                lines.append(f"{int(n):>4} {int(k):>3} {d:>16} {f:>15.3f} {float(w1.sel(sel).sel(drift=d)):>13.3f} "
                             f"{float(r1.sel(sel).sel(drift=d)):>14.3f} {float(il.sel(sel).sel(drift=d)):>16.3f} "
                             f"{float(dv.sel(sel).sel(drift=d)):>9.2f}")
            if "bayes" in drifts and float(ds.bayes_terms.sel(sel)) > ds.bayes_terms.attrs.get("max_terms", math.inf):
                skipped.append(f"(n={int(n)}, k={int(k)}: {float(ds.bayes_terms.sel(sel)):.3g} terms)")
    if skipped:
        lines.append(f"bayes not computed (NaN), enumeration above max_terms="
                     f"{ds.bayes_terms.attrs.get('max_terms'):.3g}: " + ", ".join(skipped))
    if "spectral" in drifts and "gated_spectral" in drifts:
        lines.append("integrated loss, spectral vs gated spectral (gate at n/2), and frac(norm>1/2) of each:")
        for n in ds.n.values:
            for k in ds.k.values:
                sel = {"n": n, "k": k}
                lines.append(f"  n={int(n)} k={int(k)}: integrated loss spectral {float(il.sel(sel).sel(drift='spectral')):.3f}"
                             f" | gated {float(il.sel(sel).sel(drift='gated_spectral')):.3f}"
                             f" ; frac(norm>1/2) {float(frac.sel(sel).sel(drift='spectral')):.2f}"
                             f" | {float(frac.sel(sel).sel(drift='gated_spectral')):.2f}")
    return "\n".join(lines)
