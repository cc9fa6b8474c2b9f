"""The computational-gap spec (science.md §5, Montanari–Vu 2025): the grid n x k x seed, the drifts
evaluated in every cell, training of the network drift and evaluation settings; and the cell
model. Axes are validated by ``dsclab.axes`` (n, k, t sorted ascending; seeds sorted; drifts in
the order given)."""
from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from dsclab import axes
from dsclab.axes import PositiveInts, PositiveTimes, Seeds
from dsclab.spec import StudyBase, Frozen

CELL_DIMS = ("n", "k", "seed")
# study drift name -> (dsclab.studies.computational_gap.spike.DRIFTS factory, its parameters)
STUDY_DRIFTS: dict[str, tuple[str, dict]] = {
    "bayes": ("bayes", {}),
    "spectral": ("spectral", {}),
    "gated_spectral": ("gated", {"inner": "spectral", "test": "spectral"}),
    "power_iteration": ("power_iteration", {}),
    "threshold": ("threshold", {}),
    "constant": ("constant", {}),
    "network": ("network", {}),
    "fixed_sample": ("fixed_sample", {}),
    "spectral_paper": ("spectral_paper", {}),
    "power_iteration_paper": ("power_iteration_paper", {}),
    "mpnn": ("mpnn", {}),
}
Drifts = axes.Names(STUDY_DRIFTS, "drift")
DEFAULT_DRIFTS = [d for d in STUDY_DRIFTS if d != "mpnn"]  # mpnn trains for minutes: opt in
# study family name -> (dsclab.studies.computational_gap.spike.SPIKE_FAMILIES factory, its parameters): the law of x
STUDY_FAMILIES: dict[str, tuple[str, dict]] = {
    "sparse_spike": ("sparse_spike_mixture", {"p_spike": 0.5}),
    "hidden_clique": ("hidden_clique", {"p_spike": 0.5}),
}
Family = axes.Name(STUDY_FAMILIES, "family")
Budget = Annotated[float, Field(gt=0, le=10)]
# A list of budgets is an axis (sorted, distinct): the cell dim ``budget`` (``ComputationalGapSpec.AXES``)
Budgets = Annotated[list[Budget], AfterValidator(axes.positive_times), axes.axis_schema(exclusiveMinimum=0, maximum=10)]


class GapTrainSpec(Frozen):
    """Training of the network drift (``dsclab.studies.computational_gap.spike.train_network``)."""

    steps: int = Field(300, gt=0, description="Adam steps (cosine decay)")
    batch_size: int = Field(32, gt=0, description="matrices per step")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    width: int = Field(16, gt=0, description="channels of the equivariant layers")
    depth: int = Field(3, ge=1, description="equivariant layers")
    n_train: int = Field(2000, gt=0, description="training draws of mu_bar")
    device: str = Field("cpu", description="cpu, cuda or auto")


class MpnnTrainSpec(Frozen):
    """The paper's three-stage training of the ``mpnn`` drift (``dsclab.studies.computational_gap.spike.mpnn_train``; defaults
    are the paper's: budget 1.0 is its 60,000 steps of batch 200). It runs on the train task's device (``train.device``)."""

    # a float (the store as before: no budget dim) or a list of floats (an axis: a cell per budget);
    # pydantic keeps a float a float, so every scalar spec validates, dumps and hashes as before
    budget: Budget | Budgets = Field(1.0, description="factor on every epoch count (1.0 = the paper's); a list "
                                     "of factors is an axis: the store gets a budget dim, one cell per budget")

    @field_validator("budget", mode="wrap")
    @classmethod
    def _budget(cls, value, handler):
        try:
            return handler(value)
        except ValidationError:  # the union's two messages, as one line
            raise ValueError(f"{value!r} is not a factor in (0, 10] nor a list of distinct ones") from None
    n_train: int = Field(10_000, gt=0, description="fresh training points per stage")
    batch_size: int = Field(200, gt=0, description="matrices per step")
    lr: tuple[float, float, float] = Field((3e-3, 1e-3, 7e-4), description="AdamW learning rate per stage")
    clip: tuple[float, float, float] = Field((1.0, 1.0, 0.9), description="gradient-norm clip per stage")
    theta: tuple[float, float, float] = Field((400.0, 325.0, 205.0),
                                              description="5% of the times at t <= theta, per stage (at n = 350)")

    def schedule(self, budget: float | None = None):
        """The schedule at ``budget`` (default: the spec's own, which must then be a single factor)."""
        from dsclab.studies.computational_gap.spike.mpnn_train import PaperSchedule

        if budget is None:
            if isinstance(self.budget, list):
                raise ValueError("mpnn.budget is a list: name the cell's budget")
            budget = self.budget
        return PaperSchedule(budget=budget, n_train=self.n_train, batch_size=self.batch_size,
                             lr=tuple(self.lr), clip=tuple(self.clip), theta=tuple(self.theta))


class GapEvalSpec(Frozen):
    """How each cell is evaluated."""

    t: PositiveTimes = Field([1, 2, 4, 8, 16, 32, 64, 128, 256], description="SL times of the MSE curve")
    n_mse: int = Field(200, ge=2, description="fresh (x, z) per t for the MSE")
    n_int: int = Field(100, ge=2, description="samples of the integrated loss")
    int_steps: int = Field(32, gt=0, description="trapezoid steps of the integrated loss on [0, T]")
    n_samples: int = Field(100, ge=2, description="samples drawn with each drift")
    delta: float = Field(0.5, gt=0, description="SL Euler step")
    T_mult: float = Field(4.0, gt=0, description="sampler horizon T = T_mult * n")
    bayes_max_terms: float = Field(5e4, gt=0, description="Bayes runs only where its terms (C(n,k) 2^(k-1)) <= this")
    chunk: int = Field(2000, gt=0, description="test points of the MSE drawn and evaluated at once (memory)")


class ComputationalGapSpec(StudyBase):
    """A computational-gap study: the grid n x k x seed (x budget when ``mpnn.budget`` is a list); every
    cell evaluates every drift."""

    BASE_AXES: ClassVar[dict[str, str]] = {"n": "n", "k": "k", "seed": "seed", "drift": "drift", "t": "evaluation.t"}

    @property
    def AXES(self) -> dict[str, str]:  # noqa: N802 - the StudyBase name
        """The axes; ``budget`` (the cell dim after seed) only when ``mpnn.budget`` is a list."""
        return {**self.BASE_AXES, "budget": "mpnn.budget"} if self.budget_axis else self.BASE_AXES

    @property
    def budget_axis(self) -> bool:
        """``mpnn.budget`` is a list: the store has a ``budget`` cell dim (``cell_dims``)."""
        return isinstance(self.mpnn.budget, list)

    @property
    def cell_dims(self) -> tuple[str, ...]:
        """The store's cell dims: ``CELL_DIMS``, and ``budget`` after them with a budget axis."""
        return CELL_DIMS + ("budget",) if self.budget_axis else CELL_DIMS

    kind: Literal["computational_gap"] = Field("computational_gap", description="study kind (selects the flow)")
    n: PositiveInts = Field(..., description="matrix sizes (d = n^2)")
    k: PositiveInts = Field(..., description="sparsities; each below every n")
    seed: Seeds = Field([0], description="seeds (training data, initialisation, evaluation)")
    family: Family = Field("sparse_spike", description="law of x: sparse_spike (1/2 delta_0 + 1/2 mu_{n,k}) "
                           "or hidden_clique (the same with all signs +, a planted clique's signal)")
    drift: Drifts = Field(DEFAULT_DRIFTS, description="drifts evaluated in every cell")
    train: GapTrainSpec = GapTrainSpec()
    mpnn: MpnnTrainSpec = MpnnTrainSpec()
    evaluation: GapEvalSpec = GapEvalSpec()

    @model_validator(mode="after")
    def _grid(self):
        if max(self.k) >= min(self.n):
            raise ValueError(f"k: {max(self.k)} must be below every n (smallest n is {min(self.n)})")
        for n in self.n:
            if not math.isclose(self.evaluation.T_mult * n / self.evaluation.delta,
                                round(self.evaluation.T_mult * n / self.evaluation.delta), abs_tol=1e-9):
                raise ValueError(f"T = {self.evaluation.T_mult} * {n} is not a multiple of delta")
        if self.budget_axis and "mpnn" not in self.drift:
            raise ValueError("mpnn.budget: a list of budgets is an axis of the mpnn drift, which is not a drift")
        budgets = len(self.mpnn.budget) if self.budget_axis else 1
        axes.grid_size(len(self.n) * len(self.k) * len(self.seed) * budgets, self.max_cells)
        return self

    @property
    def trains(self) -> bool:
        """The equivariant ``network`` drift is a drift (it trains in the kind's train stage)."""
        return "network" in self.drift

    @property
    def trains_mpnn(self) -> bool:
        """The ``mpnn`` drift is a drift (it trains in the kind's train stage, checkpointed)."""
        return "mpnn" in self.drift

    def law(self, n: int, k: int):
        """The law of x at (n, k): the family's ``dsclab.studies.computational_gap.spike`` object."""
        from dsclab.studies.computational_gap import spike

        name, params = STUDY_FAMILIES[self.family]
        return spike.make_spike(name, n, k, **params)

    def cells(self) -> list["GapCell"]:
        """One cell per (n, k, seed), and per budget with a budget axis. A budget cell's key holds its
        budget; its draws (training data, initialisation, test points, sampler noise) come from the
        key of its (n, k, seed) without the budget (``GapCell.draws``), so the cells of one seed
        differ only by the length of the mpnn's training (common random numbers across budgets)."""
        if not self.budget_axis:
            return self.grid(GapCell, n=self.n, k=self.k, seed=self.seed)
        return [c.model_copy(update={"draws": self.key(n=c.n, k=c.k, seed=c.seed)})
                for c in self.grid(GapCell, n=self.n, k=self.k, seed=self.seed, budget=self.mpnn.budget)]


class GapCell(Frozen):
    """One cell: a matrix size n, a sparsity k, a seed (and, with a budget axis, the mpnn's
    budget); ``key`` hashes them with the spec's numerics; ``seed_key`` is what its random draws
    derive from: ``draws`` (the key without the budget) on a budget axis, else the key."""

    n: int
    k: int
    seed: int
    key: str
    budget: float | None = None
    draws: str | None = None

    @property
    def seed_key(self) -> str:
        return self.draws or self.key
