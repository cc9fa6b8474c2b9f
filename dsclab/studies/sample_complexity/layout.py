"""The sample-complexity study's store layout (the template of ``StudyKind.template``).

* dims ``d, n, seed, estimator`` (the cell axes), ``sampler, nfe`` (evaluations), ``t`` (score-error
  grid) and ``delta`` (quantile levels);
* ``status (d, n, seed, estimator)`` int8, a :class:`dsclab.study.Status` (0 pending, 1 done, 2 failed);
* ``train_seconds``, ``train_loss``, ``eval_seconds`` per cell;
* ``score_l2``, ``score_l2_rel (..., t)``; ``score_quantile (..., t, delta)``;
* ``sliced_w2``, ``mmd``, ``w2``, ``kl_gauss (..., sampler, nfe)``, and per cell each one's floor
  (``sliced_w2_floor``, ``mmd_floor``, ``w2_floor``, ``kl_gauss_floor``): the same metric between two
  independent exact samples of q_t_min of the same size, with the same projection directions (a
  metric's value at its floor says the sampler is as good as this estimator can tell);
* ``nll_immse``, ``nll_immse_se``, ``nll_exact`` (nats per dimension) and ``mmse (..., logsnr)``:
  the trained model as a likelihood model through the I-MMSE identity (science.md §6).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.metrics import SAMPLE_METRICS
from dsclab.studies.sample_complexity.spec import CELL_DIMS, StudySpec

VARIABLES = {
    # name: (extra dims, long name, units)
    "train_seconds": ((), "training wall time", "s"),
    "train_loss": ((), "final training loss (mean per sample, last 10% of steps)", "1"),
    "eval_seconds": ((), "evaluation wall time", "s"),
    "nll_immse": ((), "I-MMSE estimate of -log p(x) of the trained model on held-out data (matched-Gaussian "
                      "reference; discrete estimator for lattice data)", "nats per dimension"),
    "nll_immse_se": ((), "standard error of nll_immse (held-out points and log-SNR draws)", "nats per dimension"),
    "nll_exact": ((), "exact -log p(x) of the data law averaged over the same held-out points", "nats per dimension"),
    "mmse": (("logsnr",), "data-averaged noise-prediction MSE E||eps - eps_hat||^2 / d of the trained model", "1"),
}

COORD_ATTRS = layout.coord_attrs("d", "n", "seed", "estimator", "sampler", "nfe", "t", "delta", "logsnr")


def template(spec: StudySpec) -> xr.Dataset:
    """The empty store: every dim, coordinate and attribute; floats NaN, status pending."""
    coords = {
        "d": np.array(spec.d, dtype=np.int64), "n": np.array(spec.n, dtype=np.int64),
        "seed": np.array(spec.seed, dtype=np.int64), "estimator": np.array(spec.estimator, dtype=str),
        "sampler": np.array(spec.sampler, dtype=str), "nfe": np.array(spec.nfe, dtype=np.int64),
        "t": np.array(spec.evaluation.t, dtype=np.float64), "delta": np.array(spec.evaluation.delta, dtype=np.float64),
        "logsnr": np.array(spec.evaluation.logsnr, dtype=np.float64),
    }
    variables = {name: (CELL_DIMS + extra, long_name, units) for name, (extra, long_name, units) in VARIABLES.items()}
    variables.update(layout.score_error_variables(CELL_DIMS))
    variables.update(layout.sample_metric_variables(
        SAMPLE_METRICS.builtin_names, CELL_DIMS + ("sampler", "nfe"), CELL_DIMS))
    return layout.template(spec, coords, CELL_DIMS, variables, COORD_ATTRS, attrs={
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise)"})
