"""The samplers as the study drives them: their time grid and what they draw.

Every sampler integrates the reverse SDE on ``noise.time_grid(T, t_min, NFE / NFE_PER_STEP,
schedule)`` (:func:`grid`). On the sampled route its increments come from
``noise_sources.BlockGaussianNoise``: fresh independent (dW, H) per step, drawn per seed block so
that the seeds of a cell run as one batch, H only for samplers that declare they use it
(``samplers.uses_levy_area``). :func:`is_noise_free` probes a sampler for whether it draws noise
at all (the quadrature of ``exact`` skips the noise of a probability-flow ODE solver).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from dsclab import noise
from dsclab.samplers import steps_for_nfe
from dsclab.studies.sampler_convergence.spec import SamplerConvergenceSpec


def is_noise_free(fn) -> bool:
    """True when a sampler never calls ``noise`` (a probability-flow ODE solver)."""
    calls = []
    z = torch.zeros(1, 1, dtype=torch.float64)

    def src(a, b):
        calls.append(1)
        return z, z

    fn(lambda x, t: -x, z, np.array([1.0, 0.5]), noise=src)
    return not calls


@functools.lru_cache(maxsize=512)
def _cached_grid(T: float, t_min: float, steps: int, schedule: str) -> np.ndarray:
    ts = noise.time_grid(T, t_min, steps, schedule)
    ts.flags.writeable = False
    return ts


def grid(spec: SamplerConvergenceSpec, name: str, nfe: int) -> np.ndarray:
    """The sampler's time grid for ``nfe`` evaluations (cached: the 'exp' grid is a bisection)."""
    return _cached_grid(spec.T, spec.t_min, steps_for_nfe(name, nfe), spec.schedule)
