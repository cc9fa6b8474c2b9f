"""Exact output law of any sampler on Gaussian data (science.md §3 "Exact test").

For Gaussian data q_0 = N(mu, Sigma) the exact score s_t(x) = -(C_t)^{-1}(x - e^{-t} mu) is
affine in x, so every step of every sampler in ``samplers.SAMPLERS`` is an affine map

    Y' = F Y + G dW + K H + c,       dW ~ N(0, h I),  H ~ N(0, h/12 I),  independent of Y,

and the output law is exactly Gaussian. :func:`step_map` reads (F, G, K, c) off the sampler
itself, by running it for one step (``ts = [t_k, t_{k+1}]``) on a batch of probe states with a
noise callable that returns probe values; nothing about the scheme is re-implemented here.
:func:`propagate` then carries mean and covariance through the steps in float64:

    m' = F m + c,        C' = F C F^T + h G G^T + (h/12) K K^T.

The same holds for a perturbed score s + eta g with g affine (the "score-error floor" test).
:func:`gaussian_kl` is KL(N(m1, C1) || N(m2, C2)), computed from the eigenvalues of
C2^{-1/2} C1 C2^{-1/2} as sum (x - log1p(x))/2 with x = lambda - 1, which keeps full relative
accuracy down to KL ~ 1e-25.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from dsclab import samplers as _samplers
from dsclab.metrics import gaussian_kl  # noqa: F401  (re-exported: the exact KL of propagated laws)

__all__ = ["step_map", "propagate", "gaussian_kl", "sampler_kl", "sampler_law", "target_law",
           "gaussian_score"]


def step_map(sampler_fn: Callable, score, t: float, t_next: float, d: int, *, check: bool = True):
    """(F, G, K, c), float64, of one step of ``sampler_fn`` from forward time t to t_next < t.

    The probe batch has rows x = 0, x = e_i, dW = e_i, H = e_i (3d + 1 rows) plus one random row
    used to verify that the step is affine (``check``; raises ValueError if it is not, e.g. for a
    mixture score). ``score`` must accept float64 input and return float64.
    """
    t, t_next = float(t), float(t_next)
    eye = torch.eye(d, dtype=torch.float64)
    zero = torch.zeros(d, d, dtype=torch.float64)
    g = torch.Generator().manual_seed(12345)
    rnd = torch.randn(3, 1, d, generator=g, dtype=torch.float64)
    z1 = torch.zeros(1, d, dtype=torch.float64)
    x = torch.cat([z1, eye, zero, zero, rnd[0]])
    dw = torch.cat([z1, zero, eye, zero, rnd[1]])
    hh = torch.cat([z1, zero, zero, eye, rnd[2]])
    calls = []

    def probe(t_from: float, t_to: float):
        if calls or abs(t_from - t) > 1e-14 * max(1.0, abs(t)) or abs(t_to - t_next) > 1e-14 * max(1.0, abs(t)):
            raise RuntimeError("sampler must call noise(t_k, t_{k+1}) once per step")
        calls.append((t_from, t_to))
        return dw, hh

    out = sampler_fn(score, x, np.array([t, t_next], dtype=np.float64), noise=probe).to(torch.float64)
    c = out[0]
    F = (out[1:d + 1] - c).T
    G = (out[d + 1:2 * d + 1] - c).T
    K = (out[2 * d + 1:3 * d + 1] - c).T
    if check:
        pred = F @ rnd[0, 0] + G @ rnd[1, 0] + K @ rnd[2, 0] + c
        err = float((pred - out[-1]).abs().max())
        scale = 1.0 + float(out.abs().max())
        if err > 1e-8 * scale:
            raise ValueError(f"step {t}->{t_next} is not affine in (x, dW, H) (error {err:.2e}); "
                             "exact Gaussian propagation needs an affine score")
    return F, G, K, c


def propagate(sampler_fn: Callable, score, ts, mean0, cov0, *, check: bool = True):
    """Exact (mean, cov) after running ``sampler_fn`` over grid ``ts`` from N(mean0, cov0).

    ``score(x, t)`` must be affine in x (exact Gaussian score, possibly plus an affine
    perturbation). Returns float64 tensors of shapes (d,) and (d, d).
    """
    m = torch.as_tensor(mean0, dtype=torch.float64).clone()
    C = torch.as_tensor(cov0, dtype=torch.float64).clone()
    d = m.shape[0]
    ts = np.asarray(ts, dtype=np.float64)
    for k in range(len(ts) - 1):
        t, t_next = float(ts[k]), float(ts[k + 1])
        h = t - t_next
        F, G, K, c = step_map(sampler_fn, score, t, t_next, d, check=check)
        m = F @ m + c
        C = F @ C @ F.T + h * (G @ G.T) + (h / 12.0) * (K @ K.T)
        C = 0.5 * (C + C.T)
    return m, C


def target_law(dist, t: float):
    """(mean, cov) of q_t for a single-Gaussian ``GaussianMixture`` (float64)."""
    if dist.n_components != 1:
        raise ValueError("exact Gaussian propagation needs a single Gaussian (n_components == 1)")
    qt = dist.at(float(t))
    return qt.mean(), qt.cov()


def gaussian_score(dist):
    """Fast exact score of a single Gaussian ``dist`` (float64), equal to ``dist.score``.

    s_t(x) = -(x - e^{-t} mu) U diag(1 / (e^{-2t} lam + sigma_t^2)) U^T, with two dense matmuls
    instead of the mixture machinery (the propagation calls it on 3d + 2 probe rows per stage).
    """
    if dist.n_components != 1:
        raise ValueError("gaussian_score needs a single Gaussian (n_components == 1)")
    U, lam, mu = dist.U[0], dist.lam[0], dist.means[0]

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        t = float(t)
        a2 = math.exp(-2.0 * t)
        inv = 1.0 / (a2 * lam + (-math.expm1(-2.0 * t)))
        r = x.to(torch.float64) - math.exp(-t) * mu
        return -(((r @ U) * inv) @ U.T).to(x.dtype)

    return score


def sampler_law(name: str, dist, ts, *, start: str = "prior", score=None):
    """Exact (mean, cov) of sampler ``name`` run on grid ``ts`` with the score of ``dist``.

    ``start="prior"``: Y_0 ~ N(0, I) at T = ts[0] (the practical sampler; includes the
    initialisation error); ``start="exact"``: Y_0 ~ q_T exactly (isolates discretisation error).
    ``score`` overrides ``dist.score`` (e.g. a perturbed score s + eta g, g affine).
    """
    ts = np.asarray(ts, dtype=np.float64)
    d = dist.d
    if start == "prior":
        m0, C0 = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    elif start == "exact":
        m0, C0 = target_law(dist, ts[0])
    else:
        raise ValueError(f"start must be 'prior' or 'exact', got {start!r}")
    fn = _samplers.SAMPLERS[name] if isinstance(name, str) else name
    return propagate(fn, gaussian_score(dist) if score is None else score, ts, m0, C0)


def sampler_kl(name: str, dist, ts, *, start: str = "prior", score=None) -> float:
    """Exact KL(law of sampler output || q_{t_min}), t_min = ts[-1], for Gaussian ``dist``."""
    m, C = sampler_law(name, dist, ts, start=start, score=score)
    mt, Ct = target_law(dist, float(np.asarray(ts)[-1]))
    return gaussian_kl(m, C, mt, Ct)
