"""The memorization study's text report and summary table (read an ``xr.Dataset``; no Prefect).

Values of cells that are not done are masked out. Bands are over seeds: ``mean [min, max]``.
Crossings along n (``dsclab.analysis.crossing``, linear in log n between grid points, on the linear
scale of the fraction): where the memorization fraction of network a falls below 0.5 and 0.1, and
where the two networks' similarity rises above 0.9 — of the seed-mean curve, with the range of
each seed's own crossing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from dsclab import analysis
from dsclab.study import Status

CROSSINGS = (("memorized", 0.5, "down"), ("memorized", 0.1, "down"), ("similarity_ab", 0.9, "up"))


def _done(ds: xr.Dataset, var: str) -> xr.DataArray:
    return ds[var].where(ds["status"] == Status.DONE)


def curves(ds: xr.Dataset) -> xr.Dataset:
    """Per (d, n, seed): the curves the report and the plot read (network a where a variable has two)."""
    return xr.Dataset({
        "memorized": _done(ds, "memorized").sel(network="a", drop=True),
        "memorized_b": _done(ds, "memorized").sel(network="b", drop=True),
        "memorized_test": _done(ds, "memorized_test"),
        "similarity_ab": _done(ds, "similarity_ab"),
        "train_similarity": _done(ds, "train_similarity").mean("network"),
        "nll_bpd": _done(ds, "nll_bpd"),
        "nll_gauss_bpd": _done(ds, "nll_gauss_bpd"),
        "dsm_heldout": _done(ds, "dsm_heldout").mean("t"),
        "sliced_w2": _done(ds, "sliced_w2"),
        "sliced_w2_floor": _done(ds, "sliced_w2_floor"),
        "mmd": _done(ds, "mmd"),
        "mmd_floor": _done(ds, "mmd_floor"),
    }).load()


def _band(v: np.ndarray, fmt: str = ".3g") -> str:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "-"
    if v.size == 1:
        return f"{v[0]:{fmt}}"
    return f"{v.mean():{fmt}} [{v.min():{fmt}}, {v.max():{fmt}}]"


def crossing(ds_d: xr.Dataset, var: str, level: float, direction: str) -> tuple[str, list]:
    """The crossing of the seed mean of ``var`` along n (formatted) and each seed's (Crossing objects)."""
    n = ds_d.n.values.astype(float)
    cur = ds_d[var]
    mean = analysis.crossing(n, cur.mean("seed").values, level, direction=direction, y_scale="linear")
    seeds = [analysis.crossing(n, cur.sel(seed=s).values, level, direction=direction, y_scale="linear")
             for s in cur.seed.values]
    return mean, seeds


def _fmt(c) -> str:
    if c.censored == "left":
        return f"<= {c.bound:.3g}"
    if c.censored == "right":
        return f"> {c.bound:.3g}"
    if c.censored == "unknown":
        return "?"
    return f"{c.value:.3g}"


def crossing_lines(ds: xr.Dataset) -> list[str]:
    c = curves(ds)
    lines = ["Crossings along n (seed mean; per seed in brackets; '<=' already past at the smallest n, '>' not "
             "reached at the largest):"]
    for d in c.d.values:
        parts = []
        for var, level, direction in CROSSINGS:
            mean, seeds = crossing(c.sel(d=d), var, level, direction)
            what = f"{'memorized' if var == 'memorized' else 'similarity'} {'<' if direction == 'down' else '>'} {level}"
            parts.append(f"{what}: n = {_fmt(mean)} [{', '.join(_fmt(s) for s in seeds)}]")
        lines.append(f"  d={int(d)}: " + "; ".join(parts))
    return lines


def checks(ds: xr.Dataset) -> list[str]:
    """The study's claims, per d: memorization at the smallest n above that at the largest for every
    seed; the held-out NLL lower at the largest n than at the smallest for every seed, and its
    seed mean falling along n."""
    c = curves(ds)
    lines = ["Checks (every seed):"]
    for d in c.d.values:
        s = c.sel(d=d)
        mem = s.memorized.isel(n=0) > s.memorized.isel(n=-1)
        nll = s.nll_bpd.isel(n=-1) < s.nll_bpd.isel(n=0)
        steps = np.diff(s.nll_bpd.mean("seed").values)
        lines.append(
            f"  d={int(d)}: memorized(n={int(s.n[0])}) > memorized(n={int(s.n[-1])}): {int(mem.sum())}/{mem.size} "
            f"seeds; nll_bpd(n={int(s.n[-1])}) < nll_bpd(n={int(s.n[0])}): {int(nll.sum())}/{nll.size} seeds; "
            f"seed-mean nll_bpd falls at {int((steps < 0).sum())} of {steps.size} steps in n")
    return lines


ROWS = (("memorized", "memorized (a)"), ("memorized_b", "memorized (b)"), ("memorized_test", "memorized (test)"),
        ("similarity_ab", "similarity a~b"), ("train_similarity", "similarity to nearest train"),
        ("nll_bpd", "NLL bits/dim"), ("nll_gauss_bpd", "Gaussian NLL bits/dim"),
        ("dsm_heldout", "held-out DSM (mean over t)"), ("sliced_w2", "sliced W2 to test"),
        ("sliced_w2_floor", "  its floor"), ("mmd", "MMD to test"), ("mmd_floor", "  its floor"))


def report(ds: xr.Dataset) -> str:
    c = curves(ds)
    done = int((ds["status"] == Status.DONE).sum())
    lines = [f"Memorization study {ds.attrs.get('name', '')}: {done}/{ds['status'].size} cells done; data "
             f"{ds.attrs.get('data', '')}; seeds {list(map(int, ds.seed.values))}; values mean [min, max] over seeds"]
    for d in c.d.values:
        s = c.sel(d=d)
        lines.append(f"d={int(d)}:")
        header = f"  {'n':>28} " + " ".join(f"{int(n):>22}" for n in s.n.values)
        lines.append(header)
        for var, label in ROWS:
            lines.append(f"  {label:>28} " + " ".join(f"{_band(s[var].sel(n=n).values):>22}" for n in s.n.values))
    lines += crossing_lines(ds)
    lines += checks(ds)
    return "\n".join(lines)


def table(ds: xr.Dataset) -> pd.DataFrame:
    """The summary table of the Prefect UI: per (d, n), the seed means of the main curves."""
    c = curves(ds)[["memorized", "memorized_test", "similarity_ab", "nll_bpd", "nll_gauss_bpd", "sliced_w2"]]
    return c.mean("seed").to_dataframe().reset_index().set_index(["d", "n"])
