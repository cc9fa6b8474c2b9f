"""The spec of the I-MMSE study and its cells (validated with ``dsclab.axes``).

Data laws (the ``data`` axis, one ``DistributionSpec`` each, any d of the ``d`` axis):
``gaussian`` (anisotropic: eigenvalues log-spaced, ``cond``), ``gaussian_mixture`` and
``rademacher`` (independent +-1 coordinates: the discrete case). A law needs a mismatched
counterpart (``denoisers.MISMATCHED``), so these are the registered names of the axis.

Cells. One cell per (data, d, n, seed): it trains one network and evaluates all denoisers
(``numerics``).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from dsclab import axes, distributions
from dsclab.spec import DistributionSpec, StudyBase, TrainSpec, Frozen
from dsclab.studies.immse.denoisers import MISMATCHED

CELL_DIMS = ("data", "d", "n", "seed")


class ImmseEvalSpec(Frozen):
    """How the likelihoods are estimated (``dsclab.immse``)."""

    n_points: int = Field(1000, ge=2, description="held-out points from the exact law")
    n_alpha: int = Field(128, ge=2, description="log-SNR draws, each shared by all points and denoisers")
    clip: float = Field(4.0, gt=0, description="truncation of the logistic proposal (loc +- clip scale)")
    logsnr: axes.FiniteFloats = Field([float(a) for a in range(-8, 9)], description="log-SNR grid of the MSE curves")


def _default_data() -> list[DistributionSpec]:
    return [DistributionSpec(name="gaussian", params={"cond": 10.0}),
            DistributionSpec(name="gaussian_mixture", params={"k": 2, "separation": 4.0, "std": 1.0}),
            DistributionSpec(name="rademacher", params={"p": 0.3})]


class ImmseSpec(StudyBase):
    """An I-MMSE study: the grid data x d x n x seed; every cell evaluates all denoisers."""

    AXES: ClassVar[dict[str, str]] = {"data": "data", "d": "d", "n": "n", "seed": "seed",
                                      "logsnr": "evaluation.logsnr"}

    kind: Literal["immse"] = Field("immse", description="study kind (selects the flow)")
    data: list[DistributionSpec] = Field(default_factory=_default_data, description="data laws (distinct names)")
    d: axes.PositiveInts = Field(..., description="dimensions")
    n: axes.PositiveInts = Field(..., description="training sample sizes of the trained denoiser")
    seed: axes.Seeds = Field([0], description="seeds (training data, held-out data, initialisation, draws)")
    mismatch: float = Field(4.0, gt=0, description="odds factor of the mismatched mixture weights / +-1 law")
    train_logsnr_margin: float | None = Field(
        0.5, ge=0, description="train each network on log-SNR <= (upper end of its law's integration range) + margin, "
                               "i.e. t >= t(that log-SNR), instead of t >= train.t_min; null: train.t_min")
    train: TrainSpec = TrainSpec()
    evaluation: ImmseEvalSpec = ImmseEvalSpec()

    @field_validator("data")
    @classmethod
    def _data(cls, v: list[DistributionSpec]) -> list[DistributionSpec]:
        axes.names([x.name for x in v], MISMATCHED, "data law")
        return v

    @model_validator(mode="after")
    def _budget(self) -> "ImmseSpec":
        axes.grid_size(len(self.data) * len(self.d) * len(self.n) * len(self.seed), self.max_cells)
        return self

    def cells(self) -> list["ImmseCell"]:
        return self.grid(ImmseCell, data=[x.name for x in self.data], d=self.d, n=self.n, seed=self.seed)

    def law(self, name: str, d: int):
        spec = next(x for x in self.data if x.name == name)
        return distributions.make(spec.name, d, **spec.params)

    def data_params(self, name: str) -> dict:
        return next(x for x in self.data if x.name == name).model_dump(mode="json")


class ImmseCell(Frozen):
    data: str
    d: int
    n: int
    seed: int
    key: str


def cell_index(cell: ImmseCell) -> dict:
    return {"data": cell.data, "d": cell.d, "n": cell.n, "seed": cell.seed}
