"""The samplers as the study drives them: their time grid, their increments, and what they use.

Every sampler integrates the reverse SDE on ``noise.time_grid(T, t_min, NFE / NFE_PER_STEP,
schedule)`` (:func:`grid`). On the sampled route its increments come from
:class:`IncrementNoise`: fresh independent (dW, H) per step, dW ~ N(0, h I) and the Levy area
H ~ N(0, h/12 I) (the convention of ``samplers.GaussianNoise``), drawn per seed block so that the
seeds of a cell run as one batch. :func:`is_noise_free` and :func:`uses_levy_area` probe a
sampler for what it draws (the quadrature of ``exact`` and the draws of ``sampled`` skip the rest).
"""
from __future__ import annotations

import functools
import math

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


def uses_levy_area(fn) -> bool:
    """True when a sampler's output depends on the Levy area H (probed on one step with a
    nonlinear score: H = 0 versus H = 1)."""
    x = torch.full((1, 1), 0.3, dtype=torch.float64)
    z, one = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    outs = [fn(lambda y, t: -torch.tanh(y) - y, x, np.array([1.0, 0.5]), noise=lambda a, b, h=h: (z + 0.1, h))
            for h in (z, one)]
    return not torch.equal(outs[0], outs[1])


class IncrementNoise:
    """Fresh independent (dW, H) per step, like ``samplers.GaussianNoise``, drawn directly in
    ``dtype`` for a batch made of blocks of ``block`` rows, block r from ``generators[r]`` (so a
    block's noise does not depend on the other blocks). When the sampler ignores H
    (``need_area=False``, see :func:`uses_levy_area`) H is a zero tensor and costs nothing."""

    def __init__(self, block: tuple[int, int], generators: list[torch.Generator], dtype=torch.float32,
                 need_area: bool = True):
        self.block, self.generators, self.dtype, self.need_area = tuple(block), list(generators), dtype, need_area
        self._zero = torch.zeros((len(self.generators) * block[0], block[1]), dtype=dtype)

    def _draw(self) -> torch.Tensor:
        return torch.cat([torch.randn(self.block, generator=g, dtype=self.dtype) for g in self.generators])

    def __call__(self, t_from: float, t_to: float):
        h = float(t_from - t_to)
        dw = math.sqrt(h) * self._draw()
        if not self.need_area:
            return dw, self._zero
        return dw, math.sqrt(h / 12.0) * self._draw()


@functools.lru_cache(maxsize=512)
def _cached_grid(T: float, t_min: float, steps: int, schedule: str) -> np.ndarray:
    ts = noise.time_grid(T, t_min, steps, schedule)
    ts.flags.writeable = False
    return ts


def grid(spec: SamplerConvergenceSpec, name: str, nfe: int) -> np.ndarray:
    """The sampler's time grid for ``nfe`` evaluations (cached: the 'exp' grid is a bisection)."""
    return _cached_grid(spec.T, spec.t_min, steps_for_nfe(name, nfe), spec.schedule)
