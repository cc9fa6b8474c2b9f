"""Score-matching losses. Each returns per-sample values of shape (m,); the caller reduces.

A loss takes the model, a batch of clean data ``x0 (m, d)``, times ``t (m,)`` and standard
normal noise ``z (m, d)`` (randomness is passed in) and forms X_t = e^{-t} x0 + sigma_t z.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from dsclab import noise


def dsm_loss(model, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Denoising score matching, weighted by sigma_t^2 (science.md §2).

    sigma_t^2 || s_hat(t, X_t) + Z / sigma_t ||^2 = || eps_hat(X_t, t) - Z ||^2.
    Its minimiser is the true score; at the true score its expectation at time t is
    E||Z||^2 - sigma_t^2 E||s_t(X_t)||^2 = d - sigma_t^2 J(q_t)   (J: Fisher information).
    """
    a, sig = noise.mean_coef(t).to(x0.dtype)[:, None], noise.sigma(t).to(x0.dtype)[:, None]
    xt = a * x0 + sig * z
    eps = model(xt, t)
    return ((eps - z) ** 2).sum(dim=1)


def sample_times(m: int, t_min: float, T: float, generator: torch.Generator, device="cpu") -> torch.Tensor:
    """Training times, log-uniform on [t_min, T] (equal weight per decade of noise level)."""
    u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
    return t_min * (T / t_min) ** u


ESTIMATORS: dict[str, Callable] = {"dsm": dsm_loss}
