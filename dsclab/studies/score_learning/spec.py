"""The score-learning spec and its cells.

A cell is (d, n, seed, estimator, data_mode, model) (:data:`CELL_DIMS`). It trains one network of
class ``model`` (:data:`dsclab.studies.score_learning.bootstrap.HYPOTHESES`) with ``estimator`` (``dsm`` | ``bsm`` |
``bsm_oracle`` | ``bsm_rb`` | ``bsm_rb_oracle`` | ``bsm_rb_frozen`` | ``bsm_band``:
:data:`dsclab.studies.score_learning.bootstrap.BOOTSTRAP_ESTIMATORS`) on a fixed training set of n clean points with K noised points each
(``data_mode``: ``independent`` | ``trajectory``; :mod:`dsclab.studies.score_learning.bootstrap`), then evaluates it
(:mod:`.cell`). Axes follow :mod:`dsclab.axes`: d, n, seeds, evaluation times and quantile levels
are stored sorted ascending; estimators, data modes and models keep the order given.
"""
from __future__ import annotations

from typing import ClassVar, Literal, TYPE_CHECKING

from pydantic import Field, model_validator

from dsclab import axes, distributions
from dsclab.axes import PositiveInts, PositiveTimes, Seeds, UnitLevels
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.lazy import deferred
from dsclab.spec import DistributionSpec, Sampler, Schedule, StudyBase, TimeRange, Frozen, check_nfe
from dsclab.studies.score_learning import bootstrap as bs

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


CELL_DIMS = ("d", "n", "seed", "estimator", "data_mode", "model")
Estimators = axes.Names(bs.BOOTSTRAP_ESTIMATORS, "estimator")
DataModes = axes.Names(bs.DATA_MODES, "data mode")
Models = axes.Names(bs.HYPOTHESES, "model")


class SLTrainSpec(TimeRange):
    """One network h(t, x) for all noise levels, trained jointly on a fixed set of n K pairs."""

    steps: int = Field(1000, gt=0, description="optimiser steps per cell")
    batch_size: int = Field(32, gt=0, description="rows (clean points) per step; each brings its K pairs")
    lr: float = Field(2e-3, gt=0)
    width: int = Field(64, gt=0, description="hidden width of the network (both classes)")
    depth: int = Field(2, gt=0, description="hidden layers of the network (both classes)")
    K: int = Field(16, ge=2, description="noised points (times) per clean point")
    t_min: float = Field(0.01, gt=0, description="smallest training time")
    T: float = Field(3.0, gt=0, description="largest training time")

    @property
    def ratio(self) -> float:
        return bs.grid_ratio(self.K, self.t_min, self.T)


class BsmSpec(Frozen):
    """Knobs of the bootstrap estimators ``bsm``, ``bsm_rb``, their oracles, ``bsm_rb_frozen`` and
    ``bsm_band`` (science.md §4; ``lag`` concerns the network-as-its-own-teacher ones only)."""

    t_c: float = Field(0.3, gt=0, description="DSM at t <= t_c, bootstrapped targets above")
    lag: int = Field(0, ge=0, description="0: stop-gradient of the current network; L > 0: a copy refreshed every L steps")
    mix: float = Field(0.0, ge=0, le=1, description="weight of DSM in the loss above t_c")


class SLEvalSpec(Frozen):
    t: PositiveTimes = Field([0.02, 0.1, 0.3, 0.6, 1.0, 2.0], description="times of the score-error and target-variance grid")
    delta: UnitLevels = Field([0.01, 0.1], description="quantile levels of the quantile score error")
    n_score: int = Field(2000, gt=0, description="fresh points per t for score errors")
    n_var: int = Field(128, ge=2, description="points x_t per t for the target variance")
    n_draws: int = Field(64, ge=2, description="posterior draws per point for the target variance")
    sampler: Sampler = Field("exponential_integrator", description="sampler of the sliced-W2 evaluation")
    nfe: int = Field(100, gt=0, description="score evaluations per sample")
    schedule: Schedule = Field("exp", description="time grid of the sampler")
    n_samples: int = Field(1000, ge=2, description="generated samples")


class SLCell(Frozen):
    d: int
    n: int
    seed: int
    estimator: str
    data_mode: str
    model: str
    key: str


def _default_distribution() -> DistributionSpec:
    return DistributionSpec(name="gaussian_mixture", params={"k": 2, "separation": 4.0, "std": 1.0})


class ScoreLearningSpec(StudyBase):
    """A score-learning study: the grid d x n x seed x estimator x data_mode x model."""

    AXES: ClassVar[dict[str, str]] = {
        "d": "d", "n": "n", "seed": "seed", "estimator": "estimator", "data_mode": "data_mode", "model": "model",
        "t": "evaluation.t", "delta": "evaluation.delta"}

    kind: Literal["score_learning"] = Field("score_learning", description="study kind (selects the flow)")
    distribution: DistributionSpec = Field(default_factory=_default_distribution,
                                           description="data law (a Gaussian mixture: exact scores and posteriors)")
    d: PositiveInts = Field(..., description="dimensions")
    n: PositiveInts = Field(..., description="training sample sizes (clean points; pairs = n K)")
    seed: Seeds = Field([0], description="seeds")
    estimator: Estimators = Field(["dsm"], description="dsm | bsm | bsm_oracle | bsm_rb | bsm_rb_oracle | bsm_rb_frozen | bsm_band")
    data_mode: DataModes = Field(["independent"], description="independent | trajectory")
    model: Models = Field(["mlp"], description="mlp | structured")
    train: SLTrainSpec = SLTrainSpec()
    bsm: BsmSpec = BsmSpec()
    evaluation: SLEvalSpec = SLEvalSpec()

    @model_validator(mode="after")
    def _check(self) -> "ScoreLearningSpec":
        law = distributions.make(self.distribution.name, 3, **self.distribution.params)
        if not isinstance(law, GaussianMixture):
            raise ValueError(f"distribution {self.distribution.name!r}: the target variance needs a Gaussian mixture")
        if "structured" in self.model:
            eye = torch.eye(3, dtype=torch.float64)
            if not (torch.allclose(law.covs, eye.expand_as(law.covs)) and torch.all(law.means[:, 1:] == 0)):
                raise ValueError("model 'structured' needs identity component covariances and means on e_1 "
                                 "(x_0 = mean_j e_1 + N(0, I_d)), e.g. gaussian_mixture with std 1")
        tr, ev = self.train, self.evaluation
        check_nfe(ev.sampler, ev.nfe, "evaluation.nfe")
        bad = [t for t in ev.t if not tr.t_min <= t < tr.T]
        if bad:
            raise ValueError(f"evaluation.t {bad} outside the training range [{tr.t_min}, {tr.T})")
        axes.grid_size(len(self.d) * len(self.n) * len(self.seed) * len(self.estimator) * len(self.data_mode)
                       * len(self.model), self.max_cells)
        return self

    def cells(self) -> list[SLCell]:
        return self.grid(SLCell, d=self.d, n=self.n, seed=self.seed, estimator=self.estimator,
                         data_mode=self.data_mode, model=self.model)

    def law(self, d: int) -> "GaussianMixture":
        return distributions.make(self.distribution.name, d, **self.distribution.params)
