"""The paper's three-stage training of the message-passing denoiser (science.md §5; the schedule of
the official code, github vietvu2001/SparseDiffusion ``train.py``, rewritten here).

Each stage s draws a **fresh** training set of ``n_train`` (10^4) points of the law (u vectors;
x = u u^T is formed per batch), and runs ``epochs_s`` epochs; an epoch visits the set once in a
random order in batches of ``batch_size`` (200). Per batch: times t from the grid
``linspace(t_min, t_max, n_grid)`` = linspace(0.5, 700, 1400) with 5% of the mass spread evenly on
the grid points t <= theta_s and 95% on those above (theta = 400 / 325 / 205), fresh noise,
``Y = x + sym(Z)/sqrt(t)``, a random unit start vector, and the loss
``sum_ij (x_hat - x)^2`` averaged over the batch (the network without the norm projection).
Optimiser AdamW (PyTorch defaults besides the learning rate), one per stage, learning rates
3e-3 / 1e-3 / 7e-4, gradient clipping at 1.0 / 1.0 / 0.9 (``dsclab.train.fit``, one call per epoch).

* Stage 1 grows the depth: 7 active layers before epoch 150, 9 before 250, then 10.
* Stage 3: every 6th epoch (epochs e with e mod 6 = 5) trains at the anchor t = 10^4 instead.
* The best-training-loss epoch (mean batch loss) is kept and reloaded at the end of each stage;
  stage 1 considers only epochs at full depth, stage 3 only non-anchor epochs from epoch 12 on
  (with no eligible epoch, the last weights are kept).

**Budget.** ``budget`` scales every epoch count (the stages' epochs, the growth epochs 150 / 250,
stage 3's first eligible epoch 12; each rounded, stages at least 1 epoch): 1.0 is the paper's
60,000 steps. **Size.** The schedule's times are the paper's at n = 350; at size n every training
time (grid, thresholds, anchor) is multiplied by n / n_ref (so theta sits at the same multiple of
the spectral threshold n/2).

**Checkpoints and resumption.** After each stage the kept weights and the stage's best loss go to
``checkpoints.save(stage, vector)`` (:func:`dsclab.studies.computational_gap.spike.mpnn.to_vector` followed by
[best loss, seconds]); before training, the last saved stage is loaded and training resumes with
the next stage. Every draw of stage s comes from generators derived from (``seed_parts``, stage),
so a resumed training equals an uninterrupted one on the same device.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from dsclab.seeds import rng
from dsclab.studies.computational_gap.spike.model import SparseSpike, sym
from dsclab.studies.computational_gap.spike.mpnn import MPNN, from_vector, to_vector, unit_vectors
from dsclab.train import fit


@dataclass(frozen=True)
class PaperSchedule:
    """The paper's training schedule (defaults) and its budget factor (module docstring)."""

    budget: float = 1.0
    n_train: int = 10_000
    batch_size: int = 200
    epochs: tuple[int, int, int] = (600, 300, 300)
    lr: tuple[float, float, float] = (3e-3, 1e-3, 7e-4)
    clip: tuple[float, float, float] = (1.0, 1.0, 0.9)
    theta: tuple[float, float, float] = (400.0, 325.0, 205.0)
    p_low: float = 0.05
    t_min: float = 0.5
    t_max: float = 700.0
    n_grid: int = 1400
    t_anchor: float = 1e4
    anchor_every: int = 6
    first_eligible: int = 12
    growth: tuple[tuple[int, int], ...] = ((0, 7), (150, 9), (250, 10))
    n_ref: int = 350

    def stage_epochs(self, s: int) -> int:
        return max(1, round(self.budget * self.epochs[s]))

    def active_depth(self, epoch: int, depth: int) -> int:
        """Active layers at stage-1 ``epoch`` (growth epochs scaled by the budget; at most depth)."""
        active = depth
        for e0, layers in self.growth:
            if epoch >= round(self.budget * e0):
                active = layers
        return min(active, depth)

    def time_probs(self, s: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid, probabilities) of stage s's time sampler at size n (float64)."""
        scale = n / self.n_ref
        grid = torch.linspace(self.t_min, self.t_max, self.n_grid, dtype=torch.float64) * scale
        low = grid <= self.theta[s] * scale
        n_low, n_high = int(low.sum()), int((~low).sum())
        if n_low == 0 or n_high == 0:
            raise ValueError(f"stage {s + 1}: theta {self.theta[s]} leaves no grid time on one side")
        probs = torch.where(low, torch.full_like(grid, self.p_low / n_low), torch.full_like(grid, (1.0 - self.p_low) / n_high))
        return grid, probs

    def steps(self) -> int:
        """Optimiser steps of the whole schedule."""
        per_epoch = math.ceil(self.n_train / self.batch_size)
        return per_epoch * sum(self.stage_epochs(s) for s in range(3))


def matrix_loss(model: MPNN, Y_or_y: torch.Tensor, t: torch.Tensor, x: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
    """Per-matrix ``sum_ij (x_hat - x)^2``, ``(B,)`` (the paper's loss before the batch mean)."""
    pred = model(Y_or_y, t, v0)
    return (pred - x.to(pred.dtype)).pow(2).sum(dim=(1, 2))


class _Epoch:
    """The draw function of one epoch: batch b of a random order of the stage's u, its times and
    noise, the observation ``y = t x + sqrt(t) sym(z)`` (the network rescales it to Y = y/t) and
    the start vectors, all on ``device`` from the stage's generator ``g``."""

    def __init__(self, u: torch.Tensor, g: torch.Generator, grid: torch.Tensor, probs: torch.Tensor,
                 batch: int, anchor: float | None):
        self.u, self.g, self.batch, self.anchor = u, g, batch, anchor
        self.grid, self.probs = grid.to(u.device), probs.to(u.device)
        self.order = torch.randperm(u.shape[0], generator=g, device=g.device).to(u.device)

    @property
    def steps(self) -> int:
        return math.ceil(self.u.shape[0] / self.batch)

    def __call__(self, step: int):
        dev, g = self.u.device, self.g
        u = self.u[self.order[step * self.batch:(step + 1) * self.batch]]
        B, n = u.shape
        x = u[:, :, None] * u[:, None, :]
        if self.anchor is None:
            t = self.grid[torch.multinomial(self.probs, B, replacement=True, generator=g).to(dev)]
        else:
            t = torch.full((B,), float(self.anchor), dtype=torch.float64, device=dev)
        z = torch.randn((B, n, n), generator=g, device=g.device).to(dev)
        y = t.float()[:, None, None] * x + t.float().sqrt()[:, None, None] * sym(z)
        return y, t, x, unit_vectors(B, n, g, dev)


def train_mpnn(net: MPNN, dist: SparseSpike, schedule: PaperSchedule, seed_parts: tuple, *, device="cpu",
               checkpoints=None, log=None) -> tuple[MPNN, float, float]:
    """Train ``net`` for ``dist`` with the paper's schedule (module docstring); returns
    ``(net in eval mode on the CPU, best training loss of the last stage, seconds)``.

    ``checkpoints``: an object with ``load(stage) -> np.ndarray | None`` and ``save(stage, array)``
    (stages 1, 2, 3), or None. ``log(message)``: progress per stage. A non-finite loss raises
    :class:`dsclab.errors.TrainingDiverged` (from ``fit``)."""
    dev = torch.device(device)
    n_par = to_vector(net).numel()
    start, best, seconds = 0, math.nan, 0.0
    for s in (3, 2, 1):
        saved = None if checkpoints is None else checkpoints.load(s)
        if saved is not None:
            from_vector(net, torch.as_tensor(np.asarray(saved[:n_par], dtype=np.float32)))
            start, best, seconds = s, float(saved[n_par]), float(saved[n_par + 1])
            break
    net = net.to(dev)
    for s in range(start, 3):
        t0 = time.perf_counter()
        g_data = rng("mpnn-data", *seed_parts, s + 1)
        g = rng("mpnn-train", *seed_parts, s + 1, device=dev)
        u = dist.sample_u(schedule.n_train, g_data, dtype=torch.float32).to(dev)
        grid, probs = schedule.time_probs(s, dist.n)
        anchor_t = schedule.t_anchor * dist.n / schedule.n_ref
        opt = torch.optim.AdamW(net.parameters(), lr=schedule.lr[s])
        best_s, best_vec = math.inf, None
        first = round(schedule.budget * schedule.first_eligible) if s == 2 else 0
        net.train()
        epochs = schedule.stage_epochs(s)
        for e in range(epochs):
            net.active = schedule.active_depth(e, net.depth) if s == 0 else net.depth
            anchor = s == 2 and e % schedule.anchor_every == schedule.anchor_every - 1
            draw = _Epoch(u, g, grid, probs, schedule.batch_size, anchor_t if anchor else None)
            trace = fit(net, matrix_loss, draw, steps=draw.steps, optimizer=opt, clip=schedule.clip[s],
                        label=f"training mpnn, stage {s + 1}/3, epoch {e + 1}/{epochs}")
            avg = float(trace.losses.mean())
            eligible = (not anchor) and e >= first and net.active == net.depth
            if eligible and avg < best_s:
                best_s, best_vec = avg, to_vector(net)
        net.active = net.depth
        if best_vec is not None:
            from_vector(net, best_vec)
        else:
            best_s = avg
        best, seconds = best_s, seconds + time.perf_counter() - t0
        if checkpoints is not None:
            checkpoints.save(s + 1, np.concatenate([to_vector(net).numpy().astype(np.float64), [best, seconds]]))
        if log is not None:
            log(f"mpnn stage {s + 1}/3: {schedule.stage_epochs(s)} epochs, best training loss {best_s:.4f}")
    return net.cpu().eval(), best, seconds
