"""The numerics of the ``denoiser_gap`` study: the best linear denoiser, its closed-form MSE, the
and one cell's evaluation. No I/O, no Prefect.

For data X_0 with mean mu and covariance Sigma = U diag(lam) U^T, and X_t = c X_0 + s Z
(c = e^{-t}, s = sigma_t; ``dsclab.noise``), the best affine estimator of X_0 from X_t is the
Bayes (Tweedie) denoiser of the moment-matched Gaussian N(mu, Sigma):

    D_lin(x) = mu + U diag(c lam / (c^2 lam + s^2)) U^T (x - c mu),                     (G1)
    (1/d) E||X_0 - D_lin(X_t)||^2 = (1/d) sum_i lam_i s^2 / (c^2 lam_i + s^2),           (G2)

whatever the law's shape (only its first two moments enter). The exact denoiser
D*(x) = E[X_0 | X_t = x] (the law's ``denoise``) has MSE mmse(t) <= (G2), and the gap

    gap(t) = (1/d) E||X_0 - D_lin(X_t)||^2 - (1/d) E||X_0 - D*(X_t)||^2 >= 0             (G3)

is what a nonlinear denoiser (a trained network) can gain over a linear one. It is zero for
Gaussian data (D* is then (G1)) and positive otherwise. Both MSEs are measured on the same draws,
so the gap's standard error is that of the paired per-point differences.

The store's layout is in :mod:`.layout`.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from dsclab import noise
from dsclab.seeds import rng
from dsclab_example.denoiser_gap.spec import DenoiserGapSpec, GapCell

def moments(law) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mu (d,), lam (d,) and U (d, d) of the law's mean and covariance Sigma = U diag(lam) U^T."""
    mu = torch.as_tensor(law.mean(), dtype=torch.float64).reshape(-1)
    cov = torch.as_tensor(law.cov(), dtype=torch.float64)
    lam, U = torch.linalg.eigh(0.5 * (cov + cov.T))
    return mu, lam.clamp_min(0.0), U


def linear_denoiser(law, t: float):
    """D_lin of (G1) at time t, a function (m, d) -> (m, d) (float64)."""
    mu, lam, U = moments(law)
    c, s2 = noise.mean_coef(float(t)), noise.sigma2(float(t))
    gain = c * lam / (c * c * lam + s2)
    return lambda x: mu + ((x.to(torch.float64) - c * mu) @ U * gain) @ U.T


def linear_mse(law, t: float) -> float:
    """(G2): the best linear denoiser's MSE per coordinate, in closed form."""
    _, lam, _ = moments(law)
    c, s2 = noise.mean_coef(float(t)), noise.sigma2(float(t))
    return float((lam * s2 / (c * c * lam + s2)).mean())


def evaluate(spec: DenoiserGapSpec, cell: GapCell) -> xr.Dataset:
    """One cell's MSE curves over ``t``: at each t, ``n_points`` draws X_0 from the law and
    X_t = e^{-t} X_0 + sigma_t Z, both denoisers applied to the same X_t. The draws at (law, d,
    seed, t) do not depend on the rest of the spec (adding a time leaves the others' numbers)."""
    t0 = time.perf_counter()
    law = spec.law(cell.data, cell.d)
    rows = {k: [] for k in ("mse_exact", "mse_linear", "gap", "gap_se")}  # the variables of .layout
    for t in spec.t:
        g = rng("denoiser-gap", spec.data_params(cell.data), cell.d, cell.seed, float(t))
        x0 = law.sample(spec.n_points, g).to(torch.float64)
        xt = noise.mean_coef(float(t)) * x0 + noise.sigma(float(t)) * torch.randn(x0.shape, generator=g,
                                                                                   dtype=torch.float64)
        err_exact = ((x0 - law.denoise(xt, float(t)).to(torch.float64)) ** 2).mean(dim=1)
        err_linear = ((x0 - linear_denoiser(law, t)(xt)) ** 2).mean(dim=1)
        if not (torch.isfinite(err_exact).all() and torch.isfinite(err_linear).all()):
            raise FloatingPointError(f"non-finite denoiser output for {cell.data} at d={cell.d}, t={t}")
        diff = err_linear - err_exact
        rows["mse_exact"].append(float(err_exact.mean()))
        rows["mse_linear"].append(float(err_linear.mean()))
        rows["gap"].append(float(diff.mean()))
        rows["gap_se"].append(float(diff.std() / np.sqrt(spec.n_points)))
    ds = xr.Dataset({k: (("t",), np.array(v)) for k, v in rows.items()}, coords={"t": list(spec.t)})
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds
