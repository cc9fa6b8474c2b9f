"""The score-learning store layout: dims, coordinates, variables (units, long names), attributes.

Variables (dims: the cell dims :data:`.spec.CELL_DIMS`, plus):

* ``score_l2``, ``score_l2_rel (t)``, ``score_quantile (t, delta)``: score errors on fresh x ~ q_t
  (``dsclab.metrics.score_errors``);
* ``target_var (t)``: Monte Carlo conditional variance tr Cov[T | X_t = x] of the cell
  estimator's regression target T at fixed x (averaged over x ~ q_t), with the cell's h_hat in the
  bootstrap targets (the trained network, also for ``bsm_rb_frozen`` and ``bsm_band``, whose
  frozen teachers are not kept; the exact score for the oracle estimators;
  :func:`dsclab.studies.score_learning.bootstrap_targets.target_draws`), the previous time being
  t / r (the training grid's step at t); ``target_var_1 (t)``: its first coordinate (the one the
  structured class learns); ``target_var_oracle (t)``: the same with the exact score as h_hat;
* ``sliced_w2``: sliced W2 between samples of the trained score (``evaluation.sampler`` at
  ``evaluation.nfe``, started from exact draws of q_T so that only the score and the
  discretisation err) and fresh draws of q_{t_min}; ``sliced_w2_floor`` between two target draws;
* ``mode_tv``: 1/2 sum_j |mean_y r_j(y) - pi_j| with r_j the exact responsibilities of the
  data law at t_min: the total variation between the component-label laws, a lower bound on
  TV(samples, q_{t_min}) by data processing (a TV-type sampling error); ``mode_tv_floor`` for a
  target draw;
* ``kl_gauss``: KL(N(mean, cov of the samples) || N(mean, cov of q_{t_min})), the Gaussian fit of
  the samples against the exact first two moments of q_{t_min} (``dsclab.metrics.gaussian_kl``);
  ``kl_gauss_floor`` for a target draw of the same size;
* ``train_seconds``, ``train_loss``, ``eval_seconds``, ``n_params``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout

from .spec import CELL_DIMS, ScoreLearningSpec

VARIABLES = {
    # name: (extra dims, long name, units)
    "target_var": (("t",), "conditional variance tr Cov[T | X_t] of the regression target (trained h_hat in BSM)", "1"),
    "target_var_1": (("t",), "conditional variance of coordinate 1 of the regression target", "1"),
    "target_var_oracle": (("t",), "conditional variance of the regression target with the exact score as h_hat", "1"),
    "mode_tv": ((), "TV between component-label laws of samples and q_t_min (lower bound on TV)", "1"),
    "mode_tv_floor": ((), "mode_tv of an independent draw of q_t_min", "1"),
    "kl_gauss": ((), "KL of the samples' Gaussian fit to N(mean, cov of q_t_min)", "nats"),
    "kl_gauss_floor": ((), "kl_gauss of an independent draw of q_t_min", "nats"),
    "train_seconds": ((), "training wall time", "s"),
    "train_loss": ((), "final training loss (mean per pair, last 10% of steps)", "1"),
    "eval_seconds": ((), "evaluation wall time", "s"),
    "n_params": ((), "parameters of the network", "1"),
}

COORD_ATTRS = layout.coord_attrs("d", "seed", "estimator", "t", "delta", n="training sample size (clean points)",
                                 data_mode="training data mode (noised points per clean point)",
                                 model="hypothesis class")


def template(spec: ScoreLearningSpec) -> xr.Dataset:
    """The empty store: every dim, coordinate and attribute; floats NaN, status pending."""
    ev = spec.evaluation
    coords = {
        "d": np.array(spec.d, dtype=np.int64), "n": np.array(spec.n, dtype=np.int64),
        "seed": np.array(spec.seed, dtype=np.int64), "estimator": np.array(spec.estimator, dtype=str),
        "data_mode": np.array(spec.data_mode, dtype=str), "model": np.array(spec.model, dtype=str),
        "t": np.array(ev.t, dtype=np.float64), "delta": np.array(ev.delta, dtype=np.float64),
    }
    variables = {name: (CELL_DIMS + extra, long_name, units) for name, (extra, long_name, units) in VARIABLES.items()}
    variables.update(layout.score_error_variables(CELL_DIMS))
    variables.update(layout.sample_metric_variables(("sliced_w2",), CELL_DIMS, CELL_DIMS))
    return layout.template(spec, coords, CELL_DIMS, variables, COORD_ATTRS, attrs={
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise); training times "
                       "t_min r^(k+u), r = (T/t_min)^(1/K) (dsclab.studies.score_learning.bootstrap)",
        "grid_ratio": spec.train.ratio,
        "min_weight": float(spec.law(3).weights.min()),
    })
