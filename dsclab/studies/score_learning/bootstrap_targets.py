"""The regression targets of time bootstrapping at fixed X_t: Monte Carlo draws from their
conditional law, and closed forms for Gaussian data (science.md §4). Numerics only.

Conventions are those of :mod:`dsclab.studies.score_learning.bootstrap` (OU process X_t = e^{-t} X_0 + sigma_t Z; a step
Delta = t - t' > 0 from X_{t'} to X_t on one forward path; a = e^{-t}, a' = e^{-t'}). The targets,
in score units, of the estimators of ``dsclab.studies.score_learning.bootstrap.BOOTSTRAP_ESTIMATORS``:

* DSM:  T_dsm = -(X_t - a X_0) / sigma_t^2;
* pure bootstrap (``bsm``, ``bsm_oracle``):  T_pure = e^{Delta} h_hat(t', X_{t'});
* Rao–Blackwellised bootstrap (``bsm_rb``, ``bsm_rb_oracle``):
  T_RB = -(X_t - e^{-Delta} X_{t'}) / sigma_t^2 + e^{-Delta} (sigma_{t'}^2 / sigma_t^2) h_hat(t', X_{t'});
* above the switch time t_c the loss's effective target is mix T_dsm + (1 - mix) T (DSM below).

Both bootstrap targets are unbiased when h_hat is the exact score s_{t'}. A perturbed
h_hat = s + eta g moves the target's conditional mean by gain * eta * E[g(X_{t'}) | X_t] with the
gain of :func:`perturbation_gain`: e^{Delta} for T_pure (amplified), e^{-Delta} sigma_{t'}^2 / sigma_t^2
for T_RB (damped). Shapes: points ``x (m, d)``, draws ``(R, m, d)``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from dsclab import noise
from dsclab.studies.score_learning.bootstrap import BOOTSTRAP_ESTIMATORS
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.losses import bsm_rb_target


def posterior_x0(dist: GaussianMixture, x: torch.Tensor, t: float, R: int, generator: torch.Generator) -> torch.Tensor:
    """R exact draws of X_0 | X_t = x for a Gaussian mixture: ``(R, m, d)`` float64.

    Component j is picked with its responsibility r_j(x); within it (Sigma_j = U diag(lam) U^T,
    a = e^{-t}), X_0 | X_t = x ~ N(mu_j + U diag(a lam / v) U^T (x - a mu_j), U diag(lam sigma_t^2 / v) U^T),
    v = a^2 lam + sigma_t^2.
    """
    x = x.to(torch.float64)
    m, d = x.shape
    a, s2 = noise.mean_coef(float(t)), noise.sigma2(float(t))
    r = dist.responsibilities(x, float(t))  # (m, K)
    comp = torch.multinomial(r, R, replacement=True, generator=generator).T  # (R, m)
    resid = torch.einsum("kji,mkj->mki", dist.U, x[:, None, :] - a * dist.means[None])  # U_k^T (x - a mu_k): (m, K, d)
    lam = dist.lam[comp]  # (R, m, d)
    res = torch.gather(resid[None].expand(R, -1, -1, -1), 2, comp[:, :, None, None].expand(-1, -1, 1, d))[:, :, 0]
    v = a * a * lam + s2
    z = torch.randn(R, m, d, generator=generator, dtype=torch.float64)
    e = (a * lam / v) * res + torch.sqrt(lam * s2 / v) * z  # eigen-coordinates of X_0 - mu_j
    out = dist.means[comp].clone()
    for k in range(dist.n_components):  # back to the standard basis, one component at a time
        sel = comp == k
        if bool(sel.any()):
            out[sel] += e[sel] @ dist.U[k].T
    return out


def bridge(x0: torch.Tensor, x: torch.Tensor, t_prev: float, t: float, generator: torch.Generator) -> torch.Tensor:
    """X_{t'} | X_0 = x0, X_t = x (0 < t' < t), exactly: with a' = e^{-t'}, Delta = t - t',
    precision P = 1/sigma_{t'}^2 + e^{-2 Delta}/sigma_Delta^2 and mean
    (a' x0 / sigma_{t'}^2 + e^{-Delta} x / sigma_Delta^2) / P. ``x0 (R, m, d)``, ``x (m, d)``."""
    dl = t - t_prev
    ap, sp2 = noise.mean_coef(t_prev), noise.sigma2(t_prev)
    ad, sd2 = noise.mean_coef(dl), noise.sigma2(dl)
    prec = 1.0 / sp2 + ad * ad / sd2
    mean = (ap * x0 / sp2 + ad * x.to(torch.float64)[None] / sd2) / prec
    return mean + torch.randn(x0.shape, generator=generator, dtype=torch.float64) / math.sqrt(prec)


def target_draws(dist: GaussianMixture, x: torch.Tensor, t: float, t_prev: float, R: int, generator: torch.Generator,
                 *, estimator: str, score_prev: Callable | None = None, t_c: float = 0.0, mix: float = 0.0,
                 dtype=torch.float32) -> torch.Tensor:
    """R draws of an estimator's regression target at fixed X_t = x, score units, ``(R, m, d)``.

    Draws (X_0, X_{t'}) jointly from their law given X_t = x (:func:`posterior_x0`, then
    :func:`bridge`). ``dsm`` (and every estimator at t <= t_c): T_dsm = -(x - e^{-t} X_0)/sigma_t^2.
    A bootstrap estimator at t > t_c: mix T_dsm + (1 - mix) T with T = e^{t - t'} h_hat(t', X_{t'})
    (``bsm``, ``bsm_oracle``) or T_RB (``bsm_rb``, ``bsm_rb_oracle``; ``dsclab.losses.bsm_rb_target``),
    h_hat = ``score_prev`` (the trained network, or the exact score for the oracles), evaluated
    in ``dtype``; the oracle and learned variants differ only in ``score_prev``.
    """
    est = BOOTSTRAP_ESTIMATORS.resolve(estimator)
    x = x.to(torch.float64)
    x0 = posterior_x0(dist, x, t, R, generator)
    t_dsm = -(x[None] - noise.mean_coef(t) * x0) / noise.sigma2(t)
    if not est.bootstrap or t <= t_c or mix >= 1.0:
        return t_dsm
    xp = bridge(x0, x, t_prev, t, generator)
    R_, m, d = xp.shape
    with torch.no_grad():
        s = score_prev(xp.reshape(-1, d).to(dtype), float(t_prev)).to(torch.float64).reshape(R_, m, d)
    if est.rao_blackwell:
        full = lambda v: torch.full((R_ * m,), float(v), dtype=torch.float64)
        h_at_prev = lambda y, tp: s.reshape(-1, d)  # h_hat(t', X_{t'}), already evaluated in ``dtype``
        t_boot = bsm_rb_target(h_at_prev, x[None].expand(R_, -1, -1).reshape(-1, d),
                               xp.reshape(-1, d), full(t), full(t_prev)).reshape(R_, m, d)
    else:
        t_boot = math.exp(t - t_prev) * s
    return mix * t_dsm + (1.0 - mix) * t_boot


def conditional_variance(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point, the unbiased trace variance tr Cov[T | X_t = x] (sum over coordinates) and the
    variance of coordinate 1 (the one the structured class learns), from ``draws (R, m, d)``."""
    var = draws.var(dim=0, unbiased=True)  # (m, d)
    return var.sum(dim=1), var[:, 0]


def gaussian_target_variance(lam, t: float, t_prev: float, mix: float = 0.0) -> dict[str, float]:
    """Closed forms for Gaussian data X_0 ~ N(mu, U diag(lam) U^T): the conditional variances
    (trace over coordinates) of the regression targets at fixed X_t = x, h_hat the exact score.
    They do not depend on x or mu.

    With a = e^{-t}, a' = e^{-t'}, Delta = t - t', v_i = a^2 lam_i + sigma_t^2 (variance of X_t),
    v'_i = a'^2 lam_i + sigma_{t'}^2 (of X_{t'}):

    * DSM, T = -(x - a X_0)/sigma_t^2 and Cov[X_0 | X_t] = diag(lam sigma_t^2 / v):
          V_dsm = sum_i a^2 lam_i / (sigma_t^2 v_i)
    * BSM with the exact score h = s_{t'} (linear, -diag(1/v') (y - a' mu)) and
      Var[X_{t'} | X_t] = v' sigma_Delta^2 / v (since sigma_Delta^2 + e^{-2 Delta} v' = v):
          V_bsm = (e^{2 Delta} - 1) sum_i 1 / (v'_i v_i)
    * their covariance, from Cov[X_0, X_{t'} | X_t] = a' lam sigma_Delta^2 / v:
          C = -sum_i a'^2 lam_i sigma_Delta^2 / (sigma_t^2 v'_i v_i)
    * the mixed target mix T_dsm + (1 - mix) T_bsm:  mix^2 V_dsm + (1-mix)^2 V_bsm + 2 mix (1-mix) C.
    * Rao–Blackwellised BSM: T_RB = -(x - a D_{t'}(X_{t'}))/sigma_t^2 with the exact denoiser
      D_{t'}(y) = mu + a' lam (y - a' mu) / v' (per coordinate), so
          V_rb = sum_i a^2 a'^2 lam_i^2 sigma_Delta^2 / (sigma_t^4 v'_i v_i),
      equal to V_dsm - sum_i a^2 lam_i sigma_{t'}^2 / (sigma_t^4 v'_i) (law of total variance, the
      subtracted term being E[Var(T_dsm | X_t, X_{t'}) | X_t] = a^2 Var[X_0 | X_{t'}] / sigma_t^4), and
      V_rb / V_dsm = (a'^2 lam_i / v'_i)(sigma_Delta^2 / sigma_t^2) <= 1 per coordinate.
    * the mixed RB target mix T_dsm + (1 - mix) T_RB: T_RB = E[T_dsm | X_t, X_{t'}] makes
      Cov(T_dsm, T_RB | X_t) = V_rb, so its variance is V_rb + mix^2 (V_dsm - V_rb).

    Per coordinate, the pure BSM target has the lower variance iff
    (e^{2 Delta} - 1) sigma_t^2 < a^2 lam_i v'_i: for unit-scale data (lam = 1, v = v' = 1) iff
    (e^{2 Delta} - 1)(e^{2t} - 1) < 1, i.e. at high noise only for steps Delta < ~ e^{-2t}/2; a
    larger data scale lam widens the window. The RB target's is never higher.

    Keys: ``dsm``, ``bsm``, ``cov``, ``mixed`` (the pure target mixed), ``bsm_rb``, ``rb_mixed``.
    """
    lam = np.asarray(lam, dtype=np.float64)
    a2, s2 = math.exp(-2 * t), noise.sigma2(float(t))
    ap2, sp2 = math.exp(-2 * t_prev), noise.sigma2(float(t_prev))
    dl = t - t_prev
    sd2 = noise.sigma2(float(dl))
    v, vp = a2 * lam + s2, ap2 * lam + sp2
    v_dsm = float(np.sum(a2 * lam / (s2 * v)))
    v_bsm = float(np.sum(math.expm1(2 * dl) / (vp * v)))
    cov = float(-np.sum(ap2 * lam * sd2 / (s2 * vp * v)))
    v_rb = float(np.sum(a2 * ap2 * lam * lam * sd2 / (s2 * s2 * vp * v)))
    w = float(mix)
    return {"dsm": v_dsm, "bsm": v_bsm, "cov": cov,
            "mixed": w * w * v_dsm + (1 - w) ** 2 * v_bsm + 2 * w * (1 - w) * cov,
            "bsm_rb": v_rb, "rb_mixed": v_rb + w * w * (v_dsm - v_rb)}


def target_variance_ratio(estimator: str, lam, t: float, t_prev: float, *, t_c: float = 0.0,
                          mix: float = 0.0) -> float:
    """Closed-form conditional target variance of ``estimator`` (its effective, mixed target, exact
    h_hat) over DSM's, Gaussian data with eigenvalues ``lam`` (:func:`gaussian_target_variance`);
    1 at t <= t_c, where every estimator is DSM."""
    est = BOOTSTRAP_ESTIMATORS[estimator]
    if not est.bootstrap or t <= t_c or mix >= 1.0:
        return 1.0
    v = gaussian_target_variance(lam, t, t_prev, mix)
    return (v["rb_mixed"] if est.rao_blackwell else v["mixed"]) / v["dsm"]


def perturbation_gain(estimator: str, t: float, t_prev: float, *, t_c: float = 0.0, mix: float = 0.0) -> float:
    """The factor by which an error of h_hat enters the effective target at t: with
    h_hat = s_{t'} + eta g, E[T | X_t = x] - s_t(x) = gain * eta * E[g(X_{t'}) | X_t = x] for any
    data law and any g. gain = (1 - mix) e^{Delta} for the pure bootstrap target (amplified),
    (1 - mix) e^{-Delta} sigma_{t'}^2 / sigma_t^2 < 1 for T_RB (damped), 0 for DSM and at t <= t_c."""
    est = BOOTSTRAP_ESTIMATORS[estimator]
    if not est.bootstrap or t <= t_c or mix >= 1.0:
        return 0.0
    dl = t - t_prev
    g = math.exp(-dl) * noise.sigma2(float(t_prev)) / noise.sigma2(float(t)) if est.rao_blackwell else math.exp(dl)
    return (1.0 - mix) * g


def gaussian_target_bias(mu, lam, t: float, t_prev: float, x, eta: float, c, beta, *, estimator: str,
                         t_c: float = 0.0, mix: float = 0.0) -> np.ndarray:
    """Closed form, Gaussian data X_0 ~ N(mu, diag(lam)): the bias E[T | X_t = x] - s_t(x) of an
    estimator's effective target when h_hat = s_{t'} + eta g with the affine perturbation
    g(y) = c + beta * y (per coordinate). ``x (m, d)``; ``mu, lam, c, beta`` broadcast to ``(d,)``.

    E[X_{t'} | X_t = x] = a' mu + e^{-Delta} (v'/v)(x - a mu) (Cov(X_{t'}, X_t) = e^{-Delta} v'), so
    bias = gain * eta * (c + beta * (a' mu + e^{-Delta} (v'/v)(x - a mu))), gain of
    :func:`perturbation_gain`. Returns ``(m, d)`` float64."""
    mu, lam, c, beta = (np.asarray(v, dtype=np.float64) for v in (mu, lam, c, beta))
    x = np.asarray(x, dtype=np.float64)
    a, ap = math.exp(-t), math.exp(-t_prev)
    v, vp = a * a * lam + noise.sigma2(float(t)), ap * ap * lam + noise.sigma2(float(t_prev))
    cond_mean = ap * mu + math.exp(t_prev - t) * (vp / v) * (x - a * mu)
    return perturbation_gain(estimator, t, t_prev, t_c=t_c, mix=mix) * eta * (c + beta * cond_mean)


def bsm_wins_max_step(lam: float, t: float) -> float:
    """The largest step Delta below which the exact BSM target has lower conditional variance than
    DSM's in a coordinate of data scale lam at time t: the root of
    (e^{2 Delta} - 1) sigma_t^2 = e^{-2t} lam v_{t - Delta} (bisection; v' increases as Delta grows)."""
    def gap(dl):
        tp = t - dl
        vp = math.exp(-2 * tp) * lam + noise.sigma2(tp)
        return math.expm1(2 * dl) * noise.sigma2(t) - math.exp(-2 * t) * lam * vp
    lo, hi = 0.0, t
    if gap(hi) <= 0:
        return t
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gap(mid) <= 0 else (lo, mid)
    return 0.5 * (lo + hi)
