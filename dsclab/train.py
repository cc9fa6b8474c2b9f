"""Training: the one loop (:func:`fit`) and the score-network trainers built on it.

:func:`fit` runs a budget of optimiser steps on a model, driven by a *loss object* (per-sample
values, ``dsclab.losses``) and a *draw function* (the step's batch, from generators the caller
seeded). It owns what every training run shares: the step (zero_grad, backward, optional
gradient clipping, optimiser and schedule steps), the arithmetic of the loss (autocast), the
non-finite check, and the record of the loss (:class:`Trace`). Its callers build the model,
the optimiser, the schedule and the draws: ``train_score`` and ``train_ensemble`` here,
``dsclab.studies.score_learning.bootstrap.fit`` (stored pairs, DSM / BSM), ``dsclab.studies.computational_gap.spike.train_network`` (the
equivariant network's drift loss).

``train_score`` fits one score network to n points with Adam for a budget of optimiser steps.
Everything random (initialisation, minibatches, times, noise) comes from generators seeded by
the ``seed`` argument, so a run is reproducible on a given device. ``train_group`` is the entry
point the pipeline calls with a group of cells that share d.

Minibatches, times and noise are drawn ``DRAW_STEPS`` optimiser steps at a time
(:class:`ScoreDraws`: a few large RNG calls instead of four small ones per step), in the same
order by ``train_score`` and by every member of ``train_ensemble``, which is what makes a
member's draws equal to those of training it alone. Adam is PyTorch's fused implementation
(one kernel for all parameters; ``benchmarks/train_throughput.py`` measured it), stepped by
:class:`CosineAdam` (``torch.optim``'s wrapper imports ``torch._dynamo`` in every process).

Progress: :func:`fit` logs a line on the standard logger ``dsclab.train`` (level INFO) at most
every :data:`PROGRESS_SECONDS` per thread while it trains: the step, the mean loss of that step,
the time elapsed in this call and its ETA. Nothing here depends on Prefect: the flow's train task
forwards these lines to its run logger (``tasks.progress``); elsewhere they go wherever the caller's
logging sends them (nowhere by default). Reading the loss once per line is the only host sync it
adds; the numbers are unchanged.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn

from dsclab.errors import TrainingDiverged
from dsclab.losses import SCORE_LOSSES, EnsembleLoss, sample_times
from dsclab.nets import EnsembleMLP, ScoreMLP
from dsclab.precisions import PRECISIONS
from dsclab.seeds import generator, rng


DRAW_STEPS = 32  # optimiser steps whose random draws are made at once

PROGRESS_SECONDS = 30.0  # at most one progress line of :func:`fit` this often, per thread
log = logging.getLogger("dsclab.train")
_clock = time.monotonic  # the progress lines' clock (a test replaces it)
_reported = threading.local()  # .at: the clock when this thread last logged a line (or began counting)


def fmt_seconds(seconds: float) -> str:
    """'3m07s': how every progress line of a run gives a duration (these, and ``flows.study``'s)."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


class _Progress:
    """The progress lines of one :func:`fit` call: after a step, a line when the thread's last
    line is :data:`PROGRESS_SECONDS` old. The count starts at the call when the thread's last line
    is older than that (it trained nothing since: between groups it evaluated), so a run of short
    calls back to back (an epoch each) still gets a line every interval."""

    def __init__(self, steps: int, label: str):
        self.steps, self.label = steps, label
        self.on = log.isEnabledFor(logging.INFO)
        self.t0 = _clock() if self.on else 0.0
        if self.on and self.t0 - getattr(_reported, "at", -math.inf) > PROGRESS_SECONDS:
            _reported.at = self.t0

    def __call__(self, step: int, value: torch.Tensor, bad: torch.Tensor | None) -> None:
        if not self.on:
            return
        now = _clock()
        if now - _reported.at < PROGRESS_SECONDS:
            return
        _reported.at = now
        done, elapsed = step + 1, now - self.t0
        kept = value.detach().double().reshape(-1)
        if bad is not None:
            kept = kept[~bad]
        loss = kept.mean().item() if kept.numel() else math.nan
        who = "" if value.ndim == 0 else f" {value.numel()} networks"
        log.info("%s%s: step %d/%d (%d%%), loss %.4g, %s elapsed, ETA %s", self.label, who, done, self.steps,
                 100 * done // self.steps, loss, fmt_seconds(elapsed), fmt_seconds(elapsed / done * (self.steps - done)))


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a training-step arithmetic (a key of ``PRECISIONS``), or None for
    plain float32."""
    name = PRECISIONS[precision]
    return None if name is None else getattr(torch, name)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


def _sequential_mean(values: list[float], count: int) -> float:
    """(((0 + v_1) + v_2) + ...) / count in float64, the summation order of the trainers' tail
    losses (``sum`` is not used: from Python 3.12 it compensates, another rounding)."""
    total = 0.0
    for v in values:
        total += v
    return total / count


@dataclass
class Trace:
    """What :func:`fit` records.

    ``losses``: the reduced loss of every step, float64 on the CPU: ``(steps,)`` for one model
    (the mean of its per-sample values), ``(steps, M)`` for an ensemble (member m: the mean of its
    row). ``diverged``: ``(M,)`` bool, the members masked for a non-finite loss (ensembles only;
    None for one model, which raises instead).
    """

    losses: torch.Tensor
    diverged: torch.Tensor | None = None

    @property
    def tail(self) -> int:
        """The last 10% of steps (at least one)."""
        return max(1, self.losses.shape[0] // 10)

    def tail_mean(self) -> float | list[float]:
        """Mean loss over the last :attr:`tail` steps, summed in step order in float64: one float
        for one model, one per member for an ensemble (a diverged member's is not meaningful)."""
        rows = self.losses[-self.tail:].tolist()
        if self.losses.ndim == 1:
            return _sequential_mean(rows, self.tail)
        return [_sequential_mean(list(col), self.tail) for col in zip(*rows)]


def clip_members_(parameters, max_norm: float) -> None:
    """Per-member gradient clipping of an ensemble whose parameters stack their M members along
    dim 0 (``dsclab.nets.EnsembleMLP``): member m's gradient is scaled by
    min(1, max_norm / (||g_m|| + 1e-6)), ||g_m|| its 2-norm over all its parameter slices, the
    rule of ``torch.nn.utils.clip_grad_norm_`` applied to each member alone. No host sync."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (P, M)
    coef = (max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1)))


def fit(model: nn.Module, loss: Callable[..., torch.Tensor], draw: Callable[[int], tuple], *, steps: int,
        optimizer: torch.optim.Optimizer, scheduler=None, autocast: torch.dtype | None = None,
        clip: float | None = None, before_step: Callable[[int], None] | None = None,
        label: str = "training") -> Trace:
    """Run ``steps`` optimiser steps of ``model`` on ``loss(model, *draw(step))``.

    * ``loss`` returns per-sample values (``dsclab.losses.PerSampleLoss``): shape ``(m,)`` for one
      model, whose step minimises their mean; ``(M, m)`` for an ensemble of M members, whose step
      minimises the sum over members of each row's mean (member m's gradient is its own loss's).
    * ``draw(step)`` returns the loss's batch for that step; it is called once per step, in step
      order, so the draws of a run are those of its generators in sequence. ``before_step(step)``,
      if given, runs first (a lagged target's refresh).
    * The loss is evaluated under ``torch.autocast(device, autocast)`` when ``autocast`` is a
      dtype; the backward pass runs outside it. ``clip`` (default off) bounds the gradient's
      2-norm before the optimiser step: ``clip_grad_norm_`` for one model, per member
      (:func:`clip_members_`) for an ensemble.
    * A non-finite loss raises :class:`dsclab.errors.TrainingDiverged` for one model (before that
      step's update). In an ensemble it masks the member from then on: its loss no longer enters
      the objective, whatever its backward still produces stays in its own parameter slice (the
      members share no parameters), the others are undisturbed, and :attr:`Trace.diverged`
      reports it.
    * Each step ends with ``optimizer.step()`` and ``scheduler.step()`` (if given). The losses are
      recorded on the model's device (no host sync per step beyond one model's finiteness check)
      and returned on the CPU as a :class:`Trace`.
    * Progress: a line on the logger ``dsclab.train`` at most every :data:`PROGRESS_SECONDS`
      (see the module's docstring), the step's mean loss over the unmasked members, after
      ``label`` (a caller that trains in several calls names the part: ``stage 2/3, epoch 5/40``;
      the step, elapsed time and ETA are this call's).
    """
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    device = next(model.parameters()).device
    arithmetic = contextlib.nullcontext() if autocast is None else torch.autocast(device.type, dtype=autocast)
    losses: torch.Tensor | None = None  # (steps,) or (steps, M), allocated at step 0
    bad: torch.Tensor | None = None     # (M,): the masked members of an ensemble
    progress = _Progress(steps, label)
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        batch = draw(step)
        with arithmetic:
            per = loss(model, *batch)
        if per.ndim == 1:
            value = per.mean()
            if not torch.isfinite(value):
                raise TrainingDiverged(f"loss is {value.item()} at step {step}")
            objective = value
        else:
            value = per.mean(1)
            if bad is None:
                bad = torch.zeros(value.shape, dtype=torch.bool, device=value.device)
            bad |= ~torch.isfinite(value)
            objective = torch.where(bad, torch.zeros_like(value), value).sum()
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if clip is not None:
            if bad is None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            else:
                clip_members_(model.parameters(), clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if losses is None:
            losses = torch.empty((steps,) + tuple(value.shape), dtype=torch.float64, device=value.device)
        losses[step] = value.detach()
        progress(step, value, bad)
    return Trace(losses.cpu(), None if bad is None else bad.cpu())


def cosine_factor(k: int, steps: int) -> float:
    """(1 + cos(pi k / steps)) / 2: the factor of the learning rate at step k of a cosine decay to 0
    over ``steps`` (:func:`cosine_decay`, :class:`CosineAdam`)."""
    return 0.5 * (1 + math.cos(math.pi * k / steps))


def cosine_decay(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate lr_0 (1 + cos(pi k / steps)) / 2 at step k: cosine decay to 0 over ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: cosine_factor(k, steps))


# ------------------------------------------------------------------------------------------
# Score networks on point clouds (DSM)
# ------------------------------------------------------------------------------------------


def _draw_chunk(x: torch.Tensor, k: int, bs: int, t_min: float, T: float, g: torch.Generator):
    """Draws for ``k`` steps from one generator, in a fixed order: minibatch indices (with
    replacement), times (``sample_times``), noise. Returns x0 ``(k, bs, d)``, t ``(k, bs)``
    (float64), z ``(k, bs, d)``."""
    n, d = x.shape
    idx = torch.randint(0, n, (k * bs,), generator=g, device=x.device)
    t = sample_times(k * bs, t_min, T, g, device=x.device).reshape(k, bs)
    z = torch.randn(k, bs, d, generator=g, device=x.device)
    return x[idx].reshape(k, bs, d), t, z


class ScoreDraws:
    """The draw function of DSM training on data sets ``xs`` (each ``(n_m, d)``, on the training
    device), one generator each: step k's minibatch (with replacement), times and noise, drawn
    ``DRAW_STEPS`` steps at a time by :func:`_draw_chunk`. With ``members`` the batch is laid
    out ``(M, bs, ...)``, member m's rows from ``xs[m]`` and ``gens[m]`` (for
    ``dsclab.losses.EnsembleLoss``); otherwise ``xs`` holds one data set and the batch is
    ``x0 (bs, d)``, ``t (bs,)`` float64, ``z (bs, d)``."""

    def __init__(self, xs: list[torch.Tensor], gens: list[torch.Generator], *, steps: int, batch_size: int,
                 t_min: float, T: float, members: bool):
        if not members and len(xs) != 1:
            raise ValueError("one data set unless members=True")
        self.xs, self.gens, self.steps, self.bs = xs, gens, steps, batch_size
        self.t_min, self.T, self.members = t_min, T, members
        self.X0 = self.Ts = self.Zs = None  # the current chunk of draws

    def __call__(self, step: int):
        if step % DRAW_STEPS == 0:
            k_steps = min(DRAW_STEPS, self.steps - step)
            if not self.members:
                self.X0, self.Ts, self.Zs = _draw_chunk(self.xs[0], k_steps, self.bs, self.t_min, self.T, self.gens[0])
            else:  # each member's draws, laid out (step, member, row)
                M, d, dev = len(self.xs), self.xs[0].shape[1], self.xs[0].device
                self.X0 = torch.empty(k_steps, M, self.bs, d, device=dev)
                self.Ts = torch.empty(k_steps, M, self.bs, dtype=torch.float64, device=dev)
                self.Zs = torch.empty(k_steps, M, self.bs, d, device=dev)
                for m, (x, g) in enumerate(zip(self.xs, self.gens)):
                    self.X0[:, m], self.Ts[:, m], self.Zs[:, m] = _draw_chunk(x, k_steps, self.bs, self.t_min, self.T, g)
        k = step % DRAW_STEPS
        return self.X0[k], self.Ts[k], self.Zs[k]


class CosineAdam:
    """Adam with cosine decay of the learning rate to 0 over ``steps`` (lr_k = lr (1 + cos(pi k /
    steps)) / 2 at optimiser step k), the optimiser of :func:`train_score` and
    :func:`train_ensemble`. One ``step()`` is PyTorch's fused Adam kernel (``torch._fused_adam_``)
    on every parameter with a gradient, called as ``torch.optim.Adam(fused=True)`` calls it, with
    the rate ``cosine_decay``'s ``LambdaLR`` would set: the same numbers bit for bit
    (``tests/test_train.py``). It is not a ``torch.optim.Optimizer`` because every optimiser's
    ``step`` and ``zero_grad`` in torch 2.13 import ``torch._dynamo`` (~1.2 CPU-s in each process
    that trains: every flow run, ``dsclab run``, Dask worker). The parameters share one device and
    dtype (a network's do)."""

    betas = (0.9, 0.999)
    eps = 1e-8

    def __init__(self, params, lr: float, steps: int):
        self.params = list(params)
        if len({(p.device, p.dtype) for p in self.params}) > 1:
            raise ValueError("CosineAdam: the parameters must share one device and one dtype")
        self.lr0, self.steps, self.k = lr, steps, 0
        # Adam's state per parameter: zero moments and a float32 step count, advanced only at the
        # steps where the parameter has a gradient (as torch's lazily created state is)
        self.m = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.v = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.count = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    @property
    def lr(self) -> float:
        """The rate of the next step (LambdaLR's ``base_lr * lambda(k)``, the same float)."""
        return self.lr0 * cosine_factor(self.k, self.steps)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            raise ValueError("CosineAdam.zero_grad sets the gradients to None only")
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if live:
            count = [self.count[i] for i in live]
            torch._foreach_add_(count, 1)
            torch._fused_adam_([self.params[i] for i in live], [self.params[i].grad for i in live],
                               [self.m[i] for i in live], [self.v[i] for i in live], [], count,
                               amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
                               eps=self.eps, maximize=False, grad_scale=None, found_inf=None)
        self.k += 1


def _adam(params, lr: float, steps: int):
    """Adam (fused kernel) with cosine decay of the learning rate to 0 over ``steps``: the
    optimiser, and no separate schedule (:class:`CosineAdam` holds it)."""
    return CosineAdam(params, lr, steps), None


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    width: int = 128
    depth: int = 3
    t_min: float = 1e-3
    T: float = 5.0
    precision: str = "float32"  # a key of PRECISIONS

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")

    @classmethod
    def of(cls, train_spec, **override) -> "TrainConfig":
        """The config of a study's ``train`` section (any object with these fields), with
        ``override`` replacing some of them."""
        return cls(**{f.name: override.get(f.name, getattr(train_spec, f.name)) for f in fields(cls)})


@dataclass
class TrainResult:
    model: ScoreMLP
    loss: float  # mean per-sample loss over the last 10% of steps
    seconds: float

    def payload(self) -> dict:
        """The checkpoint payload of a trained ``ScoreMLP`` (tensors and plain values)."""
        m = self.model
        return {"state_dict": m.state_dict(), "d": m.d, "width": m.width, "depth": m.depth,
                "loss": self.loss, "seconds": self.seconds}

    @classmethod
    def restore(cls, payload: dict, device: str | torch.device = "cpu") -> "TrainResult":
        """The inverse of :meth:`payload`: an eval-mode model on ``device`` and its training record."""
        model = ScoreMLP(payload["d"], width=payload["width"], depth=payload["depth"])
        model.load_state_dict(payload["state_dict"])
        return cls(model.to(device).eval(), payload["loss"], payload["seconds"])


def device_score(model: nn.Module) -> Callable[[torch.Tensor, object], torch.Tensor]:
    """``model.score(x, t)`` for inputs on any device: it runs where the model's parameters live
    (x, and t when it is a tensor, are moved there) and its value comes back to x's device. For
    inputs already there it is ``model.score`` on the same tensors (the same numbers). The
    evaluate stages use it to run a restored network on their device while the rest of their
    numerics (generators, samplers, metrics) stays on the CPU."""
    dev = next(model.parameters()).device

    def score(x: torch.Tensor, t) -> torch.Tensor:
        if x.device == dev:
            return model.score(x, t)
        return model.score(x.to(dev), t.to(dev) if isinstance(t, torch.Tensor) else t).to(x.device)

    return score


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when it is present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_score(x: torch.Tensor, *, estimator: str = "dsm", config: TrainConfig = TrainConfig(),
                seed: int = 0, device: str | torch.device = "cpu") -> TrainResult:
    """Fit a ``ScoreMLP`` to the rows of ``x (n, d)``; deterministic for ``seed`` on a device.
    A loss that becomes NaN or infinite raises :class:`dsclab.errors.TrainingDiverged`."""
    dev = resolve_device(device) if isinstance(device, str) else device
    loss_fn = SCORE_LOSSES[estimator]
    t0 = time.perf_counter()
    g_init = generator(seed)
    model = ScoreMLP(x.shape[1], width=config.width, depth=config.depth, generator=g_init).to(dev)
    g = rng("batches", seed, device=dev)
    x = x.to(dev, torch.float32)
    opt, sched = _adam(model.parameters(), config.lr, config.steps)
    # minibatches are drawn with replacement, whatever n is
    draw = ScoreDraws([x], [g], steps=config.steps, batch_size=config.batch_size, t_min=config.t_min, T=config.T,
                      members=False)
    trace = fit(model, loss_fn, draw, steps=config.steps, optimizer=opt, scheduler=sched,
                autocast=autocast_dtype(config.precision))
    return TrainResult(model.cpu().eval(), trace.tail_mean(), time.perf_counter() - t0)


def _members_init(d: int, seeds: list[int], config: TrainConfig) -> list[ScoreMLP]:
    return [ScoreMLP(d, width=config.width, depth=config.depth, generator=generator(s))
            for s in seeds]


def train_ensemble(datasets: list[torch.Tensor], seeds: list[int], *, estimator: str = "dsm",
                   config: TrainConfig = TrainConfig(), device: str | torch.device = "cpu") -> list[TrainResult | None]:
    """Train M cells sharing d as one batched ensemble (``EnsembleMLP``).

    Member m gets exactly what ``train_score(datasets[m], seed=seeds[m])`` would use: the same
    initialisation, minibatch indices, times and noise (each from its own generators, drawn in the
    same order), and per-member Adam with the same schedule, so its parameters equal those of
    separate training up to floating-point summation order. A member whose loss becomes
    non-finite is returned as ``None`` and does not disturb the others.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    loss_fn = EnsembleLoss(SCORE_LOSSES[estimator])
    t0 = time.perf_counter()
    d = datasets[0].shape[1]
    M = len(datasets)
    members = _members_init(d, seeds, config)
    net = EnsembleMLP(members).to(dev)
    gens = [rng("batches", s, device=dev) for s in seeds]
    xs = [x.to(dev, torch.float32) for x in datasets]
    opt, sched = _adam(net.parameters(), config.lr, config.steps)
    draw = ScoreDraws(xs, gens, steps=config.steps, batch_size=config.batch_size, t_min=config.t_min, T=config.T,
                      members=True)
    trace = fit(net, loss_fn, draw, steps=config.steps, optimizer=opt, scheduler=sched,
                autocast=autocast_dtype(config.precision))
    losses = trace.tail_mean()
    net = net.cpu()
    seconds = (time.perf_counter() - t0) / M  # the group's wall time, shared equally
    return [None if bool(trace.diverged[m]) else TrainResult(net.member(m, members[m]).eval(), losses[m], seconds)
            for m in range(M)]


def group_memory_bytes(members: int, d: int, config: TrainConfig) -> int:
    """Estimated peak memory of training ``members`` cells together: parameters with their
    gradients and two Adam moments (4 copies), activations of one minibatch kept for the
    backward pass (about 4 tensors of width per layer), and ``DRAW_STEPS`` steps of draws
    (x0 and noise, float32; times, float64)."""
    w, L = config.width, config.depth
    params = (d + 16) * w + (L - 1) * w * w + w * d + L * w + d
    acts = config.batch_size * (4 * w * L + 4 * (d + 16) + 4 * d)
    draws = DRAW_STEPS * config.batch_size * (2 * d + 2)
    return 4 * members * (4 * params + acts + draws)


FREE_MEMORY_SHARE = 0.5
"""The share of a CUDA device's free memory that one training group may plan to use: the
estimate of :func:`group_memory_bytes` leaves out the allocator's caching and fragmentation, the
data sets and cuBLAS workspaces, and other tasks may share the device; a group planned within
half the free memory still fits when the estimate is low by up to 2x (``tests/test_gpu.py``
measures a group's peak against its estimate)."""


def memory_bound_bytes(bound: int | None, device: str | torch.device = "cpu") -> int | None:
    """The memory one training group may use on ``device``, in bytes: ``bound`` (a spec's
    ``group_memory_mb`` in bytes; None for none) and, on a CUDA device, at most
    :data:`FREE_MEMORY_SHARE` of the device's free memory now (``torch.cuda.mem_get_info``).
    None when nothing bounds it (the CPU without a bound of the spec)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        share = int(FREE_MEMORY_SHARE * free)
        bound = share if bound is None else min(bound, share)
    return bound


def group_size(d: int, config: TrainConfig, bound: int | None, device: str | torch.device = "cpu") -> int | None:
    """The most cells of dimension d that train together within :func:`memory_bound_bytes`, by
    :func:`group_memory_bytes` (at least one: a cell that does not fit alone is left to the train
    task's out-of-memory handling, ``tasks.stages.train_splitting``); None when nothing bounds it."""
    limit = memory_bound_bytes(bound, device)
    return None if limit is None else max(1, limit // group_memory_bytes(1, d, config))


def train_group(datasets: list[torch.Tensor], seeds: list[int], *, estimators: list[str],
                config: TrainConfig = TrainConfig(), device: str = "cpu",
                batched: bool = True) -> list[TrainResult | None]:
    """Train the cells of a group that share d: one dataset, seed and estimator per cell.

    With ``batched`` the cells of each estimator train together as one ensemble
    (:func:`train_ensemble`); otherwise one after another. A diverged cell gives ``None``.
    """
    if not (len(datasets) == len(seeds) == len(estimators)):
        raise ValueError("need one dataset, seed and estimator per cell")
    dims = {x.shape[1] for x in datasets}
    if len(dims) > 1:
        raise ValueError(f"a group shares d; got d in {sorted(dims)}")
    out: list[TrainResult | None] = [None] * len(datasets)
    if batched:
        for est in dict.fromkeys(estimators):
            ids = [i for i, e in enumerate(estimators) if e == est]
            res = train_ensemble([datasets[i] for i in ids], [seeds[i] for i in ids], estimator=est,
                                 config=config, device=device)
            for i, r in zip(ids, res):
                out[i] = r
        return out
    for i, (x, s, e) in enumerate(zip(datasets, seeds, estimators)):
        try:
            out[i] = train_score(x, estimator=e, config=config, seed=s, device=device)
        except TrainingDiverged:
            out[i] = None
    return out
