"""The sampler-convergence study: how fast each reverse-SDE sampler converges as NFE grows, on
targets where the error is known exactly (Wu–Chen–Wei 2024; science.md §3; project issue 3).
Spec, numerics, store layout, report and figure; no I/O and no Prefect here (``tasks/`` and
``flows/sampler_convergence.py`` wrap these).

Grid: target x d x sampler x NFE x score kind (x seed where Monte Carlo enters). Every sampler
integrates the reverse SDE on ``noise.time_grid(T, t_min, NFE / NFE_PER_STEP, schedule)`` from q_T
(``start: exact``, so that the error is discretisation and score error only) or N(0, I).

Targets (``target`` axis):

* ``gaussian``: the anisotropic N(mean 1, diag(lam)), lam log-spaced from ``scale`` to
  ``scale / cond`` (``distributions.gaussian``). Every step of every sampler is affine, so the
  output law is exactly Gaussian: ``kl`` is exact (``dsclab.gaussian_exact``).
* ``product_mixture``: the product of d identical 1-D two-component mixtures. Samplers act
  coordinatewise, so KL(output || q_tmin) = d x the 1-D KL, computed once per (score, sampler,
  NFE) by density propagation on a grid and quadrature (``dsclab.exact_kl``), then multiplied by
  d. The grid: ``quadrature.pts_per_width`` points per standard deviation of the narrowest
  component of q_tmin, ``n_sd`` standard deviations out, for the SDE samplers
  (``pts_per_width_ode``, ``n_sd_ode`` for noise-free samplers, whose densities stay sharp and
  which cost one quadrature node per step); ``n_area`` Gauss–Hermite nodes in the Levy area, at
  most ``n_max`` in dW. Measured against the library defaults (30 pts/sd, 15 sd, 6 area nodes,
  600 max) on the default target: relative change of the KL < 1 % for NFE 32..256; at NFE 512
  (KL ~ 1e-8, where the interpolation error accumulated over 256 steps shows) 7 % for srk, 21 %
  for shark, 30 % for sra1, which moves the fitted slopes (NFE 32..512) by 0.02, 0.06 and
  0.08 (sra1 -3.95 instead of -4.02). Fewer area nodes (2) or a narrower grid for heun (8 sd)
  break individual points by orders of magnitude; these settings do not. ``kl_mass_defect``
  stores 1 - the output mass on the grid: above ~1e-4 the law left the grid (an unstable step at
  small NFE) and that KL is rough.
* ``mixture``: a non-product isotropic mixture (``distributions.gaussian_mixture``, k = 4:
  modes at +-(separation/2) e_1 and +-(separation/2) e_2). No exact KL: ``sliced_w2`` and
  ``mmd`` of ``sampling.n_samples`` samples against fresh draws of q_tmin, with their floors
  (the same metrics between two independent draws of q_tmin).

Score kinds (``score`` axis):

* ``exact``: the closed-form score (fast special-cased evaluations, equal to
  ``dist.score``);
* ``perturbed``: s + eta g with g = (1, ..., 1), a constant bias of eta in every coordinate,
  so E||s_hat - s||^2 = eta^2 d at every t. Chosen because it is affine (the Gaussian output
  law stays exactly Gaussian) and coordinatewise (the product KL stays d x a 1-D KL), and it
  keeps the relative score error the same in every d, as the KL of the product targets grows
  like d. Every SDE sampler then levels off at the KL of the exact perturbed reverse SDE
  (measured, gaussian cond 10: 0.13 eta^2 d, i.e. 1.3e-4 d at eta = 0.01; srk, sra1 and shark
  sit within 1 % of it from NFE 256, Euler–Maruyama and the exponential integrator are still
  13-20 % above it at NFE 512); heun levels off at the (10x higher) floor of the perturbed
  probability-flow ODE;
* ``trained``: a ``ScoreMLP`` trained by DSM on ``n_train`` draws of the target, one network
  per seed (``dsclab.train.train_ensemble``: all seeds as one batched ensemble, member r equal
  to ``train_score`` with that seed). A trained network is neither affine nor coordinatewise, so
  no exact route holds: ``kl`` is NaN and the error is measured from samples (``sliced_w2``,
  ``mmd``), for every target.

Cells and storage. Cell dims (target, d, score); one task per cell computes every sampler x NFE
(and every seed where sampled). The product target's 1-D curves do not depend on d: one task
per score computes them and the d cells multiply. Variables:

* ``kl (target, d, sampler, nfe, score)`` nats, exact (NaN where not exact);
* ``kl_mass_defect (target, d, sampler, nfe, score)``: product_mixture only;
* ``sliced_w2``, ``mmd (target, d, sampler, nfe, score, seed)``: sampled cells (mixture
  target, trained score; every cell with ``sample_all``) up to ``sampling.max_nfe``, +inf
  where the sampler's output was not finite, NaN elsewhere;
* ``sliced_w2_floor``, ``mmd_floor (target, d, score, seed)``: every cell (they depend on
  (target, d, seed) only and repeat along score);
* ``score_l2 (target, d, score, seed, t)``: E||s_hat - s||^2 on fresh x ~ q_t (0 for exact,
  eta^2 d for perturbed, measured for trained);
* ``train_seconds (target, d, score, seed)`` (0 for the closed-form scores);
* ``seconds (target, d, score)``: wall time of the cell.

Seeds for Monte Carlo: start points, reference draws and projection directions depend on
(target, d, seed) only and the sampler noise on (target, d, seed, sampler, NFE) only, so every
score kind sees the same random numbers (their differences are free of that noise). All seeds
of a cell run as one batch (seed r = rows [r m, (r + 1) m)), paying the per-step cost once.

Analysis (report): KL slopes are least squares on log-log over ``analysis.fit_nfe`` (default
NFE 32..512: every scheme is stable and in its asymptotic regime there, the 2-stage schemes are
not below ~16 on the 'exp' grid from T = 5); sampled slopes use the same range, only where the
seed mean is above ``floor_factor`` x the Monte Carlo floor, with a bootstrap band over seeds;
NFE to reach a KL level is log-log interpolated, and extrapolated along the fit (marked) when
the grid ends first (``dsclab.analysis``).
"""
from __future__ import annotations

import functools
import json
import math
import time
import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr
from pydantic import Field, field_validator, model_validator

import dsclab
from dsclab import analysis, distributions, noise
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.exact_kl import default_grid, kl_1d, mixture1d, propagate_density_1d
from dsclab.gaussian_exact import gaussian_score, sampler_kl
from dsclab.metrics import mmd, sliced_w2
from dsclab.seeds import derive_seed
from dsclab.samplers import NFE_PER_STEP, SAMPLERS, steps_for_nfe
from dsclab.spec import StudyBase, TrainSpec, _Frozen, _known, _known_one, _positive_ints, _unique, seed_list
from dsclab.nets import EnsembleMLP
from dsclab.train import TrainConfig, TrainingDiverged, resolve_device, train_ensemble

CELL_DIMS = ("target", "d", "score")
TARGETS = ("gaussian", "product_mixture", "mixture")
EXACT_KL_TARGETS = ("gaussian", "product_mixture")
SCORE_KINDS = ("exact", "perturbed", "trained")

Score = Callable[[torch.Tensor, float], torch.Tensor]


# -------------------------------------------------------------------------------------------
# Spec
# -------------------------------------------------------------------------------------------

class GaussianTarget(_Frozen):
    """N(mean 1, diag(lam)), lam log-spaced from scale to scale / cond (``distributions.gaussian``)."""

    cond: float = Field(10.0, ge=1.0, description="condition number of the covariance")
    mean: float = Field(0.0, description="every coordinate of the mean")
    scale: float = Field(1.0, gt=0, description="largest eigenvalue")


class ProductMixtureTarget(_Frozen):
    """Product of d identical 1-D mixtures sum_k w_k N(mu_k, s_k^2)."""

    weights: list[float] = Field([0.3, 0.7], description="component weights (normalised)")
    means: list[float] = Field([-1.5, 1.0], description="component means")
    stds: list[float] = Field([0.4, 0.3], description="component standard deviations")

    @model_validator(mode="after")
    def _shapes(self) -> "ProductMixtureTarget":
        if not (len(self.weights) == len(self.means) == len(self.stds) >= 1):
            raise ValueError("weights, means and stds need the same positive length")
        if any(w <= 0 for w in self.weights) or any(s <= 0 for s in self.stds):
            raise ValueError("weights and stds must be positive")
        return self


class MixtureTarget(_Frozen):
    """Isotropic mixture of ``distributions.gaussian_mixture`` (k >= 3 makes it non-product)."""

    k: int = Field(4, ge=1, description="components (modes at +-separation/2 on the first axes)")
    separation: float = Field(4.0, gt=0, description="distance between paired modes")
    std: float = Field(1.0, gt=0, description="component standard deviation")


class SamplingSpec(_Frozen):
    """Monte Carlo part: sample metrics and score errors."""

    n_samples: int = Field(500, ge=10, le=5000, description="samples per (sampler, NFE) and reference draws")
    n_proj: int = Field(128, gt=0, description="projections of the sliced W2")
    max_nfe: int | None = Field(None, gt=0, description="sampled metrics only up to this NFE (None: all); "
                                "beyond the NFE where every sampler sits at its Monte Carlo or score floor "
                                "more NFE re-measure the floor, and cost most of the sampled work")
    score_t: list[float] = Field([0.01, 0.1, 1.0], description="times of the stored score error")

    @field_validator("score_t")
    @classmethod
    def _t(cls, v):
        if not v or any(x <= 0 for x in v):
            raise ValueError(f"{v} must be positive times")
        _unique(v)
        return v


class QuadratureSpec(_Frozen):
    """Grid and nodes of the 1-D density propagation (``dsclab.exact_kl.propagate_density_1d``)."""

    pts_per_width: float = Field(12.0, gt=0, description="grid points per sd of the narrowest component (SDE samplers)")
    pts_per_width_ode: float = Field(30.0, gt=0, description="the same for noise-free samplers (heun)")
    n_sd: float = Field(8.0, gt=0, description="grid half-width in standard deviations (SDE samplers)")
    n_sd_ode: float = Field(15.0, gt=0, description="the same for noise-free samplers (at 8 heun's KL is off "
                            "by up to 400x at NFE >= 32; at 12 and 15 it agrees to 1e-4)")
    n_area: int = Field(3, ge=1, description="Gauss-Hermite nodes in the Levy area H")
    n_max: int = Field(150, ge=8, description="most Gauss-Hermite nodes in dW")


class AnalysisSpec(_Frozen):
    """What the report fits and reads off (stored with the spec; changes no stored number)."""

    fit_nfe: list[int] = Field([32, 512], description="NFE range [lo, hi] of the KL slope fits (asymptotic regime)")
    kl_levels: list[float] = Field([1e-3, 1e-4], description="KL levels of the NFE-to-reach table")
    floor_factor: float = Field(3.0, gt=1, description="sampled slopes use points whose seed mean exceeds this x floor")
    n_boot: int = Field(1000, gt=0, description="bootstrap resamples of the seeds")
    band: float = Field(0.9, gt=0, lt=1, description="bootstrap band level")
    acceptance_d: int = Field(32, gt=0, description="d of the acceptance line (gaussian, exact score)")
    acceptance_level: float = Field(1e-4, gt=0, description="KL level of the acceptance NFE ratio")

    @field_validator("fit_nfe")
    @classmethod
    def _range(cls, v):
        if len(v) != 2 or not 0 < v[0] < v[1]:
            raise ValueError(f"{v} must be [lo, hi] with 0 < lo < hi")
        return v

    @field_validator("kl_levels")
    @classmethod
    def _levels(cls, v):
        if not v or any(x <= 0 for x in v):
            raise ValueError(f"{v} must be positive KL levels")
        _unique(v)
        return v


class SamplerConvergenceSpec(StudyBase):
    """A sampler-convergence study: target x d x score cells, each over sampler x NFE (x seed)."""

    kind: Literal["sampler_convergence"] = Field("sampler_convergence", description="study kind (selects the flow)")
    target: list[str] = Field(list(TARGETS), description="targets: gaussian, product_mixture, mixture")
    d: list[int] = Field(..., description="dimensions")
    sampler: list[str] = Field(list(SAMPLERS), description="samplers (dsclab.samplers.SAMPLERS)")
    nfe: list[int] = Field([4, 8, 16, 32, 64, 128, 256, 512], description="score evaluations per sample")
    score: list[str] = Field(list(SCORE_KINDS), description="score kinds: exact, perturbed, trained")
    seed: list[int] = Field([0, 1, 2], description="seeds where Monte Carlo enters (samples, training)")
    eta: float = Field(0.01, gt=0, description="size of the perturbation s + eta (1, ..., 1)")
    n_train: int = Field(2000, gt=0, description="training sample size of the trained score")
    T: float = Field(5.0, gt=0, description="start time of the samplers")
    t_min: float = Field(1e-3, gt=0, description="early-stopping time")
    schedule: str = Field("exp", description="time grid (dsclab.noise.SCHEDULES)")
    start: Literal["exact", "prior"] = Field("exact", description="start from q_T (exact) or N(0, I) (prior)")
    sample_all: bool = Field(False, description="also estimate sliced_w2/mmd where the KL is exact")
    gaussian: GaussianTarget = GaussianTarget()
    product_mixture: ProductMixtureTarget = ProductMixtureTarget()
    mixture: MixtureTarget = MixtureTarget()
    train: TrainSpec = TrainSpec(steps=400, width=64, depth=2, device="cpu")
    sampling: SamplingSpec = SamplingSpec()
    quadrature: QuadratureSpec = QuadratureSpec()
    analysis: AnalysisSpec = AnalysisSpec()

    @field_validator("target")
    @classmethod
    def _targets(cls, v):
        return _known("target", v, TARGETS)

    @field_validator("score")
    @classmethod
    def _scores(cls, v):
        return _known("score kind", v, SCORE_KINDS)

    @field_validator("sampler")
    @classmethod
    def _samp(cls, v):
        return _known("sampler", v, SAMPLERS)

    @field_validator("d", "nfe")
    @classmethod
    def _pos(cls, v, info):
        return _positive_ints(info.field_name, v)

    @field_validator("nfe")
    @classmethod
    def _increasing(cls, v):
        if list(v) != sorted(v):
            raise ValueError(f"{v} must be increasing")
        return v

    @field_validator("seed")
    @classmethod
    def _seeds(cls, v):
        return seed_list(v)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v):
        return _known_one("schedule", v, noise.SCHEDULES)

    @model_validator(mode="after")
    def _check(self) -> "SamplerConvergenceSpec":
        if self.t_min >= self.T:
            raise ValueError(f"t_min {self.t_min} must be below T {self.T}")
        for s in self.sampler:  # every NFE must be a whole number of steps: samplers compared per NFE
            k = NFE_PER_STEP[s]
            bad = [n for n in self.nfe if n % k]
            if bad:
                raise ValueError(f"nfe {bad} is not a multiple of {k}, the NFE per step of {s}")
        cells = len(self.target) * len(self.d) * len(self.score)
        if cells > self.max_cells:
            raise ValueError(f"the grid has {cells} cells, over max_cells={self.max_cells}")
        return self

    def target_params(self, name: str) -> dict:
        return {"name": name, **getattr(self, name).model_dump(mode="json")}

    def cells(self) -> list["SrkCell"]:
        return [SrkCell(target=t, d=d, score=s, key=self.key(target=t, d=d, score=s))
                for t in self.target for d in self.d for s in self.score]


class SrkCell(_Frozen):
    target: str
    d: int
    score: str
    key: str


def cell_index(cell: SrkCell) -> dict:
    return {"target": cell.target, "d": cell.d, "score": cell.score}


def exact_route(cell: SrkCell) -> bool:
    """The KL is exact: a target with an exact route and an affine, coordinatewise score."""
    return cell.target in EXACT_KL_TARGETS and cell.score in ("exact", "perturbed")


def sampled_route(spec: SamplerConvergenceSpec, cell: SrkCell) -> bool:
    """Sample metrics are computed where the KL is not exact (or everywhere with sample_all)."""
    return spec.sample_all or not exact_route(cell)


def shared_1d(cell: SrkCell) -> bool:
    """Cells whose KL comes from the shared 1-D product curve (one task per score kind)."""
    return cell.target == "product_mixture" and exact_route(cell)


# -------------------------------------------------------------------------------------------
# Targets and scores
# -------------------------------------------------------------------------------------------

def _mixture1d_score(weights, means, stds) -> Score:
    """Exact score of q_t for the 1-D mixture, applied elementwise to a tensor of any shape.

    s_t(x) = -sum_k r_k(x) (x - e^{-t} mu_k) / v_k,  v_k = e^{-2t} s_k^2 + sigma_t^2,
    r_k the responsibilities (log space). Equal to ``mixture1d(...).score`` on (m, 1) inputs.
    """
    lw = torch.log(torch.tensor(weights, dtype=torch.float64) / sum(weights))
    mu = torch.tensor(means, dtype=torch.float64)
    s2 = torch.tensor(stds, dtype=torch.float64) ** 2

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        a, sig2 = math.exp(-float(t)), -math.expm1(-2.0 * float(t))
        v = a * a * s2 + sig2
        r = x.to(torch.float64)[..., None] - a * mu
        lg = lw - 0.5 * r * r / v - 0.5 * torch.log(v)
        e = torch.exp(lg - lg.max(dim=-1, keepdim=True).values)
        return (-(e * r / v).sum(-1) / e.sum(-1)).to(x.dtype)

    return score


class ProductMixture:
    """prod_{i<d} p(x_i) for a 1-D mixture p, with the exact q_t (a product too)."""

    def __init__(self, d: int, weights, means, stds):
        self.d = d
        self.factor = mixture1d(weights, means, stds)
        self._score = _mixture1d_score(weights, means, stds)

    def sample(self, m: int, generator: torch.Generator, t: float = 0.0) -> torch.Tensor:
        return self.factor.sample(m * self.d, generator, t=t).reshape(m, self.d)

    def score(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        return self._score(x, float(t))

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        m = x.shape[0]
        return self.factor.log_prob(x.reshape(-1, 1), float(t)).reshape(m, self.d).sum(1)


def isotropic_mixture_score(dist: GaussianMixture) -> Score:
    """Exact score of a mixture of isotropic components N(mu_k, c_k I), in O(m K d).

    s_t(x) = -x sum_k r_k / v_k + e^{-t} sum_k (r_k / v_k) mu_k, v_k = e^{-2t} c_k + sigma_t^2,
    with log r_k = log w_k - ||x - e^{-t} mu_k||^2 / (2 v_k) - (d/2) log v_k + const.
    Equal to ``dist.score``; raises ValueError for a non-isotropic component.
    """
    c = dist.lam[:, 0]
    eye = torch.eye(dist.d, dtype=torch.float64)
    if not torch.allclose(dist.covs, c[:, None, None] * eye, rtol=1e-12, atol=1e-14):
        raise ValueError("isotropic_mixture_score needs components with covariance c_k I")
    lw, d = torch.log(dist.weights), dist.d
    mus = {dt: dist.means.to(dt) for dt in (torch.float32, torch.float64)}
    mu2 = (dist.means * dist.means).sum(1)

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        # Computed in x's dtype (float32 on the sampled route, where Monte Carlo error dominates);
        # the (m, K) responsibilities in float64.
        a, sig2 = math.exp(-float(t)), -math.expm1(-2.0 * float(t))
        v = a * a * c + sig2  # (K,)
        mu = mus.get(x.dtype, dist.means)
        r2 = (x * x).sum(1, keepdim=True).to(torch.float64) - 2 * a * (x @ mu.T).to(torch.float64) + a * a * mu2
        lg = lw - 0.5 * r2 / v - 0.5 * d * torch.log(v)
        p = (torch.softmax(lg, dim=1) / v).to(x.dtype)  # r_k / v_k
        return -x * p.sum(1, keepdim=True) + a * (p @ mu)

    return score


def make_target(spec: SamplerConvergenceSpec, name: str, d: int):
    """The target law in dimension d: a ``GaussianMixture`` or a :class:`ProductMixture`."""
    if name == "gaussian":
        g = spec.gaussian
        return distributions.make("gaussian", d, cond=g.cond, mean=g.mean, scale=g.scale)
    if name == "product_mixture":
        p = spec.product_mixture
        return ProductMixture(d, p.weights, p.means, p.stds)
    if name == "mixture":
        m = spec.mixture
        return distributions.make("gaussian_mixture", d, k=m.k, separation=m.separation, std=m.std)
    raise ValueError(f"unknown target {name!r}")


def exact_score(name: str, dist) -> Score:
    """Fast closed-form score of a target (equal to ``dist.score``)."""
    if name == "gaussian":
        return gaussian_score(dist)
    if name == "product_mixture":
        return dist.score
    return isotropic_mixture_score(dist)


def perturb(score: Score, eta: float) -> Score:
    """s + eta g with g = (1, ..., 1) (see the module docstring)."""
    def perturbed(x: torch.Tensor, t: float) -> torch.Tensor:
        return score(x, t) + eta
    return perturbed


def train_config(spec: SamplerConvergenceSpec) -> TrainConfig:
    return TrainConfig.of(spec.train)


def trained_scores(spec: SamplerConvergenceSpec, cell: SrkCell, dist):
    """Train one ``ScoreMLP`` per seed on ``n_train`` draws of the target (seed r: its own data,
    initialisation and minibatches), all seeds at once as one batched ensemble
    (``train.train_ensemble``: member r equals ``train_score`` with the same seed).

    Returns (score, results): ``score`` evaluates member r on rows [r m, (r + 1) m) of a batch of
    R m rows (the layout of :func:`sampled_curves`); ``results[r]`` is the member's
    ``TrainResult``. Raises ``TrainingDiverged`` if a member diverged.
    """
    data, seeds = [], []
    for seed in spec.seed:
        g = torch.Generator().manual_seed(derive_seed("srk-train-data", spec.target_params(cell.target), cell.d, seed))
        data.append(dist.sample(spec.n_train, g).to(torch.float32))
        seeds.append(derive_seed("srk-train", cell.key, seed))
    results = train_ensemble(data, seeds, config=train_config(spec), device=resolve_device(spec.train.device))
    if any(r is None for r in results):
        raise TrainingDiverged(f"training diverged for seeds {[s for s, r in zip(spec.seed, results) if r is None]}")
    net = EnsembleMLP([r.model for r in results]).eval()

    def score(y: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((y.shape[0],), float(t), dtype=torch.float64)
        with torch.no_grad():
            eps = net(y.to(torch.float32), tt)
        return noise.score_from_eps(eps, tt.to(torch.float32)).to(y.dtype)

    return score, results


def member_score(model) -> Score:
    """The score of one trained ``ScoreMLP`` (float32 network, output in the input's dtype)."""
    def score(y: torch.Tensor, t: float) -> torch.Tensor:
        with torch.no_grad():
            return model.score(y.to(torch.float32), float(t)).to(y.dtype)
    return score


def _is_noise_free(fn) -> bool:
    """True when a sampler never calls ``noise`` (a probability-flow ODE solver)."""
    calls = []
    z = torch.zeros(1, 1, dtype=torch.float64)

    def src(a, b):
        calls.append(1)
        return z, z

    fn(lambda x, t: -x, z, np.array([1.0, 0.5]), noise=src)
    return not calls


def uses_levy_area(fn) -> bool:
    """True when a sampler's output depends on the Levy area H (probed on one step with a
    nonlinear score: H = 0 versus H = 1)."""
    x = torch.full((1, 1), 0.3, dtype=torch.float64)
    z, one = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    outs = [fn(lambda y, t: -torch.tanh(y) - y, x, np.array([1.0, 0.5]), noise=lambda a, b, h=h: (z + 0.1, h))
            for h in (z, one)]
    return not torch.equal(outs[0], outs[1])


class IncrementNoise:
    """Fresh independent (dW, H) per step, like ``samplers.GaussianNoise``, drawn directly in
    ``dtype`` for a batch made of blocks of ``block`` rows, block r from ``generators[r]`` (so a
    block's noise does not depend on the other blocks). When the sampler ignores H
    (``need_area=False``, see :func:`uses_levy_area`) H is a zero tensor and costs nothing."""

    def __init__(self, block: tuple[int, int], generators: list[torch.Generator], dtype=torch.float32,
                 need_area: bool = True):
        self.block, self.generators, self.dtype, self.need_area = tuple(block), list(generators), dtype, need_area
        self._zero = torch.zeros((len(self.generators) * block[0], block[1]), dtype=dtype)

    def _draw(self) -> torch.Tensor:
        return torch.cat([torch.randn(self.block, generator=g, dtype=self.dtype) for g in self.generators])

    def __call__(self, t_from: float, t_to: float):
        h = float(t_from - t_to)
        dw = math.sqrt(h) * self._draw()
        if not self.need_area:
            return dw, self._zero
        return dw, math.sqrt(h / 12.0) * self._draw()


@functools.lru_cache(maxsize=512)
def _cached_grid(T: float, t_min: float, steps: int, schedule: str) -> np.ndarray:
    ts = noise.time_grid(T, t_min, steps, schedule)
    ts.flags.writeable = False
    return ts


def _grid(spec: SamplerConvergenceSpec, name: str, nfe: int) -> np.ndarray:
    """The sampler's time grid for ``nfe`` evaluations (cached: the 'exp' grid is a bisection)."""
    return _cached_grid(spec.T, spec.t_min, steps_for_nfe(name, nfe), spec.schedule)


# -------------------------------------------------------------------------------------------
# Exact routes
# -------------------------------------------------------------------------------------------

def gaussian_kl_curves(spec: SamplerConvergenceSpec, d: int, score_kind: str) -> np.ndarray:
    """Exact KL (sampler, nfe) for the Gaussian target (``gaussian_exact.sampler_kl``).

    A (sampler, NFE) whose propagation fails numerically (overflow at a far too large step)
    gives NaN; an output covariance that lost positive definiteness gives +inf.
    """
    dist = make_target(spec, "gaussian", d)
    score = gaussian_score(dist)
    if score_kind == "perturbed":
        score = perturb(score, spec.eta)
    out = np.full((len(spec.sampler), len(spec.nfe)), np.nan)
    for i, name in enumerate(spec.sampler):
        for j, nfe in enumerate(spec.nfe):
            try:
                out[i, j] = sampler_kl(name, dist, _grid(spec, name, nfe), start=spec.start, score=score)
            except (ArithmeticError, RuntimeError, ValueError):  # incl. torch.linalg.LinAlgError
                out[i, j] = np.nan
    return out


def product_kl_1d(spec: SamplerConvergenceSpec, score_kind: str) -> dict[str, list]:
    """1-D KL and mass defect (sampler, nfe) of one factor of the product target.

    The d-dim KL is d times this (identical factors, coordinatewise samplers and score). For
    ``perturbed`` the 1-D score is s + eta (the coordinate of eta (1, ..., 1)). Returns plain
    lists (JSON-able, cheap to pass between tasks).
    """
    p = spec.product_mixture
    mix = mixture1d(p.weights, p.means, p.stds)
    score = _mixture1d_score(p.weights, p.means, p.stds)
    if score_kind == "perturbed":
        score = perturb(score, spec.eta)
    q = spec.quadrature
    kl = np.full((len(spec.sampler), len(spec.nfe)), np.nan)
    defect = np.full_like(kl, np.nan)
    for i, name in enumerate(spec.sampler):
        fn = SAMPLERS[name]
        ode = _is_noise_free(fn)
        x = default_grid(mix, spec.t_min, pts_per_width=q.pts_per_width_ode if ode else q.pts_per_width,
                         n_sd=q.n_sd_ode if ode else q.n_sd)
        xt = torch.as_tensor(x)[:, None]
        logq = mix.log_prob(xt, spec.t_min).numpy()
        for j, nfe in enumerate(spec.nfe):
            ts = _grid(spec, name, nfe)
            if spec.start == "exact":
                p0 = torch.exp(mix.log_prob(xt, float(ts[0]))).numpy()
            else:
                p0 = np.exp(-0.5 * x ** 2) / math.sqrt(2 * math.pi)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    dens = propagate_density_1d(fn, score, ts, x, p0, n_area=q.n_area, n_max=q.n_max)
                    kl[i, j], defect[i, j] = kl_1d(dens, logq, x)
            except (ArithmeticError, RuntimeError, ValueError):
                pass
    return {"kl": kl.tolist(), "defect": defect.tolist()}


# -------------------------------------------------------------------------------------------
# Sampled route
# -------------------------------------------------------------------------------------------

def _bandwidth(ref: torch.Tensor) -> float:
    """The RBF bandwidth ``metrics.mmd`` uses by default: the median pairwise distance of ``ref``."""
    dist = torch.cdist(ref, ref)
    return float(dist[dist > 0].median())


class Reference:
    """Seed r's Monte Carlo reference: start points ``x0 (m, d)`` at T, a draw ``ref`` of q_tmin,
    the metrics against it (``sliced_w2`` with fixed projection directions, ``mmd`` with the
    bandwidth ``metrics.mmd`` picks for ``ref``), and the floors: the same metrics between
    ``ref`` and a second independent draw of q_tmin. Everything comes from (target, d, seed)."""

    def __init__(self, spec: SamplerConvergenceSpec, cell: SrkCell, dist, seed: int):
        tp, m = spec.target_params(cell.target), spec.sampling.n_samples
        g = torch.Generator().manual_seed(derive_seed("srk-points", tp, cell.d, seed))
        self.x0 = (dist.sample(m, g, t=spec.T) if spec.start == "exact"
                   else torch.randn(m, cell.d, generator=g, dtype=torch.float64))
        self.ref, ref2 = dist.sample(m, g, t=spec.t_min), dist.sample(m, g, t=spec.t_min)
        self.proj, self.n_proj = derive_seed("srk-proj", tp, cell.d, seed), spec.sampling.n_proj
        self.bandwidth = _bandwidth(self.ref)
        self.sliced_w2_floor, self.mmd_floor = self.sliced_w2(ref2), self.mmd(ref2)

    def sliced_w2(self, y: torch.Tensor) -> float:
        return sliced_w2(y, self.ref, torch.Generator().manual_seed(self.proj), n_proj=self.n_proj)

    def mmd(self, y: torch.Tensor) -> float:
        return mmd(y, self.ref, bandwidth=self.bandwidth)


def sampled_curves(spec: SamplerConvergenceSpec, cell: SrkCell, score: Score, refs: list[Reference],
                   dtype=torch.float32) -> dict[str, np.ndarray]:
    """sliced W2 and MMD (sampler, nfe, seed) of ``n_samples`` samples per seed against the
    seed's q_tmin draw (:class:`Reference`), for NFE up to ``sampling.max_nfe`` (NaN beyond).

    All seeds run as one batch of R m rows (seed r: rows [r m, (r + 1) m)), so the per-step cost
    is paid once. Seed r's noise comes from (target, d, seed, sampler, NFE): the same for every
    score kind and independent of the other seeds. A sampler whose output is not finite gets +inf.
    """
    tp = spec.target_params(cell.target)
    m, sp, R = spec.sampling.n_samples, spec.sampling, len(spec.seed)
    x0 = torch.cat([ref.x0 for ref in refs]).to(dtype)
    S, N = len(spec.sampler), len(spec.nfe)
    out = {"sliced_w2": np.full((S, N, R), np.nan), "mmd": np.full((S, N, R), np.nan)}
    for i, name in enumerate(spec.sampler):
        need_area = uses_levy_area(SAMPLERS[name])
        for j, nfe in enumerate(spec.nfe):
            if sp.max_nfe is not None and nfe > sp.max_nfe:
                continue
            gens = [torch.Generator().manual_seed(derive_seed("srk-noise", tp, cell.d, seed, name, nfe))
                    for seed in spec.seed]
            src = IncrementNoise((m, cell.d), gens, dtype=dtype, need_area=need_area)
            with torch.no_grad():
                y = SAMPLERS[name](score, x0, _grid(spec, name, nfe), noise=src).to(torch.float64)
            for r in range(R):
                yr = y[r * m:(r + 1) * m]
                if not torch.isfinite(yr).all():
                    out["sliced_w2"][i, j, r] = out["mmd"][i, j, r] = np.inf
                    continue
                out["sliced_w2"][i, j, r] = refs[r].sliced_w2(yr)
                out["mmd"][i, j, r] = refs[r].mmd(yr)
    return out


def score_l2(spec: SamplerConvergenceSpec, cell: SrkCell, dist, score: Score, seed: int) -> np.ndarray:
    """E||s_hat - s||^2 at each ``sampling.score_t`` on fresh x ~ q_t (n_samples points)."""
    g = torch.Generator().manual_seed(derive_seed("srk-score-points", spec.target_params(cell.target), cell.d, seed))
    ex = exact_score(cell.target, dist)
    out = []
    for t in spec.sampling.score_t:
        x = dist.sample(spec.sampling.n_samples, g, t=float(t))
        out.append(float(((score(x, float(t)).to(torch.float64) - ex(x, float(t))) ** 2).sum(1).mean()))
    return np.array(out)


# -------------------------------------------------------------------------------------------
# One cell
# -------------------------------------------------------------------------------------------

def run_cell(spec: SamplerConvergenceSpec, cell: SrkCell, kl1d: dict | None = None) -> xr.Dataset:
    """All values of one (target, d, score) cell as a Dataset over (sampler, nfe, seed, t).

    ``kl1d``: the output of :func:`product_kl_1d` for this score kind (product target, exact
    route). Raises on a numerical failure of the whole cell (diverged training).
    """
    t0 = time.perf_counter()
    S, N, R, Tn = len(spec.sampler), len(spec.nfe), len(spec.seed), len(spec.sampling.score_t)
    kl = np.full((S, N), np.nan)
    defect = np.full((S, N), np.nan)
    sw, mm = np.full((S, N, R), np.nan), np.full((S, N, R), np.nan)
    l2 = np.full((R, Tn), np.nan)
    tr_sec = np.zeros(R)  # closed-form scores: no training
    dist = make_target(spec, cell.target, cell.d)
    if exact_route(cell):
        if cell.target == "gaussian":
            kl = gaussian_kl_curves(spec, cell.d, cell.score)
        else:
            if kl1d is None:
                kl1d = product_kl_1d(spec, cell.score)
            kl = cell.d * np.asarray(kl1d["kl"], dtype=np.float64)
            defect = np.asarray(kl1d["defect"], dtype=np.float64)
    if cell.score == "exact":
        l2[:] = 0.0
    elif cell.score == "perturbed":
        l2[:] = spec.eta ** 2 * cell.d
    # The floors depend on (target, d, seed) only; every cell stores them (cheap), so that every
    # cell's values are complete and the floor sits beside each curve.
    refs = [Reference(spec, cell, dist, seed) for seed in spec.seed]
    sw_floor = np.array([r.sliced_w2_floor for r in refs])
    mm_floor = np.array([r.mmd_floor for r in refs])
    if sampled_route(spec, cell):
        if cell.score == "trained":
            score, results = trained_scores(spec, cell, dist)
            for r, (seed, res) in enumerate(zip(spec.seed, results)):
                tr_sec[r] = res.seconds
                l2[r] = score_l2(spec, cell, dist, member_score(res.model), seed)
        else:
            score = exact_score(cell.target, dist)
            if cell.score == "perturbed":
                score = perturb(score, spec.eta)
        vals = sampled_curves(spec, cell, score, refs)
        sw, mm = vals["sliced_w2"], vals["mmd"]
    sn = ("sampler", "nfe")
    ds = xr.Dataset(
        {
            "kl": (sn, kl), "kl_mass_defect": (sn, defect),
            "sliced_w2": (sn + ("seed",), sw), "mmd": (sn + ("seed",), mm),
            "sliced_w2_floor": (("seed",), sw_floor), "mmd_floor": (("seed",), mm_floor),
            "score_l2": (("seed", "t"), l2),
            "train_seconds": (("seed",), tr_sec),
        },
        coords={"sampler": list(spec.sampler), "nfe": list(spec.nfe), "seed": list(spec.seed),
                "t": list(spec.sampling.score_t)},
    )
    ds["seconds"] = ((), time.perf_counter() - t0)
    return ds


# -------------------------------------------------------------------------------------------
# Store template
# -------------------------------------------------------------------------------------------

VARIABLES = {
    # name: (dims, long name, units)
    "kl": (("target", "d", "sampler", "nfe", "score"),
           "exact KL(sampler output || q_t_min) (NaN where not exact)", "nats"),
    "kl_mass_defect": (("target", "d", "sampler", "nfe", "score"),
                       "1 - output mass on the quadrature grid (product_mixture; > 1e-4: KL rough)", "1"),
    "sliced_w2": (("target", "d", "sampler", "nfe", "score", "seed"),
                  "sliced W2 of samples to fresh q_t_min draws (+inf: non-finite output)", "1"),
    "mmd": (("target", "d", "sampler", "nfe", "score", "seed"),
            "RBF MMD of samples to fresh q_t_min draws (+inf: non-finite output)", "1"),
    "sliced_w2_floor": (("target", "d", "score", "seed"), "sliced W2 between two independent q_t_min draws", "1"),
    "mmd_floor": (("target", "d", "score", "seed"), "RBF MMD between two independent q_t_min draws", "1"),
    "score_l2": (("target", "d", "score", "seed", "t"), "score error E||s_hat - s||^2 on x ~ q_t", "1"),
    "train_seconds": (("target", "d", "score", "seed"),
                      "training wall time of the score (share of the seeds' ensemble; 0: closed form)", "s"),
    "seconds": (("target", "d", "score"), "wall time of the cell", "s"),
}

COORD_ATTRS = {
    "target": {"long_name": "target law"},
    "d": {"long_name": "dimension"},
    "score": {"long_name": "score kind (exact, perturbed = exact + eta (1,...,1), trained)"},
    "sampler": {"long_name": "sampler"},
    "nfe": {"long_name": "score evaluations per sample"},
    "seed": {"long_name": "seed (Monte Carlo: samples, training)"},
    "t": {"long_name": "OU time of the score error", "units": "1"},
}


def template(spec: SamplerConvergenceSpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending."""
    coords = {
        "target": np.array(spec.target, dtype=str), "d": np.array(spec.d, dtype=np.int64),
        "score": np.array(spec.score, dtype=str), "sampler": np.array(spec.sampler, dtype=str),
        "nfe": np.array(spec.nfe, dtype=np.int64), "seed": np.array(spec.seed, dtype=np.int64),
        "t": np.array(spec.sampling.score_t, dtype=np.float64),
    }
    sizes = {k: len(v) for k, v in coords.items()}
    shape = lambda dims: [sizes[k] for k in dims]
    data = {"status": (CELL_DIMS, np.zeros(shape(CELL_DIMS), dtype=np.int8),
                       {"long_name": "cell status", "flag_values": [0, 1, 2], "flag_meanings": "pending done failed"})}
    for name, (dims, long_name, units) in VARIABLES.items():
        data[name] = (dims, np.full(shape(dims), np.nan), {"long_name": long_name, "units": units})
    ds = xr.Dataset(data, coords=coords)
    for k, a in COORD_ATTRS.items():
        ds[k].attrs.update(a)
    ds.attrs.update({
        "study": "sampler_convergence", "name": spec.name,
        "spec": json.dumps(spec.model_dump(mode="json"), sort_keys=True),
        "spec_hash": spec.hash, "dsclab_version": dsclab.__version__,
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise); reverse SDE from "
                       f"{'q_T' if spec.start == 'exact' else 'N(0, I)'} at T={spec.T} to t_min={spec.t_min} "
                       f"on the '{spec.schedule}' grid; NFE = score evaluations per sample",
        "kl_route": "gaussian: exact Gaussian propagation; product_mixture: d x 1-D quadrature KL; "
                    "trained score and mixture target: no exact KL (sliced_w2, mmd from samples)",
    })
    return ds


# -------------------------------------------------------------------------------------------
# Report and figure
# -------------------------------------------------------------------------------------------

def _spec_of(ds: xr.Dataset) -> SamplerConvergenceSpec:
    return SamplerConvergenceSpec.model_validate(json.loads(ds.attrs["spec"]))


def _done(ds: xr.Dataset, var: str) -> xr.DataArray:
    return ds[var].where(ds["status"] == 1)


def _has(da: xr.DataArray) -> bool:
    return bool(np.isfinite(da.values).any())


def kl_fits(ds: xr.Dataset, spec: SamplerConvergenceSpec | None = None) -> xr.Dataset:
    """Slopes of log KL against log NFE over ``analysis.fit_nfe`` (exact: no band), per
    (target, d, sampler, score)."""
    spec = spec or _spec_of(ds)
    return analysis.slope_table(_done(ds, "kl"), "nfe", x_range=spec.analysis.fit_nfe, min_points=3)


def kl_crossings(ds: xr.Dataset, level: float, spec: SamplerConvergenceSpec | None = None,
                 fits: xr.Dataset | None = None) -> xr.DataArray:
    """NFE at which the KL reaches ``level`` (object array of ``analysis.Crossing``), right-censored
    crossings extrapolated along the asymptotic fit."""
    fits = kl_fits(ds, spec) if fits is None else fits
    return analysis.crossing_table(_done(ds, "kl"), "nfe", level, fits=fits)


def sampled_fits(ds: xr.Dataset, metric: str = "sliced_w2", spec: SamplerConvergenceSpec | None = None) -> xr.Dataset:
    """Slopes of a sampled metric against NFE with a bootstrap band over seeds, fitted over the
    NFE in ``analysis.fit_nfe`` (the asymptotic range, as for the KL: below it the 2-stage schemes
    are still unstable and a fit would measure the decay of that instability) whose seed mean
    exceeds ``floor_factor`` x the mean Monte Carlo floor (near the floor only noise would be
    fitted). Fewer than 3 such NFE: nan (the curve sits at a floor there)."""
    spec = spec or _spec_of(ds)
    da = _done(ds, metric).load()
    floor = _done(ds, f"{metric}_floor").mean("seed")
    keep = da.mean("seed") > spec.analysis.floor_factor * floor
    return analysis.slope_table(da.where(keep), "nfe", seed_dim="seed", x_range=spec.analysis.fit_nfe,
                                n_boot=spec.analysis.n_boot, level=spec.analysis.band, min_points=3)


def _fmt(v: float, f: str = "+.2f") -> str:
    return "nan" if not np.isfinite(v) else format(v, f)


def acceptance(ds: xr.Dataset, spec: SamplerConvergenceSpec | None = None, fits=None) -> dict | None:
    """The issue's acceptance numbers on (gaussian, exact score, d = analysis.acceptance_d):
    slope ratio srk / exponential_integrator (>= 1.8 wanted) and NFE ratio to reach
    ``acceptance_level`` (<= 0.5 wanted). A right-censored EI crossing gives the bound
    ratio <= srk / NFE_max (rigorous: the KL is decreasing) and the extrapolated ratio."""
    spec = spec or _spec_of(ds)
    a = spec.analysis
    need = {"target": "gaussian", "score": "exact", "d": a.acceptance_d}
    if any(v not in ds[k].values for k, v in need.items()) or not {"srk", "exponential_integrator"} <= set(ds.sampler.values):
        return None
    fits = kl_fits(ds, spec) if fits is None else fits
    f = fits.sel(**need)
    s_srk, s_ei = float(f.slope.sel(sampler="srk")), float(f.slope.sel(sampler="exponential_integrator"))
    cr = kl_crossings(ds, a.acceptance_level, spec, fits).sel(**need)
    c_srk, c_ei = cr.sel(sampler="srk").item(), cr.sel(sampler="exponential_integrator").item()
    est = c_srk.estimate() / c_ei.estimate()
    if c_ei.censored == "right" and c_srk.censored == "":
        bound = c_srk.value / c_ei.bound  # EI needs more than its last grid NFE
    elif c_ei.censored == "" and c_srk.censored in ("", "left"):
        bound = c_srk.bound / c_ei.value if c_srk.censored == "left" else est
    else:
        bound = math.nan
    return {"slope_srk": s_srk, "slope_ei": s_ei, "slope_ratio": s_srk / s_ei,
            "nfe_srk": c_srk, "nfe_ei": c_ei, "nfe_ratio_bound": bound, "nfe_ratio_estimate": est,
            "pass_slope": s_srk / s_ei >= 1.8,
            "pass_nfe": bool(np.isfinite(bound) and bound <= 0.5)}


def report(ds: xr.Dataset) -> str:
    """Slopes per sampler and d (KL exact; sampled metrics with a band over seeds), NFE to
    reach each KL level, floors of the perturbed score, and the acceptance line."""
    ds = ds.load()
    spec = _spec_of(ds)
    a = spec.analysis
    st = ds["status"]
    ds_d = [int(d) for d in ds.d.values]
    hdr = lambda first, w=12: f"  {first:<24}" + "".join(f"{'d=' + str(d):>{w}}" for d in ds_d)
    lines = [f"Sampler convergence study '{ds.attrs.get('name', '')}': reverse SDE from "
             f"{'q_T' if spec.start == 'exact' else 'N(0, I)'} at T={spec.T:g} to t_min={spec.t_min:g}, "
             f"'{spec.schedule}' grid, NFE {spec.nfe[0]}..{spec.nfe[-1]}; cells done {int((st == 1).sum())}/{st.size}"
             f" (failed {int((st == 2).sum())})",
             "Error: exact KL where exact (gaussian: Gaussian propagation; product_mixture: d x 1-D quadrature);"
             f" otherwise sliced W2 / MMD of {spec.sampling.n_samples} samples over {len(spec.seed)} seeds."]
    fits = kl_fits(ds, spec)
    kl = _done(ds, "kl")
    for target in [t for t in ds.target.values if t in EXACT_KL_TARGETS]:
        if "exact" not in ds.score.values or not _has(kl.sel(target=target, score="exact")):
            continue
        f = fits.sel(target=target, score="exact")
        lines += ["", f"[{target}, exact score] slope of log KL vs log NFE (least squares over NFE "
                      f"{a.fit_nfe[0]}..{a.fit_nfe[1]}, the asymptotic range; exact values, no band)",
                  hdr("sampler")]
        for s in ds.sampler.values:
            lines.append(f"  {s:<24}" + "".join(f"{_fmt(float(f.slope.sel(sampler=s, d=d))):>12}" for d in ds_d))
        for level in a.kl_levels:
            cr = kl_crossings(ds, level, spec, fits).sel(target=target, score="exact")
            lines += [f"  NFE to reach KL = {level:g} (log-log interpolated; '~x*' power-law extrapolation"
                      f" past NFE {spec.nfe[-1]}, '>x' not reached, '<=x' reached at the first point)", hdr("sampler")]
            for s in ds.sampler.values:
                lines.append(f"  {s:<24}" + "".join(f"{cr.sel(sampler=s, d=d).item().format():>12}" for d in ds_d))
    if "perturbed" in ds.score.values:
        for target in [t for t in ds.target.values if t in EXACT_KL_TARGETS]:
            kp = kl.sel(target=target, score="perturbed")
            if not _has(kp):
                continue
            n1, n0 = spec.nfe[-1], spec.nfe[-2]
            lines += ["", f"[{target}, perturbed score s + {spec.eta:g} (1,...,1)] KL at NFE {n1} (the floor) "
                          f"[KL(NFE {n0}) / KL(NFE {n1}): 1.00 = levelled off]", hdr("sampler", 17)]
            for s in ds.sampler.values:
                row = []
                for d in ds_d:
                    v, w = float(kp.sel(sampler=s, d=d, nfe=n1)), float(kp.sel(sampler=s, d=d, nfe=n0))
                    row.append(f"{v:.2e} [{w / v:.2f}]" if np.isfinite(v) and v > 0 else "nan")
                lines.append(f"  {s:<24}" + "".join(f"{c:>17}" for c in row))
    sw = _done(ds, "sliced_w2")
    if _has(sw):
        sfits = sampled_fits(ds, "sliced_w2", spec)
        floor = _done(ds, "sliced_w2_floor").mean("seed")
        last = max(n for n in spec.nfe if spec.sampling.max_nfe is None or n <= spec.sampling.max_nfe)
        lines += ["", f"Sampled error: sliced W2 slope vs NFE [{a.band:.0%} bootstrap band over {len(spec.seed)} seeds]"
                      f", fitted over NFE {a.fit_nfe[0]}..{min(a.fit_nfe[1], last)} where the seed mean exceeds"
                      f" {a.floor_factor:g} x the floor ('floor': fewer than 3 such NFE); then sliced W2 at NFE {last}"
                      f" / the Monte Carlo floor (two independent {spec.sampling.n_samples}-point target draws)"]
        for target in ds.target.values:
            for score in ds.score.values:
                cur = sw.sel(target=target, score=score)
                if not _has(cur):
                    continue
                f = sfits.sel(target=target, score=score)
                lines += [f" [{target}, {score} score]", hdr("sampler", 22)]
                for s in ds.sampler.values:
                    row = []
                    for d in ds_d:
                        sl = f.sel(sampler=s, d=d)
                        end = float(cur.sel(sampler=s, d=d, nfe=last).mean("seed"))
                        fl = float(floor.sel(target=target, score=score, d=d))
                        band = f"{_fmt(float(sl.slope))}[{_fmt(float(sl.lo), '+.1f')},{_fmt(float(sl.hi), '+.1f')}]"
                        row.append(f"{band} {end / fl:.1f}x" if np.isfinite(sl.slope) else f"floor {end / fl:.1f}x")
                    lines.append(f"  {s:<24}" + "".join(f"{c:>22}" for c in row))
    if "trained" in ds.score.values and _has(_done(ds, "score_l2").sel(score="trained")):
        l2 = _done(ds, "score_l2").sel(score="trained").mean("seed")
        lines += ["", f"trained score (n_train={spec.n_train}, {spec.train.steps} steps): E||s_hat - s||^2 at t = "
                      + ", ".join(f"{t:g}" for t in ds.t.values)]
        for target in ds.target.values:
            lines.append(f"  {target:<17}" + "  ".join(
                f"d={d}: " + "/".join(f"{float(l2.sel(target=target, d=d, t=t)):.3g}" for t in ds.t.values) for d in ds_d))
    acc = acceptance(ds, spec, fits)
    if acc is not None:
        c_ei = acc["nfe_ei"]
        ei_txt = c_ei.format()
        if c_ei.censored == "right":
            ei_txt = f">{c_ei.bound:.0f} (extrapolated {c_ei.extrapolated:.0f})"
        lines += ["", f"ACCEPTANCE (gaussian, exact score, d={a.acceptance_d}): slope ratio srk/EI = "
                      f"{acc['slope_srk']:.2f}/{acc['slope_ei']:.2f} = {acc['slope_ratio']:.2f} "
                      f"(>= 1.8: {'PASS' if acc['pass_slope'] else 'FAIL'})",
                  f"ACCEPTANCE (gaussian, exact score, d={a.acceptance_d}): NFE to KL={a.acceptance_level:g}: srk "
                  f"{acc['nfe_srk'].format()} / EI {ei_txt}; NFE ratio srk/EI <= {acc['nfe_ratio_bound']:.2f}"
                  f" (estimate {acc['nfe_ratio_estimate']:.2f}) (<= 0.5: {'PASS' if acc['pass_nfe'] else 'FAIL'})"]
    return "\n".join(lines)


def plot(ds: xr.Dataset, out: str) -> str:
    """Error against NFE (log-log), one panel per d, one line per sampler: one row per (target,
    score) with data (KL where exact; else sliced W2, seed mean with a min-max band and the
    floor dashed); last row: NFE to reach the acceptance KL level against d per sampler, one
    panel per exact target (hollow markers: power-law extrapolated)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = ds.load()
    spec = _spec_of(ds)
    kl, sw = _done(ds, "kl"), _done(ds, "sliced_w2")
    rows = []
    for target in ds.target.values:
        for score in ds.score.values:
            if _has(kl.sel(target=target, score=score)):
                rows.append((target, score, "kl"))
            elif _has(sw.sel(target=target, score=score)):
                rows.append((target, score, "sliced_w2"))
    exact_targets = [t for t in ds.target.values if "exact" in ds.score.values and _has(kl.sel(target=t, score="exact"))]
    nd = ds.sizes["d"]
    ncol = max(nd, len(exact_targets), 1)
    nrow = len(rows) + (1 if exact_targets else 0)
    fig, axes = plt.subplots(max(nrow, 1), ncol, figsize=(3.8 * ncol, 3.0 * max(nrow, 1)), squeeze=False)
    nfe = ds.nfe.values
    colors = {s: f"C{i}" for i, s in enumerate(ds.sampler.values)}
    clip = nfe >= spec.analysis.fit_nfe[0] / 2  # the y range shows these NFE (small-NFE blow-ups go off the top)
    for r, (target, score, var) in enumerate(rows):
        for j, d in enumerate(ds.d.values):
            ax = axes[r, j]
            shown = []
            for s in ds.sampler.values:
                if var == "kl":
                    y = kl.sel(target=target, score=score, d=d, sampler=s).values
                    y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
                    ax.plot(nfe, y, marker="o", ms=3, color=colors[s], label=s)
                    shown.append(y[clip])
                else:
                    cur = sw.sel(target=target, score=score, d=d, sampler=s)
                    cur = cur.where(np.isfinite(cur))
                    ax.plot(nfe, cur.mean("seed"), marker="o", ms=3, color=colors[s], label=s)
                    ax.fill_between(nfe, cur.min("seed"), cur.max("seed"), color=colors[s], alpha=0.2)
                    shown.append(cur.max("seed").values[clip])
            vals = np.concatenate(shown) if shown else np.array([np.nan])
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if var == "sliced_w2":
                fl = float(_done(ds, "sliced_w2_floor").sel(target=target, score=score, d=d).mean())
                ax.axhline(fl, color="k", ls="--", lw=0.8, label="MC floor")
            lo, hi = spec.analysis.fit_nfe
            if var == "kl":
                ax.axvspan(lo, hi, color="0.94", zorder=0)
            ax.set_xscale("log", base=2), ax.set_yscale("log")
            if vals.size:
                ax.set_ylim(0.3 * vals.min(), 10 * vals.max())
            ax.set_title(f"{target}, {score}, d={int(d)}", fontsize=9)
            ax.set_xlabel("NFE"), ax.set_ylabel("KL (exact)" if var == "kl" else "sliced W2")
            ax.grid(alpha=0.3, which="both")
        for j in range(nd, ncol):
            axes[r, j].axis("off")
    if exact_targets:
        level = spec.analysis.acceptance_level
        fits = kl_fits(ds, spec)
        cr = kl_crossings(ds, level, spec, fits)
        for j, target in enumerate(exact_targets):
            ax = axes[nrow - 1, j]
            for s in ds.sampler.values:
                c = [cr.sel(target=target, score="exact", sampler=s, d=d).item() for d in ds.d.values]
                dv = ds.d.values.astype(float)
                val = np.array([x.value if x.censored == "" else np.nan for x in c])
                ext = np.array([x.extrapolated for x in c])
                ax.plot(dv, val, marker="o", color=colors[s], label=s)
                ax.plot(dv, np.where(np.isfinite(ext), ext, np.nan), marker="o", mfc="none", ls=":", color=colors[s])
            ax.set_xscale("log", base=2), ax.set_yscale("log")
            ax.set_title(f"{target}, exact: NFE to reach KL={level:g}", fontsize=9)
            ax.set_xlabel("d"), ax.set_ylabel("NFE"), ax.grid(alpha=0.3, which="both")
        for j in range(len(exact_targets), ncol):
            axes[nrow - 1, j].axis("off")
    if rows:
        axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"{ds.attrs.get('name', '')}: error vs NFE (shaded: fit range; bands: min-max over seeds; "
                 "dashed: Monte Carlo floor)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def nfe_table(ds: xr.Dataset, level: float | None = None, target: str = "gaussian",
              score: str = "exact") -> pd.DataFrame:
    """NFE to reach KL ``level`` (default ``analysis.acceptance_level``) as a table, rows sampler,
    columns d: the interpolated crossing, else the power-law extrapolation (a summary table for
    the UI; the report prints the marked version)."""
    ds = ds.load()
    spec = _spec_of(ds)
    level = spec.analysis.acceptance_level if level is None else level
    cr = kl_crossings(ds, level, spec).sel(target=target, score=score)
    df = pd.DataFrame({f"d={int(d)}": [cr.sel(sampler=s, d=d).item().estimate() for s in ds.sampler.values]
                       for d in ds.d.values}, index=pd.Index(list(ds.sampler.values), name="sampler"))
    return df
