"""The store layout of the I-MMSE study: dims, coordinates, variables with units and long names,
and the closed forms filled in when the store is created.

Variables (nats per dimension; ``*_se`` cover the held-out points and the draws):
``nll_immse``, ``nll_immse_se``, ``nll_gap_se`` (SE of ``nll_immse - nll_exact``, paired on the
same points) and ``ensemble_share`` over (data, d, n, seed, denoiser); ``nll_exact``,
``nll_exact_se`` over the cell dims; ``mmse (..., denoiser, logsnr)`` the data-averaged
E||eps - eps_hat||^2 / d on the log-SNR grid (for ``ensemble`` the per-point minimum over
members, i.e. the envelope); and, filled in when the store is created (closed forms),
``mmse_gauss (data, d, logsnr)`` = mean_i sigmoid(alpha + log lam_i) (the Gaussian reference
curve), ``logsnr_min``/``logsnr_max (data, d)``, the integration range, and ``train_t_min (data, d)``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

import xarray as xr

from dsclab import layout
from dsclab.lazy import deferred
from dsclab.studies.immse.denoisers import DENOISERS, ENSEMBLE_MEMBERS
from dsclab.studies.immse.spec import CELL_DIMS, ImmseSpec

if TYPE_CHECKING:
    import torch

    from dsclab import immse
    from dsclab.studies.immse import numerics
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)
    immse = deferred("dsclab.immse", globals())
    numerics = deferred("dsclab.studies.immse.numerics", globals())


PER_DENOISER = {
    "nll_immse": ("I-MMSE estimate of -log p(x) on held-out data (nats per dimension; matched-Gaussian "
                  "reference, discrete estimator for lattice data)", "nats per dimension"),
    "nll_immse_se": ("standard error of nll_immse (held-out points and log-SNR draws)", "nats per dimension"),
    "nll_gap_se": ("standard error of nll_immse - nll_exact, paired on the same points", "nats per dimension"),
    "ensemble_share": ("fraction of log-SNR draws at which the ensemble picks this member", "1"),
}
PER_CELL = {
    "nll_exact": ("exact -log p(x) averaged over the held-out points", "nats per dimension"),
    "nll_exact_se": ("standard error of nll_exact over the held-out points", "nats per dimension"),
    "train_seconds": ("training wall time of the trained denoiser", "s"),
    "train_loss": ("final training loss (mean per sample, last 10% of steps)", "1"),
    "eval_seconds": ("evaluation wall time of the cell", "s"),
}
COORD_ATTRS = layout.coord_attrs("data", "d", "seed", "logsnr", n="training sample size of the trained denoiser",
                                 denoiser={"long_name": "denoiser", "ensemble_members": ", ".join(ENSEMBLE_MEMBERS)})


def reference(spec: ImmseSpec) -> xr.Dataset:
    """Closed forms per (data, d): the Gaussian reference curve and the integration range."""
    names, grid = [x.name for x in spec.data], torch.tensor(spec.evaluation.logsnr, dtype=torch.float64)
    curve = np.full((len(names), len(spec.d), len(grid)), np.nan)
    lo, hi, tmin = (np.full((len(names), len(spec.d)), np.nan) for _ in range(3))
    for i, name in enumerate(names):
        for j, d in enumerate(spec.d):
            law = spec.law(name, d)
            lam = immse.spectrum(law.cov())
            curve[i, j] = (immse.mmse_gaussian(grid, lam) / d).numpy()
            lo[i, j], hi[i, j] = immse.logsnr_range(*immse.loc_scale(lam), spec.evaluation.clip)
            tmin[i, j] = numerics.train_t_min(spec, law)
    return xr.Dataset({
        "mmse_gauss": (("data", "d", "logsnr"), curve, {
            "long_name": "noise-prediction MMSE / d of the matched Gaussian, mean_i sigmoid(alpha + log lam_i)",
            "units": "1"}),
        "logsnr_min": (("data", "d"), lo, {"long_name": "lower end of the log-SNR integration range", "units": "1"}),
        "logsnr_max": (("data", "d"), hi, {"long_name": "upper end of the log-SNR integration range", "units": "1"}),
        "train_t_min": (("data", "d"), tmin, {"long_name": "smallest OU time the networks are trained on", "units": "1"}),
    })


def template(spec: ImmseSpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending, closed forms filled."""
    coords = {
        "data": np.array([x.name for x in spec.data], dtype=str), "d": np.array(spec.d, dtype=np.int64),
        "n": np.array(spec.n, dtype=np.int64), "seed": np.array(spec.seed, dtype=np.int64),
        "denoiser": np.array(DENOISERS, dtype=str), "logsnr": np.array(spec.evaluation.logsnr, dtype=np.float64),
    }
    variables = {**layout.over(CELL_DIMS + ("denoiser",), PER_DENOISER), **layout.over(CELL_DIMS, PER_CELL),
                 "mmse": (CELL_DIMS + ("denoiser", "logsnr"), "data-averaged noise-prediction MSE "
                          "E||eps - eps_hat||^2 / d (ensemble: envelope)", "1")}
    return layout.template(spec, coords, CELL_DIMS, variables, COORD_ATTRS, closed=reference(spec), attrs={
        "conventions": "Gaussian channel z = sqrt(gamma) x + eps = X_t / sigma_t of the OU process (dsclab.noise); "
                       "alpha = log gamma",
        "ensemble_members": ", ".join(ENSEMBLE_MEMBERS),
    })
