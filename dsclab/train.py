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
from dsclab.nets import ScoreMLP


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
    bs = min(config.batch_size, max(n, 1)) if n < config.batch_size else config.batch_size
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


def train_group(datasets: list[torch.Tensor], seeds: list[int], *, estimators: list[str],
                config: TrainConfig = TrainConfig(), device: str = "cpu") -> list[TrainResult]:
    """Train the cells of a group that share d: one dataset, seed and estimator per cell.

    The cells are trained one after another; a later version trains them as one batched ensemble.
    """
    if not (len(datasets) == len(seeds) == len(estimators)):
        raise ValueError("need one dataset, seed and estimator per cell")
    dims = {x.shape[1] for x in datasets}
    if len(dims) > 1:
        raise ValueError(f"a group shares d; got d in {sorted(dims)}")
    return [train_score(x, estimator=e, config=config, seed=s, device=device)
            for x, s, e in zip(datasets, seeds, estimators)]
