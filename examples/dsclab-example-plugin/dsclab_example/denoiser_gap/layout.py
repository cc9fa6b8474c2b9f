"""The store layout of the ``denoiser_gap`` study: cell dims ``data, d, seed``; ``t``;
``mse_exact``, ``mse_linear``, ``gap``, ``gap_se (data, d, seed, t)``, ``eval_seconds (data, d,
seed)``, and the closed form ``mse_linear_closed (data, d, t)`` = (G2) of :mod:`.numerics`,
filled in the template."""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.lazy import deferred
from dsclab_example.denoiser_gap.spec import CELL_DIMS, DenoiserGapSpec

numerics = deferred("dsclab_example.denoiser_gap.numerics", globals())  # torch: when a store is made (dsclab.lazy)

PER_TIME = {
    "mse_exact": "MSE per coordinate of the exact (Tweedie) denoiser E[X_0 | X_t], (1/d) E||X_0 - D*(X_t)||^2",
    "mse_linear": "MSE per coordinate of the best linear denoiser (moment-matched Gaussian, G1)",
    "gap": "mse_linear - mse_exact on the same draws (G3)",
    "gap_se": "standard error of gap (paired per-point differences)",
}
COORD_ATTRS = layout.coord_attrs("data", "d", "seed", "t")


def template(spec: DenoiserGapSpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending, (G2) filled."""
    names = [x.name for x in spec.data]
    coords = {"data": np.array(names, dtype=str), "d": np.array(spec.d, dtype=np.int64),
              "seed": np.array(spec.seed, dtype=np.int64), "t": np.array(spec.t, dtype=np.float64)}
    variables = {"eval_seconds": (CELL_DIMS, "evaluation wall time", "s"),
                 **layout.over(CELL_DIMS + ("t",), {name: (long_name, "1") for name, long_name in PER_TIME.items()})}
    closed = np.array([[[numerics.linear_mse(spec.law(n, d), t) for t in spec.t] for d in spec.d] for n in names])
    return layout.template(spec, coords, CELL_DIMS, variables, COORD_ATTRS, closed={
        "mse_linear_closed": (("data", "d", "t"), closed, {
            "long_name": "best linear denoiser's MSE per coordinate, (1/d) sum_i lam_i sigma_t^2 / "
                         "(e^-2t lam_i + sigma_t^2) (closed form, G2)", "units": "1"})},
        attrs={"conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise)"})
