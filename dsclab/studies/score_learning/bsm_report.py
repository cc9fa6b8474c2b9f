"""The BSM section of the score-learning report (science.md §4b): each bootstrap estimator against
DSM on paired cells, per t, with bands over seeds at equal n, and the closing note's lines on it.

Targets above t_c (``dsclab.studies.score_learning.bootstrap_targets``): ``bsm`` / ``bsm_oracle`` the pure bootstrap
target e^{Delta} h_hat(t', X_{t'}); ``bsm_rb`` / ``bsm_rb_oracle`` the Rao–Blackwellised
T_RB = E[T_dsm | X_t, X_{t'}] (h_hat exact). The *closed form* is that of Gaussian data with the
data law's mean and covariance, exact h_hat, at the evaluation's step t' = t / r; for the law
x_0 = ±a e_1 + N(0, I_d) it is exact in coordinates 2..d and a Gaussian approximation in
coordinate 1.

:func:`section` returns its lines and the facts :func:`closing_lines` reads: ``ratio`` maps
(estimator, data mode, model, variable) to the per-seed ratio estimator/dsm ``(seed, n, t)`` of
``target_var``, ``target_var_1`` and ``score_l2``; ``closed`` maps an estimator to its closed-form
target-variance ratio ``(t,)``; ``sampling`` maps (estimator, data mode, model, metric) to the
values ``(seed, n)`` of ``sliced_w2`` and ``kl_gauss``.
"""
from __future__ import annotations

import json

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from dsclab import distributions
from dsclab.lazy import deferred

from .readout import band_text, done, fmt, ratio_block, ratio_table

if TYPE_CHECKING:
    import torch

    from dsclab.studies.score_learning import bootstrap_targets as bt
else:  # imported on first use: the kind's module imports this one when a spec is read (dsclab.lazy)
    torch = deferred("torch", globals())
    bt = deferred("dsclab.studies.score_learning.bootstrap_targets", globals(), "bt")

SAMPLING = ("sliced_w2", "kl_gauss")


def _spec(ds: xr.Dataset) -> dict:
    return json.loads(ds.attrs["spec"])


def _above(ds: xr.Dataset) -> list[float]:
    """The evaluation times above t_c (where the bootstrap targets are used)."""
    t_c = float(_spec(ds)["bsm"]["t_c"])
    return [float(t) for t in ds.t.values if t > t_c]


def law_eigenvalues(ds: xr.Dataset) -> np.ndarray:
    """Eigenvalues of the data law's covariance (at the store's first d)."""
    spec = _spec(ds)
    law = distributions.make(spec["distribution"]["name"], int(ds.d.values[0]), **spec["distribution"]["params"])
    return torch.linalg.eigvalsh(law.cov()).numpy()


def closed_form_ratio(ds: xr.Dataset, estimator: str) -> xr.DataArray:
    """Closed-form conditional target variance of ``estimator`` over DSM's per t
    (:func:`dsclab.studies.score_learning.bootstrap_targets.target_variance_ratio`; the spec's t_c and mix, t' = t / r)."""
    spec, r, lam = _spec(ds), float(ds.attrs["grid_ratio"]), law_eigenvalues(ds)
    b = spec["bsm"]
    vals = [bt.target_variance_ratio(estimator, lam, float(t), float(t) / r, t_c=float(b["t_c"]), mix=float(b["mix"]))
            for t in ds.t.values]
    return xr.DataArray(np.array(vals), dims="t", coords={"t": ds.t.values})


def condition_lines(ds: xr.Dataset) -> list[str]:
    """The closed-form condition (Gaussian data, exact h) under which the pure bootstrap target has
    the lower conditional variance, against the study's grid step Delta = t (1 - 1/r), and the
    closed-form ratios of both targets."""
    spec, r, lam = _spec(ds), float(ds.attrs["grid_ratio"]), law_eigenvalues(ds)
    mix, t_c = float(spec["bsm"]["mix"]), float(spec["bsm"]["t_c"])
    lams = sorted({1.0, round(float(lam.max()), 6)})
    lines = ["closed form (Gaussian data with per-coordinate variance lam, exact h): the pure target has the lower "
             "conditional variance iff",
             "  (e^{2 Delta} - 1) sigma_t^2 < e^{-2t} lam v_{t'},  v_{t'} = e^{-2t'} lam + sigma_{t'}^2  "
             "(lam = 1: (e^{2 Delta} - 1)(e^{2t} - 1) < 1),",
             "  so at high noise only for steps Delta < ~ lam e^{-2t} / 2: the window shrinks exponentially in t "
             "and widens with the data scale lam.",
             "  T_RB's is never higher: V_rb / V_dsm = (e^{-2t'} lam / v_{t'}) (sigma_Delta^2 / sigma_t^2) <= 1 per "
             "coordinate, and mixing in DSM at weight mix adds mix^2 (V_dsm - V_rb).",
             f"  this grid: Delta = t (1 - 1/r), r = {r:.4f}; Dmax(t, lam) = the largest step at which the pure target "
             f"wins; ratios = closed-form target variance / DSM's for N(mean, Cov) of the data law "
             f"(d={int(ds.d.values[0])}, mix={mix:g}, 1 at t <= t_c={t_c:g}):",
             "  " + f"{'t':>6} {'Delta':>8} " + " ".join(f"{'Dmax lam=' + format(v, '.3g'):>14}" for v in lams)
             + f" {'pure ratio':>12} {'RB ratio':>12}"]
    pure, rb = closed_form_ratio(ds, "bsm"), closed_form_ratio(ds, "bsm_rb")
    for t in ds.t.values:
        t = float(t)
        lines.append("  " + f"{t:6.3g} {t * (1 - 1 / r):8.3g} "
                     + " ".join(f"{bt.bsm_wins_max_step(v, t):14.3g}" for v in lams)
                     + f" {float(pure.sel(t=t)):12.3g} {float(rb.sel(t=t)):12.3g}")
    return lines


def sampling_lines(ds: xr.Dataset) -> tuple[list[str], dict]:
    """Per data mode and model: the sampling errors of each trained score, rows n, columns
    estimator, 'median [min, max]' over seeds, beside the floors of two exact draws."""
    ev, d = _spec(ds)["evaluation"], ds.d.values[0]
    floors = ", ".join(f"{v} {fmt(float(done(ds, v + '_floor').median()))}" for v in SAMPLING)
    lines = [f"sampling error of samples drawn with each trained score ({ev['sampler']}, nfe={ev['nfe']}, "
             f"{ev['n_samples']} samples from exact draws of q_T) against q_t_min; median [min, max] over seeds; "
             f"floors (an exact draw): {floors}"]
    facts = {}
    for mode in ds.data_mode.values:
        for m in ds.model.values:
            sub = {"d": d, "data_mode": mode, "model": m}
            for var in SAMPLING:
                da = done(ds, var).sel(sub)
                lines.append(f"  {var} [data {mode}; model {m}; d={int(d)}]: rows n, columns estimator")
                lines.append("    " + f"{'n':>6} " + " ".join(f"{e:>22}" for e in ds.estimator.values))
                for n in ds.n.values:
                    lines.append("    " + f"{int(n):>6} " + " ".join(
                        f"{band_text(da.sel(n=n, estimator=e)):>22}" for e in ds.estimator.values))
                for e in ds.estimator.values:
                    facts[(e, mode, m, var)] = da.sel(estimator=e)
    return lines, facts


def section(ds: xr.Dataset) -> tuple[list[str], dict]:
    """Per bootstrap estimator, data mode and model: rows n, columns t, the paired ratios to DSM of
    the target variance (with the closed form below it), its coordinate 1 and the score error;
    then the closed-form condition and the sampling errors."""
    b = _spec(ds)["bsm"]
    lines = [f"== BSM against DSM (t_c={b['t_c']}, lag={b['lag']}, mix={b['mix']}; paired cells; ratio estimator/dsm, "
             "median [min, max] over seeds at each n; ratios at t <= t_c compare two DSM-trained regions) ==",
             "   targets above t_c: bsm, bsm_oracle: the pure bootstrap e^{Delta} h_hat(t', X_{t'}); bsm_rb, "
             "bsm_rb_oracle: the Rao-Blackwellised T_RB = -(X_t - e^{-Delta} X_{t'})/sigma_t^2 + e^{-Delta} "
             "(sigma_{t'}^2/sigma_t^2) h_hat(t', X_{t'})",
             f"   h_hat: the network ({'stop-gradient' if int(b['lag']) == 0 else 'a copy refreshed every ' + str(b['lag']) + ' steps'}) "
             "or, for the oracles, the exact score (the variance effect without the feedback of a learned h_hat); "
             "'closed' = closed-form target-variance ratio (table below)"]
    facts: dict = {"ratio": {}, "closed": {}}
    d = ds.d.values[0]
    for est in [e for e in ds.estimator.values if e != "dsm"]:
        closed = facts["closed"][est] = closed_form_ratio(ds, est)
        for mode in ds.data_mode.values:
            for m in ds.model.values:
                fixed = {"d": d, "data_mode": mode, "model": m}
                lines.append(f"[{est}/dsm; data {mode}; model {m}; d={int(d)}]")
                for var in ("target_var", "target_var_1", "score_l2"):
                    block, r = ratio_block(ds, var, "estimator", est, "dsm", fixed)
                    if var == "target_var":
                        block.append("    " + f"{'closed':>6} " + " ".join(f"{fmt(float(v)):>20}" for v in closed.values))
                    lines += [f"  {var}:"] + block
                    facts["ratio"][(est, mode, m, var)] = r
    lines += [""] + condition_lines(ds)
    sl, facts["sampling"] = sampling_lines(ds)
    lines += [""] + sl
    return lines, facts


def _per_t(med: xr.DataArray, ts: list[float]) -> str:
    return ", ".join(f"t={t:g}: {float(med.sel(t=t)):.3g}" for t in ts)


def _rb_lines(ds: xr.Dataset, facts: dict, above: list[float]) -> list[str]:
    """Where the Rao–Blackwellised estimators beat DSM in score error (per n and t, by how much),
    their target-variance ratios beside the closed form, and whether bsm_rb_oracle's measured
    target variance is below DSM's at every t above t_c."""
    lines = []
    ests = list(ds.estimator.values)
    for mode in ds.data_mode.values:
        for m in ds.model.values:
            for est in [e for e in ("bsm_rb", "bsm_rb_oracle") if e in ests]:
                r = facts["ratio"][(est, mode, m, "score_l2")]
                med = r.median("seed")
                points = [(n, t) for n in ds.n.values for t in above]
                wins = [(n, t) for n, t in points if float(med.sel(n=n, t=t)) < 1]
                parts = [f"n={int(n)} t={t:g}: {band_text(r.sel(n=n, t=t))}"
                         + (" (every seed)" if float(r.sel(n=n, t=t).max()) < 1 else "") for n, t in wins]
                rest = [float(med.sel(n=n, t=t)) for n, t in points if (n, t) not in wins]
                lines.append(f"- {est} score_l2 / DSM's [{mode}, {m}] (median [min, max] over seeds): below 1 at "
                             + ("; ".join(parts) if parts else "no (n, t) above t_c")
                             + (f"; at the other {len(rest)} (n, t) above t_c {min(rest):.3g} to {max(rest):.3g}" if rest else ""))
                tv = facts["ratio"][(est, mode, m, "target_var")]
                worst = tv.max(["seed", "n"])
                below = [t for t in above if float(worst.sel(t=t)) < 1]
                lines.append(f"  its target variance / DSM's (median over n, seeds): {_per_t(tv.median(['seed', 'n']), above)}; "
                             f"closed form (exact h): {_per_t(facts['closed'][est], above)}; "
                             + ("below DSM at every t above t_c (every seed and n)" if len(below) == len(above)
                                else f"below DSM (every seed and n) only at t in {below}"))
    return lines


def closing_lines(ds: xr.Dataset, facts: dict) -> list[str]:
    """The closing note's lines on BSM: per estimator the measured ratios above t_c, the
    Rao–Blackwellised estimator against DSM and the closed form, the sampling errors, and what
    science.md §4b predicts."""
    above = _above(ds)
    if not above:
        return ["- BSM: no evaluation time above t_c"]
    lines = []
    for (est, mode, m, var), r in facts["ratio"].items():
        if var not in ("target_var", "score_l2"):
            continue
        med = r.median(["seed", "n"])
        win = [t for t in above if float(med.sel(t=t)) < 1]
        lose = [t for t in above if float(med.sel(t=t)) >= 1]
        lines.append(f"- {est}/dsm {var} [{mode}, {m}] above t_c (median over n, seeds): {_per_t(med, above)} "
                     f"-> lower at t in {win or 'none'}, higher at {lose or 'none'}")
    lines += _rb_lines(ds, facts, above)
    for mode in ds.data_mode.values:
        for m in ds.model.values:
            for var in SAMPLING:
                den = facts["sampling"][("dsm", mode, m, var)]
                parts = []
                for est in [e for e in ds.estimator.values if e != "dsm"]:
                    q = (facts["sampling"][(est, mode, m, var)] / den).median("seed")
                    parts.append(f"{est} {' / '.join(fmt(float(q.sel(n=n))) for n in ds.n.values)}")
                lines.append(f"- sampling {var} [{mode}, {m}], ratio to dsm at n = "
                             f"{' / '.join(str(int(n)) for n in ds.n.values)} (median over seeds): " + "; ".join(parts))
    lines.append("  predicted (science.md §4b): bootstrapping from learned lower-noise scores improves the score at high "
                 "noise. Only the Rao-Blackwellised target can: T_RB = E[T_dsm | X_t, X_{t'}] has at most DSM's "
                 "conditional variance at every t (closed form above) and damps an error of h_hat by "
                 "e^{-Delta} sigma_{t'}^2/sigma_t^2 < 1. The pure target e^{Delta} h(t', X_{t'}) is lower only while "
                 "(e^{2 Delta} - 1) sigma_t^2 < e^{-2t} lam v_{t'}, i.e. just above t_c and at low noise, and amplifies "
                 "an error of h_hat by e^{Delta} > 1 per link: without mixing in DSM it can diverge (small n, small t_c). "
                 "A lower target variance lowers the score error only as far as the error is the noise of the "
                 "regression target: the score_l2 ratio beside the target-variance ratio shows how much of it is; "
                 "with a learned h_hat the damped error of h_hat at t' (gain e^{-Delta} sigma_{t'}^2/sigma_t^2 (1 - mix)) "
                 "adds to it.")
    return lines


# ------------------------------------------------------------------------------------------
# The regime map (issue 28): each bootstrap estimator / DSM over (n, d, t above t_c)
# ------------------------------------------------------------------------------------------


def _learned(ds: xr.Dataset) -> list[str]:
    """The store's estimators that bootstrap from a learned h_hat (``BootstrapEstimator.learned``)."""
    from dsclab.studies.score_learning.bootstrap import BOOTSTRAP_ESTIMATORS
    return [str(e) for e in ds.estimator.values if BOOTSTRAP_ESTIMATORS[str(e)].learned]


def _schedule_text(est: str) -> str:
    from dsclab.studies.score_learning.bootstrap import BOOTSTRAP_ESTIMATORS
    e = BOOTSTRAP_ESTIMATORS[est]
    target = "T_RB" if e.rao_blackwell else "the pure target" if e.bootstrap else "DSM"
    h = ("" if not e.bootstrap else ", h_hat the exact score" if e.oracle else
         {"Joint": ", h_hat the network itself (trained at the same time)",
          "DSMThenFrozen": f", h_hat the network after the first {getattr(e.schedule, 'dsm_share', 0):g} of the steps "
                           "(DSM), frozen", "Bands": ", bands in increasing t, h_hat the network frozen after the bands below"}
         [type(e.schedule).__name__])
    return f"{est}: {target}{h}"


def regime_wins(r: xr.DataArray) -> xr.DataArray:
    """Where an estimator beats DSM for every seed: the per-seed ratio ``r`` (seed, ...) is below 1
    at every seed (a NaN seed is not a win)."""
    return (r < 1).all("seed") & r.notnull().all("seed")


def regime_section(ds: xr.Dataset) -> tuple[list[str], dict]:
    """Per data mode, model and d: for each bootstrap estimator, rows n, columns t above t_c, the
    paired score-error ratio to DSM, 'median [min, max]' over seeds ('*': below 1 for every seed),
    the learned-h_hat estimators first and the oracle's beside them; the training seconds per
    estimator. Facts: ``ratio`` (estimator, data mode, model) -> per-seed ratio (seed, d, n, t)
    above t_c; ``seconds`` estimator -> median training seconds."""
    above = _above(ds)
    b = _spec(ds)["bsm"]
    ests = [str(e) for e in ds.estimator.values if e != "dsm"]
    S = ds.sizes["seed"]
    lines = [f"== regime map: score_l2 of each bootstrap estimator / DSM's at every (n, d, t > t_c={b['t_c']}), paired "
             f"cells, equal steps; median [min, max] over {S} seed{'s' if S != 1 else ''}; '*' = below 1 for every seed =="]
    lines += ["   " + _schedule_text(e) for e in ests]
    secs = done(ds, "train_seconds")
    facts: dict = {"ratio": {}, "seconds": {}, "above": above}
    dsm_s = float(secs.sel(estimator="dsm").median())
    for e in ["dsm"] + ests:
        facts["seconds"][e] = float(secs.sel(estimator=e).median())
    lines.append("   training seconds per cell (median over cells; ratio to dsm): " + "; ".join(
        f"{e} {fmt(v)} ({fmt(v / dsm_s)}x)" for e, v in facts["seconds"].items()))
    if not above:
        return lines + ["   no evaluation time above t_c"], facts
    order = [e for e in ests if e in _learned(ds)] + [e for e in ests if e not in _learned(ds)]
    for mode in ds.data_mode.values:
        for m in ds.model.values:
            for e in order:
                r = ratio_table(ds, "score_l2", "estimator", e, "dsm", {"data_mode": mode, "model": m}).sel(t=above)
                facts["ratio"][(e, str(mode), str(m))] = r
            for d in ds.d.values:
                lines.append(f"[d={int(d)}; data {mode}; model {m}] rows n, columns t")
                for e in order:
                    r = facts["ratio"][(e, str(mode), str(m))].sel(d=d)
                    win = regime_wins(r)
                    lines.append(f"  {e}/dsm" + ("" if e in _learned(ds) else " (oracle)"))
                    lines.append("    " + f"{'n':>6} " + " ".join(f"{'t=' + format(t, '.3g'):>21}" for t in above))
                    for n in ds.n.values:
                        lines.append("    " + f"{int(n):>6} " + " ".join(
                            f"{band_text(r.sel(n=n, t=t)) + ('*' if bool(win.sel(n=n, t=t)) else ' '):>21}"
                            for t in above))
    return lines, facts


def _region_text(win: xr.DataArray) -> str:
    """The (d, n, t) where ``win`` holds, grouped by d then n: 'd=8: n=64 (t=0.45, 0.6); ...'."""
    parts = []
    for d in win.d.values:
        ns = []
        for n in win.n.values:
            ts = [float(t) for t in win.t.values if bool(win.sel(d=d, n=n, t=t))]
            if ts:
                ns.append(f"n={int(n)} (t={', '.join(format(t, 'g') for t in ts)})")
        if ns:
            parts.append(f"d={int(d)}: " + ", ".join(ns))
    return "; ".join(parts)


def regime_closing_lines(ds: xr.Dataset, facts: dict) -> list[str]:
    """The verdict of the regime map, computed: per estimator the (n, d, t) above t_c where it beats
    DSM for every seed (and the range of its median ratio) beside the count expected by chance
    (N 2^{-S}: S independent seeds, each ratio as likely above 1 as below), then the region where a
    learned bootstrap does, or that there is none, beside the oracle's."""
    if not facts["above"]:
        return ["- regime map: no evaluation time above t_c"]
    lines = []
    learned = _learned(ds)
    for mode in ds.data_mode.values:
        for m in ds.model.values:
            any_learned = None
            for e in [e for e in ds.estimator.values if e != "dsm"]:
                r = facts["ratio"][(str(e), str(mode), str(m))]
                win = regime_wins(r)
                med = r.median("seed")
                k, N = int(win.sum()), int(win.size)
                region = _region_text(win)
                chance = N * 0.5 ** ds.sizes["seed"]
                lines.append(f"- regime map {e}/dsm score_l2 [{mode}, {m}]: median ratio {fmt(float(med.min()))} to "
                             f"{fmt(float(med.max()))} over (n, d, t > t_c); below 1 for every seed at {k} of {N} points "
                             f"(by chance, were each seed's ratio as likely above 1 as below, {fmt(chance)})"
                             + (f": {region}" if region else ""))
                if str(e) in learned:
                    any_learned = win if any_learned is None else (any_learned | win)
            if any_learned is None:
                lines.append(f"- regime verdict [{mode}, {m}]: no learned bootstrap estimator in this store")
                continue
            region = _region_text(any_learned)
            names = ", ".join(str(e) for e in learned)
            lines.append(f"- regime verdict [{mode}, {m}]: " + (
                f"a learned bootstrap ({names}) beats DSM for every seed at {int(any_learned.sum())} of "
                f"{int(any_learned.size)} (n, d, t > t_c): {region}" if region else
                f"none: no learned bootstrap ({names}) beats DSM for every seed at any of the {int(any_learned.size)} "
                f"(n, d, t > t_c)"))
    lines.append("  predicted (science.md §4, Kumar-Nagaraj-Sarkar 2025): BSM \"utilizes previously learned scores to improve "
                 "accuracy at higher noise levels\"; the gain should be largest where the regression target's variance "
                 "dominates the error (small n, large d).")
    return lines
