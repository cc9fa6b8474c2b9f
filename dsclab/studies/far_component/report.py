"""The far-component report. Per d:

1. the far component's share of the L2 error of the networks trained on p_2 (``far_l2`` against
   the L2 error, and against the control's L2 error, its bulk error), per n and t, with the
   fraction of seeds without a far sample beside (1 - eta)^n: where the far component dominates;
2. Figure 1's statistic on the part of each error the far component causes, the cell minus its
   control (same n, seed, draws and training; :mod:`.numerics`): for the L2 error
   √ΔL2 = (L2[p2] - L2[p1])_+^(1/2), for a quantile error Δq_δ = q_δ[p2] - q_δ[p1];
   P[part > tau_t] over seeds with Clopper–Pearson bands, tau_t = half the root of the mean
   ``bulk_score_l2`` of p2 (the L2 error of the bulk's exact score s_1 under p2: what never seeing
   the far component costs at best);
3. the same statistic on the total errors of p2 (not subtracted), for comparison;
4. the verdicts, computed where n eta <= :data:`REGION` (there (1 - eta)^n >= 0.6), at every t and
   every delta > eta: AGREES when the L2 reading's 95% interval lies above every such quantile
   reading's (it misses far more often); DISAGREES when somewhere the L2 reading misses no more
   often than a quantile reading (estimates); else INCONCLUSIVE (intervals overlap). The verdict on
   Figure 1's statement is the one on the far-component part (2); the one on the totals (3) is
   printed beside it.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from dsclab import exceedance as exc
from dsclab.study import Status

REGION = 0.5
"""The verdicts are read where n eta <= REGION (n below 1/eta, P[no far sample] >= 0.6)."""

L2_PART = "√ΔL2"


def done(ds: xr.Dataset, var: str) -> xr.DataArray:
    return ds[var].where(ds["status"] == Status.DONE)


def taus(ds: xr.Dataset, d) -> xr.DataArray:
    """tau per t: half the RMS error of s_1 under p_2 (mean of ``bulk_score_l2`` over n and seeds)."""
    return 0.5 * np.sqrt(done(ds, "bulk_score_l2").sel(truth="p2", d=d).mean(["n", "seed"]))


def _label(dl: float, eta: float) -> str:
    return f"δ={dl:g}{'<η' if dl < eta else '>η'}"


def far_parts(ds: xr.Dataset, d) -> xr.DataArray:
    """The far component's part of each error, per (error, n, seed, t): ``√ΔL2`` =
    (L2[p2] - L2[p1])_+^(1/2) and ``Δq δ=...`` = q_δ[p2] - q_δ[p1] (NaN where either cell is not done)."""
    eta = float(ds.attrs["eta"])
    l2, q = done(ds, "score_l2").sel(d=d), done(ds, "score_quantile").sel(d=d)
    dl2 = (l2.sel(truth="p2") - l2.sel(truth="p1")).reset_coords(drop=True)
    dq = (q.sel(truth="p2") - q.sel(truth="p1")).reset_coords(drop=True)
    dq = dq.assign_coords(delta=[f"Δq {_label(float(v), eta)}" for v in ds["delta"].values]).rename(delta="error")
    part = np.sqrt(dl2.clip(min=0)).where(dl2.notnull())
    return xr.concat([part.expand_dims(error=[L2_PART]), dq], dim="error", coords="minimal",
                     compat="override").transpose("error", "n", "seed", "t")


def totals(ds: xr.Dataset, d) -> xr.DataArray:
    """The total errors of p_2 in norm units (``exceedance.score_error_norms``), per (error, n, seed, t)."""
    eta = float(ds.attrs["eta"])
    norms = exc.score_error_norms(done(ds, "score_l2").sel(truth="p2", d=d),
                                  done(ds, "score_quantile").sel(truth="p2", d=d), eta)
    return norms.reset_coords(drop=True).transpose("error", "n", "seed", "t")


def readings(ds: xr.Dataset, d, errors: xr.DataArray) -> xr.Dataset:
    """P[error > tau_t] over seeds per (error, n, t) (``exceedance.exceedance``)."""
    tau = taus(ds, d)
    out = [exc.exceedance(errors.sel(t=t), float(tau.sel(t=t))).expand_dims(t=[t]) for t in ds["t"].values]
    return xr.concat(out, dim="t")


def verdict(ds: xr.Dataset, ex: xr.Dataset) -> tuple[str, str]:
    """(AGREES | DISAGREES | INCONCLUSIVE | CANNOT SAY, why) of readings ``ex`` (the first error the
    L2 one, then one per delta in the store's order), by the rule of the module docstring; CANNOT
    SAY when no n lies in the region, no delta exceeds eta, or a reading is missing."""
    eta = float(ds.attrs["eta"])
    region = [n for n in ds["n"].values if n * eta <= REGION]
    l2_name = str(ex.error.values[0])
    above = [e for e, dl in zip(ex.error.values[1:], ds["delta"].values) if dl > eta]
    if not region or not above or int(ex.m.sel(n=region).min()) == 0:
        return "CANNOT SAY", f"no n with n eta <= {REGION}, no delta > eta, or cells not done"
    return exc.figure1_verdict(ex, region, above, l2_name, f"n <= {max(region)} (n eta <= {REGION})")


def share_lines(ds: xr.Dataset, d) -> list[str]:
    """Rows (n, t): medians over seeds of L2[p2], far_l2[p2], the control's L2[p1] and of the share
    far_l2 / L2 of p2; the seeds where the far component's share exceeds half of the L2 error."""
    l2, far = done(ds, "score_l2").sel(d=d), done(ds, "far_l2").sel(d=d, truth="p2")
    share = far / l2.sel(truth="p2")
    nofar = (done(ds, "far_samples").sel(truth="p2", d=d) == 0).where(done(ds, "far_samples").sel(truth="p2", d=d).notnull())
    lines = [f"  {'n':>6} {'no far':>7} {'(1-η)^n':>8} {'t':>5} {'L2[p2]':>9} {'far_l2':>9} {'L2[p1]':>9} "
             f"{'share':>6} {'share>½':>8}"]
    for n in ds["n"].values:
        for i, t in enumerate(ds["t"].values):
            sh = share.sel(n=n, t=t)
            head = (f"  {n:>6} {float(nofar.sel(n=n).mean()):7.2f} {float(ds['p_no_far'].sel(n=n)):8.3f}" if i == 0
                    else " " * 24)
            lines.append(f"{head} {t:5g} {float(l2.sel(truth='p2', n=n, t=t).median()):9.3g} "
                         f"{float(far.sel(n=n, t=t).median()):9.3g} {float(l2.sel(truth='p1', n=n, t=t).median()):9.3g} "
                         f"{float(sh.median()):6.2f} {int((sh > 0.5).sum()):>4}/{int(sh.notnull().sum())}")
    return lines


def report(ds: xr.Dataset) -> str:
    ds = ds.load()
    eta, R = float(ds.attrs["eta"]), float(ds.attrs["R"])
    n_done = int((ds["status"] == Status.DONE).sum())
    tr = json.loads(ds.attrs["spec"])["train"]
    lines = [f"far-component study {ds.attrs.get('name', '')}: {n_done}/{ds['status'].size} cells done; "
             f"mean train {float(done(ds, 'train_seconds').mean()):.3g} s, eval {float(done(ds, 'eval_seconds').mean()):.3g} s per cell",
             f"Gupta et al. 2023, Figure 1's two laws learned by a network: p2 = (1 - eta) N(0, I) + eta N(R e1, I), "
             f"eta = {eta:g} (1/eta = {1 / eta:g}), R = {R:g}, eta R^2 = {eta * R * R:.3g}; control p1 = N(0, I) "
             f"(the bulk alone: same draws without the far shift, same training). DSM ScoreMLP width {tr['width']}, "
             f"depth {tr['depth']}, {tr['steps']} steps of {tr['batch_size']}, lr {tr['lr']:g}; {ds.sizes['seed']} seeds."]
    if not {"p1", "p2"} <= set(ds["truth"].values):
        return "\n".join(lines + ["the far-component part needs both truths, p2 and its control p1"])
    for d in ds["d"].values:
        tau = taus(ds, d)
        lines += ["", f"== d={d}: the far component's share of the L2 error of p2's networks (medians over seeds; "
                      "far_l2 = E[||ŝ-s||² 1(x from the far component)]; L2[p1]: the control, the bulk error; "
                      "no far: fraction of seeds without a far sample) =="]
        lines += share_lines(ds, d)
        ex_part = readings(ds, d, far_parts(ds, d))
        ex_tot = readings(ds, d, totals(ds, d))
        lines += ["", f"== d={d}: P[far-component part > τ] against n: the part of each error the far component causes "
                      f"(cell minus its control: √ΔL2 = (L2[p2] - L2[p1])₊^½, Δq = q[p2] - q[p1]); {exc.INTERVAL_NOTE}; "
                      "τ(t) = half the RMS error of s1 under p2 =="]
        for t in ds["t"].values:
            lines.append(f"  t={t:g}, τ={float(tau.sel(t=t)):.3g}:")
            lines += exc.table_lines(ex_part.sel(t=t), indent="    ")
        lines += ["", f"== d={d}: P[total error of p2 > τ] against n (not subtracted; the same τ) =="]
        for t in ds["t"].values:
            lines.append(f"  t={t:g}, τ={float(tau.sel(t=t)):.3g}:")
            lines += exc.table_lines(ex_tot.sel(t=t), indent="    ")
        word, why = verdict(ds, ex_part)
        lines.append(f"\nd={d}: {word} with Figure 1's statement (for n < 1/eta the L2 error misses far more often than "
                     f"the quantile error with delta > eta), on the far component's part: {why}")
        word_t, why_t = verdict(ds, ex_tot)
        lines.append(f"d={d}: on the total errors of p2 (not subtracted): {word_t}: {why_t}")
    return "\n".join(lines)
