"""The store of the two-scores study: per cell (truth, d, n, seed) the ERM's pick, the DSM-loss
gap behind it and the samples from the far component; per t (and delta) the picked score's L2 and
quantile errors (``dsclab.metrics.SCORE_ERRORS``) and those a wrong pick would have; and the closed
form (1 - eta)^n, the probability that none of n samples of p_2 comes from its far component."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.figure1 import axis_coords
from dsclab.studies.two_scores.spec import CELL_DIMS, LAWS, TwoScoresSpec

PER_CELL = {
    "picked": ("score the ERM picked: 1 (s_1, of p_1) or 2 (s_2, of p_2)", "1"),
    "dsm_loss_gap": ("empirical DSM loss of s_2 minus that of s_1 on the cell's samples (< 0: s_2 wins)", "1"),
    "far_samples": ("samples from p_2's far component N(R e_1, I) among the n", "1"),
    "eval_seconds": ("evaluation wall time", "s"),
}


def template(spec: TwoScoresSpec) -> xr.Dataset:
    """The empty store; (1 - eta)^n filled."""
    coords = axis_coords(spec)
    variables = {
        **layout.over(CELL_DIMS, PER_CELL),
        **layout.score_error_variables(CELL_DIMS, ("score_l2", "score_quantile")),
        "wrong_l2": (CELL_DIMS + ("t",), "L2 score error of the candidate that is not the truth's score", "1"),
        "wrong_quantile": (CELL_DIMS + ("t", "delta"), "(1 - delta)-quantile of ||s_other - s|| of the candidate "
                                                       "that is not the truth's score", "1"),
    }
    p_none = (1.0 - spec.eta) ** np.asarray(spec.n, dtype=np.float64)
    closed = {"p_no_far": (("n",), p_none, {"long_name": "(1 - eta)^n: P[no sample of p_2 from its far component]",
                                            "units": "1"})}
    coord_attrs = layout.coord_attrs("d", "n", "seed", "t", "delta", truth="true law of the samples")
    return layout.template(spec, coords, CELL_DIMS, variables, coord_attrs, closed=closed, attrs={
        "laws": "; ".join(f"{k} = {v}" for k, v in LAWS.items()), "eta": spec.eta, "R": spec.R,
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise); n is the paper's m"})
