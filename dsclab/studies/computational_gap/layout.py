"""The computational-gap study's store layout (the template of ``StudyKind.template``): per-drift
curves and summaries, per-cell training records, and the closed-form thresholds of each (n, k)
(conventions in ``.numerics``)."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.lazy import deferred
from dsclab.studies.computational_gap.spec import CELL_DIMS, ComputationalGapSpec

spike = deferred("dsclab.studies.computational_gap.spike", globals())  # torch: when a store is made (dsclab.lazy)

PER_DRIFT = {
    "integrated_loss": ("int_0^T E||m(y_t,t) - x||^2 dt, T = T_mult n (uniform in SL time)", "1"),
    "integrated_loss_se": ("standard error of integrated_loss over samples", "1"),
    "frac_norm_above_half": ("fraction of generated samples with ||x_hat||_F > 1/2 (target 1/2)", "1"),
    "frac_norm_below_tenth": ("fraction of generated samples with ||x_hat||_F < 0.1 (target 1/2)", "1"),
    "w1_norm": ("W1 between the law of ||x_hat||_F and the target's (0 or 1 w.p. 1/2)", "1"),
    "frac_rank_one": ("fraction of samples within min(0.25, 0.45/sqrt k) of some u u^T (target 1/2)", "1"),
    "frac_diverged": ("fraction of generated samples that overflowed (non-finite; their norm is stored as inf)", "1"),
    "sample_seconds": ("wall time of the SL sampler with this drift", "s"),
}
PER_CELL = {
    "train_seconds": ("training wall time of the network", "s"),
    "train_loss": ("mean drift loss over the last 10% of training steps", "1"),
    "cell_seconds": ("wall time of the cell", "s"),
}
NEAR_ONE = 0.1
"""A sample is near norm 1 when | ||x_hat||_F - 1 | < NEAR_ONE (the spike's norm; the README's > 0.9)."""
PER_BUDGET = {  # on a budget axis only (``mpnn.budget`` a list): the collapse against the training budget
    "loss_ratio_bayes": ("integrated_loss of mpnn / integrated_loss of bayes (same cell, common random numbers)", "1"),
    "loss_ratio_spectral_paper": ("integrated_loss of mpnn / integrated_loss of spectral_paper (same cell)", "1"),
}
PER_DRIFT_BUDGET = {
    "frac_norm_near_one": (f"fraction of generated samples with | ||x_hat||_F - 1 | < {NEAR_ONE} (target 1/2)", "1"),
}
PER_CELL_MPNN = {
    "mpnn_train_seconds": ("training wall time of the mpnn (all three stages, resumed ones included)", "s"),
    "mpnn_train_loss": ("best training loss (epoch mean of sum_ij (x_hat - x)^2) of the mpnn's last stage", "1"),
}


def template(spec: ComputationalGapSpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending, closed forms filled."""
    ev = spec.evaluation
    coords = {"n": np.array(spec.n, dtype=np.int64), "k": np.array(spec.k, dtype=np.int64),
              "seed": np.array(spec.seed, dtype=np.int64), "drift": np.array(spec.drift, dtype=str),
              "t": np.array(ev.t, dtype=np.float64), "sample": np.arange(ev.n_samples, dtype=np.int64)}
    cells = spec.cell_dims  # CELL_DIMS, then budget on a budget axis
    extra = cells[len(CELL_DIMS):]
    if spec.budget_axis:
        coords["budget"] = np.array(spec.mpnn.budget, dtype=np.float64)
    curve = ("drift", "n", "k", "t", "seed") + extra
    variables = {
        "mse": (curve, "MSE(t) = E||m(y_t, t) - x||^2", "1"),
        "mse_se": (curve, "standard error of mse", "1"),
        "sample_norm": (("drift", "n", "k", "seed") + extra + ("sample",), "||x_hat||_F of generated samples", "1"),
        **layout.over(("drift",) + cells, PER_DRIFT),
        **layout.over(cells, {name: v for name, v in PER_CELL.items()
                              if spec.trains or not name.startswith("train_")}),
        **(layout.over(cells, PER_CELL_MPNN) if spec.trains_mpnn else {}),
        **(layout.over(("drift",) + cells, PER_DRIFT_BUDGET) if spec.budget_axis else {}),
        **(layout.over(cells, PER_BUDGET) if spec.budget_axis else {}),
    }
    nk = ("n", "k")
    grid = lambda f: np.array([[f(n, k) for k in spec.k] for n in spec.n], dtype=np.float64)
    closed = {
        "t_bayes": (nk, grid(spike.threshold_bayes), {"long_name": "Bayes threshold 2k log(n/k)", "units": "1"}),
        "t_spectral": (nk, grid(spike.threshold_spectral), {"long_name": "spectral (BBP) threshold n/2", "units": "1"}),
        "t_threshold": (nk, grid(spike.threshold_thresholding),
                        {"long_name": "entrywise-thresholding scale k^2 log(n/k^2)", "units": "1"}),
        "bayes_terms": (nk, grid(lambda n, k: float(spec.law(n, k).n_points)),
                        {"long_name": "terms of the Bayes enumeration: C(n,k) 2^(k-1) (sparse_spike), C(n,k) (hidden_clique)",
                         "units": "1", "max_terms": ev.bayes_max_terms}),
        "mse_constant": (nk, grid(lambda n, k: spec.law(n, k).constant_mse()),
                         {"long_name": "MSE of the best constant drift E||x||^2 - ||E x||^2 "
                                       "(1/2 - 1/(4n) for sparse_spike)", "units": "1"}),
    }
    coord_attrs = layout.coord_attrs(t={"long_name": "stochastic-localisation time (SNR)", "units": "1"},
                                     n="matrix size (d = n^2)", k="sparsity",
                                     **({"budget": {"long_name": "mpnn training budget (factor on the paper's epochs; "
                                                                 "1.0 = 60,000 steps)", "units": "1"}}
                                        if spec.budget_axis else {}))
    attrs = {"family": spec.family,
             "conventions": "x = u u^T, u k-sparse in {0, +-1/sqrt k} (hidden_clique: {0, +1/sqrt k}), "
                            "law 1/2 delta_0 + 1/2 mu_{n,k}; y_t = t x + W_t (SL time), see dsclab.studies.computational_gap.spike"}
    if spec.budget_axis:
        closed["mpnn_steps"] = (("budget",), np.array([spec.mpnn.schedule(b).steps() for b in spec.mpnn.budget],
                                                      dtype=np.float64),
                                {"long_name": "optimiser steps of the mpnn's training at this budget", "units": "1"})
    elif spec.trains_mpnn:
        attrs["mpnn_budget"] = spec.mpnn.budget
        attrs["mpnn_steps"] = spec.mpnn.schedule().steps()
    return layout.template(spec, coords, cells, variables, coord_attrs, closed=closed, attrs=attrs)
