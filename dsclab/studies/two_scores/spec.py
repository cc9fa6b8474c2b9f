"""The spec of the two-scores study (Gupta et al. 2023, Figure 1's construction; science.md §2)
and its cells.

Grid: the true law (``truth``: ``p1`` or ``p2``) x d x n (the sample size m of the paper) x
seed; every cell runs the ERM over the class {s_1, s_2} on its n samples (:mod:`.numerics`).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from dsclab import axes
from dsclab.figure1 import EvalSpec
from dsclab.spec import Frozen, StudyBase, TimeRange

CELL_DIMS = ("truth", "d", "n", "seed")
LAWS = {"p1": "N(0, I)", "p2": "(1 - eta) N(0, I) + eta N(R e_1, I)"}
Laws = axes.Names(LAWS, "law")


class DSMSpec(TimeRange):
    """The empirical DSM loss the ERM minimises: K noisings of every sample, at times log-uniform
    on [t_min, T], shared by both candidate scores."""

    K: int = Field(16, gt=0, description="noisings (t, z) per sample")
    t_min: float = Field(0.01, gt=0, description="smallest time of the loss")
    T: float = Field(3.0, gt=0, description="largest time of the loss")


class TwoScoresSpec(StudyBase):
    """A two-scores study: the two laws, their parameters, the grid and the loss."""

    AXES: ClassVar[dict[str, str]] = {"truth": "truth", "d": "d", "n": "n", "seed": "seed",
                                      "t": "evaluation.t", "delta": "evaluation.delta"}

    kind: Literal["two_scores"] = Field("two_scores", description="study kind (selects the flow)")
    truth: Laws = Field(["p2", "p1"], description="the law the samples come from: p1 or p2")
    d: axes.PositiveInts = Field([2], description="dimensions")
    n: axes.PositiveInts = Field(..., description="sample sizes m")
    seed: axes.Seeds = Field(..., description="seeds (samples, noisings, evaluation points)")
    eta: float = Field(0.01, gt=0, lt=1, description="weight of p2's far component")
    R: float = Field(8.0, gt=0, description="distance of p2's far component from the origin")
    dsm: DSMSpec = DSMSpec()
    evaluation: EvalSpec = EvalSpec()

    @model_validator(mode="after")
    def _budget(self) -> "TwoScoresSpec":
        axes.grid_size(len(self.truth) * len(self.d) * len(self.n) * len(self.seed), self.max_cells)
        return self

    def cells(self) -> list["TwoScoresCell"]:
        return self.grid(TwoScoresCell, truth=self.truth, d=self.d, n=self.n, seed=self.seed)


class TwoScoresCell(Frozen):
    truth: str
    d: int
    n: int
    seed: int
    key: str
