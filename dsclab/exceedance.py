"""Exceedance probabilities over replicates: P[error > tau] with a binomial interval (the statistic
of Gupta et al. 2023, Figure 1: how likely a score learned from n samples misses an error
threshold, science.md §2). Numpy / xarray in, no I/O; re-exported by :mod:`dsclab.analysis`.

Conventions (stated once).

* The replicates are the values along one dim (``seed``): S independent trainings of the same
  cell. Of the m finite values, k exceed tau (strictly: ``error > tau``); the estimate is
  p = k / m, and a non-finite value (a failed or pending cell) is left out of both counts.
* The interval is Clopper–Pearson's ("exact") at ``level`` (default 0.95):
  lo = Beta^{-1}((1 - level)/2; k, m - k + 1) (0 when k = 0) and
  hi = Beta^{-1}((1 + level)/2; k + 1, m - k) (1 when k = m). Why this one and not Wilson's: the
  readings that matter here sit at the ends (k = 0 or k = m out of ~20 seeds: "the L2 error
  misses at every seed, the quantile error at none"), where Wilson's score interval is known to
  under-cover for some p (its coverage oscillates below the nominal level near 0 and 1), while
  Clopper–Pearson's covers with probability >= level for every p and m (it inverts two exact
  one-sided binomial tests). Its price, a somewhat wider interval, is small at these ends: for
  k = 0 of m = 20 the upper end is 0.168 against Wilson's 0.161.
* tau is a reading choice, not a setting of the numbers: no spec field holds it.
  :func:`tau_levels` derives levels from the stored errors themselves (geometric points between
  the 10th and 90th percentiles of every value being compared, pooled), so that they sit inside
  the range the curves cover; a reader may pass its own (``dsclab report STORE --tau 0.1,0.3``
  sets ``ds.attrs["exceedance_tau"]`` on the dataset it reads, which :func:`taus_for` prefers).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

__all__ = ["exceedance", "clopper_pearson", "tau_levels", "taus_for", "TAU_ATTR", "format_p", "score_error_norms",
           "table_lines", "INTERVAL_NOTE"]

INTERVAL_NOTE = "Clopper–Pearson 95% interval"

TAU_ATTR = "exceedance_tau"
"""Attribute of an in-memory dataset (never of a store) holding a reader's tau levels."""


def clopper_pearson(k, m, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Clopper–Pearson interval (lo, hi) for a binomial proportion with k successes out of m
    trials (arrays broadcast; nan where m = 0)."""
    k, m = np.asarray(k, dtype=np.float64), np.asarray(m, dtype=np.float64)
    a = (1.0 - level) / 2.0
    # The Beta(a, b) quantile at q is betaincinv(a, b, q) (Boost's ibeta_inv): bit for bit what
    # scipy.stats.beta.ppf(q, a, b) returns (checked for every k of m <= 300, the ends of m up to
    # 1e5, levels 0 to 1), without importing scipy.stats (~0.55 s more than scipy.special's
    # ~0.13 s). Imported here: a spec check needs neither.
    from scipy.special import betaincinv

    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, betaincinv(k, m - k + 1, a), 0.0)
        hi = np.where(k < m, betaincinv(k + 1, m - k, 1.0 - a), 1.0)
    bad = m <= 0
    return np.where(bad, np.nan, lo), np.where(bad, np.nan, hi)


def exceedance(errors: xr.DataArray, tau: float | Sequence[float], dim: str = "seed",
               level: float = 0.95) -> xr.Dataset:
    """P[error > tau] over the replicates along ``dim`` of ``errors``, per index of its other dims.

    Returns a Dataset over the other dims (and ``tau`` when ``tau`` is a sequence) with ``p``
    (k / m), ``lo`` and ``hi`` (the Clopper–Pearson interval at ``level``, module docstring),
    ``k`` (replicates above tau) and ``m`` (finite replicates); p, lo, hi are nan where m = 0.
    """
    scalar = np.ndim(tau) == 0
    taus = xr.DataArray(np.atleast_1d(np.asarray(tau, dtype=np.float64)), dims="tau")
    taus = taus.assign_coords(tau=taus.values)
    finite = np.isfinite(errors)
    k = ((errors > taus) & finite).sum(dim)
    m = finite.sum(dim).broadcast_like(k)
    lo, hi = clopper_pearson(k.values, m.values, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m.where(m > 0)
    out = xr.Dataset({"p": p, "lo": k.copy(data=lo), "hi": k.copy(data=hi), "k": k, "m": m},
                     attrs={"interval": "Clopper-Pearson", "level": level, "replicates": dim})
    out["p"].attrs["long_name"] = f"P[error > tau] over {dim}"
    return out.isel(tau=0, drop=True) if scalar else out.transpose("tau", ...)


def tau_levels(*errors: xr.DataArray, levels: int = 3, quantiles: tuple[float, float] = (0.1, 0.9)) -> list[float]:
    """``levels`` geometric points from the ``quantiles[0]`` to the ``quantiles[1]`` quantile of the
    finite positive values of all ``errors`` pooled (the values being compared, e.g. the L2 and
    the quantile errors of one t over every n and seed); one level at the geometric middle when
    ``levels`` = 1; empty when no value is finite and positive."""
    vals = np.concatenate([np.asarray(e.values, dtype=np.float64).ravel() for e in errors])
    vals = vals[np.isfinite(vals) & (vals > 0)]
    if vals.size == 0:
        return []
    lo, hi = np.quantile(vals, quantiles)
    if levels == 1:
        return [float(np.sqrt(lo * hi))]
    return [float(v) for v in np.geomspace(lo, hi, levels)]


def taus_for(ds: xr.Dataset, *errors: xr.DataArray, levels: int = 3) -> list[float]:
    """The reader's tau levels (``ds.attrs[TAU_ATTR]``) if set, else :func:`tau_levels` of ``errors``."""
    given = ds.attrs.get(TAU_ATTR)
    if given is not None and len(np.atleast_1d(given)):
        return [float(v) for v in np.atleast_1d(given)]
    return tau_levels(*errors, levels=levels)


def format_p(ex: xr.Dataset) -> str:
    """'p [lo, hi] (k/m)' of a 0-d :func:`exceedance` result."""
    m = int(ex.m)
    if m == 0:
        return "n/a"
    return f"{float(ex.p):.2f} [{float(ex.lo):.2f}, {float(ex.hi):.2f}] ({int(ex.k)}/{m})"


def score_error_norms(l2: xr.DataArray, quantile: xr.DataArray, eta: float = float("nan")) -> xr.DataArray:
    """The score errors of one reading in norm units, stacked along a dim ``error``: ``"√L2"`` =
    (E||s_hat - s||^2)^(1/2) (so P[√L2 > tau] = P[L2 > tau^2]) and, per quantile level delta, the
    (1 - delta)-quantile of ||s_hat - s||, labelled ``"q δ=<delta>"`` (with ``<η`` / ``>η`` when the
    smallest component weight ``eta`` is given). ``l2`` has no ``delta`` dim, ``quantile`` has one."""
    side = lambda dl: "" if not np.isfinite(eta) else ("<η" if dl < eta else ">η")
    labels = [f"q δ={float(dl):g}{side(float(dl))}" for dl in quantile.delta.values]
    q = quantile.assign_coords(delta=labels).rename(delta="error")
    return xr.concat([np.sqrt(l2).expand_dims(error=["√L2"]), q], dim="error", coords="minimal",
                     compat="override").transpose("error", ...)


def table_lines(ex: xr.Dataset, x_dim: str = "n", indent: str = "    ") -> list[str]:
    """Rows ``x_dim``, columns ``error``: 'p [lo, hi]' of an :func:`exceedance` result whose only
    dims are (error, x_dim)."""
    errs = [str(e) for e in ex.error.values]
    w = 18
    rows = [indent + f"{x_dim:>6} " + "".join(f"{e:>{w}}" for e in errs)]
    for x in ex[x_dim].values:
        cells = []
        for e in errs:
            r = ex.sel({x_dim: x, "error": e})
            cells.append("n/a" if int(r.m) == 0 else f"{float(r.p):.2f} [{float(r.lo):.2f},{float(r.hi):.2f}]")
        rows.append(indent + f"{int(x):>6} " + "".join(f"{c:>{w}}" for c in cells))
    return rows


def figure1_verdict(ex: xr.Dataset, region: Sequence, above: Sequence[str], l2: str,
                    region_text: str) -> tuple[str, str]:
    """The reading of Gupta et al.'s Figure 1 statement (the L2 error misses tau far more often than
    the (1 - delta)-quantile error with delta > eta, for n eta small) on exceedance readings ``ex``
    (:func:`exceedance` over seeds, per ``error``, ``n`` and ``t``): ``l2`` names the L2 reading,
    ``above`` the quantile readings with delta > eta, ``region`` the n it is read at. DISAGREES
    where some L2 reading misses no more often than some quantile reading (each listed);
    INCONCLUSIVE where it misses more often but the Clopper–Pearson intervals overlap; else AGREES.
    ``region_text`` says the region in the AGREES line. Shared by the kinds two_scores (exact
    scores) and far_component (trained networks), which read the statement by this one rule."""
    against, overlap = [], []
    for t in ex["t"].values:
        for n in region:
            a = ex.sel(t=t, n=n, error=l2)
            for e in above:
                q = ex.sel(t=t, n=n, error=e)
                reading = f"t={t:g} n={n}: {l2} {format_p(a)} vs {e} {format_p(q)}"
                if float(a.p) <= float(q.p):
                    against.append(reading)
                elif not float(a.lo) > float(q.hi):
                    overlap.append(reading)
    if against:
        return "DISAGREES", "; ".join(against)
    if overlap:
        return "INCONCLUSIVE", "intervals overlap at " + "; ".join(overlap)
    return "AGREES", (f"for {region_text} at every t, the {l2} reading's interval lies above every "
                      "delta > eta quantile reading's")
