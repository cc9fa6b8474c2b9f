"""Training loops.

``train_score`` fits one score network to n points with Adam for a budget of optimiser steps.
Everything random (initialisation, minibatches, times, noise) comes from generators seeded by
the ``seed`` argument, so a run is reproducible on a given device. ``train_group`` is the entry
point the pipeline calls with a group of cells that share d.

Minibatches, times and noise are drawn ``DRAW_STEPS`` optimiser steps at a time
(:func:`_draw_chunk`: a few large RNG calls instead of four small ones per step), in the same
order by ``train_score`` and by every member of ``train_ensemble``, which is what makes a
member's draws equal to those of training it alone. Adam is PyTorch's fused implementation
(one kernel for all parameters; ``benchmarks/train_throughput.py`` measured it).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, fields

import torch

from dsclab.losses import ESTIMATORS, sample_times
from dsclab.nets import EnsembleMLP, ScoreMLP


DRAW_STEPS = 32  # optimiser steps whose random draws are made at once

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
"""Training-step arithmetic: the autocast dtype, or None for plain float32."""


def _step_arithmetic(precision: str, device: torch.device):
    """The context in which a training step's loss is computed (its backward, outside it, runs
    each operation in the dtype autocast chose for it)."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _draw_chunk(x: torch.Tensor, k: int, bs: int, t_min: float, T: float, g: torch.Generator):
    """Draws for ``k`` steps from one generator, in a fixed order: minibatch indices (with
    replacement), times (``sample_times``), noise. Returns x0 ``(k, bs, d)``, t ``(k, bs)``
    (float64), z ``(k, bs, d)``."""
    n, d = x.shape
    idx = torch.randint(0, n, (k * bs,), generator=g, device=x.device)
    t = sample_times(k * bs, t_min, T, g, device=x.device).reshape(k, bs)
    z = torch.randn(k, bs, d, generator=g, device=x.device)
    return x[idx].reshape(k, bs, d), t, z


def _adam(params, lr: float, steps: int, device: torch.device):
    """Adam (fused kernel) with cosine decay of the learning rate to 0 over ``steps``."""
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    return opt, sched


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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
    def restore(cls, payload: dict) -> "TrainResult":
        """The inverse of :meth:`payload`: an eval-mode model on the CPU and its training record."""
        model = ScoreMLP(payload["d"], width=payload["width"], depth=payload["depth"])
        model.load_state_dict(payload["state_dict"])
        return cls(model.eval(), payload["loss"], payload["seconds"])


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when it is present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_score(x: torch.Tensor, *, estimator: str = "dsm", config: TrainConfig = TrainConfig(),
                seed: int = 0, device: str | torch.device = "cpu") -> TrainResult:
    """Fit a ``ScoreMLP`` to the rows of ``x (n, d)``; deterministic for ``seed`` on a device."""
    dev = resolve_device(device) if isinstance(device, str) else device
    loss_fn = ESTIMATORS[estimator]
    t0 = time.perf_counter()
    g_init = torch.Generator().manual_seed(seed)
    model = ScoreMLP(x.shape[1], width=config.width, depth=config.depth, generator=g_init).to(dev)
    g = torch.Generator(device=dev).manual_seed(seed + 1)
    x = x.to(dev, torch.float32)
    opt, sched = _adam(model.parameters(), config.lr, config.steps, dev)
    arithmetic = _step_arithmetic(config.precision, dev)
    bs = config.batch_size  # minibatches are drawn with replacement, whatever n is
    tail, tail_sum = max(1, config.steps // 10), 0.0
    for step in range(config.steps):
        if step % DRAW_STEPS == 0:
            X0, Ts, Zs = _draw_chunk(x, min(DRAW_STEPS, config.steps - step), bs, config.t_min, config.T, g)
        k = step % DRAW_STEPS
        with arithmetic:
            loss = loss_fn(model, X0[k], Ts[k], Zs[k]).mean()
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= config.steps - tail:
            tail_sum += loss.item()
    return TrainResult(model.cpu().eval(), tail_sum / tail, time.perf_counter() - t0)


def _members_init(d: int, seeds: list[int], config: TrainConfig) -> list[ScoreMLP]:
    return [ScoreMLP(d, width=config.width, depth=config.depth, generator=torch.Generator().manual_seed(s))
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
    loss_fn = ESTIMATORS[estimator]
    t0 = time.perf_counter()
    d = datasets[0].shape[1]
    M, bs = len(datasets), config.batch_size
    members = _members_init(d, seeds, config)
    net = EnsembleMLP(members).to(dev)
    gens = [torch.Generator(device=dev).manual_seed(s + 1) for s in seeds]
    xs = [x.to(dev, torch.float32) for x in datasets]
    opt, sched = _adam(net.parameters(), config.lr, config.steps, dev)
    arithmetic = _step_arithmetic(config.precision, dev)
    tail = max(1, config.steps // 10)
    tail_sum = torch.zeros(M, dtype=torch.float64, device=dev)
    bad = torch.zeros(M, dtype=torch.bool, device=dev)
    for step in range(config.steps):
        if step % DRAW_STEPS == 0:  # each member's draws, laid out (step, member, row)
            k_steps = min(DRAW_STEPS, config.steps - step)
            X0 = torch.empty(k_steps, M, bs, d, device=dev)
            Ts = torch.empty(k_steps, M, bs, dtype=torch.float64, device=dev)
            Zs = torch.empty(k_steps, M, bs, d, device=dev)
            for m, (x, g) in enumerate(zip(xs, gens)):
                X0[:, m], Ts[:, m], Zs[:, m] = _draw_chunk(x, k_steps, bs, config.t_min, config.T, g)
        k = step % DRAW_STEPS
        with arithmetic:
            per = loss_fn(net, X0[k].reshape(M * bs, d), Ts[k].reshape(M * bs), Zs[k].reshape(M * bs, d))
        per = per.reshape(M, bs).mean(1)
        bad |= ~torch.isfinite(per)
        opt.zero_grad(set_to_none=True)
        torch.where(bad, torch.zeros_like(per), per).sum().backward()
        opt.step()
        sched.step()
        if step >= config.steps - tail:
            tail_sum += per.detach().to(torch.float64)
    net = net.cpu()
    seconds = (time.perf_counter() - t0) / M  # the group's wall time, shared equally
    out: list[TrainResult | None] = []
    for m in range(M):
        if bool(bad[m]):
            out.append(None)
        else:
            out.append(TrainResult(net.member(m, members[m]).eval(), float(tail_sum[m]) / tail, seconds))
    return out


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
