"""Reverse-time samplers: one small function each, one signature (science.md §0, §3).

    sample_<name>(score, x, ts, *, noise) -> x

* ``score(x, t) -> (m, d)``: the (exact or learned) score s_t at forward time ``t`` (a float).
* ``x (m, d)``: the start, a draw from N(0, I) (or exactly q_T) at forward time ``ts[0]``.
* ``ts``: decreasing float64 forward times t_0 = T > ... > t_N = t_min (see ``noise.time_grid``).
  Step k integrates the reverse SDE  dY = [Y + 2 s_{T - tau}(Y)] dtau + sqrt(2) dW  over the
  reverse-time interval of length h_k = t_k - t_{k+1}; a stage at reverse time tau_k + c h_k is
  evaluated at forward time t_k - c h_k.
* ``noise(t_from, t_to) -> (dW, H)``: the Brownian increment dW ~ N(0, h I) over that step and
  its space-time Levy area H ~ N(0, h/12 I), from a noise source (:mod:`dsclab.noise_sources`,
  where the convention is stated). Randomness only enters there. Each sampler calls ``noise``
  exactly once per step (the probability-flow ``heun`` never calls it).

Facts about a sampler are declared beside it (``@declare``, :mod:`dsclab.registry`):
``nfe_per_step``, the score evaluations one step costs (samplers are compared per NFE);
``order``, the claimed (strong, weak) orders for the reverse SDE (additive noise, smooth score;
for ``heun`` the ODE order of the probability-flow ODE); ``levy_area``, whether the step uses H
(:func:`uses_levy_area`: a noise source need not draw H for a sampler that ignores it).
``SAMPLERS`` is a :class:`dsclab.registry.Registry` (entry-point group ``dsclab.samplers``; a
plugin sampler must declare ``nfe_per_step`` and ``order``), and ``NFE_PER_STEP[name]`` and
``SAMPLER_ORDERS[name]`` are read-only views of those facts over it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsclab.lazy import deferred
from dsclab.registry import Needs, Registry, declare, positive_int, positive_pair

if TYPE_CHECKING:
    import torch

    from dsclab.noise_sources import Noise
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


Score = Callable[["torch.Tensor", float], "torch.Tensor"]

SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------
# One-stage baselines
# ------------------------------------------------------------------------------------------

@declare(nfe_per_step=1, order=(1.0, 1.0), levy_area=False)  # additive noise: strong order 1
def sample_euler_maruyama(score: Score, x: torch.Tensor, ts, *, noise: Noise) -> torch.Tensor:
    """Euler–Maruyama on the reverse SDE (science.md §0, §3 baseline; 1 NFE per step).

    Y' = Y + h (Y + 2 s_t(Y)) + sqrt(2) dW,  dW ~ N(0, h I).
    """
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = float(t - t_next)
        dw, _ = noise(float(t), float(t_next))
        x = x + h * (x + 2.0 * score(x, float(t))) + SQRT2 * dw
    return x


@declare(nfe_per_step=1, order=(1.0, 1.0), levy_area=False)
def sample_exponential_integrator(score: Score, x: torch.Tensor, ts, *, noise: Noise) -> torch.Tensor:
    """Exponential integrator (DDPM-type; science.md §3 baseline; 1 NFE per step).

    The linear drift is integrated exactly with the score frozen at the step's start:
    Y' = e^h Y + 2 (e^h - 1) s_t(Y) + sqrt(e^{2h} - 1) xi,  xi = dW / sqrt(h) ~ N(0, I).
    """
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = float(t - t_next)
        dw, _ = noise(float(t), float(t_next))
        eh = math.exp(h)
        x = eh * x + 2.0 * math.expm1(h) * score(x, float(t)) + math.sqrt(math.expm1(2 * h) / h) * dw
    return x


# ------------------------------------------------------------------------------------------
# Stochastic exponential Runge–Kutta (the adopted SRK of science.md §3)
# ------------------------------------------------------------------------------------------

def _phi2_h(h: float) -> float:
    """h phi_2(h) = (e^h - 1 - h) / h = int_0^h e^{h-u} (u/h) du (series for small h)."""
    if h < 1e-4:
        return h / 2.0 + h * h / 6.0 + h ** 3 / 24.0
    return (math.expm1(h) - h) / h


@declare(nfe_per_step=2, order=(1.0, 2.0), levy_area=False)
def sample_srk(score: Score, x: torch.Tensor, ts, *, noise: Noise) -> torch.Tensor:
    """Stochastic exponential Runge–Kutta, 2 stages (science.md §3 "adopted SRK"; 2 NFE per step).

    The paper (Wu–Chen–Wei 2024) could not be read here; this is the construction the project
    adopts: exponential integrator for the linear part, a second score evaluation at a stage built
    on the same Brownian increment, corrected by the score difference. With f_t = 2 s_t and the
    mild form of the reverse SDE over one step (reverse time u in [0, h], t' = t - h)

        Y_h = e^h Y_0 + int_0^h e^{h-u} f_{t-u}(Y_u) du + sqrt(2) int_0^h e^{h-u} dW_u,

    the step replaces f along the step by its linear interpolation between the two stages:

        xi   = sqrt((e^{2h} - 1) / h) dW                        (exact law of the noise integral)
        Yp   = e^h Y + (e^h - 1) f_t(Y) + xi                    (stage: the EI step, same xi)
        Y'   = Yp + h phi_2(h) [f_{t'}(Yp) - f_t(Y)],   h phi_2(h) = (e^h - 1 - h)/h.

    This is a stochastic exponential Heun (ETD2RK-type) step. Claimed order: weak order 2
    (strong order 1) for the additive-noise semi-linear SDE with smooth f. Argument: expanding
    f_{t'}(Yp) - f_t(Y) around Y (h phi_2(h) = h/2 + O(h^2)), the correction reproduces the terms
    of the weak order-2 Taylor scheme beyond the exact linear flow: the drift terms
    (h^2/2)(f' (Y + f) + d_t f), the drift-noise covariance E[(h/2) f' xi xi^T] = h^2 f', and the
    Ito term E[(h/4) f''[xi, xi]] = (h^2/2) Laplacian(f) (= (h^2/2)(sigma^2/2) Laplacian(f),
    sigma^2 = 2); the remaining differences in the moments are O(h^3) per step. For linear f
    (Gaussian data) mean and covariance of one step are exact to O(h^3), so KL to the target
    falls like h^4, against h^2 for the exponential integrator. Measured (exact propagation,
    gaussian(32, cond=10), 'exp' grid T = 5 -> t_min = 1e-3, start q_T): KL ~ NFE^-4.47 versus
    NFE^-2.09; KL = 1e-4 at NFE ~200 versus ~1470 (tests/test_samplers.py).
    """
    for t, t_next in zip(ts[:-1], ts[1:]):
        t, t_next = float(t), float(t_next)
        h = t - t_next
        dw, _ = noise(t, t_next)
        f0 = 2.0 * score(x, t)
        yp = math.exp(h) * x + math.expm1(h) * f0 + math.sqrt(math.expm1(2 * h) / h) * dw
        x = yp + _phi2_h(h) * (2.0 * score(yp, t_next) - f0)
    return x


# ------------------------------------------------------------------------------------------
# Additive-noise stochastic Runge–Kutta tableaux (SRA1, ShARK) and their one stepper
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdditiveSRKTableau:
    """Explicit SRK for dY = a(tau, Y) dtau + sigma dW with additive noise (sigma constant).

    Stages and update (h the step, dW and H the step's increment and space-time Levy area):

        Z_i = Y + h sum_{j<i} A[i][j] a(tau + c_j h, Z_j) + sigma (aW[i] dW + aH[i] H)
        Y'  = Y + h sum_i b[i] a(tau + c_i h, Z_i) + sigma (bW dW + bH H)

    ``strong_order``/``weak_order`` are the orders claimed by the reference for additive noise.
    """
    name: str
    c: tuple[float, ...]
    A: tuple[tuple[float, ...], ...]
    aW: tuple[float, ...]
    aH: tuple[float, ...]
    b: tuple[float, ...]
    bW: float
    bH: float
    strong_order: float
    weak_order: float
    reference: str

    def __post_init__(self):
        s = len(self.c)
        if not (len(self.A) == len(self.aW) == len(self.aH) == len(self.b) == s):
            raise ValueError(f"{self.name}: tableau arrays must all have {s} stages")
        for i, row in enumerate(self.A):
            if len(row) != s or any(row[j] != 0.0 for j in range(i, s)):
                raise ValueError(f"{self.name}: A must be strictly lower triangular (explicit)")
        if abs(sum(self.b) - 1.0) > 1e-12:
            raise ValueError(f"{self.name}: drift weights must sum to 1 (consistency)")

    @property
    def stages(self) -> int:
        return len(self.c)


# Rößler (2010), SIAM J. Numer. Anal. 48(3), SRA1: strong 1.5 / weak 2 for additive noise. In
# Rößler's form the stage noise is (3/2) I_(1,0)/h with I_(1,0)/h = dW/2 + H.
SRA1 = AdditiveSRKTableau(
    name="sra1", c=(0.0, 0.75), A=((0.0, 0.0), (0.75, 0.0)),
    aW=(0.0, 0.75), aH=(0.0, 1.5), b=(1.0 / 3.0, 2.0 / 3.0), bW=1.0, bH=0.0,
    strong_order=1.5, weak_order=2.0, reference="Rößler 2010, SIAM J. Numer. Anal. 48(3), Table SRA1",
)

# Foster, dos Reis & Strange (2023), arXiv:2210.17543, eq. (6.1), ShARK: shifted additive-noise
# RK; the first stage is shifted by sigma H. Strong order 1.5 for additive noise, order 2 for ODEs.
SHARK = AdditiveSRKTableau(
    name="shark", c=(0.0, 5.0 / 6.0), A=((0.0, 0.0), (5.0 / 6.0, 0.0)),
    aW=(0.0, 5.0 / 6.0), aH=(1.0, 1.0), b=(0.4, 0.6), bW=1.0, bH=0.0,
    strong_order=1.5, weak_order=2.0, reference="Foster, dos Reis & Strange 2023, arXiv:2210.17543, eq. (6.1)",
)

TABLEAUX: dict[str, AdditiveSRKTableau] = {"sra1": SRA1, "shark": SHARK}


def sample_additive_srk(score: Score, x: torch.Tensor, ts, *, noise: Noise,
                        tableau: AdditiveSRKTableau) -> torch.Tensor:
    """Step the reverse SDE with an :class:`AdditiveSRKTableau` (one NFE per stage).

    Drift a(tau, Y) = Y + 2 s_{t}(Y) at forward time t = t_k - c_i h, sigma = sqrt(2).
    """
    s = tableau.stages
    for t, t_next in zip(ts[:-1], ts[1:]):
        t, t_next = float(t), float(t_next)
        h = t - t_next
        dw, hh = noise(t, t_next)
        k = []
        for i in range(s):
            z = x
            for j in range(i):
                if tableau.A[i][j] != 0.0:
                    z = z + (h * tableau.A[i][j]) * k[j]
            if tableau.aW[i] != 0.0:
                z = z + (SQRT2 * tableau.aW[i]) * dw
            if tableau.aH[i] != 0.0:
                z = z + (SQRT2 * tableau.aH[i]) * hh
            k.append(z + 2.0 * score(z, t - tableau.c[i] * h))
        upd = x
        for i in range(s):
            upd = upd + (h * tableau.b[i]) * k[i]
        x = upd + (SQRT2 * tableau.bW) * dw
        if tableau.bH != 0.0:
            x = x + (SQRT2 * tableau.bH) * hh
    return x


@declare(nfe_per_step=SRA1.stages, order=(SRA1.strong_order, SRA1.weak_order), levy_area=True)
def sample_sra1(score: Score, x: torch.Tensor, ts, *, noise: Noise) -> torch.Tensor:
    """SRA1 (Rößler 2010) on the reverse SDE: :data:`SRA1` stepped by :func:`sample_additive_srk`."""
    return sample_additive_srk(score, x, ts, noise=noise, tableau=SRA1)


@declare(nfe_per_step=SHARK.stages, order=(SHARK.strong_order, SHARK.weak_order), levy_area=True)
def sample_shark(score: Score, x: torch.Tensor, ts, *, noise: Noise) -> torch.Tensor:
    """ShARK (Foster et al. 2023) on the reverse SDE: :data:`SHARK` stepped by :func:`sample_additive_srk`."""
    return sample_additive_srk(score, x, ts, noise=noise, tableau=SHARK)


# ------------------------------------------------------------------------------------------
# Deterministic reference: Heun on the probability-flow ODE
# ------------------------------------------------------------------------------------------

@declare(nfe_per_step=2, order=(2.0, 2.0), levy_area=False)  # ODE order of the flow
def sample_heun(score: Score, x: torch.Tensor, ts, *, noise: Noise | None = None) -> torch.Tensor:
    """Heun (explicit trapezoidal, ODE order 2) on the probability-flow ODE; 2 NFE per step.

    dY = [Y + s_{T-tau}(Y)] dtau has the same marginals as the reverse SDE. ``noise`` is ignored
    (never called): the output is a deterministic function of the start.
        k1 = Y + s_t(Y),  Yp = Y + h k1,  k2 = Yp + s_{t'}(Yp),  Y' = Y + (h/2)(k1 + k2).
    """
    for t, t_next in zip(ts[:-1], ts[1:]):
        t, t_next = float(t), float(t_next)
        h = t - t_next
        k1 = x + score(x, t)
        yp = x + h * k1
        x = x + (0.5 * h) * (k1 + yp + score(yp, t_next))
    return x


SAMPLERS: Registry[Callable] = Registry(
    "dsclab.samplers", "sampler",
    check=Needs("sampler", nfe_per_step=(positive_int, "a positive integer: score evaluations per step"),
                order=(positive_pair, "a pair (strong, weak) of positive orders")),
    builtins={
        "euler_maruyama": sample_euler_maruyama,
        "exponential_integrator": sample_exponential_integrator,
        "srk": sample_srk,
        "sra1": sample_sra1,
        "shark": sample_shark,
        "heun": sample_heun,
    })

NFE_PER_STEP: Mapping[str, int] = SAMPLERS.facts("nfe_per_step")
# (strong, weak) order claimed for the reverse SDE; heun: (ODE order, ODE order) of the flow.
SAMPLER_ORDERS: Mapping[str, tuple[float, float]] = SAMPLERS.facts("order")


def steps_for_nfe(name: str, nfe: int) -> int:
    """Number of steps of sampler ``name`` that costs ``nfe`` score evaluations (at least 1)."""
    return max(1, nfe // NFE_PER_STEP[name])


def uses_levy_area(fn: Callable) -> bool:
    """Whether sampler ``fn`` uses the Levy area H of its noise: its declared ``levy_area``
    (tests/test_samplers.py checks each declaration against a one-step probe). A plugin sampler
    that does not declare it is taken to use H: drawing an unused H costs time, never
    correctness."""
    return bool(getattr(fn, "levy_area", True))
