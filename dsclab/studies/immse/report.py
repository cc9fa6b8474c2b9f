"""The text report of the I-MMSE study: likelihood gaps per denoiser, the trained gap's trend in
n, and the ensemble against its members and the entropy (nats per dimension, done cells only)."""
from __future__ import annotations

import math

import numpy as np
import xarray as xr

from dsclab.studies.immse.denoisers import ENSEMBLE_MEMBERS
from dsclab.study import Status


def done(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``ds[var]`` on done cells, NaN elsewhere."""
    return ds[var].where(ds["status"] == Status.DONE)


def gap(ds: xr.Dataset) -> xr.DataArray:
    """nll_immse - nll_exact (nats per dimension), done cells only."""
    return done(ds, "nll_immse") - done(ds, "nll_exact")


def seed_mean_se(se: xr.DataArray) -> xr.DataArray:
    """SE of a mean over seeds of independent estimates: sqrt(sum se^2) / S."""
    s = se.notnull().sum("seed")
    return np.sqrt((se ** 2).sum("seed")) / s.where(s > 0)


def ensemble_check(ds: xr.Dataset) -> xr.DataArray:
    """(ensemble - nll_exact) / paired SE per cell: the number of SEs the ensemble sits above the
    held-out points' exact entropy estimate (negative: below)."""
    ens = gap(ds).sel(denoiser="ensemble")
    return ens / done(ds, "nll_gap_se").sel(denoiser="ensemble")


def report(ds: xr.Dataset) -> str:
    """Gap tables per data law (rows d, n; columns denoisers; mean over seeds +- SE), the
    trained gap's trend in n, and the ensemble against its members and the entropy."""
    ds = ds.load()
    g = gap(ds).mean("seed")
    g_se = seed_mean_se(done(ds, "nll_gap_se"))
    ex = done(ds, "nll_exact").mean(["seed", "n"])
    lines = [f"I-MMSE study {ds.attrs.get('name', '')}: nll_immse - nll_exact in nats per dimension "
             f"(mean over {ds.sizes['seed']} seeds +- SE); ensemble members: {ds.attrs.get('ensemble_members', '')}"]
    for data in ds.data.values:
        lines += ["", f"[{data}]"]
        header = f"{'d':>4} {'n':>7} {'entropy/d':>10} " + " ".join(f"{k:>19}" for k in ds.denoiser.values)
        lines.append(header)
        for d in ds.d.values:
            for n in ds.n.values:
                cells = [f"{float(g.sel(data=data, d=d, n=n, denoiser=k)):+9.4f} ±{float(g_se.sel(data=data, d=d, n=n, denoiser=k)):7.4f}"
                         for k in ds.denoiser.values]
                lines.append(f"{int(d):>4} {int(n):>7} {float(ex.sel(data=data, d=d)):10.4f} " + " ".join(f"{c:>19}" for c in cells))
    lines += ["", "trained gap along n (mean over seeds): shrinks as n grows?"]
    for data in ds.data.values:
        for d in ds.d.values:
            tr = g.sel(data=data, d=d, denoiser="trained").values
            mono = bool(np.all(np.diff(tr) < 0)) if np.isfinite(tr).all() else None
            lines.append(f"  {data:>17} d={int(d):<3} " + " -> ".join(f"{v:.4f}" for v in tr) + f"   {'yes' if mono else 'NO' if mono is False else 'incomplete'}")
    z = ensemble_check(ds)
    best_member = gap(ds).sel(denoiser=list(ENSEMBLE_MEMBERS)).min("denoiser")
    share = done(ds, "ensemble_share").sel(denoiser=list(ENSEMBLE_MEMBERS)).mean(["seed", "n"])
    lines += ["", "ensemble vs best member and entropy (over n and seeds): mean gaps, worst (ensemble - exact) / SE,"
                  " share of draws picked per member"]
    for data in ds.data.values:
        for d in ds.d.values:
            zz = z.sel(data=data, d=d)
            sh = ", ".join(f"{k} {float(share.sel(data=data, d=d, denoiser=k)):.2f}" for k in ENSEMBLE_MEMBERS)
            lines.append(f"  {data:>17} d={int(d):<3} ensemble {float(gap(ds).sel(data=data, d=d, denoiser='ensemble').mean()):+.4f}"
                         f"  best member {float(best_member.sel(data=data, d=d).mean()):+.4f}"
                         f"  min z {float(zz.min()):+.2f}  [{sh}]")
    zmin = float(z.min()) if np.isfinite(z).any() else math.nan
    lines.append(f"no ensemble more than 3 SE below the entropy: {'yes' if zmin >= -3 else 'NO'} (min z = {zmin:+.2f})")
    return "\n".join(lines)
