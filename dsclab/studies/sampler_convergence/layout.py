"""Store layout of the sampler-convergence study: dims, coordinates, variables with units and
long names.

Cell dims (target, d, score); one task per cell computes every sampler x NFE (and every seed
where sampled). The product target's 1-D curves do not depend on d: one task per score computes
them and the d cells multiply. Variables:

* ``kl (target, d, sampler, nfe, score)`` nats, exact KL(p_out || q_tmin), the sampler's output
  law first (NaN where not exact: by declaration, ``spec.kl_exact``, never from a caught
  exception); ``kl_reverse``, the same dims: KL(q_tmin || p_out), the direction the convergence
  theorems bound, where it is exact and cheap (the gaussian target, closed form; NaN elsewhere:
  ``exact``). Each carries its direction in the attribute ``direction``;
* ``kl_mass_defect (target, d, sampler, nfe, score)``: product_mixture only;
* ``sliced_w2``, ``mmd (target, d, sampler, nfe, score, seed)``: sampled cells (mixture
  target, trained score; every cell with ``sample_all``) up to ``sampling.max_nfe``, +inf
  where the sampler's output was not finite, NaN elsewhere;
* ``sliced_w2_floor``, ``mmd_floor (target, d, score, seed)``: every cell (they depend on
  (target, d, seed) only and repeat along score);
* ``score_l2 (target, d, score, seed, t)``: E||s_hat - s||^2 on fresh x ~ q_t (0 for exact,
  eta^2 d for perturbed, measured for trained);
* ``train_seconds (target, d, score, seed)`` (0 for the closed-form scores);
* ``seconds (target, d, score)``: wall time of the cell.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.studies.sampler_convergence.spec import CELL_DIMS, SamplerConvergenceSpec


VARIABLES = {
    # name: (dims, long name, units)
    "kl": (("target", "d", "sampler", "nfe", "score"),
           "exact KL(sampler output || q_t_min) (NaN where not exact)", "nats"),
    "kl_reverse": (("target", "d", "sampler", "nfe", "score"),
                   "exact KL(q_t_min || sampler output) (gaussian target; NaN elsewhere)", "nats"),
    "kl_mass_defect": (("target", "d", "sampler", "nfe", "score"),
                       "1 - output mass on the quadrature grid (product_mixture; > 1e-4: KL rough)", "1"),
    **layout.sample_metric_variables(("sliced_w2", "mmd"), ("target", "d", "sampler", "nfe", "score", "seed"),
                                     ("target", "d", "score", "seed"),
                                     of="samples to fresh q_t_min draws (+inf: non-finite output)"),
    **layout.score_error_variables(("target", "d", "score", "seed"), ("score_l2",)),
    "train_seconds": (("target", "d", "score", "seed"),
                      "training wall time of the score (share of the seeds' ensemble; 0: closed form)", "s"),
    "seconds": (("target", "d", "score"), "wall time of the cell", "s"),
}

KL_DIRECTIONS = {
    "kl": "KL(p_out || q_t_min): the sampler's output law first (density propagation and quadrature give this "
          "one); the convergence theorems bound KL(q_t_min || p_out): same rate in NFE, different floor",
    "kl_reverse": "KL(q_t_min || p_out): the direction the convergence theorems (Wu et al. 2024) bound",
}
"""The ``direction`` attribute of each KL variable."""

COORD_ATTRS = layout.coord_attrs("d", "sampler", "nfe", target="target law",
                                 score="score kind (exact, perturbed = exact + eta (1,...,1), trained)",
                                 seed="seed (Monte Carlo: samples, training)",
                                 t={"long_name": "OU time of the score error", "units": "1"})


def template(spec: SamplerConvergenceSpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending."""
    coords = {
        "target": np.array(spec.target, dtype=str), "d": np.array(spec.d, dtype=np.int64),
        "score": np.array(spec.score, dtype=str), "sampler": np.array(spec.sampler, dtype=str),
        "nfe": np.array(spec.nfe, dtype=np.int64), "seed": np.array(spec.seed, dtype=np.int64),
        "t": np.array(spec.sampling.score_t, dtype=np.float64),
    }
    ds = layout.template(spec, coords, CELL_DIMS, VARIABLES, COORD_ATTRS, attrs={
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise); reverse SDE from "
                       f"{'q_T' if spec.start == 'exact' else 'N(0, I)'} at T={spec.T} to t_min={spec.t_min} "
                       f"on the '{spec.schedule}' grid; NFE = score evaluations per sample",
        "kl_route": "gaussian: exact Gaussian propagation; product_mixture: d x 1-D quadrature KL; "
                    "trained score and mixture target: no exact KL (sliced_w2, mmd from samples)",
    })
    for name, direction in KL_DIRECTIONS.items():
        ds[name].attrs["direction"] = direction
    return ds
