"""The computational-gap text report: per drift and (n, k), seed means of the sample statistics and
integrated losses over done cells; MSE(t) of every drift with the thresholds marked; at the
paper's size (n = 350, k = 20, sparse_spike) ours against the published numbers (variables:
``dsclab.studies.computational_gap.numerics``)."""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from dsclab.study import Status

PAPER_NK = (350, 20)


def _mse_table(ds: xr.Dataset, mse: xr.DataArray, n, k) -> list[str]:
    """MSE(t) per drift (seed means) at (n, k); a row is marked where t first reaches a threshold."""
    drifts = [str(d) for d in ds.drift.values]
    marks = {name: float(ds[var].sel(n=n, k=k)) for name, var in
             (("Bayes 2k log(n/k)", "t_bayes"), ("spectral n/2", "t_spectral"), ("thresholding k^2 log(n/k^2)", "t_threshold"))}
    lines = [f"MSE(t), n={int(n)} k={int(k)} (seed means; constant {float(ds.mse_constant.sel(n=n, k=k)):.4f}; "
             + ", ".join(f"{a} = {v:.1f}" for a, v in marks.items()) + ")",
             f"{'t':>8} " + " ".join(f"{d[:14]:>14}" for d in drifts) + "  thresholds reached"]
    prev = -math.inf
    for t in ds.t.values:
        crossed = [a for a, v in marks.items() if v > 0 and prev < v <= t]
        row = " ".join(f"{float(mse.sel(n=n, k=k, t=t, drift=d)):>14.4f}" for d in drifts)
        lines.append(f"{float(t):>8g} {row}  {'<- ' + ', '.join(crossed) if crossed else ''}")
        prev = t
    return lines


def _published_lines(ds: xr.Dataset, done) -> list[str]:
    """Ours against the paper's published MSEs at the times both have (n = 350, k = 20)."""
    from dsclab.studies.computational_gap.spike.paper import published

    pub = published()
    sel = {"n": PAPER_NK[0], "k": PAPER_NK[1]}
    ok = done.sel(sel)
    ts = [t for t in ds.t.values if np.any(np.isclose(pub["t"], t))]
    lines = [f"ours vs published (Montanari-Vu 2025, {pub['source']}, read {pub['retrieved']}; "
             f"{pub['network'].shape[0]} seeds): mean [min-max over seeds]; in band = ours' seed mean within "
             "the published min-max"]
    for ours, theirs in (("mpnn", "network"), ("spectral_paper", "spectral")):
        if ours not in ds.drift.values or not ts:
            continue
        lines.append(f"{'t':>6} {ours + ' ours':>30} {theirs + ' published':>30} {'in band':>8}" + ("" if ours == "mpnn" else " (ours - published)"))
        for t in ts:
            v = ds.mse.sel(sel).sel(drift=ours, t=t).where(ok).values
            v = v[np.isfinite(v)]
            i = int(np.argmin(np.abs(pub["t"] - t)))
            col = pub[theirs][:, i] if pub[theirs].ndim == 2 else pub[theirs][i:i + 1]
            lo, hi, mu = float(col.min()), float(col.max()), float(col.mean())
            if v.size:
                m = float(v.mean())
                ours_s = f"{m:.4f} [{v.min():.4f}-{v.max():.4f}]"
                # one published run (spectral): the difference instead of a band
                band = ("yes" if lo <= m <= hi else "no") if col.size > 1 else f"{m - mu:+.4f}"
            else:
                ours_s, band = "-", "-"
            lines.append(f"{float(t):>6g} {ours_s:>30} {f'{mu:.4f} [{lo:.4f}-{hi:.4f}]':>30} {band:>8}")
    lines.append("published sample norms of the network: 0.0035-0.0101 for most seeds; one seed has 14 of 500 "
                 "(2.8%) at 0.96-1.0 (target: 0 or 1 w.p. 1/2)")
    return lines


def report(ds: xr.Dataset) -> str:
    """The report (:func:`_report_one`); on a budget axis (``mpnn.budget`` a list) that report per
    budget, then the collapse against the budget (:func:`budget_lines`)."""
    if "budget" not in ds.dims:
        return _report_one(ds)
    parts = []
    for b in ds.budget.values:
        sub = ds.sel(budget=b)
        # a new dict: sel shares the attributes of ds, which the report must leave as they are
        sub.attrs = {**ds.attrs, "mpnn_budget": float(b), "mpnn_steps": int(ds.mpnn_steps.sel(budget=b))}
        parts.append(f"=== mpnn budget {float(b):g} ===\n" + _report_one(sub))
    return "\n".join(parts + budget_lines(ds))


def _rule_se(p: float, q: float, m: int) -> float:
    """Standard error of the difference of two sample fractions p and q of m samples each."""
    return math.sqrt((p * (1 - p) + q * (1 - q)) / m)


def budget_lines(ds: xr.Dataset) -> list[str]:
    """The collapse against the mpnn's training budget, per (n, k) and seed over done cells: the
    mpnn's integrated loss over Bayes' and over spectral_paper's, its fractions of samples below
    norm 0.1 and near norm 1, and the trend, computed. A cell *collapses* when the mpnn's fraction
    below 0.1 exceeds Bayes' (same cell, same sampler noise) by more than twice the standard error
    of the difference, and *misses the spike* when its fraction near norm 1 is below Bayes' by more
    than that; the verdict reads each seed at its budget of smallest loss ratio to Bayes."""
    from dsclab.studies.computational_gap.layout import NEAR_ONE

    done = ds["status"] == Status.DONE
    m = int(ds.sizes["sample"])
    rule = ("collapse: frac(norm<0.1) of mpnn above Bayes' in the same cell by more than 2 standard errors "
            f"of the difference ({m} samples each); misses 1: its frac(near 1) below Bayes' by as much")
    lines = ["", "collapse against the mpnn's training budget (cells of a seed share every draw and differ "
             "only by the budget; ratios are integrated losses on common random numbers)",
             f"near norm 1: | ||x_hat|| - 1 | < {NEAR_ONE:g}; targets: loss ratio to bayes 1, frac(norm<0.1) 0.5, "
             f"frac(near 1) 0.5; {rule}"]
    verdicts, approaches = [], []
    for n in ds.n.values:
        for k in ds.k.values:
            lines.append(f"n={int(n)} k={int(k)}")
            lines.append(f"{'seed':>5} {'budget':>7} {'steps':>6} {'IL/bayes':>9} {'IL/spectral_paper':>18} "
                         f"{'frac<0.1':>9} {'near 1':>7} {'bayes frac<0.1':>15} {'bayes near 1':>13} {'collapse':>9} {'misses 1':>9}")
            for seed in ds.seed.values:
                rows = []
                for b in ds.budget.values:
                    sel = {"n": n, "k": k, "seed": seed, "budget": b}
                    if not bool(done.sel(sel)):
                        continue
                    g = lambda v, d=None: float(ds[v].sel(sel) if d is None else ds[v].sel(sel).sel(drift=d))  # noqa: E731
                    r = {"budget": float(b), "steps": int(ds.mpnn_steps.sel(budget=b)),
                         "rb": g("loss_ratio_bayes"), "rs": g("loss_ratio_spectral_paper"),
                         "low": g("frac_norm_below_tenth", "mpnn"), "near": g("frac_norm_near_one", "mpnn"),
                         "blow": g("frac_norm_below_tenth", "bayes") if "bayes" in ds.drift.values else math.nan,
                         "bnear": g("frac_norm_near_one", "bayes") if "bayes" in ds.drift.values else math.nan}
                    r["collapse"] = (r["low"] - r["blow"] > 2 * _rule_se(r["low"], r["blow"], m)
                                     if math.isfinite(r["blow"]) else None)
                    r["misses"] = (r["bnear"] - r["near"] > 2 * _rule_se(r["near"], r["bnear"], m)
                                   if math.isfinite(r["bnear"]) else None)
                    rows.append(r)
                    yn = lambda v: "-" if v is None else ("yes" if v else "no")  # noqa: E731
                    lines.append(f"{int(seed):>5} {r['budget']:>7g} {r['steps']:>6} {r['rb']:>9.3f} {r['rs']:>18.3f} "
                                 f"{r['low']:>9.3f} {r['near']:>7.3f} {r['blow']:>15.3f} {r['bnear']:>13.3f} "
                                 f"{yn(r['collapse']):>9} {yn(r['misses']):>9}")
                if len(rows) < 2 or not all(math.isfinite(r["rb"]) for r in rows):
                    continue
                falls = all(b2["rb"] < b1["rb"] for b1, b2 in zip(rows, rows[1:]))
                approaches.append(falls)
                best = min(rows, key=lambda r: r["rb"])
                worst = max(rows, key=lambda r: r["rb"])
                d_low = best["low"] - worst["low"]
                se = _rule_se(best["low"], worst["low"], m)
                trend = ("falls" if d_low < -2 * se else "rises" if d_low > 2 * se else "does not move beyond noise")
                arrow = lambda key, fmt: " -> ".join(format(r[key], fmt) for r in rows)  # noqa: E731
                lines.append(f"  seed {int(seed)}: budget {arrow('budget', 'g')}: IL/bayes {arrow('rb', '.3f')} "
                             f"({'falls' if falls else 'does not fall'} at every step), IL/spectral_paper "
                             f"{arrow('rs', '.3f')}, frac(norm<0.1) {arrow('low', '.3f')}, near 1 {arrow('near', '.3f')}")
                lines.append(f"  seed {int(seed)}: from the largest ratio to Bayes ({worst['rb']:.3f}, budget "
                             f"{worst['budget']:g}) to the smallest ({best['rb']:.3f}, budget {best['budget']:g}) "
                             f"frac(norm<0.1) {trend} ({worst['low']:.3f} -> {best['low']:.3f}, change {d_low:+.3f}, "
                             f"2 SE {2 * se:.3f}); at the smallest ratio: "
                             + ("collapsed" if best["collapse"] else "not collapsed" if best["collapse"] is not None
                                else "no Bayes to compare")
                             + f" (frac(norm<0.1) {best['low']:.3f} against Bayes' {best['blow']:.3f}), "
                             + ("misses the spike" if best["misses"] else "does not miss the spike")
                             + f" (near 1 {best['near']:.3f} against {best['bnear']:.3f})")
                prev, last = rows[-2], rows[-1]  # the last step of the budget: the trend nearest Bayes
                moves = []
                for key, what in (("low", "frac(norm<0.1)"), ("near", "near 1")):
                    dv, sv = last[key] - prev[key], 2 * _rule_se(last[key], prev[key], m)
                    word = "falls" if dv < -sv else "rises" if dv > sv else "does not move beyond noise"
                    moves.append(f"{what} {word} ({prev[key]:.3f} -> {last[key]:.3f}, change {dv:+.3f}, 2 SE {sv:.3f})")
                lines.append(f"  seed {int(seed)}: last step, budget {prev['budget']:g} -> {last['budget']:g} "
                             f"(IL/bayes {prev['rb']:.3f} -> {last['rb']:.3f}): " + "; ".join(moves))
                if best["collapse"] is not None:
                    verdicts.append(best["collapse"])
    if verdicts:
        if all(verdicts):
            v = "PERSISTS: every seed's samples collapse at its budget of smallest loss ratio to Bayes"
        elif not any(verdicts):
            v = "DOES NOT PERSIST: no seed's samples collapse at its budget of smallest loss ratio to Bayes"
        else:
            v = (f"MIXED: {sum(verdicts)} of {len(verdicts)} seeds' samples collapse at their budget of smallest "
                 "loss ratio to Bayes")
        lines.append(f"trend (computed): the loss ratio to Bayes falls with the budget at every step for "
                     f"{sum(approaches)} of {len(approaches)} seeds; as the loss approaches Bayes the collapse {v}")
    return lines


def _report_one(ds: xr.Dataset) -> str:
    """Per drift and (n, k), seed means over done cells: fraction of samples with norm > 1/2 and
    < 0.1, W1 of the norm law to the target's, fraction close to rank-one, integrated loss; the
    integrated losses of the spectral drift and its gated version; MSE(t) of every drift with the
    thresholds marked; ours against the published numbers at n = 350, k = 20."""
    done = ds["status"] == Status.DONE
    mean = lambda v: ds[v].where(done).mean("seed")
    frac, w1, r1, il = mean("frac_norm_above_half"), mean("w1_norm"), mean("frac_rank_one"), mean("integrated_loss")
    low = mean("frac_norm_below_tenth")
    dv = mean("frac_diverged")
    drifts = [str(d) for d in ds.drift.values]
    lines = [f"computational gap '{ds.attrs.get('name', '')}' ({ds.attrs.get('family', 'sparse_spike')}): "
             f"{int(done.sum())}/{done.size} cells done; seed means; targets: frac(norm>1/2) = 0.5, "
             "frac(norm<0.1) = 0.5, W1 = 0, frac rank-one = 0.5"]
    if "mpnn_budget" in ds.attrs:
        lines.append(f"mpnn: the paper's schedule at budget {ds.attrs['mpnn_budget']:g} "
                     f"({int(ds.attrs.get('mpnn_steps', 0))} steps; 1.0 = 60,000); best training loss "
                     f"{float(ds.mpnn_train_loss.where(done).mean()):.4f}, training "
                     f"{float(ds.mpnn_train_seconds.where(done).mean()):.0f} s per cell")
    lines.append(f"{'n':>4} {'k':>3} {'drift':>21} {'frac(norm>1/2)':>15} {'frac(norm<0.1)':>15} {'W1(norm law)':>13} "
                 f"{'frac rank-one':>14} {'integrated loss':>16} {'diverged':>9}")
    skipped = []
    for n in ds.n.values:
        for k in ds.k.values:
            sel = {"n": n, "k": k}
            for d in drifts:
                f = float(frac.sel(sel).sel(drift=d))
                lines.append(f"{int(n):>4} {int(k):>3} {d:>21} {f:>15.3f} {float(low.sel(sel).sel(drift=d)):>15.3f} "
                             f"{float(w1.sel(sel).sel(drift=d)):>13.3f} "
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
    mse = ds.mse.where(done).mean("seed")
    for n in ds.n.values:
        for k in ds.k.values:
            lines += _mse_table(ds, mse, n, k)
    if (PAPER_NK[0] in ds.n.values and PAPER_NK[1] in ds.k.values
            and ds.attrs.get("family", "sparse_spike") == "sparse_spike"):
        lines += _published_lines(ds, done)
    return "\n".join(lines)
