"""The spec of the far-component study (Gupta et al. 2023, Figure 1's two laws learned by a
network; science.md §2, project issue 28 item 2) and its cells.

Grid: the true law (``truth``: ``p2``, the law with the far component, or ``p1``, the bulk alone:
the control at eta = 0) x d x n (the paper's m) x seed. Every cell trains one score network by DSM
on its n samples (:mod:`.numerics`); the two truths of one (d, n, seed) share their draws and
their training randomness, so they differ only by the far component.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from dsclab import axes
from dsclab.spec import Frozen, Precision, StudyBase, TimeRange
from dsclab.figure1 import EvalSpec

CELL_DIMS = ("truth", "d", "n", "seed")
LAWS = {"p2": "(1 - eta) N(0, I) + eta N(R e_1, I)", "p1": "N(0, I) (the control: eta = 0, the bulk alone)"}
Laws = axes.Names(LAWS, "law")


class FarTrainSpec(TimeRange):
    """DSM training of one ``dsclab.nets.ScoreMLP`` per cell (``dsclab.train.train_score``: Adam,
    cosine decay, fresh times and noise every step, minibatches drawn with replacement)."""

    steps: int = Field(400, gt=0, description="optimiser steps per cell")
    batch_size: int = Field(128, gt=0, description="samples per step")
    lr: float = Field(2e-3, gt=0)
    width: int = Field(64, gt=0, description="hidden width of the MLP")
    depth: int = Field(2, gt=0, description="hidden layers of the MLP")
    t_min: float = Field(0.01, gt=0, description="smallest training time")
    T: float = Field(3.0, gt=0, description="largest training time")
    precision: Precision = Field("float32", description="arithmetic of the training step (dsclab.precisions.PRECISIONS)")


class FarComponentSpec(StudyBase):
    """A far-component study: the two laws, their parameters, the grid, the training."""

    AXES: ClassVar[dict[str, str]] = {"truth": "truth", "d": "d", "n": "n", "seed": "seed",
                                      "t": "evaluation.t", "delta": "evaluation.delta"}

    kind: Literal["far_component"] = Field("far_component", description="study kind (selects the flow)")
    truth: Laws = Field(["p2", "p1"], description="the law the samples come from: p2, or p1 (the control)")
    d: axes.PositiveInts = Field([2], description="dimensions")
    n: axes.PositiveInts = Field(..., description="sample sizes m")
    seed: axes.Seeds = Field(..., description="seeds (samples, training, evaluation points)")
    eta: float = Field(0.01, gt=0, lt=1, description="weight of p2's far component")
    R: float = Field(40.0, gt=0, description="distance of p2's far component from the origin")
    train: FarTrainSpec = FarTrainSpec()
    evaluation: EvalSpec = EvalSpec()  # two_scores' (dsclab.figure1)

    @model_validator(mode="after")
    def _check(self) -> "FarComponentSpec":
        tr, ev = self.train, self.evaluation
        bad = [t for t in ev.t if not tr.t_min <= t < tr.T]
        if bad:
            raise ValueError(f"evaluation.t {bad} outside the training range [{tr.t_min}, {tr.T})")
        axes.grid_size(len(self.truth) * len(self.d) * len(self.n) * len(self.seed), self.max_cells)
        return self

    def cells(self) -> list["FarCell"]:
        return self.grid(FarCell, truth=self.truth, d=self.d, n=self.n, seed=self.seed)


class FarCell(Frozen):
    truth: str
    d: int
    n: int
    seed: int
    key: str
