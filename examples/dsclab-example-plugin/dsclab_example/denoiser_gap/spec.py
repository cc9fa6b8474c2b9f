"""The spec of the ``denoiser_gap`` study and its cells (axes validated with ``dsclab.axes``).

Grid: data law x d x seed (the cells); every cell evaluates the two denoisers at every OU time of
``t`` on ``n_points`` fresh draws. A data law is any registered family
(``dsclab.distributions.DISTRIBUTIONS``) whose distributions give their first two moments,
``mean()`` and ``cov()``: the best linear denoiser is built from them.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dsclab import axes, distributions
from dsclab.axes import PositiveInts, PositiveTimes, Seeds
from dsclab.spec import DistributionSpec, StudyBase

CELL_DIMS = ("data", "d", "seed")


def _default_data() -> list[DistributionSpec]:
    return [DistributionSpec(name="gaussian", params={"cond": 4.0}),
            DistributionSpec(name="uniform", params={"a": 1.0})]


class DenoiserGapSpec(StudyBase):
    """A denoiser-gap study: MSE of the exact (Tweedie) and best linear denoisers against t."""

    AXES: ClassVar[dict[str, str]] = {"data": "data", "d": "d", "seed": "seed", "t": "t"}

    kind: Literal["denoiser_gap"] = Field("denoiser_gap", description="study kind (selects the flow)")
    d: PositiveInts = Field(..., description="dimensions")
    data: list[DistributionSpec] = Field(default_factory=_default_data, description="data laws (distinct names)")
    seed: Seeds = Field([0], description="seeds (the Monte Carlo draws of each cell)")
    t: PositiveTimes = Field([0.02, 0.05, 0.2, 0.5, 2.0], description="OU times of the MSE curves")
    n_points: int = Field(4000, ge=2, description="fresh draws (X_0, X_t) per cell and time")

    @field_validator("data")
    @classmethod
    def _data(cls, v: list[DistributionSpec]) -> list[DistributionSpec]:
        axes.distinct([x.name for x in v])
        return v

    @model_validator(mode="after")
    def _grid(self) -> "DenoiserGapSpec":
        axes.grid_size(len(self.data) * len(self.d) * len(self.seed), self.max_cells)
        return self

    @model_validator(mode="after")
    def _laws(self) -> "DenoiserGapSpec":
        """Each law builds at every d and gives its mean() and cov(). Checked once every field is
        valid: building a law imports torch, which a refusal of a field does not need."""
        for x in self.data:
            x.check_dims(self.d)
            for d in self.d:
                law = distributions.make(x.name, d, **x.params)
                if not (callable(getattr(law, "mean", None)) and callable(getattr(law, "cov", None))):
                    raise ValueError(f"law {x.name!r} gives no mean() and cov() (the best linear denoiser "
                                     "is built from them)")
        return self

    def law(self, name: str, d: int):
        """The distribution of data law ``name`` in dimension d."""
        x = next(x for x in self.data if x.name == name)
        return distributions.make(x.name, d, **x.params)

    def data_params(self, name: str) -> dict:
        return next(x for x in self.data if x.name == name).model_dump(mode="json")

    def cells(self) -> list["GapCell"]:
        return self.grid(GapCell, data=[x.name for x in self.data], d=self.d, seed=self.seed)


class GapCell(BaseModel):
    """One cell: a data law, a dimension and a seed; ``key`` hashes them with the spec's numerics."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str
    d: int
    seed: int
    key: str
