"""Montanari–Vu's polynomial-time baselines as their official code runs them (science.md §5).

Both work on the rescaled observation ``Y = sym(y_t) / t`` (``= x + sym(Z)/sqrt(t)``), find a
candidate ``u_hat`` in B_{n,k} (the k largest |entries| of a vector, set to sign/sqrt(k);
:func:`dsclab.studies.computational_gap.spike.project_to_support`, which for the hidden-clique family keeps the k largest
entries with sign +) and apply a **hard test with zero fallback**:

    x_hat = u_hat u_hat^T   if  <Y, u_hat u_hat^T> = u_hat^T Y u_hat >= c,   else 0.

* ``spectral_paper``: u_hat from the top eigenvector of Y; c = 0.8.
* ``power_iteration_paper``: 25 power steps ``v <- Y v / ||Y v||`` from a uniform random unit
  vector (one per matrix and call, from the drift's generator), then the same projection; c = 0.7.

Unlike this package's soft variants (``spectral``, ``power_iteration``: single-candidate posterior,
fallback E[x]) their undetected estimate is 0, so below threshold their MSE is E||x||^2 = p
(1/2 for mu_bar), not the constant's 1/2 - 1/(4n). At t = 0 (Y undefined) both return 0.
"""
from __future__ import annotations

import torch

from dsclab.studies.computational_gap.spike.drifts import top_eigvec, project_to_support
from dsclab.studies.computational_gap.spike.model import SparseSpike, sym, t_vector


def _rescaled(y: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Y, live)``: Y = sym(y)/t in float64 (zero where t = 0) and the mask t > 0."""
    m = y.shape[0]
    tv = t_vector(t, m, device=y.device)
    live = tv > 0
    Y = sym(y.to(torch.float64)) / torch.where(live, tv, torch.ones_like(tv))[:, None, None]
    return Y * live[:, None, None], live


def _tested(u: torch.Tensor, Y: torch.Tensor, live: torch.Tensor, c: float, dtype) -> torch.Tensor:
    q = torch.einsum("mi,mij,mj->m", u, Y, u)
    keep = ((q >= c) & live).to(torch.float64)
    return (keep[:, None, None] * u[:, :, None] * u[:, None, :]).to(dtype)


def spectral_paper_drift(dist: SparseSpike, threshold: float = 0.8):
    """Top eigenvector of Y -> top-k projection -> hard test at ``threshold`` (module doc)."""
    k, signs, c = dist.k, dist.signs, float(threshold)

    def drift(y, t):
        Y, live = _rescaled(y, t)
        return _tested(project_to_support(top_eigvec(Y), k, signs), Y, live, c, y.dtype)
    return drift


def power_iteration_paper_drift(dist: SparseSpike, generator: torch.Generator, n_iter: int = 25,
                                threshold: float = 0.7):
    """``n_iter`` power steps from a random unit vector (drawn from ``generator``, a CPU generator),
    then the top-k projection and the hard test at ``threshold`` (module doc)."""
    k, signs, c, n = dist.k, dist.signs, float(threshold), dist.n

    def drift(y, t):
        Y, live = _rescaled(y, t)
        v = torch.randn((y.shape[0], n), generator=generator, dtype=torch.float64).to(y.device)
        v = v / v.norm(dim=1, keepdim=True)
        for _ in range(int(n_iter)):
            v = torch.einsum("mij,mj->mi", Y, v)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
        return _tested(project_to_support(v, k, signs), Y, live, c, y.dtype)
    return drift


PUBLISHED_FILE = "published_montanari_vu2025.json"


def published() -> dict:
    """The paper's published test MSEs at n = 350, k = 20 (``published_montanari_vu2025.json`` in
    this package; its ``source``, ``files`` and ``retrieved`` fields say where and when they were
    read): ``t (70,)`` = 20, 40, ..., 1400; ``network (6, 70)`` one row per training seed
    (``seeds``); ``spectral (70,)``; ``power_iteration`` {t, mse} (four times); plus the metadata."""
    import json
    from importlib import resources

    import numpy as np

    raw = json.loads(resources.files("dsclab.studies.computational_gap.spike").joinpath(PUBLISHED_FILE).read_text())
    out = dict(raw)
    out["seeds"] = [int(s) for s in raw["network"]]
    out["t"] = np.asarray(raw["t"], dtype=np.float64)
    out["network"] = np.asarray(list(raw["network"].values()), dtype=np.float64)
    out["spectral"] = np.asarray(raw["spectral"], dtype=np.float64)
    return out
