"""The sparse-PCA analysis and text report: ``n_half``, the smallest n from which the overlap
stays above 1/2 (:func:`n_half`, :func:`n_half_table`), beside the classical sample sizes, and
the closing note on the trained network (see :mod:`dsclab.studies.sparse_pca`)."""
from __future__ import annotations

import json
import math

import numpy as np
import xarray as xr

from dsclab import analysis
from dsclab.studies.sparse_pca import estimators as spe
from dsclab.study import Status
from dsclab.studies.sparse_pca.spec import NETWORK, ORACLE


def n_half(ns, values, level: float = 0.5) -> tuple[float, str]:
    """The smallest n from which ``values`` stay above ``level`` (``analysis.crossing``: the last
    grid point at or below the level and the next one are interpolated linearly in log n).

    Returns ``(n, flag)``: flag ``""`` (interpolated), ``"<="`` (already above at the smallest n:
    n = ns[0] is an upper bound), ``">"`` (not above at the largest n: n = ns[-1] is a lower bound,
    or NaN values: n = NaN).
    """
    c = analysis.crossing(ns, values, level, direction="up", y_scale="linear", rule="stays", missing="unknown")
    if c.censored in ("right", "unknown"):
        return c.bound, ">"
    return c.value, "<=" if c.censored == "left" else ""


def done(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``ds[var]`` over done cells (NaN elsewhere)."""
    return ds[var].where(ds["status"] == Status.DONE)


def n_half_table(ds: xr.Dataset, level: float = 0.5) -> list[dict]:
    """One row per (d, k, beta, estimator): n_half of the seed-mean overlap curve, its band (n_half
    of the pointwise max and min over seeds), the classical sizes and the mean overlap at the
    smallest and largest n. Oracle rows are left out."""
    ds = ds.load()
    ov = done(ds, "overlap")
    ns = ds.n.values
    rows = []
    for d in ds.d.values:
        for k in ds.k.values:
            for beta in ds.beta.values:
                ref = {name: float(ds[f"n_{name}"].sel(d=d, k=k, beta=beta)) for name in ("it", "poly", "spectral")}
                for est in ds.estimator.values:
                    if est == ORACLE:
                        continue
                    cur = ov.sel(d=d, k=k, beta=beta, estimator=est)  # (n, seed)
                    mean = cur.mean("seed").values
                    n_mean, flag = n_half(ns, mean, level)
                    lo = n_half(ns, cur.max("seed").values, level)   # the plot's band: pointwise max
                    hi = n_half(ns, cur.min("seed").values, level)   # and min over seeds
                    rows.append({"d": int(d), "k": int(k), "beta": float(beta), "estimator": str(est),
                                 "n_half": n_mean, "flag": flag, "lo": lo[0], "lo_flag": lo[1],
                                 "hi": hi[0], "hi_flag": hi[1],
                                 "overlap_max_n": float(mean[-1]), "overlap_min_n": float(mean[0]), **ref})
    return rows


def _fmt_n(v: float, flag: str = "") -> str:
    if not math.isfinite(v):
        return "—" if math.isnan(v) else "inf"
    return f"{flag}{v:.0f}" if v >= 10 or flag else f"{flag}{v:.1f}"


def position(n: float, n_it: float, n_poly: float) -> float:
    """Where n sits between the two classical sizes on a log scale: 0 at n_it, 1 at n_poly."""
    if not (math.isfinite(n) and math.isfinite(n_it) and math.isfinite(n_poly)) or n_poly <= n_it:
        return math.nan
    return math.log(n / n_it) / math.log(n_poly / n_it)


def report(ds: xr.Dataset) -> str:
    """Per (d, k, beta): n_half [band over seeds] per estimator next to the three classical sizes;
    then score errors, the null rows (beta = 0) and the closing note on the network."""
    ds = ds.load()
    st = ds["status"]
    rows = n_half_table(ds)
    S = ds.sizes["seed"]
    lines = [f"sparse-PCA study {ds.attrs.get('name', '')}: cells done {int((st == Status.DONE).sum())}/{st.size}, "
             f"failed {int((st == Status.FAILED).sum())}",
             f"n_half = smallest n from which the mean overlap over {S} seeds stays above 1/2 (log-interpolated "
             "between grid points; '<=' already at the smallest n, '>' not reached); band = n_half of the "
             "pointwise max..min over seeds. Classical sizes (constants dropped): IT k log(d/k)/b^2, poly k^2 log(d/k^2)/b^2 "
             "(— where k^2 >= d), spectral d/b^2. n grid: " + ", ".join(str(int(n)) for n in ds.n.values)]
    header = f"{'estimator':<24} {'n_half':>8} {'band':>15} {'n/n_IT':>7} {'n/n_poly':>8} {'n/n_spec':>8} {'ov(n_max)':>9}"
    key = lambda r: (r["d"], r["k"], r["beta"])
    for (d, k, beta) in dict.fromkeys(key(r) for r in rows):
        grp = [r for r in rows if key(r) == (d, k, beta)]
        r0 = grp[0]
        bbp = float(ds["n_half_pca_bbp"].sel(d=d, k=k, beta=beta))
        lines += ["", f"[d={d} k={k} beta={beta:g}]  n_IT={_fmt_n(r0['it'])}  n_poly={_fmt_n(r0['poly'])}  "
                      f"n_spectral={_fmt_n(r0['spectral'])}  (PCA's n_half by BBP: {_fmt_n(bbp)})", header]
        for r in grp:
            if beta == 0:
                lines.append(f"{r['estimator']:<24} {'(null)':>8} {'':>15} {'':>7} {'':>8} {'':>8} {r['overlap_max_n']:9.3f}")
                continue
            if math.isnan(r["overlap_max_n"]) and r["estimator"] == "exhaustive":
                lines.append(f"{r['estimator']:<24} {'not run: C(d,k)=' + format(spe.n_supports(d, k), '.2g'):>41}")
                continue
            band = f"{_fmt_n(r['lo'], r['lo_flag'])}..{_fmt_n(r['hi'], r['hi_flag'])}"
            ratio = lambda ref: (f"{r['flag']}{r['n_half'] / ref:.2f}" if math.isfinite(ref) and math.isfinite(r['n_half'])
                                 else "—")
            lines.append(f"{r['estimator']:<24} {_fmt_n(r['n_half'], r['flag']):>8} {band:>15} {ratio(r['it']):>7} "
                         f"{ratio(r['poly']):>8} {ratio(r['spectral']):>8} {r['overlap_max_n']:9.3f}")
    lines += ["", "score_l2 (mean over t and seeds) at the smallest and largest n, per estimator (d, k, beta):"]
    sl = done(ds, "score_l2").mean(["t", "seed"])
    ests = [str(e) for e in ds.estimator.values]
    lines.append(f"{'d':>4} {'k':>2} {'beta':>4} {'n':>6} " + " ".join(f"{e[:12]:>12}" for e in ests))
    for d in ds.d.values:
        for k in ds.k.values:
            for beta in ds.beta.values:
                for n in (ds.n.values[0], ds.n.values[-1]):
                    v = sl.sel(d=d, k=k, beta=beta, n=n)
                    lines.append(f"{int(d):>4} {int(k):>2} {float(beta):>4g} {int(n):>6} "
                                 + " ".join(f"{float(v.sel(estimator=e)):12.4g}" for e in ests))
    if "overlap_samples_floor" in ds and (ds.beta > 0).any():
        fl = done(ds, "overlap_samples_floor").mean(["k", "n", "seed"])
        lines += ["", "sampling ceiling of a sample-based overlap (overlap_samples_floor: top eigenvector of "
                      f"{json.loads(ds.attrs['spec'])['evaluation']['n_samples']} exact draws; mean over k, n, seeds):"]
        lines.append("  " + "  ".join(f"d={int(d)} beta={float(b):g}: {float(fl.sel(d=d, beta=b)):.3f}"
                                      for d in ds.d.values for b in ds.beta.values if b > 0))
    if (ds.beta == 0).any():
        null = done(ds, "overlap").sel(beta=0.0)
        lines += ["", "null (beta = 0): root-mean-square overlap over n and seeds, against 1/sqrt(d) (exact for any "
                      "estimator equivariant under signed coordinate permutations)"]
        for d in ds.d.values:
            rms = np.sqrt((null.sel(d=d) ** 2).mean(["k", "n", "seed"]))
            lines.append(f"  d={int(d):<4} 1/sqrt(d)={1 / math.sqrt(d):.3f}  " + "  ".join(
                f"{e}={float(rms.sel(estimator=e)):.3f}" for e in ests if e != ORACLE))
    lines += ["", closing_note(rows)]
    return "\n".join(lines)


def closing_note(rows: list[dict]) -> str:
    """Where the trained network's n_half lands, per (d, k, beta > 0): against the classical sizes
    (``position``: 0 at n_IT, 1 at n_poly, log scale) and against the baselines' measured n_half
    (exhaustive search = the information-theoretic reference, covariance thresholding = the
    polynomial-time one, PCA = the spectral one); then medians over the cells where both values
    are interpolated (not bounds)."""
    by = {}
    for r in rows:
        if r["beta"] > 0:
            by.setdefault((r["d"], r["k"], r["beta"]), {})[r["estimator"]] = r
    if not any(NETWORK in v for v in by.values()):
        return "closing note: no network in this study."
    lines = ["closing note — where the trained network lands (n_half of the direction its samples carry; "
             "position 0 = n_IT, 1 = n_poly on a log scale; 'x name' = network n_half / that baseline's measured "
             "n_half):"]
    ratios = {"it": [], "poly": [], "spectral": [], "pca": [], "covariance_thresholding": [], "exhaustive": []}
    pos, beyond = [], 0
    for (d, k, beta), est in by.items():
        net = est[NETWORK]
        if not math.isfinite(net["n_half"]):
            continue
        exact = net["flag"] == ""
        parts = [f"  d={d:<4} k={k} beta={beta:g}: network {_fmt_n(net['n_half'], net['flag'])} "
                 f"[{_fmt_n(net['lo'], net['lo_flag'])}..{_fmt_n(net['hi'], net['hi_flag'])}]"]
        for name in ("it", "poly", "spectral"):
            if math.isfinite(net[name]):
                parts.append(f"{net['flag']}{net['n_half'] / net[name]:.1f} n_{name}")
                if exact:
                    ratios[name].append(net["n_half"] / net[name])
        p = position(net["n_half"], net["it"], net["poly"])
        if math.isfinite(p):
            parts.append(f"position {net['flag']}{p:+.1f}")
            if exact:
                pos.append(p)
                beyond += p > 1
        for name in ("exhaustive", "covariance_thresholding", "pca"):
            o = est.get(name)
            if o is not None and math.isfinite(o["n_half"]) and o["flag"] == "" and exact:
                ratios[name].append(net["n_half"] / o["n_half"])
                parts.append(f"{net['n_half'] / o['n_half']:.2f}x {name}")
        lines.append(", ".join(parts))
    med = lambda a: f"{float(np.median(a)):.2f}" if a else "—"
    rng = lambda a: f" (range {min(a):.2f}..{max(a):.2f}, {len(a)} cells)" if a else ""
    lines.append(f"  medians: network n_half = {med(ratios['it'])} n_IT, {med(ratios['poly'])} n_poly, "
                 f"{med(ratios['spectral'])} n_spectral{rng(ratios['spectral'])}; = {med(ratios['exhaustive'])}x "
                 f"exhaustive{rng(ratios['exhaustive'])}, {med(ratios['covariance_thresholding'])}x covariance "
                 f"thresholding{rng(ratios['covariance_thresholding'])}, {med(ratios['pca'])}x pca{rng(ratios['pca'])}")
    if pos:
        lines.append(f"  the network's n_half lies beyond the polynomial-time size (position > 1) in {beyond} of {len(pos)} "
                     f"(d, k, beta) where n_poly is defined (median position {med(pos)}); against the measured "
                     f"baselines it is {med(ratios['pca'])}x PCA's n_half and {med(ratios['covariance_thresholding'])}x "
                     "covariance thresholding's.")
    return "\n".join(lines)

