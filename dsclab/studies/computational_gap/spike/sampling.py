"""Stochastic-localisation Euler sampler (science.md §5; conventions: ``dsclab.studies.computational_gap.spike``)."""
from __future__ import annotations

import math

import numpy as np
import torch

from dsclab.studies.computational_gap.spike.model import sym


class SLNoise:
    """Brownian increments for increasing SL times: ``noise(t_from, t_to) -> dB``, dB ~ N(0, h I),
    ``h = t_to - t_from > 0``, shape ``shape``, drawn in float64 from ``generator`` (on its device)."""

    def __init__(self, shape, generator: torch.Generator, dtype=torch.float64, device="cpu"):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device

    def __call__(self, t_from: float, t_to: float) -> torch.Tensor:
        h = float(t_to - t_from)
        if h <= 0:
            raise ValueError(f"SL times must increase, got {t_from} -> {t_to}")
        z = torch.randn(self.shape, generator=self.generator, dtype=torch.float64, device=self.generator.device)
        return (math.sqrt(h) * z).to(dtype=self.dtype, device=self.device)


def sample_sl_euler(drift, y: torch.Tensor, ts, *, noise) -> torch.Tensor:
    """SL Euler scheme, one drift evaluation per step plus one for the output.

        y_{l+1} = y_l + h_l m(y_l, t_l) + sym(dB_l),   h_l = t_{l+1} - t_l,   sample = m(y_L, t_L).

    * ``drift(y, t) -> (m, n, n)``; ``y (m, n, n)``: the state at ``ts[0]`` (zeros at t = 0).
    * ``ts``: increasing SL times ``0 = t_0 < ... < t_L = T`` (e.g. :func:`sl_times`).
    * ``noise(t_from, t_to) -> dB``: the Brownian increment dB ~ N(0, h I) of shape (m, n, n)
      (:class:`SLNoise`; the house protocol of ``dsclab.samplers`` but for increasing times and
      without the Levy area; a returned tuple's first element is used). ``sym(dB)`` is the
      increment of W (off-diagonal variance h/2, diagonal h), i.e. sqrt(h) g_l of science.md.
    """
    ts = np.asarray(ts, dtype=np.float64)
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = float(t_next - t)
        db = noise(float(t), float(t_next))
        if isinstance(db, tuple):
            db = db[0]
        y = y + h * drift(y, float(t)) + sym(db.to(dtype=y.dtype, device=y.device))
    return drift(y, float(ts[-1]))


def sl_times(delta: float, T: float) -> np.ndarray:
    """Uniform SL grid 0, delta, ..., T (float64); T must be a multiple of delta."""
    steps = T / delta
    L = int(round(steps))
    if L < 1 or not math.isclose(steps, L, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"T={T} is not a positive multiple of delta={delta}")
    return np.arange(L + 1, dtype=np.float64) * float(delta)


def sl_generate(drift, m: int, n: int, *, delta: float, T: float, generator: torch.Generator,
                dtype=torch.float64, device="cpu") -> torch.Tensor:
    """m samples ``(m, n, n)`` from the SL Euler scheme started at y_0 = 0 with step ``delta`` up to T
    (the paper's runs: delta = 0.5, T = 4n); noise drawn from ``generator`` (float64, on the
    generator's device), the state kept on ``device``."""
    y0 = torch.zeros((m, n, n), dtype=dtype, device=device)
    noise = SLNoise((m, n, n), generator, dtype=dtype, device=device)
    return sample_sl_euler(drift, y0, sl_times(delta, T), noise=noise)
