"""Losses of the training loop (``dsclab.train.fit``). Each returns per-sample values; the caller reduces.

A loss is called as ``loss(model, *batch)`` (:class:`PerSampleLoss`): ``batch`` is what the run's
draw function returns for one step (the loss's ``batch`` attribute names its tensors), and the
result has shape ``(m,)``, or ``(M, m)`` for an ensemble of M members (:class:`EnsembleLoss`).
Randomness is passed in, never drawn here.

* Score matching on fresh noise (``SCORE_LOSSES``): a loss takes the model, a batch of clean data
  ``x0 (m, d)``, times ``t (m,)`` and standard normal noise ``z (m, d)`` and forms
  X_t = e^{-t} x0 + sigma_t z. ``SCORE_LOSSES`` is a :class:`dsclab.registry.Registry`: another
  installed package adds a loss through the entry-point group ``dsclab.estimators``.
* Stored pairs (x0, X_t) of a ``dsclab.studies.score_learning.bootstrap.NoisedData`` (its conventions):
  :func:`dsm_pair_loss`, and :class:`BSMPairLoss` (BSM with the pure bootstrap target
  :func:`bsm_target` or the Rao–Blackwellised one :func:`bsm_rb_target`; with
  :class:`ExactScore` as h_hat, the oracle variants). These networks are noise predictors
  eps_hat(x, t) (``dsclab.nets``), values in eps units (score units weighted by sigma_t^2).
* The drift loss of the spike network (``dsclab.studies.computational_gap.spike``): :func:`drift_matching_loss`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TYPE_CHECKING

from dsclab import noise
from dsclab.lazy import deferred
from dsclab.registry import Needs, Registry, declare

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


class PerSampleLoss(Protocol):
    """The signature of a loss of ``dsclab.train.fit``: ``loss(model, *batch)`` -> per-sample
    values ``(m,)`` (or ``(M, m)``, one row per member of an ensemble). ``batch``, an attribute
    of the built-in losses, names the tensors the draw function must return, in order."""

    batch: tuple[str, ...]

    def __call__(self, model, *batch: torch.Tensor) -> torch.Tensor: ...


@declare(batch=("x0", "t", "z"))
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


SCORE_LOSSES: Registry[Callable] = Registry("dsclab.estimators", "estimator", check=Needs("estimator"),
                                            builtins={"dsm": dsm_loss})
"""The per-sample losses of the score estimators trained on fresh noise (the sample-complexity
study's ``estimator`` axis), by name."""


class EnsembleLoss:
    """A per-sample loss of a batched ensemble (``dsclab.nets.EnsembleMLP``: flat rows grouped by
    member) on a batch laid out ``(M, m, ...)`` (member m's rows in slice m): the rows are
    flattened to ``(M m, ...)`` for ``loss`` and its values returned as ``(M, m)``."""

    def __init__(self, loss: Callable[..., torch.Tensor]):
        self.loss = loss
        self.batch = getattr(loss, "batch", None)

    def __call__(self, model, *batch: torch.Tensor) -> torch.Tensor:
        M, m = batch[0].shape[:2]
        return self.loss(model, *(b.reshape((M * m,) + tuple(b.shape[2:])) for b in batch)).reshape(M, m)


# ------------------------------------------------------------------------------------------
# Stored pairs (dsclab.studies.score_learning.bootstrap): DSM, BSM, BSM-oracle
# ------------------------------------------------------------------------------------------


def bsm_target(score_prev: Callable, prev: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
    """BSM regression target in score units: e^{t - t'} h_hat(t', X_{t'}) (science.md §4).

    Exact when h_hat is the true score, by the bootstrapping identity
    s_t(x) = e^{t - t'} E[s_{t'}(X_{t'}) | X_t = x] (t > t'): writing X_t = e^{-Delta} X_{t'} + W,
    q_t(x) = E_W[e^{d Delta} q_{t'}(e^{Delta}(x - W))], and differentiating in x gives the identity.
    ``t, t_prev`` are ``(m,)`` float64 with t > t_prev > 0.
    """
    s = score_prev(prev, t_prev)
    return torch.exp(t - t_prev).to(s.dtype)[:, None] * s


def bsm_rb_target(score_prev: Callable, xt: torch.Tensor, prev: torch.Tensor, t: torch.Tensor,
                  t_prev: torch.Tensor) -> torch.Tensor:
    """Rao–Blackwellised BSM target in score units (science.md §4, the adopted principal BSM):

        T_RB = -(X_t - e^{-t} D_hat_{t'}(X_{t'})) / sigma_t^2,   D_hat_{t'}(y) = e^{t'}(y + sigma_{t'}^2 h_hat(t', y))
             = -(X_t - e^{-Delta} X_{t'}) / sigma_t^2 + e^{-Delta} (sigma_{t'}^2 / sigma_t^2) h_hat(t', X_{t'}),

    Delta = t - t'. With h_hat the true score it is E[T_dsm | X_t, X_{t'}] (Markov property and
    Tweedie: E[X_0 | X_t, X_{t'}] = D_{t'}(X_{t'})), so it is unbiased and its conditional variance
    given X_t is at most DSM's (law of total variance); an error of h_hat enters multiplied by
    e^{-Delta} sigma_{t'}^2 / sigma_t^2 < 1. ``xt, prev (m, d)``; ``t, t_prev`` ``(m,)`` float64 with
    t > t_prev > 0; the result has the dtype of ``score_prev``'s values.
    """
    s = score_prev(prev, t_prev)
    decay = torch.exp(t_prev - t)
    s2 = noise.sigma2(t)
    gain = decay * noise.sigma2(t_prev) / s2
    dt = s.dtype
    return -(xt.to(dt) - decay.to(dt)[:, None] * prev.to(dt)) / s2.to(dt)[:, None] + gain.to(dt)[:, None] * s


@declare(batch=("x0", "xt", "t"))
def dsm_pair_loss(model, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """DSM on stored pairs (x0, X_t): :func:`dsm_loss` with Z = (X_t - e^{-t} x0)/sigma_t,
    i.e. sigma_t^2 ||s_hat(t, X_t) + Z/sigma_t||^2 = ||eps_hat - Z||^2. Per sample ``(m,)``."""
    z = (xt - noise.mean_coef(t).to(xt.dtype)[:, None] * x0) / noise.sigma(t).to(xt.dtype)[:, None]
    return dsm_loss(model, x0, t, z)


def bsm_loss(model, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, prev: torch.Tensor, t_prev: torch.Tensor,
             *, target, t_c: float, mix: float = 0.0, rao_blackwell: bool = False) -> torch.Tensor:
    """Bootstrapped score matching (science.md §4). Per sample ``(m,)``, eps units:

    * t <= t_c:  DSM, ||eps_hat(X_t, t) - Z||^2;
    * t >  t_c:  (1 - mix) sigma_t^2 ||s_hat(t, X_t) - T||^2 + mix * DSM, with T the pure
      bootstrap target e^{t - t'} h_hat(t', X_{t'}) (:func:`bsm_target`) or, with
      ``rao_blackwell``, T_RB (:func:`bsm_rb_target`); (X_{t'}, X_t) are consecutive points of
      the same forward path and h_hat = ``target.score`` under stop-gradient (``target`` is the
      network itself, a lagged copy, or :class:`ExactScore`).

    The mixed per-sample loss is, up to a constant, sigma_t^2 ||s_hat - T_mix||^2 with the
    effective target T_mix = mix T_dsm + (1 - mix) T (whose variance and bias
    ``dsclab.studies.score_learning.bootstrap_targets`` measures and gives in closed form).
    """
    per = dsm_pair_loss(model, x0, xt, t)
    hi = t > t_c
    if mix >= 1.0 or not bool(hi.any()):
        return per
    with torch.no_grad():
        if rao_blackwell:
            tgt = bsm_rb_target(target.score, xt[hi], prev[hi], t[hi], t_prev[hi])
        else:
            tgt = bsm_target(target.score, prev[hi], t[hi], t_prev[hi])
    sig = noise.sigma(t[hi]).to(xt.dtype)[:, None]
    s_hat = noise.score_from_eps(model(xt[hi], t[hi]), t[hi].to(xt.dtype))
    b = ((sig * (s_hat - tgt)) ** 2).sum(dim=1)
    out = per.clone()
    out[hi] = mix * per[hi] + (1.0 - mix) * b
    return out


class BSMPairLoss:
    """:func:`bsm_loss` as a loss object: ``(model, x0, xt, t, prev, t_prev) -> (m,)`` with the
    target h_hat (``target.score``: the network itself, a lagged copy, or :class:`ExactScore` for
    the oracle variants), the switch time ``t_c``, the DSM weight ``mix`` and the target's form
    (``rao_blackwell``: T_RB, else the pure bootstrap target) fixed."""

    batch = ("x0", "xt", "t", "prev", "t_prev")

    def __init__(self, target, *, t_c: float, mix: float = 0.0, rao_blackwell: bool = False):
        self.target, self.t_c, self.mix, self.rao_blackwell = target, t_c, mix, rao_blackwell

    def __call__(self, model, x0, xt, t, prev, t_prev) -> torch.Tensor:
        return bsm_loss(model, x0, xt, t, prev, t_prev, target=self.target, t_c=self.t_c, mix=self.mix,
                        rao_blackwell=self.rao_blackwell)


class ExactScore:
    """The exact score of a known law as a BSM target (``h_hat = s``): ``bsm_oracle`` and
    ``bsm_rb_oracle`` use it to isolate the variance of bootstrapped targets from the feedback of
    a learned h_hat."""

    def __init__(self, law):
        self.law = law

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """The law's score, computed on the CPU (where the law's tensors live) in float64, returned
        in x's dtype on x's device."""
        t = t.cpu() if isinstance(t, torch.Tensor) else t
        return self.law.score(x.to("cpu", torch.float64), t).to(x.device, x.dtype)


# ------------------------------------------------------------------------------------------
# The spike network's drift loss (dsclab.studies.computational_gap.spike)
# ------------------------------------------------------------------------------------------


@declare(batch=("y", "t", "x"))
def drift_matching_loss(model, y: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||m_theta(y_t, t) - x||^2 per matrix, ``(B,)``, in the network's dtype: ``y (B, n, n)`` the
    observation y_t = t x + W_t of the clean matrix ``x (B, n, n)`` at SL times ``t (B,)``
    (``dsclab.studies.computational_gap.spike`` conventions); x is moved to the prediction's device and dtype. Its
    minimiser is the Bayes drift E[x | y_t]."""
    pred = model(y, t)
    return (pred - x.to(device=pred.device, dtype=pred.dtype)).pow(2).sum(dim=(1, 2))
