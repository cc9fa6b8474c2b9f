"""Time and noise conventions: the one place where they are defined (science.md §0).

Forward process (Ornstein–Uhlenbeck)::

    dX_t = -X_t dt + sqrt(2) dB_t,   X_t = e^{-t} X_0 + sigma_t Z,   sigma_t^2 = 1 - e^{-2t},  Z ~ N(0, I_d)

* score          s_t(x) = grad log q_t(x)
* denoiser       E[X_0 | X_t = x] = e^{t} (x + sigma_t^2 s_t(x))            (Tweedie)
* noise pred.    E[Z | X_t = x]   = -sigma_t s_t(x)
* SNR            snr(t) = e^{-2t} / sigma_t^2 = 1 / (e^{2t} - 1),  log-SNR alpha = log snr(t)
* stochastic localisation (Montanari–Vu): y = t_SL x + W_{t_SL} has SNR t_SL, so t_SL = snr(t)
* Gaussian channel (Kong et al.): z = sqrt(gamma) x + eps with gamma = snr(t); z = X_t / sigma_t.
* reverse SDE on tau in [0, T - t_min]:  dY = [Y + 2 s_{T - tau}(Y)] dtau + sqrt(2) dW,  Y_0 ~ N(0, I)

Shapes: a batch of points is ``(m, d)``; ``t`` is a Python float, a 0-d tensor or a tensor of
shape ``(m,)`` (one time per point). Schedules and integrals are computed in float64.

Every function accepts Python floats, numpy arrays or torch tensors and returns the same kind.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from dsclab.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


__all__ = [
    "mean_coef", "sigma2", "sigma", "snr", "logsnr", "t_from_snr", "t_from_logsnr", "sl_time",
    "t_from_sl_time", "denoiser_from_score", "score_from_denoiser", "eps_from_score",
    "score_from_eps", "time_grid", "SCHEDULES",
]


def _lib(x):
    return torch if isinstance(x, torch.Tensor) else np


def _f64(t):
    if isinstance(t, torch.Tensor):
        return t
    return np.asarray(t, dtype=np.float64) if not isinstance(t, float) else t


def mean_coef(t):
    """e^{-t}: the factor multiplying X_0 in X_t."""
    t = _f64(t)
    return _lib(t).exp(-t) if not isinstance(t, float) else math.exp(-t)


def sigma2(t):
    """sigma_t^2 = 1 - e^{-2t} (computed as -expm1(-2t), accurate for small t)."""
    t = _f64(t)
    return -_lib(t).expm1(-2 * t) if not isinstance(t, float) else -math.expm1(-2 * t)


def sigma(t):
    """sigma_t = sqrt(1 - e^{-2t})."""
    s2 = sigma2(t)
    return _lib(s2).sqrt(s2) if not isinstance(s2, float) else math.sqrt(s2)


def snr(t):
    """snr(t) = e^{-2t} / sigma_t^2 = 1 / (e^{2t} - 1)."""
    t = _f64(t)
    return 1.0 / (_lib(t).expm1(2 * t) if not isinstance(t, float) else math.expm1(2 * t))


def logsnr(t):
    """alpha(t) = log snr(t) = -log(e^{2t} - 1)."""
    t = _f64(t)
    if isinstance(t, float):
        return -math.log(math.expm1(2 * t))
    return -_lib(t).log(_lib(t).expm1(2 * t))


def t_from_snr(g):
    """Inverse of :func:`snr`: t = log(1 + 1/snr) / 2."""
    g = _f64(g)
    if isinstance(g, float):
        return 0.5 * math.log1p(1.0 / g)
    return 0.5 * _lib(g).log1p(1.0 / g)


def t_from_logsnr(alpha):
    """Inverse of :func:`logsnr`: t = softplus(-alpha) / 2, stable for all alpha."""
    a = _f64(alpha)
    if isinstance(a, float):
        return 0.5 * (max(-a, 0.0) + math.log1p(math.exp(-abs(a))))
    if isinstance(a, torch.Tensor):
        return 0.5 * torch.nn.functional.softplus(-a)
    return 0.5 * np.logaddexp(0.0, -a)


def sl_time(t):
    """Stochastic-localisation time of OU time t: t_SL = snr(t)."""
    return snr(t)


def t_from_sl_time(t_sl):
    """OU time whose SNR equals the stochastic-localisation time t_SL."""
    return t_from_snr(t_sl)


def _col(c, x):
    """Broadcast a per-point coefficient of shape (m,) (or scalar) against x of shape (m, ...)."""
    if isinstance(c, (torch.Tensor, np.ndarray)) and c.ndim == 1 and x.ndim > 1:
        return c.reshape((-1,) + (1,) * (x.ndim - 1))
    return c


def denoiser_from_score(x, s, t):
    """Tweedie: E[X_0 | X_t = x] = e^{t} (x + sigma_t^2 s_t(x))."""
    return _col(1.0 / mean_coef(t), x) * (x + _col(sigma2(t), x) * s)


def score_from_denoiser(x, x0, t):
    """Inverse of Tweedie: s_t(x) = (e^{-t} x0_hat - x) / sigma_t^2."""
    return (_col(mean_coef(t), x) * x0 - x) / _col(sigma2(t), x)


def eps_from_score(s, t):
    """E[Z | X_t = x] = -sigma_t s_t(x)."""
    return -_col(sigma(t), s) * s


def score_from_eps(eps, t):
    """s_t(x) = -eps_hat / sigma_t."""
    return -eps / _col(sigma(t), eps)


# --------------------------------------------------------------------------------------------
# Time grids for reverse-time samplers. A grid is a decreasing float64 array of forward times
# t_0 = T > t_1 > ... > t_N = t_min; a sampler takes N steps (step k goes from t_k to t_{k+1}).
# --------------------------------------------------------------------------------------------

def _grid_uniform(T: float, t_min: float, steps: int) -> np.ndarray:
    return np.linspace(T, t_min, steps + 1, dtype=np.float64)


def _grid_exp(T: float, t_min: float, steps: int) -> np.ndarray:
    """Uniform early, geometric late: step sizes h_k = c * min(1, t_k).

    The step is uniform where t >= 1 and proportional to t below, which is the schedule for which
    the discretisation bounds of DDPM-type samplers hold with early stopping at t_min. ``c`` is
    found by bisection so that exactly ``steps`` steps land on t_min.
    """
    def walk(c: float) -> list[float]:
        ts = [T]
        while ts[-1] > t_min * (1 + 1e-12) and len(ts) <= 10 * steps + 10:
            t = ts[-1]
            ts.append(max(t - c * min(1.0, t), t_min))
        return ts

    lo, hi = 1e-9, max(T, 1.0)
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if len(walk(mid)) - 1 > steps:
            lo = mid
        else:
            hi = mid
    ts = np.asarray(walk(hi), dtype=np.float64)
    # The number of steps is piecewise constant in c; if bisection lands one short, split the
    # largest step (keeps the schedule monotone and the count exact).
    while len(ts) - 1 < steps:
        k = int(np.argmax(-np.diff(ts)))
        ts = np.insert(ts, k + 1, 0.5 * (ts[k] + ts[k + 1]))
    ts[-1] = t_min
    return ts


SCHEDULES = {"uniform": _grid_uniform, "exp": _grid_exp}


def time_grid(T: float, t_min: float, steps: int, schedule: str = "exp") -> np.ndarray:
    """Decreasing float64 grid from T down to t_min with ``steps`` steps (see ``SCHEDULES``)."""
    if steps < 1:
        raise ValueError(f"steps: {steps} is not a positive integer")
    if not 0 < t_min < T:
        raise ValueError(f"need 0 < t_min < T, got t_min={t_min}, T={T}")
    try:
        fn = SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})") from None
    return fn(float(T), float(t_min), int(steps))
