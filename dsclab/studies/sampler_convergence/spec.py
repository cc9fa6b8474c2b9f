"""The sampler-convergence study's spec: frozen pydantic models validated with the one axis policy
of :mod:`dsclab.axes`, its cells, and which values each cell computes (its routes).

Grid: target x d x sampler x NFE x score kind (x seed where Monte Carlo enters). Every sampler
integrates the reverse SDE on ``noise.time_grid(T, t_min, NFE / NFE_PER_STEP, schedule)`` from q_T
(``start: exact``, so that the error is discretisation and score error only) or N(0, I).

Axes: ``d``, ``nfe``, ``sampling.score_t`` and ``analysis.kl_levels`` are numeric axes and
``seed`` a seed axis (distinct, stored sorted ascending); ``target``, ``sampler`` and ``score``
are name axes (distinct registered names, in the given order: the order of the report's rows).

Cells and routes. Cell dims (target, d, score); one task per cell computes every sampler x NFE
(and every seed where sampled). Which values a cell computes is decided from declared facts
before anything runs, never from an exception:

* the KL is exact (:func:`kl_exact`) for a target of :data:`EXACT_KL_TARGETS`, a score kind of
  :data:`EXACT_KL_SCORES` and a sampler of :data:`EXACT_KL_SAMPLERS`; every other KL value is
  NaN, by declaration (it is not computed), and an exception raised while computing an exact
  value propagates (``exact``);
* sample metrics are computed where the cell's KL is not exact, or everywhere with
  ``sample_all`` (:func:`sampled_route`).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dsclab import axes
from dsclab.samplers import SAMPLERS
from dsclab.spec import Samplers, Schedule, StudyBase, TimeRange, TrainSpec, Frozen, check_nfe

CELL_DIMS = ("target", "d", "score")
TARGETS = ("gaussian", "product_mixture", "mixture")
SCORE_KINDS = ("exact", "perturbed", "trained")
Targets = axes.Names(TARGETS, "target")
ScoreKinds = axes.Names(SCORE_KINDS, "score kind")

EXACT_KL_TARGETS = ("gaussian", "product_mixture")
"""Targets with an exact KL route: Gaussian propagation (gaussian) and d x a 1-D quadrature KL
(product_mixture; ``dsclab.studies.sampler_convergence.exact``)."""

EXACT_KL_SCORES = ("exact", "perturbed")
"""Score kinds that are affine for the Gaussian target and coordinatewise for the product target
(s and s + eta (1, ..., 1)); a trained network is neither."""

EXACT_KL_SAMPLERS = ("euler_maruyama", "exponential_integrator", "srk", "sra1", "shark", "heun")
"""Samplers of ``dsclab.samplers`` whose every step is a fixed linear combination of the state,
score evaluations and the increments (dW, H), with the same coefficients in every coordinate:
with an affine score the step is affine (``gaussian_exact.step_map``), with a coordinatewise score
it maps coordinates independently (``exact_kl``). A sampler added to ``dsclab.samplers`` has no
exact KL here (NaN) until it is listed."""


class GaussianTarget(Frozen):
    """N(mean 1, diag(lam)), lam log-spaced from scale to scale / cond (``distributions.gaussian``)."""

    cond: float = Field(10.0, ge=1.0, description="condition number of the covariance")
    mean: float = Field(0.0, description="every coordinate of the mean")
    scale: float = Field(1.0, gt=0, description="largest eigenvalue")


class ProductMixtureTarget(Frozen):
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


class MixtureTarget(Frozen):
    """Isotropic mixture of ``distributions.gaussian_mixture`` (k >= 3 makes it non-product)."""

    k: int = Field(4, ge=1, description="components (modes at +-separation/2 on the first axes)")
    separation: float = Field(4.0, gt=0, description="distance between paired modes")
    std: float = Field(1.0, gt=0, description="component standard deviation")


class SamplingSpec(Frozen):
    """Monte Carlo part: sample metrics and score errors."""

    n_samples: int = Field(500, ge=10, le=5000, description="samples per (sampler, NFE) and reference draws")
    n_proj: int = Field(128, gt=0, description="projections of the sliced W2")
    max_nfe: int | None = Field(None, gt=0, description="sampled metrics only up to this NFE (None: all); "
                                "beyond the NFE where every sampler sits at its Monte Carlo or score floor "
                                "more NFE re-measure the floor, and cost most of the sampled work")
    score_t: axes.PositiveTimes = Field([0.01, 0.1, 1.0], description="times of the stored score error")


class QuadratureSpec(Frozen):
    """Grid and nodes of the 1-D density propagation (``dsclab.studies.sampler_convergence.exact_kl.propagate_density_1d``)."""

    pts_per_width: float = Field(12.0, gt=0, description="grid points per sd of the narrowest component (SDE samplers)")
    pts_per_width_ode: float = Field(30.0, gt=0, description="the same for noise-free samplers (heun)")
    n_sd: float = Field(8.0, gt=0, description="grid half-width in standard deviations (SDE samplers)")
    n_sd_ode: float = Field(15.0, gt=0, description="the same for noise-free samplers (at 8 heun's KL is off "
                            "by up to 400x at NFE >= 32; at 12 and 15 it agrees to 1e-4)")
    n_area: int = Field(3, ge=1, description="Gauss-Hermite nodes in the Levy area H")
    n_max: int = Field(150, ge=8, description="most Gauss-Hermite nodes in dW")


class AnalysisSpec(Frozen):
    """What the report fits and reads off (stored with the spec; changes no stored number)."""

    fit_nfe: list[int] = Field([32, 512], description="NFE range [lo, hi] of the KL slope fits (asymptotic regime)")
    kl_levels: list[float] = Field([1e-4, 1e-3], description="KL levels of the NFE-to-reach table")
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
        for x in v:
            if not x > 0:
                raise ValueError(f"{x!r} is not a positive KL level")
        return axes.finite(v)


class SamplerConvergenceSpec(StudyBase, TimeRange):
    """A sampler-convergence study: target x d x score cells, each over sampler x NFE (x seed)."""

    AXES: ClassVar[dict[str, str]] = {"target": "target", "d": "d", "score": "score", "sampler": "sampler",
                                      "nfe": "nfe", "seed": "seed", "t": "sampling.score_t"}
    READING: ClassVar[tuple[str, ...]] = ("analysis",)

    kind: Literal["sampler_convergence"] = Field("sampler_convergence", description="study kind (selects the flow)")
    target: Targets = Field(list(TARGETS), description="targets: gaussian, product_mixture, mixture")
    d: axes.PositiveInts = Field(..., description="dimensions")
    # default: the built-in samplers, so that an installed plugin changes neither the default spec nor its hash
    sampler: Samplers = Field(list(SAMPLERS.builtin_names), description="samplers (dsclab.samplers.SAMPLERS)")
    nfe: axes.PositiveInts = Field([4, 8, 16, 32, 64, 128, 256, 512], description="score evaluations per sample")
    score: ScoreKinds = Field(list(SCORE_KINDS), description="score kinds: exact, perturbed, trained")
    seed: axes.Seeds = Field([0, 1, 2], description="seeds where Monte Carlo enters (samples, training)")
    eta: float = Field(0.01, gt=0, description="size of the perturbation s + eta (1, ..., 1)")
    n_train: int = Field(2000, gt=0, description="training sample size of the trained score")
    T: float = Field(5.0, gt=0, description="start time of the samplers")
    t_min: float = Field(1e-3, gt=0, description="early-stopping time")
    schedule: Schedule = Field("exp", description="time grid (dsclab.noise.SCHEDULES)")
    start: Literal["exact", "prior"] = Field("exact", description="start from q_T (exact) or N(0, I) (prior)")
    sample_all: bool = Field(False, description="also estimate sliced_w2/mmd where the KL is exact")
    gaussian: GaussianTarget = GaussianTarget()
    product_mixture: ProductMixtureTarget = ProductMixtureTarget()
    mixture: MixtureTarget = MixtureTarget()
    train: TrainSpec = TrainSpec(steps=400, width=64, depth=2, device="cpu")
    sampling: SamplingSpec = SamplingSpec()
    quadrature: QuadratureSpec = QuadratureSpec()
    analysis: AnalysisSpec = AnalysisSpec()

    @model_validator(mode="after")
    def _check(self) -> "SamplerConvergenceSpec":
        check_nfe(self.sampler, self.nfe)  # every NFE a whole number of steps: samplers compared per NFE
        axes.grid_size(len(self.target) * len(self.d) * len(self.score), self.max_cells)
        return self

    def target_params(self, name: str) -> dict:
        return {"name": name, **getattr(self, name).model_dump(mode="json")}

    def cells(self) -> list["SrkCell"]:
        return self.grid(SrkCell, target=self.target, d=self.d, score=self.score)


class SrkCell(Frozen):
    target: str
    d: int
    score: str
    key: str


def exact_route(cell: SrkCell) -> bool:
    """The KL is exact: a target with an exact route and an affine, coordinatewise score."""
    return cell.target in EXACT_KL_TARGETS and cell.score in EXACT_KL_SCORES


def kl_exact(target: str, score: str, sampler: str) -> bool:
    """The KL of ``sampler``'s output is computed exactly for this target and score kind (else it
    is stored NaN, without being computed)."""
    return target in EXACT_KL_TARGETS and score in EXACT_KL_SCORES and sampler in EXACT_KL_SAMPLERS


def sampled_route(spec: SamplerConvergenceSpec, cell: SrkCell) -> bool:
    """Sample metrics are computed where the KL is not exact (or everywhere with sample_all)."""
    return spec.sample_all or not exact_route(cell)


def needs_training(spec: SamplerConvergenceSpec, cell: SrkCell) -> bool:
    """The cell's values use trained networks (a trained score on the sampled route)."""
    return cell.score == "trained" and sampled_route(spec, cell)


def shared_1d(cell: SrkCell) -> bool:
    """Cells whose KL comes from the shared 1-D product curve (one task per score kind)."""
    return cell.target == "product_mixture" and exact_route(cell)
