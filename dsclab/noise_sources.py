"""Noise sources: what hands the samplers (``dsclab.samplers``) their Brownian increments.

A noise source is a callable ``noise(t_from, t_to) -> (dW, H)``, called by a sampler exactly once
per step, in order, for the step from forward time ``t_from`` down to ``t_to < t_from`` (the
probability-flow ``heun`` never calls it). With h = t_from - t_to:

* ``dW``: the increment of the Brownian motion driving the reverse SDE over the step,
  dW ~ N(0, h I), of the sampler's shape (m, d);
* ``H``: its space-time Levy area over the step, H ~ N(0, h/12 I), independent of dW. Both are
  taken in reverse time: with W_s (0 <= s <= h) the path inside the step, dW = W_h and
  H = (1/h) int_0^h (W_s - (s/h) W_h) ds. Samplers that do not use H declare ``levy_area=False``
  (``dsclab.samplers.uses_levy_area``); a source told so returns a zero tensor for it and does
  not draw it.

Randomness enters a sampler only here, so the source decides which runs share random numbers:

* :class:`GaussianNoise` -- fresh independent (dW, H) per step from one ``torch.Generator``: a new
  path for every run;
* :class:`BlockGaussianNoise` -- the same for a batch made of blocks of rows (one seed each),
  block r drawn from its own generator, so that a block's noise does not depend on the others;
* :class:`Replay` -- any source's draws recorded on the first run and replayed on every later run
  on the same grid (common random numbers across score estimators);
* :class:`BrownianNoise` -- one Brownian path with its Levy area, queried on any decreasing grid:
  the same path is reused across step counts (the increments of a coarse grid are sums of those
  of a finer one), as convergence studies in the number of steps need.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from dsclab import seeds

Noise = Callable[[float, float], tuple[torch.Tensor, torch.Tensor]]


class GaussianNoise:
    """Fresh independent (dW, H) for every step, drawn from a ``torch.Generator``: per step one
    ``(2, *shape)`` normal tensor in ``draw_dtype`` (``(1, *shape)`` without the Levy area),
    scaled in ``draw_dtype`` and returned in ``dtype`` on ``device``."""

    def __init__(self, shape: Sequence[int], generator: torch.Generator, dtype=torch.float32, device="cpu", *,
                 draw_dtype=torch.float64, levy_area: bool = True):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device
        self.draw_dtype, self.levy_area = draw_dtype, levy_area
        self._zero = None if levy_area else torch.zeros(self.shape, dtype=dtype, device=device)

    def __call__(self, t_from: float, t_to: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = float(t_from - t_to)
        z = torch.randn(((2,) if self.levy_area else (1,)) + self.shape, generator=self.generator,
                        dtype=self.draw_dtype)
        dw = (math.sqrt(h) * z[0]).to(self.dtype).to(self.device)
        if not self.levy_area:
            return dw, self._zero
        return dw, (math.sqrt(h / 12.0) * z[1]).to(self.dtype).to(self.device)


class BlockGaussianNoise:
    """Fresh independent (dW, H) per step for a batch made of blocks of ``block = (m, d)`` rows,
    block r drawn from ``generators[r]`` directly in ``dtype`` (per step: dW of every block, then
    H of every block), so that a block's noise does not depend on the other blocks: the seeds of
    a cell run as one batch with the noise each would have alone. Without the Levy area
    (``levy_area=False``) H is a zero tensor and costs nothing."""

    def __init__(self, block: tuple[int, int], generators: list[torch.Generator], dtype=torch.float32,
                 levy_area: bool = True):
        self.block, self.generators, self.dtype, self.levy_area = tuple(block), list(generators), dtype, levy_area
        self._zero = torch.zeros((len(self.generators) * block[0], block[1]), dtype=dtype)

    def _draw(self) -> torch.Tensor:
        return torch.cat([torch.randn(self.block, generator=g, dtype=self.dtype) for g in self.generators])

    def __call__(self, t_from: float, t_to: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = float(t_from - t_to)
        dw = math.sqrt(h) * self._draw()
        if not self.levy_area:
            return dw, self._zero
        return dw, math.sqrt(h / 12.0) * self._draw()


class Replay:
    """The same (dW, H) sequence for every sampler run: ``source``'s draws, taken on the first run
    and replayed afterwards (common random numbers across runs; the draws are most of the cost of
    sampling with a cheap score). Call :meth:`rewind` before each run; a run on another grid
    raises ValueError."""

    def __init__(self, source: Noise):
        self.source = source
        self._draws: list = []
        self._i = 0

    def rewind(self) -> "Replay":
        self._i = 0
        return self

    def __call__(self, t_from: float, t_to: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self._i == len(self._draws):
            self._draws.append(((t_from, t_to), self.source(t_from, t_to)))
        (grid, draw), self._i = self._draws[self._i], self._i + 1
        if grid != (t_from, t_to):
            raise ValueError("Replay replays one grid; got another")
        return draw


def bridge_split(w: torch.Tensor, hh: torch.Tensor, delta: float, a: float, z: torch.Tensor):
    """Split (W, H) of an interval of length ``delta`` at ``a`` (0 < a < delta), exactly.

    Given the increment W and space-time Levy area H of Brownian motion on [0, delta], returns
    (W_L, H_L, W_R, H_R) of the sub-intervals [0, a] and [a, delta], drawn from their exact
    conditional law using the two standard normals ``z[0], z[1]`` (shape of ``w``). With
    b = delta - a the halves are tied to the whole by

        W = W_L + W_R,     delta H = a H_L + b H_R + (b W_L - a W_R) / 2,

    and, conditionally on (W, H) (which are independent, N(0, delta) and N(0, delta/12)):

        E[W_L] = (a/delta) W + 6 a b / delta^2 H,      Var W_L = a b (delta^2 - 3 a b) / delta^3,
        E[H_L] = (a/delta)^2 H,                        Var H_L = (a/12)(1 - a^3/delta^3),
        Cov(W_L, H_L) = -a^3 b / (2 delta^3).

    (For a = delta/2: W_L = W/2 + 3H/2 + sqrt(delta)/4 Z, the usual Levy-area bridge.)
    """
    b = delta - a
    d3 = delta ** 3
    vw = a * b * (delta * delta - 3.0 * a * b) / d3
    vh = (a / 12.0) * (1.0 - a ** 3 / d3)
    cwh = -(a ** 3) * b / (2.0 * d3)
    sw = math.sqrt(max(vw, 0.0))
    wl = (a / delta) * w + (6.0 * a * b / delta ** 2) * hh + sw * z[0]
    rho = cwh / sw if sw > 0 else 0.0
    hl = (a / delta) ** 2 * hh + rho * z[0] + math.sqrt(max(vh - rho * rho, 0.0)) * z[1]
    wr = w - wl
    hr = (delta * hh - a * hl - 0.5 * (b * wl - a * wr)) / b
    return wl, hl, wr, hr


class BrownianNoise:
    """One Brownian path with its space-time Levy area, queried on any decreasing grid.

    The path W lives on reverse time r = t1 - t for forward times t in [t0, t1]. It is built as a
    Brownian tree: the root holds (W, H) of the whole interval, and every node's two halves are
    drawn from the exact conditional law of :func:`bridge_split`, with normals from a
    ``torch.Generator`` seeded by (seed, level, index). A node is a leaf when its width is at most

        eps(t) = max(leaf_min, leaf_rel * min(1, t)),   t = the smallest forward time in the node,

    so leaves shrink like the steps of the 'exp' schedule (uniform for t >= 1, geometric below)
    and the tree is a fixed partition of [t0, t1], whatever grid is asked for. A query point r
    inside a leaf splits that leaf at r, again exactly, with normals seeded by the leaf alone.
    From the path values W(r) and time integrals I(r) = int_0^r W the step returns

        dW = W(r_b) - W(r_a),     H = (I(r_b) - I(r_a) - h W(r_a)) / h - dW / 2.

    What consistency holds:
      * for any grid with at most one point per leaf (true when every step h at forward time t is
        at least eps(t); two consecutive points in one leaf raise a ValueError), the values
        (W(r), I(r)) at every grid point are deterministic functions of (seed, r): every such grid
        sees one and the same continuous path, and the joint law of all (dW_k, H_k) is exactly
        that of Brownian motion (independent, dW_k ~ N(0, h_k), H_k ~ N(0, h_k / 12));
      * hence, for a > b > c (forward times) on grids of this kind, the increments add exactly,
        W_ac = W_ab + W_bc, and the areas obey the bridge relation
        (a-c) H_ac = (a-b) H_ab + (b-c) H_bc + ((b-c) W_ab - (a-b) W_bc) / 2 (float64 rounding);
      * two grids with points at different places inside one leaf see two different exact bridge
        completions inside that leaf only (below the resolution eps): the paths agree at every
        node boundary and on every union of whole leaves.
    ``seed`` is an int or a ``torch.Generator`` (one int is drawn from it at construction).
    Cost per step: one tree level per halving between the step and eps (about log2(h / eps)
    levels), each one normal pair per element; the tree is float64, the output ``dtype``.
    """

    MAX_DEPTH = 60

    def __init__(self, shape: Sequence[int], seed, *, t0: float = 0.0, t1: float = 16.0,
                 leaf_rel: float = 1e-3, leaf_min: float = 1e-8, dtype=torch.float32, device="cpu"):
        if isinstance(seed, torch.Generator):
            seed = seeds.draw_seed(seed)
        if not t1 > t0:
            raise ValueError(f"need t1 > t0, got t0={t0}, t1={t1}")
        if not (leaf_rel > 0 and leaf_min > 0):
            raise ValueError("leaf_rel and leaf_min must be positive")
        self.shape, self.seed, self.dtype, self.device = tuple(shape), int(seed), dtype, device
        self.t0, self.t1 = float(t0), float(t1)
        self.span = self.t1 - self.t0
        self.leaf_rel, self.leaf_min = float(leaf_rel), float(leaf_min)
        z = self._normals(-1, 0)
        root = (math.sqrt(self.span) * z[0], math.sqrt(self.span / 12.0) * z[1])
        zero = torch.zeros(self.shape, dtype=torch.float64)
        # stack[l] = (index, W_node, H_node, W(lo), I(lo)) of the node on the last descended path
        self._stack: list = [(0, root[0], root[1], zero, zero)]
        self._last: tuple | None = None  # (r, W(r), I(r), leaf) of the last point evaluated

    def _normals(self, level: int, index: int) -> torch.Tensor:
        g = seeds.rng("brownian-node", self.seed, level, index)
        return torch.randn((2,) + self.shape, generator=g, dtype=torch.float32).to(torch.float64)

    def leaf_width(self, t: float) -> float:
        """eps(t): the largest leaf width allowed at forward time t."""
        return max(self.leaf_min, self.leaf_rel * min(1.0, t))

    def _is_leaf(self, level: int, idx: int) -> bool:
        width = self.span / 2 ** level
        t_low = self.t1 - (idx + 1) * width
        return level >= self.MAX_DEPTH or width <= self.leaf_width(t_low)

    def _point(self, r: float):
        """(W(r), I(r) = int_0^r W ds, leaf id) at reverse time r in [0, t1 - t0] (float64)."""
        if self._last is not None and self._last[0] == r:
            return self._last[1:]
        r = min(max(r, 0.0), self.span)
        level = 0
        while True:
            idx, wn, hn, wlo, ilo = self._stack[level]
            width = self.span / 2 ** level
            a = r - idx * width
            if a <= 0.0:
                out = (wlo, ilo, ("lo", level, idx))
                break
            if a >= width:
                out = (wlo + wn, ilo + width * wlo + width * (hn + 0.5 * wn), ("hi", level, idx))
                break
            if self._is_leaf(level, idx):  # inside a leaf: exact split at r, normals from the leaf
                wl, hl, _, _ = bridge_split(wn, hn, width, a, self._normals(level, idx))
                out = (wlo + wl, ilo + a * wlo + a * (hl + 0.5 * wl), ("in", level, idx))
                break
            child = 2 * idx + (1 if a >= 0.5 * width else 0)
            if len(self._stack) > level + 1 and self._stack[level + 1][0] == child:
                level += 1
                continue
            half = 0.5 * width
            wl, hl, wr, hr = bridge_split(wn, hn, width, half, self._normals(level, idx))
            if child == 2 * idx:
                node = (child, wl, hl, wlo, ilo)
            else:
                node = (child, wr, hr, wlo + wl, ilo + half * wlo + half * (hl + 0.5 * wl))
            del self._stack[level + 1:]
            self._stack.append(node)
            level += 1
        self._last = (r,) + out
        return out

    def path(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, int W) at forward time t: the path value and its running time integral (float64)."""
        w, i, _ = self._point(self.t1 - float(t))
        return w, i

    def __call__(self, t_from: float, t_to: float) -> tuple[torch.Tensor, torch.Tensor]:
        t_from, t_to = float(t_from), float(t_to)
        if not (self.t0 - 1e-12 <= t_to < t_from <= self.t1 + 1e-12):
            raise ValueError(f"step [{t_from}, {t_to}] outside [{self.t0}, {self.t1}] or not decreasing")
        h = t_from - t_to
        wa, ia, leaf_a = self._point(self.t1 - t_from)
        wb, ib, leaf_b = self._point(self.t1 - t_to)
        if leaf_a[0] == leaf_b[0] == "in" and leaf_a[1:] == leaf_b[1:]:
            raise ValueError(f"step [{t_from}, {t_to}] (h={h:.3g}) lies inside one leaf of width "
                             f"<= {self.leaf_width(t_to):.3g}; construct BrownianNoise with smaller leaf_rel/leaf_min")
        dw = wb - wa
        hh = (ib - ia - h * wa) / h - 0.5 * dw
        return dw.to(self.dtype).to(self.device), hh.to(self.dtype).to(self.device)
