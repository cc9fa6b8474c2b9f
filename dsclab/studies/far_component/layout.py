"""The store of the far-component study: per cell (truth, d, n, seed) the trained network's L2 and
quantile score errors per t (and delta), the far component's share of its L2 error (``far_l2``),
the L2 error of the bulk's exact score s_1 under the truth (``bulk_score_l2``), the samples from
the far component among the n, the training record; and the closed form (1 - eta)^n, the
probability that none of n samples of p_2 comes from its far component."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.figure1 import axis_coords

from .spec import CELL_DIMS, LAWS, FarComponentSpec

PER_CELL = {
    "far_samples": ("samples from p_2's far component N(R e_1, I) among the n", "1"),
    "train_seconds": ("training wall time", "s"),
    "train_loss": ("final training loss (mean per sample, last 10% of steps)", "1"),
    "eval_seconds": ("evaluation wall time", "s"),
}

PER_T = {
    "far_l2": ("the far component's share of the L2 error: E[||s_hat - s||^2 1(x from the far component)] "
               "on fresh x ~ q_t (0 under p1)", "1"),
    "bulk_score_l2": ("L2 error of the bulk's exact score s_1 = -x under the truth, E||s_1 - s||^2 "
                      "(0 under p1)", "1"),
}


def template(spec: FarComponentSpec) -> xr.Dataset:
    """The empty store; (1 - eta)^n filled."""
    coords = axis_coords(spec)
    variables = {
        **layout.over(CELL_DIMS, PER_CELL),
        **layout.score_error_variables(CELL_DIMS, ("score_l2", "score_quantile")),
        **layout.over(CELL_DIMS + ("t",), PER_T),
    }
    p_none = (1.0 - spec.eta) ** np.asarray(spec.n, dtype=np.float64)
    closed = {"p_no_far": (("n",), p_none, {"long_name": "(1 - eta)^n: P[no sample of p_2 from its far component]",
                                            "units": "1"})}
    coord_attrs = layout.coord_attrs("d", "n", "seed", "t", "delta", truth="true law of the samples (p1: the control)")
    return layout.template(spec, coords, CELL_DIMS, variables, coord_attrs, closed=closed, attrs={
        "laws": "; ".join(f"{k} = {v}" for k, v in LAWS.items()), "eta": spec.eta, "R": spec.R,
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise); n is the paper's m; "
                       "a p2 cell and its p1 control share their draws and training randomness"})
