"""The sparse-PCA store layout: every dimension, coordinate and variable (units and long names),
and the closed forms filled when the store is created (:func:`reference`). Variables are
described in :mod:`dsclab.studies.sparse_pca`."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.lazy import deferred
from dsclab.studies.sparse_pca.spec import CELL_DIMS, SparsePCASpec

spe = deferred("dsclab.studies.sparse_pca.estimators", globals(), "spe")  # torch: when a store is made (dsclab.lazy)

PER_ESTIMATOR = {
    "overlap": ("|<u_hat, u>| of the direction the score carries (network: top eigenvector of its samples' "
                "covariance)", "1"),
    "overlap_samples": ("|<v, u>|, v the top eigenvector of the covariance of samples drawn with the score", "1"),
    "support_recovery": ("|top-k(|u_hat|) ∩ supp(u)| / k of the overlap direction", "1"),
    "beta_hat": ("estimated spike strength along the overlap direction (baselines: u_hat^T S u_hat - 1 on the "
                 "data; network: on its samples)", "1"),
}
PER_CELL = {
    "overlap_samples_floor": ("|<v, u>|, v the top eigenvector of the covariance of n_samples exact q_t_min "
                              "draws: the ceiling of overlap_samples (and of the network's overlap)", "1"),
    "train_seconds": ("training wall time of the network (its share of the batched ensemble)", "s"),
    "train_loss": ("final DSM training loss of the network (mean per sample, last 10% of steps)", "1"),
    "eval_seconds": ("evaluation wall time of the cell", "s"),
}
COORD_ATTRS = layout.coord_attrs("d", "n", "seed", "t", k="sparsity (nonzero entries of u)",
                                 beta="spike strength beta", estimator="estimator of the spike / score",
                                 i="coordinate index of u and u_hat (NaN beyond d)")


def reference(spec: SparsePCASpec) -> xr.Dataset:
    """Closed forms per (d, k, beta): the classical sample sizes; per (d, k): C(d, k)."""
    shape = (len(spec.d), len(spec.k), len(spec.beta))
    out = {name: np.full(shape, np.nan) for name in ("it", "poly", "spectral")}
    for a, d in enumerate(spec.d):
        for b, k in enumerate(spec.k):
            for c, beta in enumerate(spec.beta):
                for name, v in spe.sample_sizes(d, k, beta).items():
                    out[name][a, b, c] = v
    bbp = np.array([[[spe.pca_n_half_bbp(d, b) for b in spec.beta] for _ in spec.k] for d in spec.d])
    sup = np.array([[float(spe.n_supports(d, k)) for k in spec.k] for d in spec.d])
    dims = ("d", "k", "beta")
    return xr.Dataset({
        "n_it": (dims, out["it"], {"long_name": "information-theoretic sample size k log(d/k) / beta^2", "units": "1"}),
        "n_poly": (dims, out["poly"], {"long_name": "polynomial-time sample size k^2 log(d/k^2) / beta^2 "
                                                     "(NaN where k^2 >= d)", "units": "1"}),
        "n_spectral": (dims, out["spectral"], {"long_name": "spectral (BBP) sample size d / beta^2", "units": "1"}),
        "n_half_pca_bbp": (dims, bbp, {"long_name": "n at which PCA's overlap reaches 1/2 in the proportional "
                                                    "limit, d (1/beta + 4/beta^2) / 3 (BBP)", "units": "1"}),
        "exhaustive_supports": (("d", "k"), sup, {
            "long_name": "C(d, k), supports visited by exhaustive search", "units": "1",
            "max_supports": spec.evaluation.exhaustive_max_supports}),
    })


def template(spec: SparsePCASpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending, closed forms filled."""
    coords = {
        "d": np.array(spec.d, dtype=np.int64), "k": np.array(spec.k, dtype=np.int64),
        "beta": np.array(spec.beta, dtype=np.float64), "n": np.array(spec.n, dtype=np.int64),
        "seed": np.array(spec.seed, dtype=np.int64), "estimator": np.array(spec.estimator, dtype=str),
        "t": np.array(spec.evaluation.t, dtype=np.float64), "i": np.arange(max(spec.d), dtype=np.int64),
    }
    # no network, no training variables (a done cell never leaves a variable all NaN)
    per_cell = {name: v for name, v in PER_CELL.items() if spec.trains or not name.startswith("train_")}
    variables = {
        **layout.over(CELL_DIMS + ("estimator",), PER_ESTIMATOR),
        **layout.score_error_variables(CELL_DIMS + ("estimator",), ("score_l2", "score_l2_rel")),
        **layout.sample_metric_variables(("sliced_w2", "kl_gauss"), CELL_DIMS + ("estimator",), CELL_DIMS),
        **layout.over(CELL_DIMS, per_cell),
        "u": (CELL_DIMS + ("i",), "the spike u of the cell (drawn once per (d, k, seed))", "1"),
        "u_hat": (CELL_DIMS + ("estimator", "i"), "unit direction of the overlap metric (sign arbitrary)", "1"),
    }
    return layout.template(spec, coords, CELL_DIMS, variables, COORD_ATTRS, closed=reference(spec), attrs={
        "conventions": "x ~ N(0, I + beta u u^T), u k-sparse with entries +-1/sqrt(k); OU forward process "
                       "X_t = e^-t X_0 + sigma_t Z (dsclab.noise)",
    })
