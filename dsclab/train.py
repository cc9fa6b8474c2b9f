"""Training loops.

``train_score`` fits one score network to n points with Adam for a budget of optimiser steps.
Everything random (initialisation, minibatches, times, noise) comes from generators seeded by
the ``seed`` argument, so a run is reproducible on a given device. ``train_group`` is the entry
point the pipeline calls with a group of cells that share d.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from dsclab.losses import ESTIMATORS, sample_times
from dsclab.nets import EnsembleMLP, ScoreMLP


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


@dataclass
class TrainResult:
    model: ScoreMLP
    loss: float  # mean per-sample loss over the last 10% of steps
    seconds: float


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
    n = x.shape[0]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / config.steps)))  # cosine decay to 0
    bs = config.batch_size  # minibatches are drawn with replacement, whatever n is
    tail, tail_sum = max(1, config.steps // 10), 0.0
    for step in range(config.steps):
        idx = torch.randint(0, n, (bs,), generator=g, device=dev)
        t = sample_times(bs, config.t_min, config.T, g, device=dev)
        z = torch.randn(bs, x.shape[1], generator=g, device=dev)
        loss = loss_fn(model, x[idx], t, z).mean()
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
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / config.steps)))
    tail = max(1, config.steps // 10)
    tail_sum = torch.zeros(M, dtype=torch.float64, device=dev)
    bad = torch.zeros(M, dtype=torch.bool, device=dev)
    for step in range(config.steps):
        x0, ts, zs = [], [], []
        for x, g in zip(xs, gens):
            idx = torch.randint(0, x.shape[0], (bs,), generator=g, device=dev)
            ts.append(sample_times(bs, config.t_min, config.T, g, device=dev))
            zs.append(torch.randn(bs, d, generator=g, device=dev))
            x0.append(x[idx])
        per = loss_fn(net, torch.cat(x0), torch.cat(ts), torch.cat(zs)).reshape(M, bs).mean(1)
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
    gradients and two Adam moments (4 copies), plus activations of one minibatch kept for the
    backward pass (about 4 tensors of width per layer)."""
    w, L = config.width, config.depth
    params = (d + 16) * w + (L - 1) * w * w + w * d + L * w + d
    acts = config.batch_size * (4 * w * L + 4 * (d + 16) + 4 * d)
    return 4 * members * (4 * params + acts)


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
