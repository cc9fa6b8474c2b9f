"""The score-learning report: the sections the grid supports (:func:`.readout.sections`), each
printing its tables and returning the facts the closing note weighs against what the papers
predict (science.md §2, §4):

* ``dim`` (:func:`dimension_free_section`): n*(eps, d) per hypothesis class and its exponent in d;
* ``bsm`` (:func:`.bsm.section`): ratios to DSM of the target variance (measured and closed form)
  and the score error per t for the pure and the Rao–Blackwellised bootstrap targets, the
  closed-form condition under which the pure target lowers the variance, and the sampling errors
  of each trained score;
* ``regime`` (:func:`.bsm.regime_section`, a d sweep): the score-error ratio to DSM of every
  bootstrap estimator over (n, d, t above t_c), the oracle's beside the learned ones, training
  seconds, and the computed region where a learned bootstrap beats DSM for every seed;
* ``traj`` (:func:`trajectory_section`): trajectory/independent ratios of the score error per t;
* ``quantile`` (:func:`quantile_section`): L2 against quantile score error and sampling errors
  along n.

Three ready studies use this kind with different grids: ``studies/dimension_free.yaml`` (axes d, n,
model), ``studies/bsm.yaml`` (estimator, data_mode, n) and ``studies/quantile_vs_l2.yaml``
(n, on a mixture with a tiny far component).
"""
from __future__ import annotations

import json
import math

import numpy as np
import xarray as xr

from dsclab import analysis
from dsclab.analysis import weighted_l2
from dsclab import exceedance as exc
from dsclab.study import Status

from . import bsm_report as bsm
from .readout import done, fmt, n_star, ratio_block, sections


def _nstar_lines(err: xr.DataArray, ds: xr.Dataset, eps: float) -> tuple[list[str], float, tuple]:
    """n*(eps, d) (median over seeds [min, max]) and its exponent in d, for one model."""
    ns = n_star(err, eps)  # (d, seed)
    med = n_star(err.median("seed"), eps)  # (d,)
    vals = analysis.crossing_values(ns)
    n_max = int(ds.n.values[-1])
    show = lambda v: fmt(v, ".0f") if np.isfinite(v) else f">{n_max}"
    cells = []
    for d in ds.d.values:
        c = med.sel(d=d).item()
        lo, hi = float(vals.sel(d=d).min()), float(vals.sel(d=d).max())  # over the seeds that reach eps
        cells.append(f"d={int(d)}: {'<=' if c.censored == 'left' else ''}{show(c.value)} [{show(lo)}, {show(hi)}]")
    b = analysis.crossing_exponent(ds.d.values, med.transpose("d").values)
    band = analysis.exponent_band(ns.transpose("d", "seed"))
    return ["; ".join(cells)], b, band


def dimension_free_section(ds: xr.Dataset) -> tuple[list[str], dict]:
    """Per model: the error table (rows n, columns d), n*(eps, d) at error levels every d crosses
    and the exponent of n* in d, with bands over seeds; then both models at shared levels."""
    err = weighted_l2(ds).isel(estimator=0, data_mode=0)
    lines = ["== dimension-free learning: n*(eps, d) = smallest n with err <= eps, err = mean_t sigma_t^2 score_l2(t) "
             f"(log-log interpolation; median over seeds [min, max]; estimator {ds.estimator.values[0]}, "
             f"data {ds.data_mode.values[0]}) ==",
             "   ('<=' reached at the smallest n, '>' not reached; censored values are left out of the exponent fit)"]
    facts: dict = {}
    for m in ds.model.values:
        e = err.sel(model=m)
        npar = ", ".join(f"{int(d)}: {fmt(float(done(ds, 'n_params').sel(model=m, d=d).max()), '.0f')}" for d in ds.d.values)
        lines += ["", f"[{m}] parameters by d: {npar}", "  err (median over seeds): rows n, columns d"]
        tab = e.median("seed").transpose("n", "d").to_pandas()
        lines += ["  " + x for x in tab.to_string(float_format=lambda v: f"{v:.4g}").splitlines()]
        levels = analysis.common_levels(e.median("seed").transpose("d", "n"))
        facts[m] = []
        if not levels:
            lines.append("  no error level is crossed by every d on this n grid")
        for eps in levels:
            cl, b, band = _nstar_lines(e, ds, eps)
            facts[m].append((eps, b, band))
            lines.append(f"  eps={eps:.3g}: " + cl[0])
            lines.append(f"     exponent of n* in d: {fmt(b, '.2f')} (per-seed fits [{fmt(band[0], '.2f')}, {fmt(band[2], '.2f')}])")
    if ds.sizes["model"] >= 2:
        # side by side: both classes at the middle error level of each (censored entries marked)
        mids = [v[len(v) // 2][0] for v in (facts[m] for m in ds.model.values) if v]
        lines += ["", "side by side (each class's middle level; censored n* marked, left out of the fit):"]
        for eps in mids:
            for m in ds.model.values:
                cl, b, band = _nstar_lines(err.sel(model=m), ds, eps)
                lines.append(f"  eps={eps:.3g} {m:>10}: {cl[0]} | exponent {fmt(b, '.2f')} "
                             f"[{fmt(band[0], '.2f')}, {fmt(band[2], '.2f')}]")
    return lines, facts


def trajectory_section(ds: xr.Dataset) -> tuple[list[str], dict]:
    K = json.loads(ds.attrs["spec"])["train"]["K"]
    lines = [f"== trajectory against independent at equal pair count (n K pairs, K={K}): ratio trajectory/independent "
             "per t, median [min, max] over seeds =="]
    facts = {}
    for est in ds.estimator.values:
        for m in ds.model.values:
            fixed = {"d": ds.d.values[0], "estimator": est, "model": m}
            l, r = ratio_block(ds, "score_l2", "data_mode", "trajectory", "independent", fixed)
            lines += [f"[score_l2; estimator {est}; model {m}; d={int(ds.d.values[0])}]"] + l
            facts[(est, m)] = r
    return lines, facts


def exceedances(ds: xr.Dataset, levels: int = 3) -> dict[float, xr.Dataset]:
    """Per t: P[error > tau] over seeds (``analysis.exceedance``, Clopper–Pearson) of the score
    errors in norm units (``exceedance.score_error_norms``: √L2 and each quantile level) along n,
    at the tau levels :func:`dsclab.exceedance.taus_for` gives (the reader's, else ``levels``
    levels derived from the errors at that t); the first d, estimator, data mode and model."""
    eta = float(ds.attrs.get("min_weight", np.nan))
    sub = ds.isel(estimator=0, data_mode=0, model=0, d=0)
    out = {}
    for t in ds.t.values:
        errs = exc.score_error_norms(done(sub, "score_l2").sel(t=t), done(sub, "score_quantile").sel(t=t), eta)
        taus = exc.taus_for(ds, errs, levels=levels)
        if taus:
            out[float(t)] = analysis.exceedance(errs.reset_coords(drop=True), taus)
    return out


def exceedance_lines(ds: xr.Dataset, ex: dict[float, xr.Dataset]) -> list[str]:
    """The Figure 1 statistic of Gupta et al. (2023): per t and tau, rows n, columns the errors."""
    S = ds.sizes["seed"]
    how = ("the reader's (--tau)" if exc.TAU_ATTR in ds.attrs else
           "geometric levels between the 10th and 90th percentiles of all errors at that t")
    lines = [f"== P[score error > τ] against n (Gupta et al. 2023, Figure 1): the fraction of the {S} seeds whose error "
             f"exceeds τ, with a {exc.INTERVAL_NOTE} [lo, hi]; errors in norm units: √L2 = (E||ŝ-s||²)^½ and the "
             f"(1-δ)-quantile of ||ŝ-s||; τ: {how} =="]
    for t, e in ex.items():
        for tau in e.tau.values:
            lines += [f"  t={t:g}, τ={float(tau):.3g}:"] + exc.table_lines(e.sel(tau=tau).transpose("error", "n"))
    return lines


def exceedance_note(ex: dict[float, xr.Dataset], eta: float) -> list[str]:
    """P[√L2 > τ] against P[q_δ > τ] over every (t, τ, n) read (:func:`exceedances`): how often one
    misses more often than the other with disjoint intervals, and the misses pooled over seeds and
    n < 1/η at each t's middle τ; weighed against the paper's Figure 1 (L2 misses far more often
    than the δ>η quantile)."""
    if not ex:
        return []
    errs = [str(e) for e in next(iter(ex.values())).error.values]
    above = [e for e in errs if e.endswith(">η")]
    below = [e for e in errs if e.endswith("<η")]
    out = []
    for q in above[-1:] + below[:1]:
        more = less = same = 0
        for e in ex.values():
            a, b = e.sel(error="√L2"), e.sel(error=q)
            more += int(((a.lo > b.hi) & (a.m > 0) & (b.m > 0)).sum())
            less += int(((a.hi < b.lo) & (a.m > 0) & (b.m > 0)).sum())
            same += int(((a.lo <= b.hi) & (a.hi >= b.lo) & (a.m > 0) & (b.m > 0)).sum())
        out.append(f"  P[error > τ] (Figure 1), over every t, τ and n above: √L2 misses more often than the {q} quantile "
                   f"(intervals disjoint) in {more}, less often in {less}, indistinguishably in {same} readings")
    pooled = []
    for t, e in ex.items():
        tau = float(e.tau.values[len(e.tau) // 2])
        small = e.sel(tau=tau).where(e.n < 1 / eta, drop=True)
        if small.sizes["n"] == 0:
            continue
        k, m = small.k.sum("n"), small.m.sum("n")
        pooled.append(f"t={t:g} τ={tau:.3g}: " + ", ".join(f"{x} {int(k.sel(error=x))}/{int(m.sel(error=x))}" for x in errs))
    if pooled:
        out.append(f"  misses pooled over seeds and n < 1/η (middle τ): " + "; ".join(pooled))
    if above:
        q = above[-1]
        more = sum(int(((e.sel(error="√L2").lo > e.sel(error=q).hi)).sum()) for e in ex.values())
        less = sum(int(((e.sel(error="√L2").hi < e.sel(error=q).lo)).sum()) for e in ex.values())
        verdict = ("agrees" if more > 0 and less == 0 else
                   "DISAGREES: the L2 error misses less often than the δ>η quantile here" if less > more else
                   "not resolved at this grid and seed count")
        out.append(f"  predicted (Gupta et al. 2023, Figure 1): the L2 error misses far more often than the δ>η quantile "
                   f"error at n below ~1/η: {verdict}")
    return out


def quantile_section(ds: xr.Dataset) -> tuple[list[str], dict]:
    """P[error > tau] against n for the L2 and quantile errors (:func:`exceedances`); per t: L2
    and quantile errors (delta below and above eta) against n; then the t-averaged errors next to
    the sampling errors."""
    eta = float(ds.attrs.get("min_weight", np.nan))
    sub = ds.isel(estimator=0, data_mode=0, model=0, d=0)
    ex = exceedances(ds)
    lines = exceedance_lines(ds, ex) + [""]
    lines += [f"== L2 against quantile score error and sampling error along n (smallest component weight eta = {eta:.3g}, "
              f"1/eta = {1 / eta:.3g}; medians over seeds; {sub.estimator.values}, {sub.model.values}, d={int(sub.d)}) =="]
    l2 = done(sub, "score_l2").median("seed")
    q = done(sub, "score_quantile").median("seed")
    cols = {}
    for t in ds.t.values:
        cols[f"L2 t={float(t):g}"] = l2.sel(t=t).reset_coords(drop=True)
        for dl in ds.delta.values:
            cols[f"q{dl:g}{'<' if dl < eta else '>'}η t={float(t):g}"] = q.sel(t=t, delta=dl).reset_coords(drop=True)
    df = xr.Dataset(cols).to_dataframe()[list(cols)]
    lines += ["  per t (rows n):"] + ["  " + x for x in df.to_string(float_format=lambda v: f"{v:.3g}").splitlines()]
    summ = {"L2 (mean t)": done(sub, "score_l2").mean("t").median("seed")}
    for dl in ds.delta.values:
        summ[f"q δ={dl:g} ({'<' if dl < eta else '>'}η)"] = \
            done(sub, "score_quantile").sel(delta=dl).mean("t").median("seed").reset_coords(drop=True)
    summ["sliced_w2"] = done(sub, "sliced_w2").median("seed")
    summ["mode_tv"] = done(sub, "mode_tv").median("seed")
    sdf = xr.Dataset(summ).to_dataframe()[list(summ)]
    lines += [f"  t-averaged score errors and sampling errors (floors: sliced_w2 "
              f"{fmt(float(done(sub, 'sliced_w2_floor').median()))}, mode_tv {fmt(float(done(sub, 'mode_tv_floor').median()))}):"]
    lines += ["  " + x for x in sdf.to_string(float_format=lambda v: f"{v:.4g}").splitlines()]
    return lines, {"per_t": df, "summary": sdf, "eta": eta, "exceedance": ex}


def _corr_log(a, b) -> float:
    a, b = np.log(np.asarray(a, dtype=float)), np.log(np.asarray(b, dtype=float))
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return math.nan
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def closing_note(ds: xr.Dataset, facts: dict) -> list[str]:
    """What was measured against what the papers predict (science.md §2, §4), from the numbers above."""
    lines = ["== closing note: measured against predicted (science.md) =="]
    if "dim" in facts:
        for m in ds.model.values:
            v = facts["dim"].get(m) or []
            bs_ = [b for _, b, _ in v if np.isfinite(b)]
            pred = ("0: the class does not grow with d, so error curves in n coincide across d (§4a)" if m == "structured"
                    else "> 0: the generic class grows with d")
            if not bs_:
                lines.append(f"- {m}: exponent of n* in d not measurable (censored); predicted {pred}")
                continue
            b = float(np.median(bs_))
            ok = abs(b) < 0.25 if m == "structured" else b > 0.25
            lines.append(f"- {m}: exponent of n* in d = {b:.2f} (median over the error levels); predicted {pred}: "
                         f"{'agrees' if ok else 'DISAGREES'}")
    if "bsm" in facts:
        lines += bsm.closing_lines(ds, facts["bsm"])
    if "regime" in facts:
        lines += bsm.regime_closing_lines(ds, facts["regime"])
    if "traj" in facts:
        for (est, m), r in facts["traj"].items():
            med = float(r.median())
            lo, hi = float(r.median(["seed", "t"]).min()), float(r.median(["seed", "t"]).max())
            lines.append(f"- trajectory/independent score_l2 [{est}, {m}]: median ratio {med:.3g} over n, t and seeds "
                         f"(per-n medians {lo:.3g} to {hi:.3g}); predicted (§4c, martingale bounds for Markov data): "
                         "no loss in rate, at most a constant factor: "
                         + ("agrees (within 25%)" if 0.8 <= med <= 1.25 else "a constant-factor cost" if med > 1.25
                            else "a constant-factor gain"))
    if "quantile" in facts:
        f = facts["quantile"]
        s, eta = f["summary"], f["eta"]
        qa = [c for c in s.columns if c.startswith("q δ") and ">η" in c]
        qb = [c for c in s.columns if c.startswith("q δ") and "<η" in c]
        n = s.index.to_numpy(dtype=float)
        small = n < 1 / eta
        def drop(col, mask):
            v = s[col].to_numpy()[mask]
            return v[0] / v[-1] if v.size >= 2 and np.isfinite(v[[0, -1]]).all() else math.nan
        parts = [f"below 1/eta (n < {1 / eta:.3g}) L2 falls {drop('L2 (mean t)', small):.3g}x"]
        if qa:
            parts.append(f"the δ>η quantile {drop(qa[-1], small):.3g}x")
        if qb:
            parts.append(f"the δ<η quantile {drop(qb[0], small):.3g}x")
        lines.append("- quantile vs L2: " + ", ".join(parts) + "; from the smallest to the largest n: L2 "
                     f"{drop('L2 (mean t)', np.ones_like(small)):.3g}x"
                     + (f", δ<η quantile {drop(qb[0], np.ones_like(small)):.3g}x" if qb else "")
                     + (f", δ>η quantile {drop(qa[-1], np.ones_like(small)):.3g}x" if qa else ""))
        for name in ("sliced_w2", "mode_tv"):
            rl2 = _corr_log(s["L2 (mean t)"], s[name])
            rq = _corr_log(s[qa[-1]], s[name]) if qa else math.nan
            rb = _corr_log(s[qb[0]], s[name]) if qb else math.nan
            lines.append(f"  {name} over n: {fmt(float(s[name].iloc[0]))} -> {fmt(float(s[name].iloc[-1]))}; "
                         f"log-correlation with L2 {rl2:.2f}, with the δ>η quantile {rq:.2f}, with the δ<η quantile {rb:.2f}")
        lines += exceedance_note(f["exceedance"], eta)
        lines.append("  predicted (science.md §2): L2 stays large until n ~ 1/eta while the δ>η quantile is small much "
                     "earlier, and sampling quality follows the quantile error. W2-type sampling errors charge a "
                     "missing component of mass eta at distance R about eta R^2, as the L2 score error does; "
                     "TV-type errors (mode_tv, a lower bound on TV) charge eta, which the δ>η quantile allows.")
    return lines


def report(ds: xr.Dataset) -> str:
    """The sections the grid supports (:func:`.readout.sections`), then the closing note."""
    ds = ds.load()
    n_done, n_failed = int((ds.status == Status.DONE).sum()), int((ds.status == Status.FAILED).sum())
    lines = [f"score-learning study {ds.attrs.get('name', '')}: {n_done}/{ds.status.size} cells done, "
             f"{n_failed} failed; training-grid ratio r = {float(ds.attrs['grid_ratio']):.4f}; "
             f"mean train {fmt(float(done(ds, 'train_seconds').mean()))} s, eval {fmt(float(done(ds, 'eval_seconds').mean()))} s per cell"]
    makers = {"dim": dimension_free_section, "bsm": bsm.section, "regime": bsm.regime_section, "traj": trajectory_section, "quantile": quantile_section}
    facts = {}
    for name in sections(ds):
        l, facts[name] = makers[name](ds)
        lines += [""] + l
    lines += [""] + closing_note(ds, facts)
    return "\n".join(lines)
