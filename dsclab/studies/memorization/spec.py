"""The memorization study's spec (science.md §7): a data set (rows of an array, ``digits`` by
default), its d axis (the resolution of image rows), n, seeds, the training of two networks per
cell and the evaluation of what needs no exact score.

A cell is one (d, n, seed); its key hashes its coordinates, the settings (the data set and its
preprocessing among them) and the code version (:meth:`dsclab.spec.StudyBase.key`). Validation
builds the data set at each d, which reads the array's shape only, and refuses an n above the
largest one two disjoint training subsets allow (half the training part), naming it.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from dsclab import axes, distributions
from dsclab.spec import DistributionSpec, Sampler, Schedule, StudyBase, TimeRange, TrainSpec, Frozen, check_nfe

CELL_DIMS = ("d", "n", "seed")


class EvalSpec(TimeRange):
    """Evaluation of a cell's two networks: held-out DSM on a t grid, the I-MMSE likelihood of the
    test part, and samples (distances to the test part, memorization, the two networks' similarity)."""

    t: axes.PositiveTimes = Field([0.01, 0.03, 0.1, 0.3, 1.0], description="times of the held-out DSM loss")
    n_alpha: int = Field(64, ge=2, description="log-SNR draws of the I-MMSE integral (shared by the test points)")
    sampler: Sampler = Field("exponential_integrator", description="sampler of the generated samples")
    nfe: int = Field(100, gt=0, description="score evaluations per sample")
    n_samples: int = Field(256, ge=2, description="generated samples per network")
    keep: int = Field(8, ge=0, description="generated samples kept in the store per cell (with their nearest "
                                             "training rows)")
    T: float = Field(5.0, gt=0, description="sampler start time (from N(0, I))")
    t_min: float = Field(1e-3, gt=0, description="early-stopping time; the sample is the denoised E[X_0 | X_t_min]")
    schedule: Schedule = Field("exp", description="time grid of the sampler")

    @model_validator(mode="after")
    def _checks(self) -> "EvalSpec":
        check_nfe(self.sampler, self.nfe)
        if self.keep > self.n_samples:
            raise ValueError(f"keep {self.keep} is above n_samples {self.n_samples}")
        return self


class Cell(Frozen):
    d: int
    n: int
    seed: int
    key: str


def largest_n(dist) -> int:
    """The largest n of a cell: two disjoint subsets of the training part (the halves' size)."""
    return dist.n_train // 2


class StudySpec(StudyBase):
    """A memorization study: the grid d x n x seed on a data set, two networks per cell."""

    AXES: ClassVar[dict[str, str]] = {"d": "d", "n": "n", "seed": "seed", "t": "evaluation.t"}

    kind: Literal["memorization"] = Field("memorization", description="study kind (selects the flow)")
    distribution: DistributionSpec = Field(DistributionSpec(name="digits"),
                                           description="a data set family (dataset, digits) and its parameters")
    d: axes.PositiveInts = Field(..., description="dimensions (image rows: resolutions by average pooling)")
    n: axes.PositiveInts = Field(..., description="training sample sizes (each network's)")
    seed: axes.Seeds = Field([0, 1, 2], description="seeds (split, initialisation and sampling)")
    train: TrainSpec = TrainSpec()
    evaluation: EvalSpec = EvalSpec()
    group_memory_mb: int = Field(2048, gt=0, description="memory bound of one batched training group (MiB)")

    @model_validator(mode="after")
    def _budget(self) -> "StudySpec":
        self.distribution.check_dims(self.d)
        dist = distributions.make(self.distribution.name, self.d[0], **self.distribution.params)
        if not isinstance(dist, distributions.Dataset):
            raise ValueError(f"distribution {self.distribution.name} is a law, not a data set: this kind measures "
                             f"rows of an array (dataset, digits)")
        if min(self.n) < 2:
            raise ValueError(f"n {min(self.n)} is below 2, the fewest rows of a nearest-neighbour ratio")
        dist.check_n(max(self.n), largest_n(dist), " (two disjoint training subsets of size n)")
        axes.grid_size(len(self.d) * len(self.n) * len(self.seed), self.max_cells)
        return self

    def cells(self) -> list[Cell]:
        return self.grid(Cell, d=self.d, n=self.n, seed=self.seed)
