"""The two-scores report: Figure 1's statistic, P[error > tau] against n with Clopper–Pearson
bands, for the L2 and the quantile errors of the ERM's pick, beside (1 - eta)^n; and the verdict on
the truth p_2, computed where n <= 1/(4 eta) (there (1 - eta)^n >= 0.78), at every t and every
delta > eta: AGREES when the L2 error's 95% interval lies above the quantile error's everywhere
(it misses far more often); DISAGREES when somewhere the L2 error misses no more often than the
quantile error (estimates); else INCONCLUSIVE (intervals overlap: too few seeds to tell)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import exceedance as exc
from dsclab.study import Status

REGION = 0.25
"""The verdict is read where n eta <= REGION (n well below 1/eta)."""


def done(ds: xr.Dataset, var: str) -> xr.DataArray:
    return ds[var].where(ds["status"] == Status.DONE)


def taus(ds: xr.Dataset, truth: str, d) -> xr.DataArray:
    """tau per t: half the root mean square error of a wrong pick (its mean over n and seeds)."""
    return 0.5 * np.sqrt(done(ds, "wrong_l2").sel(truth=truth, d=d).mean(["n", "seed"]))


def readings(ds: xr.Dataset, truth: str, d) -> xr.Dataset:
    """P[error > tau_t] over seeds per (error, n, t): ``error`` is "√L2" and one "q δ=..." per delta."""
    eta = float(ds.attrs["eta"])
    norms = exc.score_error_norms(done(ds, "score_l2"), done(ds, "score_quantile"), eta).sel(truth=truth, d=d)
    tau = taus(ds, truth, d)
    out = [exc.exceedance(norms.sel(t=t), float(tau.sel(t=t))).expand_dims(t=[t]) for t in ds["t"].values]
    return xr.concat(out, dim="t")


def verdict(ds: xr.Dataset, d) -> tuple[str, str]:
    """(AGREES | DISAGREES | INCONCLUSIVE | CANNOT SAY, why) for the truth p_2 at dimension d (the
    module docstring); CANNOT SAY when no n lies in the region or a reading is missing."""
    if "p2" not in ds["truth"].values:
        return "CANNOT SAY", "no cell of p_2"
    eta = float(ds.attrs["eta"])
    ex = readings(ds, "p2", d)
    region = [n for n in ds["n"].values if n * eta <= REGION]
    above = [e for e, dl in zip(ex.error.values[1:], ds["delta"].values) if dl > eta]
    if not region or not above or int(ex.m.min()) == 0:
        return "CANNOT SAY", "no n with n eta <= 0.25, no delta > eta, or cells not done"
    return exc.figure1_verdict(ex, region, above, "√L2", f"n <= {max(region)} (n eta <= {REGION})")


def report(ds: xr.Dataset) -> str:
    eta, R = float(ds.attrs["eta"]), float(ds.attrs["R"])
    n_done = int((ds["status"] == Status.DONE).sum())
    lines = [f"two-scores study {ds.attrs.get('name', '')}: {n_done}/{ds['status'].size} cells done",
             f"Gupta et al. 2023, Figure 1's construction: p1 = N(0, I), p2 = (1 - eta) N(0, I) + eta N(R e1, I), "
             f"eta = {eta:g} (1/eta = {1 / eta:g}), R = {R:g}; the ERM over {{s1, s2}} on n samples "
             f"({ds.sizes['seed']} seeds). P[error > tau] over seeds ({exc.INTERVAL_NOTE}); "
             f"tau(t) = half the RMS error of a wrong pick."]
    for d in ds["d"].values:
        for truth in ds["truth"].values:
            picked = done(ds, "picked").sel(truth=truth, d=d)
            wrong = (picked != (1 if truth == "p1" else 2)).where(picked.notnull())
            none_far = (done(ds, "far_samples").sel(truth=truth, d=d) == 0).where(picked.notnull())
            lines.append(f"\ntruth {truth}, d={d}: wrong picks and samples without a far one, per n")
            lines.append(f"{'n':>8} {'P[wrong pick]':>14} {'P[no far]':>10} {'(1-eta)^n':>10}")
            for n in ds["n"].values:
                closed = float(ds["p_no_far"].sel(n=n)) if truth == "p2" else 1.0
                lines.append(f"{n:>8} {float(wrong.sel(n=n).mean()):14.2f} {float(none_far.sel(n=n).mean()):10.2f} "
                             f"{closed:10.3f}")
            ex = readings(ds, truth, d)
            tau = taus(ds, truth, d)
            for t in ds["t"].values:
                lines.append(f"  t={t:g}, tau={float(tau.sel(t=t)):.3g}:")
                lines += exc.table_lines(ex.sel(t=t), indent="    ")
        word, why = verdict(ds, d)
        lines.append(f"\nd={d}: {word} with Figure 1's statement (for n < 1/eta the L2 error misses far more "
                     f"often than the quantile error with delta > eta): {why}")
    return "\n".join(lines)
