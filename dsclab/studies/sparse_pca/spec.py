"""The sparse-PCA spec: the grid d x k x beta x n x seed, the estimators every cell evaluates, and
how each cell is trained and evaluated; its cells (``SparsePCASpec.cells``). Axes follow the one
policy of :mod:`dsclab.axes` (numeric axes distinct and sorted ascending, seeds distinct and
non-negative, estimators distinct registered names in the given order). The study itself is
described in :mod:`dsclab.studies.sparse_pca`."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from dsclab import axes
from dsclab.studies.sparse_pca import estimators as spe
from dsclab.spec import Sampler, Schedule, StudyBase, TimeRange, TrainSpec, Frozen, check_nfe

CELL_DIMS = ("d", "k", "beta", "n", "seed")
NETWORK, ORACLE = "network", "oracle"
ESTIMATOR_NAMES = spe.BASELINES.builtin_names + (NETWORK, ORACLE)
Estimators = axes.Names(ESTIMATOR_NAMES, "estimator")


def _default_train() -> TrainSpec:
    # Sized for 2 CPU cores (see studies/sparse_pca.yaml): the target score is linear, a small MLP fits it.
    return TrainSpec(steps=600, batch_size=128, lr=2e-3, width=64, depth=2)


_UNSET_IN_TRAINSPEC = {"steps", "batch_size", "lr", "width", "depth"}  # what _default_train sets


class SparsePCAEvalSpec(TimeRange):
    """How each cell is evaluated."""

    t: axes.PositiveTimes = Field([0.01, 0.1, 1.0], description="times of the score-error grid")
    n_score: int = Field(500, gt=0, description="fresh points per t for score errors")
    n_samples: int = Field(2000, ge=2, description="samples drawn with each estimator's score")
    sampler: Sampler = Field("exponential_integrator", description="sampler (dsclab.samplers)")
    nfe: int = Field(30, gt=0, description="score evaluations per sample")
    T: float = Field(5.0, gt=0, description="sampler start time (from N(0, I))")
    t_min: float = Field(1e-3, gt=0, description="early-stopping time of the sampler")
    schedule: Schedule = Field("exp", description="time grid of the sampler")
    exhaustive_max_supports: int = Field(spe.EXHAUSTIVE_MAX_SUPPORTS, gt=0,
                                         description="exhaustive search runs only where C(d, k) is at most this")


class SparsePCASpec(StudyBase):
    """A sparse-PCA study: the grid d x k x beta x n x seed; every cell evaluates every estimator."""

    AXES: ClassVar[dict[str, str]] = {"d": "d", "k": "k", "beta": "beta", "n": "n", "seed": "seed",
                                      "estimator": "estimator", "t": "evaluation.t"}

    kind: Literal["sparse_pca"] = Field("sparse_pca", description="study kind (selects the flow)")
    d: axes.PositiveInts = Field(..., description="dimensions")
    k: axes.PositiveInts = Field(..., description="sparsities (nonzero entries of u); each below every d")
    beta: axes.NonNegativeFloats = Field(..., description="spike strengths (0: the null, for detection)")
    n: axes.PositiveInts = Field(..., description="training sample sizes")
    seed: axes.Seeds = Field([0], description="seeds (spike, data, initialisation, sampling)")
    estimator: Estimators = Field(list(spe.BASELINES.builtin_names) + [NETWORK],
                                  description="estimators evaluated in every cell (also: oracle)")
    train: TrainSpec = Field(default_factory=_default_train)
    evaluation: SparsePCAEvalSpec = SparsePCAEvalSpec()

    @model_validator(mode="before")
    @classmethod
    def _train_over_kind_defaults(cls, data):
        """A ``train`` section given in part takes its other fields from this kind's default
        training (``_default_train``), never from ``TrainSpec``'s own defaults (width 128, depth 3,
        batch 256: another network than the one the section leaves unsaid)."""
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            given = data["train"]
            data = {**data, "train": {**_default_train().model_dump(include=_UNSET_IN_TRAINSPEC), **given}}
        return data

    @model_validator(mode="after")
    def _grid(self) -> "SparsePCASpec":
        if max(self.k) >= min(self.d):
            raise ValueError(f"k: {max(self.k)} must be below every d (smallest d is {min(self.d)})")
        check_nfe(self.evaluation.sampler, self.evaluation.nfe, "evaluation.nfe")
        axes.grid_size(len(self.d) * len(self.k) * len(self.beta) * len(self.n) * len(self.seed), self.max_cells)
        return self

    def cells(self) -> list["SparsePCACell"]:
        return self.grid(SparsePCACell, d=self.d, k=self.k, beta=self.beta, n=self.n, seed=self.seed)

    @property
    def trains(self) -> bool:
        return NETWORK in self.estimator


class SparsePCACell(Frozen):
    """One cell: its coordinates along ``CELL_DIMS`` and its key (``StudyBase.key``)."""

    d: int
    k: int
    beta: float
    n: int
    seed: int
    key: str
