"""One cell of the sampler-convergence study: every value of a (target, d, score) cell, over
sampler x NFE (x seed), as the Dataset its region of the store receives (``layout``).

The exact route (``exact``) gives ``kl`` where ``spec.kl_exact`` holds; the sampled route
(``sampled``) gives ``sliced_w2`` and ``mmd`` where ``spec.sampled_route`` holds; the floors and
the score error are stored in every cell. A cell with a trained score gets its networks from the
kind's train stage (``targets.train_members``); it never trains here.
"""
from __future__ import annotations

import time

import numpy as np
import xarray as xr

from dsclab.studies.sampler_convergence.exact import gaussian_kl_pair, product_kl_1d
from dsclab.studies.sampler_convergence.sampled import Reference, sampled_curves, score_l2
from dsclab.studies.sampler_convergence.spec import SamplerConvergenceSpec, SrkCell, exact_route, sampled_route
from dsclab.studies.sampler_convergence.targets import exact_score, make_target, member_score, perturb, trained_score
from dsclab.train import TrainResult


def run_cell(spec: SamplerConvergenceSpec, cell: SrkCell, kl1d: dict | None = None,
             members: list[TrainResult] | None = None) -> xr.Dataset:
    """All values of one (target, d, score) cell as a Dataset over (sampler, nfe, seed, t).

    ``kl1d``: the output of :func:`product_kl_1d` for this score kind (product target, exact
    route). ``members``: the cell's trained networks, one per seed (``targets.train_members``,
    restored on the device they run on), needed by a cell that :func:`~dsclab.studies.sampler_convergence.spec.needs_training`. An
    exception of the exact route propagates (``exact``).
    """
    t0 = time.perf_counter()
    S, N, R, Tn = len(spec.sampler), len(spec.nfe), len(spec.seed), len(spec.sampling.score_t)
    kl = np.full((S, N), np.nan)
    kl_rev = np.full((S, N), np.nan)  # KL(q_tmin || p_out): exact on the gaussian target only
    defect = np.full((S, N), np.nan)
    sw, mm = np.full((S, N, R), np.nan), np.full((S, N, R), np.nan)
    l2 = np.full((R, Tn), np.nan)
    tr_sec = np.zeros(R)  # closed-form scores: no training
    dist = make_target(spec, cell.target, cell.d)
    if exact_route(cell):
        if cell.target == "gaussian":
            kl, kl_rev = gaussian_kl_pair(spec, cell.d, cell.score)
        else:
            if kl1d is None:
                kl1d = product_kl_1d(spec, cell.score)
            kl = cell.d * np.asarray(kl1d["kl"], dtype=np.float64)
            defect = np.asarray(kl1d["defect"], dtype=np.float64)
    if cell.score == "exact":
        l2[:] = 0.0
    elif cell.score == "perturbed":
        l2[:] = spec.eta ** 2 * cell.d
    # The floors depend on (target, d, seed) only; every cell stores them (cheap), so that every
    # cell's values are complete and the floor sits beside each curve.
    refs = [Reference(spec, cell, dist, seed) for seed in spec.seed]
    sw_floor = np.array([r.sliced_w2_floor for r in refs])
    mm_floor = np.array([r.mmd_floor for r in refs])
    if sampled_route(spec, cell):
        if cell.score == "trained":
            if members is None:
                raise ValueError(f"cell {cell.target}, d={cell.d} needs its trained networks (the train stage's)")
            score = trained_score([res.model for res in members])
            for r, (seed, res) in enumerate(zip(spec.seed, members)):
                tr_sec[r] = res.seconds
                l2[r] = score_l2(spec, cell, dist, member_score(res.model), seed)
        else:
            score = exact_score(cell.target, dist)
            if cell.score == "perturbed":
                score = perturb(score, spec.eta)
        vals = sampled_curves(spec, cell, score, refs)
        sw, mm = vals["sliced_w2"], vals["mmd"]
    sn = ("sampler", "nfe")
    ds = xr.Dataset(
        {
            "kl": (sn, kl), "kl_reverse": (sn, kl_rev), "kl_mass_defect": (sn, defect),
            "sliced_w2": (sn + ("seed",), sw), "mmd": (sn + ("seed",), mm),
            "sliced_w2_floor": (("seed",), sw_floor), "mmd_floor": (("seed",), mm_floor),
            "score_l2": (("seed", "t"), l2),
            "train_seconds": (("seed",), tr_sec),
        },
        coords={"sampler": list(spec.sampler), "nfe": list(spec.nfe), "seed": list(spec.seed),
                "t": list(spec.sampling.score_t)},
    )
    ds["seconds"] = ((), time.perf_counter() - t0)
    return ds
