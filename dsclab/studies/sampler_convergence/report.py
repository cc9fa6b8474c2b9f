"""The sampler-convergence text report, and the NFE-to-reach table (readings: ``fits``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from dsclab.study import Status
from dsclab.studies.sampler_convergence.fits import acceptance, done, has, kl_crossings, kl_fits, sampled_fits, spec_of
from dsclab.studies.sampler_convergence.spec import EXACT_KL_TARGETS


def _fmt(v: float, f: str = "+.2f") -> str:
    return "nan" if not np.isfinite(v) else format(v, f)


def report(ds: xr.Dataset) -> str:
    """Slopes per sampler and d (KL exact; sampled metrics with a band over seeds), NFE to
    reach each KL level, floors of the perturbed score, and the acceptance line."""
    ds = ds.load()
    spec = spec_of(ds)
    a = spec.analysis
    st = ds["status"]
    ds_d = [int(d) for d in ds.d.values]
    hdr = lambda first, w=12: f"  {first:<24}" + "".join(f"{'d=' + str(d):>{w}}" for d in ds_d)
    lines = [f"Sampler convergence study '{ds.attrs.get('name', '')}': reverse SDE from "
             f"{'q_T' if spec.start == 'exact' else 'N(0, I)'} at T={spec.T:g} to t_min={spec.t_min:g}, "
             f"'{spec.schedule}' grid, NFE {spec.nfe[0]}..{spec.nfe[-1]}; cells done "
             f"{int((st == Status.DONE).sum())}/{st.size} (failed {int((st == Status.FAILED).sum())})",
             "Error: exact KL(p_out || q_tmin) where exact (gaussian: Gaussian propagation; product_mixture: d x 1-D "
             f"quadrature); otherwise sliced W2 / MMD of {spec.sampling.n_samples} samples over {len(spec.seed)} seeds."
             " The theorems bound KL(q_tmin || p_out) (same rate, other floor): stored and fitted where exact"
             " (gaussian: kl_reverse)."]
    fits = kl_fits(ds, spec)
    kl = done(ds, "kl")
    for target in [t for t in ds.target.values if t in EXACT_KL_TARGETS]:
        if "exact" not in ds.score.values or not has(kl.sel(target=target, score="exact")):
            continue
        f = fits.sel(target=target, score="exact")
        lines += ["", f"[{target}, exact score] slope of log KL vs log NFE (least squares over NFE "
                      f"{a.fit_nfe[0]}..{a.fit_nfe[1]}, the asymptotic range; exact values, no band)",
                  hdr("sampler")]
        for s in ds.sampler.values:
            lines.append(f"  {s:<24}" + "".join(f"{_fmt(float(f.slope.sel(sampler=s, d=d))):>12}" for d in ds_d))
        if "kl_reverse" in ds and has(done(ds, "kl_reverse").sel(target=target, score="exact")):
            fr = kl_fits(ds, spec, "kl_reverse").sel(target=target, score="exact")
            lines += ["  the same for KL(q_tmin || p_out), the direction the theorems bound", hdr("sampler")]
            for s in ds.sampler.values:
                lines.append(f"  {s:<24}" + "".join(f"{_fmt(float(fr.slope.sel(sampler=s, d=d))):>12}" for d in ds_d))
        for level in a.kl_levels:
            cr = kl_crossings(ds, level, spec, fits).sel(target=target, score="exact")
            lines += [f"  NFE to reach KL = {level:g} (log-log interpolated; '~x*' power-law extrapolation"
                      f" past NFE {spec.nfe[-1]}, '>x' not reached, '<=x' reached at the first point)", hdr("sampler")]
            for s in ds.sampler.values:
                lines.append(f"  {s:<24}" + "".join(f"{cr.sel(sampler=s, d=d).item().format():>12}" for d in ds_d))
    if "perturbed" in ds.score.values:
        for target in [t for t in ds.target.values if t in EXACT_KL_TARGETS]:
            kp = kl.sel(target=target, score="perturbed")
            if not has(kp):
                continue
            n1, n0 = spec.nfe[-1], spec.nfe[-2]
            lines += ["", f"[{target}, perturbed score s + {spec.eta:g} (1,...,1)] KL at NFE {n1} (the floor) "
                          f"[KL(NFE {n0}) / KL(NFE {n1}): 1.00 = levelled off]", hdr("sampler", 17)]
            for s in ds.sampler.values:
                row = []
                for d in ds_d:
                    v, w = float(kp.sel(sampler=s, d=d, nfe=n1)), float(kp.sel(sampler=s, d=d, nfe=n0))
                    row.append(f"{v:.2e} [{w / v:.2f}]" if np.isfinite(v) and v > 0 else "nan")
                lines.append(f"  {s:<24}" + "".join(f"{c:>17}" for c in row))
    sw = done(ds, "sliced_w2")
    if has(sw):
        sfits = sampled_fits(ds, "sliced_w2", spec)
        floor = done(ds, "sliced_w2_floor").mean("seed")
        last = max(n for n in spec.nfe if spec.sampling.max_nfe is None or n <= spec.sampling.max_nfe)
        lines += ["", f"Sampled error: sliced W2 slope vs NFE [{a.band:.0%} bootstrap band over {len(spec.seed)} seeds]"
                      f", fitted over NFE {a.fit_nfe[0]}..{min(a.fit_nfe[1], last)} where the seed mean exceeds"
                      f" {a.floor_factor:g} x the floor ('floor': fewer than 3 such NFE); then sliced W2 at NFE {last}"
                      f" / the Monte Carlo floor (two independent {spec.sampling.n_samples}-point target draws)"]
        for target in ds.target.values:
            for score in ds.score.values:
                cur = sw.sel(target=target, score=score)
                if not has(cur):
                    continue
                f = sfits.sel(target=target, score=score)
                lines += [f" [{target}, {score} score]", hdr("sampler", 22)]
                for s in ds.sampler.values:
                    row = []
                    for d in ds_d:
                        sl = f.sel(sampler=s, d=d)
                        end = float(cur.sel(sampler=s, d=d, nfe=last).mean("seed"))
                        fl = float(floor.sel(target=target, score=score, d=d))
                        band = f"{_fmt(float(sl.slope))}[{_fmt(float(sl.lo), '+.1f')},{_fmt(float(sl.hi), '+.1f')}]"
                        row.append(f"{band} {end / fl:.1f}x" if np.isfinite(sl.slope) else f"floor {end / fl:.1f}x")
                    lines.append(f"  {s:<24}" + "".join(f"{c:>22}" for c in row))
    if "trained" in ds.score.values and has(done(ds, "score_l2").sel(score="trained")):
        l2 = done(ds, "score_l2").sel(score="trained").mean("seed")
        lines += ["", f"trained score (n_train={spec.n_train}, {spec.train.steps} steps): E||s_hat - s||^2 at t = "
                      + ", ".join(f"{t:g}" for t in ds.t.values)]
        for target in ds.target.values:
            lines.append(f"  {target:<17}" + "  ".join(
                f"d={d}: " + "/".join(f"{float(l2.sel(target=target, d=d, t=t)):.3g}" for t in ds.t.values) for d in ds_d))
    acc = acceptance(ds, spec, fits)
    if acc is not None:
        c_ei = acc["nfe_ei"]
        ei_txt = c_ei.format()
        if c_ei.censored == "right":
            ei_txt = f">{c_ei.bound:.0f} (extrapolated {c_ei.extrapolated:.0f})"
        lines += ["", f"ACCEPTANCE (gaussian, exact score, d={a.acceptance_d}): slope ratio srk/EI = "
                      f"{acc['slope_srk']:.2f}/{acc['slope_ei']:.2f} = {acc['slope_ratio']:.2f} "
                      f"(>= 1.8: {'PASS' if acc['pass_slope'] else 'FAIL'})",
                  f"ACCEPTANCE (gaussian, exact score, d={a.acceptance_d}): NFE to KL={a.acceptance_level:g}: srk "
                  f"{acc['nfe_srk'].format()} / EI {ei_txt}; NFE ratio srk/EI <= {acc['nfe_ratio_bound']:.2f}"
                  f" (estimate {acc['nfe_ratio_estimate']:.2f}) (<= 0.5: {'PASS' if acc['pass_nfe'] else 'FAIL'})"]
    return "\n".join(lines)

def nfe_table(ds: xr.Dataset, level: float | None = None, target: str = "gaussian",
              score: str = "exact") -> pd.DataFrame:
    """NFE to reach KL ``level`` (default ``analysis.acceptance_level``) as a table, rows sampler,
    columns d: the interpolated crossing, else the power-law extrapolation (a summary table for
    the UI; the report prints the marked version)."""
    ds = ds.load()
    spec = spec_of(ds)
    level = spec.analysis.acceptance_level if level is None else level
    cr = kl_crossings(ds, level, spec).sel(target=target, score=score)
    df = pd.DataFrame({f"d={int(d)}": [cr.sel(sampler=s, d=d).item().estimate() for s in ds.sampler.values]
                       for d in ds.d.values}, index=pd.Index(list(ds.sampler.values), name="sampler"))
    return df
