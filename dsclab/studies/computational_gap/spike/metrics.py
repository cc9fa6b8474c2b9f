"""Metrics: MSE curves, integrated loss, sample norms and their W1 to the target, rank-one closeness.

Losses return per-sample values (numpy float64); :func:`summarize` turns them into mean and
standard error. Conventions: ``dsclab.studies.computational_gap.spike``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import torch

from dsclab.studies.computational_gap.spike.model import SparseSpike, observe


def drift_loss(drift, x: torch.Tensor, t, z: torch.Tensor) -> np.ndarray:
    """Per-sample ``||m(y_t, t) - x||^2`` with ``y_t = t x + sqrt(t) sym(z)``, shape (m,)."""
    y = observe(x, t, z=z)
    err = drift(y, t).to(torch.float64) - x.to(torch.float64)
    return err.pow(2).sum(dim=(1, 2)).cpu().numpy()


def summarize(values) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (ddof=1) over the last axis."""
    v = np.asarray(values, dtype=np.float64)
    return v.mean(axis=-1), v.std(axis=-1, ddof=1) / math.sqrt(v.shape[-1])


def mse_curve(drifts: Mapping[str, object], dist: SparseSpike, ts, m: int, generator: torch.Generator, *,
              chunk: int | None = None) -> dict[str, np.ndarray]:
    """MSE(t) = E||m(y_t, t) - x||^2 by Monte Carlo: ``{name: (len(ts), m) per-sample losses}``.

    All drifts see the same held-out x and the same noise at each t (common random numbers), so
    differences between drifts have small Monte Carlo error; each t gets fresh (x, z), drawn from
    ``generator`` on its device, ``chunk`` points at a time (default: all m at once; memory is
    O(chunk n^2)).
    """
    out = {name: np.empty((len(ts), m)) for name in drifts}
    step = m if chunk is None else max(1, int(chunk))
    for i, t in enumerate(ts):
        for a in range(0, m, step):
            b = min(m, a + step)
            x = dist.sample(b - a, generator)
            z = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=generator.device)
            for name, d in drifts.items():
                out[name][i, a:b] = drift_loss(d, x, float(t), z)
    return out


def integrated_loss(drift, dist: SparseSpike, T: float, *, steps: int, m: int, generator: torch.Generator
                    ) -> np.ndarray:
    """Per-sample ``int_0^T ||m(y_t, t) - x||^2 dt`` (trapezoid on a uniform grid, steps+1 points).

    Weighting: uniform (Lebesgue) in SL time on [0, T]. This is the weighting under which, by
    Girsanov, the excess over the Bayes drift is twice the path KL between the true SL process
    and the one driven by m: ``int_0^T E||m - m_Bayes||^2 dt = 2 KL``. Each sample keeps one
    (x, z) along the grid (``y_t = t x + sqrt(t) sym(z)`` has the right law at every t), so the
    mean over samples is unbiased for the integral up to the trapezoid error; draw the same
    ``generator`` state to compare drifts on common random numbers.
    """
    ts = np.linspace(0.0, float(T), int(steps) + 1, dtype=np.float64)
    x = dist.sample(m, generator)
    z = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=generator.device)
    vals = np.stack([drift_loss(drift, x, float(t), z) for t in ts])   # (steps+1, m)
    w = np.full(len(ts), ts[1] - ts[0])
    w[0] *= 0.5
    w[-1] *= 0.5
    return w @ vals


def sample_norm(samples: torch.Tensor) -> np.ndarray:
    """||x_hat||_F of each generated sample, shape (m,)."""
    return samples.to(torch.float64).flatten(1).norm(dim=1).cpu().numpy()


def w1_norm_law(norms, p_spike: float = 0.5) -> float:
    """W1 between the empirical law of sample norms and the target's: 0 w.p. 1 - p, 1 w.p. p.

    Exact for the empirical measure (1-D W1 = integral of |F - G|). All norms 0 gives p; a
    perfect sampler gives O(m^{-1/2}).
    """
    from scipy.stats import wasserstein_distance  # here: scipy.stats costs ~0.7 s to import

    norms = np.asarray(norms, dtype=np.float64)
    if p_spike >= 1.0:
        return wasserstein_distance(norms, [1.0])
    return wasserstein_distance(norms, [0.0, 1.0], v_weights=[1.0 - p_spike, p_spike])


def _support_by_rows(samples: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k rows of largest norm, sorted, ``(m, k)``."""
    rows = samples.to(torch.float64).norm(dim=2)
    return rows.topk(k, dim=1).indices.sort(dim=1).values


def nearest_rank_one(samples: torch.Tensor, k: int, signs: str = "pm") -> tuple[np.ndarray, torch.Tensor]:
    """``(dist, u)``: Frobenius distance from each sample to ``{u u^T : u in B_{n,k}}`` and the u.

    Support = the k rows of largest norm; signs = the best of all patterns on that support
    (enumerated for k <= 13, else the signs of the block's top eigenvector). If the true distance
    is ``delta < 1/(2 sqrt(k))`` this is exact: each row of x_hat is within delta of the row of
    v v^T (norm 1/sqrt(k) on supp v, 0 off it), so the top-k rows are supp v. Otherwise it is an
    upper bound. ``||x_hat - u u^T||^2 = ||x_hat||^2 - 2 u^T x_hat u + 1``.
    """
    x = samples.to(torch.float64)
    m, n, _ = x.shape
    sup = _support_by_rows(x, k)                                           # (m, k)
    block = x[torch.arange(m)[:, None, None], sup[:, :, None], sup[:, None, :]]  # (m, k, k)
    if signs == "plus":
        pats = torch.ones((1, k), dtype=torch.float64)
    elif k <= 13:
        rest = list(itertools.product((1.0, -1.0), repeat=k - 1))
        pats = torch.tensor([(1.0,) + r for r in rest], dtype=torch.float64).reshape(-1, k)
    else:
        pats = None
    if pats is not None:
        q = torch.einsum("pa,mab,pb->mp", pats, block, pats) / k
        best = q.argmax(dim=1)
        s, qmax = pats[best], q.gather(1, best[:, None]).squeeze(1)
    else:
        v = torch.linalg.eigh(0.5 * (block + block.transpose(1, 2)))[1][..., -1]
        s = torch.where(v >= 0, 1.0, -1.0).to(torch.float64)
        qmax = torch.einsum("ma,mab,mb->m", s, block, s) / k
    u = torch.zeros((m, n), dtype=torch.float64).scatter_(1, sup, s / math.sqrt(k))
    d2 = x.flatten(1).pow(2).sum(1) - 2.0 * qmax + 1.0
    return d2.clamp_min(0.0).sqrt().numpy(), u


def frac_close_rank_one(samples: torch.Tensor, k: int, eps: float | None = None, signs: str = "pm") -> float:
    """Fraction of samples within Frobenius distance ``eps`` of some u u^T, u in B_{n,k}.

    'Close' means ``min_u ||x_hat - u u^T||_F <= eps``; the default ``eps = min(0.25, 0.45/sqrt(k))``
    stays below 1/(2 sqrt(k)), where :func:`nearest_rank_one` is exact, so the fraction is exact.
    """
    if eps is None:
        eps = min(0.25, 0.45 / math.sqrt(k))
    d, _ = nearest_rank_one(samples, k, signs)
    return float(np.mean(d <= eps))


def support_index(samples: torch.Tensor, k: int) -> np.ndarray:
    """Colex rank in [0, C(n,k)) of the support (top-k rows) of each sample: sum_j C(c_j, j+1)."""
    sup = _support_by_rows(samples, k).cpu().numpy()
    return np.array([sum(math.comb(int(c), j + 1) for j, c in enumerate(row)) for row in sup], dtype=np.int64)
