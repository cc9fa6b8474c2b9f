"""Time bootstrapping (BSM), Markov-dependent training data and a hypothesis class whose size does
not grow with d (Kumar–Nagaraj–Sarkar 2025; science.md §4). Numerics only: no I/O, no Prefect.

The paper's exact BSM loss and experiments could not be read here; this module implements the
constructions science.md §4 sets out (documented at ``dsclab.losses.bsm_loss``, with the other
losses on stored pairs): the pure bootstrap target and the Rao–Blackwellised one it adopts.

Conventions (stated once)
-------------------------
* OU forward process of :mod:`dsclab.noise`: X_t = e^{-t} X_0 + sigma_t Z. Over a step
  Delta = t - t' > 0 the transition is X_t = e^{-Delta} X_{t'} + sigma_Delta xi, xi ~ N(0, I).
* A training set is a :class:`NoisedData`: ``x0 (n, d)`` clean points, ``times (n, K)`` (increasing
  along each row), ``xt (n, K, d)`` the noised point of row i at ``times[i, k]``, and
  ``prev (n, K, d)`` / ``t_prev (n, K)``: the point at the previous time t_{k-1} on the *same
  forward path* as ``xt[i, k]`` (t_{-1} = 0 and prev = x0 for k = 0). Pair count = n K pairs
  (x0_i, xt[i, k]).
* Time grid: geometric, ratio r = (T / t_min)^{1/K}, offset at random per row:
  t_{ik} = t_min r^{k + u_i}, u_i ~ U[0, 1). Every step has Delta = t (1 - 1/r) and the rows
  together cover [t_min, T), so one network learns all times (one h(t, x) for all noise levels).
* Data modes (:data:`DATA_MODES`): ``trajectory`` — the K points of row i lie on ONE forward OU
  path from x0_i (a Markov chain; prev[i, k] = xt[i, k-1]); ``independent`` — every (i, k) is an
  independent noising of x0_i, with its own predecessor on its own two-point path.
* Networks are noise predictors eps_hat(x, t) (``dsclab.nets`` convention), score -eps_hat/sigma_t.
  The losses on these pairs (``dsclab.losses``: ``dsm_pair_loss``, ``BSMPairLoss``) return
  per-sample values ``(m,)`` in eps units (score units weighted by sigma_t^2); the training loop
  (``dsclab.train.fit``) reduces.
* Targets of the regression, in score units (science.md §4; (X_{t'}, X_t) from the same path,
  Delta = t - t'): DSM  T_dsm = -(X_t - e^{-t} X_0) / sigma_t^2; pure bootstrap (``bsm``)
  T_pure = e^{Delta} h_hat(t', X_{t'}); Rao–Blackwellised bootstrap (``bsm_rb``)
  T_RB = -(X_t - e^{-Delta} X_{t'}) / sigma_t^2 + e^{-Delta} (sigma_{t'}^2 / sigma_t^2) h_hat(t', X_{t'})
  = E[T_dsm | X_t, X_{t'}] when h_hat is the true score. Their conditional variances at fixed X_t
  and the bias of a perturbed h_hat, by Monte Carlo and in closed form for Gaussian data, are in
  :mod:`dsclab.studies.score_learning.bootstrap_targets`.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from typing import TYPE_CHECKING

from dsclab import noise
from dsclab.lazy import deferred
from dsclab.losses import BSMPairLoss, ExactScore, dsm_pair_loss
from dsclab.registry import Needs, Registry, RegistryError, origin

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dsclab import nets, train
    from dsclab.studies.score_learning import structured
else:  # imported on first use: a spec reads this module's registries without torch (dsclab.lazy)
    torch = deferred("torch", globals())
    nets = deferred("dsclab.nets", globals())
    train = deferred("dsclab.train", globals())
    structured = deferred("dsclab.studies.score_learning.structured", globals())

# ------------------------------------------------------------------------------------------
# Training data: time grids, forward paths
# ------------------------------------------------------------------------------------------


def grid_ratio(K: int, t_min: float, T: float) -> float:
    """r = (T / t_min)^{1/K}: consecutive training times of a row differ by the factor r."""
    return (T / t_min) ** (1.0 / K)


def row_times(n: int, K: int, t_min: float, T: float, generator: torch.Generator) -> torch.Tensor:
    """t_{ik} = t_min r^{k + u_i}, u_i ~ U[0, 1): ``(n, K)`` float64, increasing along rows."""
    r = grid_ratio(K, t_min, T)
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    k = torch.arange(K, dtype=torch.float64)[None, :]
    return t_min * r ** (k + u)


def ou_step(x: torch.Tensor, dt, xi: torch.Tensor) -> torch.Tensor:
    """One exact OU transition over ``dt`` (float or broadcastable tensor): e^{-dt} x + sigma_dt xi."""
    return noise.mean_coef(dt) * x + noise.sigma(dt) * xi


@dataclass
class NoisedData:
    """A fixed training set of n rows x K times (see the module docstring for the layout)."""

    x0: torch.Tensor      # (n, d)
    times: torch.Tensor   # (n, K) float64
    xt: torch.Tensor      # (n, K, d)
    prev: torch.Tensor    # (n, K, d)
    t_prev: torch.Tensor  # (n, K) float64

    @property
    def n(self) -> int:
        return self.x0.shape[0]

    @property
    def K(self) -> int:
        return self.times.shape[1]

    def head(self, n: int) -> "NoisedData":
        """The first n rows (nested designs: a cell with sample size n uses a prefix)."""
        return NoisedData(self.x0[:n], self.times[:n], self.xt[:n], self.prev[:n], self.t_prev[:n])

    def to(self, device) -> "NoisedData":
        """The same rows on ``device`` (themselves where they are already there)."""
        return NoisedData(*(v.to(device) for v in (self.x0, self.times, self.xt, self.prev, self.t_prev)))


def _prev_times(times: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros_like(times[:, :1]), times[:, :-1]], dim=1)


def sample_trajectory(x0: torch.Tensor, times: torch.Tensor, generator: torch.Generator) -> NoisedData:
    """``trajectory`` mode: X_{t_k} = e^{-(t_k - t_{k-1})} X_{t_{k-1}} + sigma_{t_k - t_{k-1}} xi_k,
    X_{t_{-1}} = x0 (a Markov chain: each row is one forward OU path). float64."""
    x0 = x0.to(torch.float64)
    n, K = times.shape
    tp = _prev_times(times)
    xi = torch.randn(n, K, x0.shape[1], generator=generator, dtype=torch.float64)
    xs, x = [], x0
    for k in range(K):
        x = ou_step(x, (times[:, k] - tp[:, k])[:, None], xi[:, k])
        xs.append(x)
    xt = torch.stack(xs, dim=1)
    prev = torch.cat([x0[:, None], xt[:, :-1]], dim=1)
    return NoisedData(x0, times, xt, prev, tp)


def sample_independent(x0: torch.Tensor, times: torch.Tensor, generator: torch.Generator) -> NoisedData:
    """``independent`` mode: for every (i, k) an independent two-point path
    X_{t_{k-1}} = e^{-t_{k-1}} x0 + sigma_{t_{k-1}} zeta, X_{t_k} = e^{-Delta} X_{t_{k-1}} + sigma_Delta xi
    (so X_{t_k} is an exact, independent noising of x0 at t_k). float64."""
    x0 = x0.to(torch.float64)
    n, K = times.shape
    tp = _prev_times(times)
    zeta = torch.randn(n, K, x0.shape[1], generator=generator, dtype=torch.float64)
    xi = torch.randn(n, K, x0.shape[1], generator=generator, dtype=torch.float64)
    prev = ou_step(x0[:, None, :], tp[..., None], zeta)  # tp = 0 gives prev = x0 exactly
    xt = ou_step(prev, (times - tp)[..., None], xi)
    return NoisedData(x0, times, xt, prev, tp)


DATA_MODES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator], NoisedData]] = {
    "independent": sample_independent,
    "trajectory": sample_trajectory,
}


# ------------------------------------------------------------------------------------------
# Hypothesis classes
# ------------------------------------------------------------------------------------------


def make_mlp(d: int, *, width: int, depth: int, generator: torch.Generator) -> nn.Module:
    """The generic class: ``dsclab.nets.ScoreMLP`` (its input and output layers grow with d)."""
    return nets.ScoreMLP(d, width=width, depth=depth, generator=generator)


def make_structured(d: int, *, width: int, depth: int, generator: torch.Generator) -> nn.Module:
    """The structured class: :class:`dsclab.studies.score_learning.structured.StructuredScore`."""
    return structured.StructuredScore(d, width=width, depth=depth, generator=generator)


HYPOTHESES: Registry[Callable[..., nn.Module]] = Registry(
    "dsclab.hypotheses", "hypothesis class", check=Needs("hypothesis class"),
    builtins={"mlp": make_mlp, "structured": make_structured})
"""Hypothesis classes ``(d, *, width, depth, generator) -> nn.Module`` (a score network: ``model(x, t)``
and ``model.score(x, t)``), by name (entry-point group ``dsclab.hypotheses``)."""


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Phase:
    """One stretch of a training run: ``steps`` optimiser steps on the training pairs with
    t <= ``t_max`` (``inf``: all of them), the targets above t_c formed with the h_hat named by
    ``teacher`` (a key of :data:`TEACHERS`, built when the phase starts; None: DSM at every t).
    The phases of a run share one Adam optimiser and one cosine schedule over the run's steps,
    but a ``restart`` phase, whose learning rate decays from ``lr`` to 0 over its own steps."""

    steps: int
    t_max: float = math.inf
    teacher: str | None = None
    restart: bool = False  # a cosine decay of its own (lr to 0 over its steps), else the run's


def band_edges(t_c: float, T: float, ratio: float) -> list[float]:
    """Band edges above t_c: e_j = t_c r^j, j = 0..B, B = ceil(log(T/t_c) / log r) (the last edge at
    or above T). A band is (e_{j-1}, e_j]; with r the training grid's ratio, a pair (t', t) of one
    row has t' = t / r, so the predecessor of every pair in band j lies in band j-1 (band 0 being
    (0, t_c], trained by DSM): the targets of band j need the network on the bands below only."""
    if not (0 < t_c < T and ratio > 1):
        raise ValueError(f"band edges need 0 < t_c < T and a grid ratio > 1, got t_c={t_c}, T={T}, r={ratio}")
    B = max(1, math.ceil(math.log(T / t_c) / math.log(ratio) - 1e-9))
    return [t_c * ratio ** j for j in range(B + 1)]


def _split(steps: int, parts: int) -> list[int]:
    """``steps`` in ``parts`` near-equal whole shares (the first ones one larger), each >= 1."""
    if steps < parts:
        raise ValueError(f"{steps} steps cannot be split into {parts} phases of at least one step")
    q, r = divmod(steps, parts)
    return [q + (i < r) for i in range(parts)]


@dataclass(frozen=True)
class Joint:
    """Every step on every pair with one target (the estimator's h_hat: none for DSM, the network
    itself for ``bsm``/``bsm_rb``, the exact score for the oracles): one phase."""

    def phases(self, est: "BootstrapEstimator", config: "FitConfig") -> tuple[Phase, ...]:
        teacher = None if not est.bootstrap else "exact" if est.oracle else "self"
        return (Phase(config.steps, teacher=teacher),)


@dataclass(frozen=True)
class DSMThenFrozen:
    """A frozen teacher ("previously learned scores", Kumar–Nagaraj–Sarkar 2025; science.md §4):
    the first ``dsm_share`` of the steps are DSM at every t (the very steps of ``dsm``'s run: same
    initialisation, draws and schedule); then a copy of that network is frozen as h_hat and the
    remaining steps fit the estimator's bootstrap target above t_c (DSM below) with it.

    ``dsm_share = 1/2``: the teacher's error at t' enters the Rao–Blackwellised target damped by
    e^{-Delta} sigma_{t'}^2/sigma_t^2 (1 - mix) (0.37 to 0.55 on the bsm grid), so the teacher
    must be well trained, and the student needs steps to fit its lower-variance target: half and
    half is the neutral split, not tuned."""

    dsm_share: float = 0.5

    def phases(self, est: "BootstrapEstimator", config: "FitConfig") -> tuple[Phase, ...]:
        first = round(self.dsm_share * config.steps)
        if not 0 < first < config.steps:
            raise ValueError(f"{config.steps} steps leave no step to one of the two phases (dsm_share {self.dsm_share})")
        return Phase(first), Phase(config.steps - first, teacher="frozen")


@dataclass(frozen=True)
class Bands:
    """Band-sequential training: noise bands in increasing t, each band's targets from the network
    frozen after the bands below (science.md §4: "bands trained in increasing t, each bootstrapping
    from the frozen bands below").

    Phase 0 is DSM on the pairs with t <= t_c; phase j = 1..B adds band j = (e_{j-1}, e_j]
    (:func:`band_edges`, geometric with the training grid's ratio r, so that every pair's
    predecessor t' = t/r lies in the bands already trained) and trains on every pair with
    t <= e_j: DSM at t <= t_c, the estimator's bootstrap target above it, h_hat a copy of the
    network frozen when the phase starts. The bands below stay in the phase (one network for all
    t: a band trained alone would let the lower ones drift). The steps are split equally over the
    B + 1 phases (t <= t_c is trained in all of them, band j in the last B + 1 - j), and each phase
    has a cosine decay of its own (``Phase.restart``): under one decay over the run the last
    phases would train at 4% of the learning rate or less, and the top bands would stay
    untrained (measured with studies/bsm_regimes.yaml: score error up to 71x DSM's at t = 2.5)."""

    def edges(self, config: "FitConfig") -> list[float]:
        if config.grid_ratio is None or config.T is None:
            raise ValueError("band-sequential training needs the training grid's ratio and T (FitConfig.grid_ratio, T)")
        return band_edges(config.t_c, config.T, config.grid_ratio)

    def phases(self, est: "BootstrapEstimator", config: "FitConfig") -> tuple[Phase, ...]:
        edges = self.edges(config)
        steps = _split(config.steps, len(edges))
        return (Phase(steps[0], t_max=edges[0], restart=True),) + tuple(
            Phase(s, t_max=e if j < len(edges) - 1 else math.inf, teacher="frozen", restart=True)
            for j, (s, e) in enumerate(zip(steps[1:], edges[1:]), start=1))


@dataclass(frozen=True)
class BootstrapEstimator:
    """How an estimator forms its regression target above t_c: ``bootstrap`` (False: DSM at every
    t), ``rao_blackwell`` (the target T_RB of ``dsclab.losses.bsm_rb_target``, else the pure
    bootstrap target e^{t - t'} h_hat(t', X_{t'}) of ``dsclab.losses.bsm_target``) and ``oracle``
    (h_hat the exact score of the data law, else a learned network); and how its steps are spent,
    ``schedule`` (:class:`Joint`, :class:`DSMThenFrozen`, :class:`Bands`: its :class:`Phase` list,
    whose ``teacher`` says which h_hat each phase uses)."""

    bootstrap: bool = False
    rao_blackwell: bool = False
    oracle: bool = False
    schedule: Joint | DSMThenFrozen | Bands = Joint()

    @property
    def learned(self) -> bool:
        """A bootstrap from a learned h_hat (not DSM, not an oracle)."""
        return self.bootstrap and not self.oracle


def _check_estimator(name: str, obj: object) -> None:
    if not isinstance(obj, BootstrapEstimator):
        raise RegistryError(f"bootstrap estimator {name!r} ({origin(obj)}) is a {type(obj).__name__}, "
                            f"not a BootstrapEstimator")
    if not isinstance(obj.schedule, Joint) and not obj.learned:
        raise RegistryError(f"bootstrap estimator {name!r} ({origin(obj)}): a {type(obj.schedule).__name__} "
                            f"schedule needs a learned bootstrap (bootstrap=True, oracle=False)")


BOOTSTRAP_ESTIMATORS: Registry[BootstrapEstimator] = Registry(
    "dsclab.bootstrap_estimators", "estimator", check=_check_estimator, builtins={
        "dsm": BootstrapEstimator(),
        "bsm": BootstrapEstimator(bootstrap=True),
        "bsm_oracle": BootstrapEstimator(bootstrap=True, oracle=True),
        "bsm_rb": BootstrapEstimator(bootstrap=True, rao_blackwell=True),
        "bsm_rb_oracle": BootstrapEstimator(bootstrap=True, rao_blackwell=True, oracle=True),
        "bsm_rb_frozen": BootstrapEstimator(bootstrap=True, rao_blackwell=True, schedule=DSMThenFrozen(0.5)),
        "bsm_band": BootstrapEstimator(bootstrap=True, rao_blackwell=True, schedule=Bands()),
    })
"""``dsm``; ``bsm`` and ``bsm_rb`` (pure and Rao–Blackwellised bootstrap targets, h_hat = the
network under stop-gradient, or a lagged copy: ``FitConfig.lag``, trained at the same time);
``bsm_oracle`` and ``bsm_rb_oracle`` (the same targets with h_hat = the exact score of the data
law: a diagnostic, possible only for a known law); ``bsm_rb_frozen`` (T_RB from a previously
learned score: half the steps DSM, then h_hat = that network, frozen: :class:`DSMThenFrozen`) and
``bsm_band`` (T_RB band by band in increasing t, h_hat the network frozen after the bands below:
:class:`Bands`). Every estimator takes ``FitConfig.steps`` steps in all."""


# ------------------------------------------------------------------------------------------
# Training: one network for all t, trained jointly
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitConfig:
    steps: int = 1000
    batch_size: int = 32   # rows (x0's) per step; every row brings its K times: batch_size K pairs
    lr: float = 2e-3
    t_c: float = 0.3       # BSM: DSM at t <= t_c, bootstrapped targets above
    lag: int = 0           # BSM: 0 = stop-gradient of the current network; L > 0 = a copy refreshed every L steps
    mix: float = 0.0       # BSM: weight of DSM above t_c
    grid_ratio: float | None = None  # the training grid's ratio r (band-sequential training: its band edges)
    T: float | None = None           # the training grid's largest time (idem)


@dataclass
class FitResult:
    model: nn.Module
    loss: float     # mean per-pair loss over the last 10% of steps
    seconds: float


def _self_teacher(model: nn.Module, law, config: FitConfig):
    """h_hat = the network itself under stop-gradient, or (``lag`` > 0) a copy refreshed every
    ``lag`` steps of the phase."""
    if config.lag <= 0:
        return model, None
    lagged = copy.deepcopy(model).eval()

    def refresh(step: int) -> None:
        if step % config.lag == 0:
            lagged.load_state_dict(model.state_dict())

    return lagged, refresh


def _frozen_teacher(model: nn.Module, law, config: FitConfig):
    """h_hat = a copy of the network as it is now, in eval mode, without gradients: it does not
    change during the phase."""
    return copy.deepcopy(model).eval().requires_grad_(False), None


def _exact_teacher(model: nn.Module, law, config: FitConfig):
    """h_hat = the exact score of the data law (``ExactScore``)."""
    return ExactScore(law), None


TEACHERS: dict[str, Callable] = {"self": _self_teacher, "frozen": _frozen_teacher, "exact": _exact_teacher}
"""``Phase.teacher`` -> ``(model, law, config) -> (h_hat, before_step or None)``, built when the phase starts."""


def fit(model: nn.Module, data: NoisedData, estimator: str, config: FitConfig, generator: torch.Generator,
        law=None) -> FitResult:
    """Adam with cosine decay on the fixed training set ``data`` (empirical risk over its n K pairs).

    Each step draws ``batch_size`` rows with replacement and uses the K pairs of each row (in
    ``trajectory`` mode the pairs of a row are Markov-dependent) that the phase trains. The
    estimator's schedule (:data:`BOOTSTRAP_ESTIMATORS`) cuts the ``config.steps`` steps into
    :class:`Phase` s (one for ``dsm``, ``bsm``, ``bsm_rb`` and the oracles) sharing one optimiser
    and one cosine schedule over all steps (a ``restart`` phase: one over its own steps); a phase keeps the pairs with t <= ``t_max`` (the rows
    are drawn as in every other phase) and its loss is ``dsclab.losses.dsm_pair_loss`` (no
    teacher) or ``BSMPairLoss`` with the h_hat of :data:`TEACHERS` (the network under
    stop-gradient, a lagged copy refreshed every ``lag`` steps, a frozen copy, or
    ``ExactScore(law)``). Deterministic for a generator. ``model`` and ``data`` share a device; the
    rows are drawn by ``generator`` (the CPU's) and moved there, so the draws are the same on every
    device. ``law`` (with an exact ``score``) is needed by the oracle estimators only. The loop is
    ``dsclab.train.fit``; a loss that becomes NaN or infinite raises
    :class:`dsclab.errors.TrainingDiverged`. ``seconds`` is the wall time of all phases.
    """
    est = BOOTSTRAP_ESTIMATORS.resolve(estimator)
    if est.oracle and law is None:
        raise ValueError(f"estimator {estimator!r} needs the data law (its exact score)")
    phases = est.schedule.phases(est, config)
    assert sum(p.steps for p in phases) == config.steps, (estimator, phases)
    t0 = time.perf_counter()
    d, K, n = data.x0.shape[1], data.K, data.n
    x0, xt, prev = (v.to(torch.float32) for v in (data.x0, data.xt, data.prev))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = train.cosine_decay(opt, config.steps)

    def drawer(phase: Phase) -> Callable[[int], tuple]:
        def draw(step: int) -> tuple:
            idx = torch.randint(0, n, (config.batch_size,), generator=generator).to(x0.device)
            b0 = x0[idx][:, None, :].expand(-1, K, -1).reshape(-1, d)
            pairs = (b0, xt[idx].reshape(-1, d), data.times[idx].reshape(-1))
            if phase.teacher is not None:
                pairs = pairs + (prev[idx].reshape(-1, d), data.t_prev[idx].reshape(-1))
            if phase.t_max == math.inf:
                return pairs
            keep = pairs[2] <= phase.t_max
            return tuple(v[keep] for v in pairs)
        return draw

    traces = []
    for k, phase in enumerate(phases):
        before = None
        if phase.teacher is None:
            loss = dsm_pair_loss
        else:
            target, before = TEACHERS[phase.teacher](model, law, config)
            loss = BSMPairLoss(target, t_c=config.t_c, mix=config.mix, rao_blackwell=est.rao_blackwell)
        traces.append(train.fit(model, loss, drawer(phase), steps=phase.steps, optimizer=opt,
                                scheduler=train.cosine_decay(opt, phase.steps) if phase.restart else sched,
                                before_step=before, label=f"training, phase {k + 1}/{len(phases)}"))
    trace = train.Trace(torch.cat([tr.losses for tr in traces]))
    return FitResult(model.eval(), trace.tail_mean(), time.perf_counter() - t0)
