"""The sample-complexity study's spec (science.md §2): frozen pydantic models, validated with the
one axis policy of :mod:`dsclab.axes`, and their expansion into cells.

A :class:`StudySpec` is the parameter of the sample-complexity flow (the Prefect UI renders it as
a form) and is loaded from YAML by :func:`dsclab.study.load_spec`. Invalid input raises
:class:`dsclab.spec.SpecError` with one line naming the field and the value, before anything is
created. Numeric axes (``d``, ``n``, ``nfe``, ``evaluation.t``, ``evaluation.delta``,
``evaluation.logsnr``) and ``seed`` are distinct and stored sorted ascending; ``estimator`` and
``sampler`` are distinct registered names in the given order.

A cell is one (d, n, seed, estimator); its ``key`` is a stable hash of its parameters, the
spec's numerics and the code version (:meth:`dsclab.spec.StudyBase.key`).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dsclab import axes
from dsclab.losses import SCORE_LOSSES
from dsclab.spec import DistributionSpec, Samplers, Schedule, StudyBase, TimeRange, TrainSpec, Frozen, check_nfe

CELL_DIMS = ("d", "n", "seed", "estimator")

Estimators = axes.Names(SCORE_LOSSES, "estimator")


class EvalSpec(TimeRange):
    """Evaluation of a trained cell: score errors on a t grid and samples from each sampler."""

    t: axes.PositiveTimes = Field([0.01, 0.03, 0.1, 0.3, 1.0], description="times of the score-error grid")
    delta: axes.UnitLevels = Field([0.01, 0.1], description="quantile levels of the quantile score error")
    n_score: int = Field(2000, gt=0, description="fresh points per t for score errors")
    n_samples: int = Field(1000, gt=0, description="generated samples per (sampler, nfe)")
    T: float = Field(5.0, gt=0, description="sampler start time (from N(0, I))")
    t_min: float = Field(1e-3, gt=0, description="early-stopping time of the samplers")
    schedule: Schedule = Field("exp", description="time grid of the samplers")
    logsnr: axes.FiniteFloats = Field([float(a) for a in range(-8, 9)],
                                      description="log-SNR grid of the stored data-averaged MSE curve (I-MMSE)")
    n_nll: int = Field(1000, ge=2, description="held-out points of the I-MMSE likelihood estimate")
    n_alpha: int = Field(64, ge=2, description="log-SNR draws of the I-MMSE integral (shared by the points)")

    @field_validator("n_samples")
    @classmethod
    def _n_samples(cls, v: int) -> int:
        if v > 2000:
            raise ValueError(f"{v} is above 2000, the most exact W2 (optimal transport) takes")
        return v


class Cell(Frozen):
    d: int
    n: int
    seed: int
    estimator: str
    key: str


class StudySpec(StudyBase):
    """A sample-complexity study: the grid d x n x seed x estimator, evaluated per sampler x nfe."""

    AXES: ClassVar[dict[str, str]] = {
        "d": "d", "n": "n", "seed": "seed", "estimator": "estimator", "sampler": "sampler", "nfe": "nfe",
        "t": "evaluation.t", "delta": "evaluation.delta", "logsnr": "evaluation.logsnr"}

    kind: Literal["sample_complexity"] = Field("sample_complexity", description="study kind (selects the flow)")
    distribution: DistributionSpec = DistributionSpec(name="gaussian_mixture")
    d: axes.PositiveInts = Field(..., description="dimensions")
    n: axes.PositiveInts = Field(..., description="training sample sizes")
    seed: axes.Seeds = Field([0], description="seeds (data, initialisation and sampling)")
    estimator: Estimators = Field(["dsm"], description="score estimators")
    sampler: Samplers = Field(["euler_maruyama", "exponential_integrator"], description="samplers")
    nfe: axes.PositiveInts = Field([10, 30, 100], description="score evaluations per sample")
    train: TrainSpec = TrainSpec()
    evaluation: EvalSpec = EvalSpec()
    group_memory_mb: int = Field(2048, gt=0, description="memory bound of one batched training group (MiB)")

    @model_validator(mode="after")
    def _budget(self) -> "StudySpec":
        self.distribution.check_dims(self.d)
        check_nfe(self.sampler, self.nfe)
        axes.grid_size(len(self.d) * len(self.n) * len(self.seed) * len(self.estimator), self.max_cells)
        return self

    def cells(self) -> list[Cell]:
        """One cell per (d, n, seed, estimator); the key ignores the grid's other values."""
        return self.grid(Cell, d=self.d, n=self.n, seed=self.seed, estimator=self.estimator)
