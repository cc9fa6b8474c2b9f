"""The sparse-PCA study: does a trained score reach the information-theoretic sample size?
(project issue 10; builds on the sample-complexity study, science.md §2, and shares the
thresholds of science.md §5). Spec, store layout, one cell's numerics, report and figure; no I/O
and no Prefect here (``tasks/sparse_pca.py`` and ``flows/sparse_pca.py`` wrap these).

Data. ``x ~ N(0, I_d + beta u u^T)``, u k-sparse with entries +-1/sqrt(k)
(:mod:`dsclab.distributions.sparse_pca`). u is drawn once per (d, k, seed) from the support seed
``derive_seed("sparse-pca-spike", d, k, seed)``, so every beta (and n) of a (d, k, seed) shares it
and beta = 0 is the detection null for the same u. The training data of (d, k, beta, seed) are
max(n) draws; a cell with sample size n uses the first n (nested design).

Cells. One cell per (d, k, beta, n, seed) (``CELL_DIMS``). Each evaluates every estimator of the
``estimator`` axis on the same n points:

* baselines (``dsclab.sparse_pca_estimators.BASELINES``: pca, diagonal_thresholding,
  covariance_thresholding, exhaustive) give u_hat, and through the Gaussian formula
  ``N(0, I + beta_hat u_hat u_hat^T)`` a score. ``exhaustive`` runs only where C(d, k) <=
  ``evaluation.exhaustive_max_supports`` (default 1e6: (32, 4) and (64, 4) of the default grid);
  elsewhere its values stay NaN and ``exhaustive_supports`` (d, k) tells why;
* ``network``: a ``ScoreMLP`` trained by DSM (``dsclab.train.train_group``: all network cells of a
  (d, k) train as one batched ensemble) on the n points; its direction is the top eigenvector of
  the covariance of samples drawn with it;
* ``oracle`` (optional): the exact law (u, beta), run through the same sampler. The per-cell
  floors below give the metric floors without it.

Metrics (per cell and estimator): ``overlap`` |<u_hat, u>| of the direction the score carries
(baselines: u_hat itself; network: its samples' top eigenvector; oracle: 1), ``overlap_samples``
(the samples' top eigenvector, for every estimator: the same measurement as the network's),
``support_recovery`` |top-k(|u_hat|) ∩ supp u| / k of the ``overlap`` direction, ``beta_hat``,
``score_l2``/``score_l2_rel (t)`` against the exact score on fresh x ~ q_t, and ``sliced_w2``,
``kl_gauss`` of ``evaluation.n_samples`` samples (one sampler, one nfe, the same start and
Brownian path for every estimator) against fresh draws of q_{t_min}. Per cell, the floors from a
second exact q_{t_min} draw: ``sliced_w2_floor``, ``kl_gauss_floor`` and ``overlap_samples_floor``
(the overlap of an exact sample's top eigenvector: sampling noise caps a sample-based overlap,
which matters for the network when d / n_samples is not small). ``u`` and ``u_hat`` are stored
over a coordinate axis ``i`` of length max(d) (NaN beyond d). Closed forms per (d, k, beta), filled
when the store is created: ``n_it``, ``n_poly``, ``n_spectral`` and ``n_half_pca_bbp`` (PCA's n_half
in the proportional limit, d (1/beta + 4/beta^2) / 3); per (d, k): ``exhaustive_supports``.

Analysis. ``n_half``: the smallest n from which the overlap stays above 1/2, interpolated
linearly in log n between the last grid point below and the first above (:func:`crossing`);
computed on the seed-mean curve, with a band = the n_half of the pointwise maximum and minimum
over seeds (the band of the figure; it always contains the mean curve's n_half). Beside it the
classical sizes (``n_it``, ``n_poly``, ``n_spectral``; :func:`dsclab.sparse_pca_estimators.sample_sizes`).
"""
from __future__ import annotations

import json
import math
import time
from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field, field_validator, model_validator

import dsclab
from dsclab import noise
from dsclab import sparse_pca_estimators as spe
from dsclab.distributions.sparse_pca import SparsePCA
from dsclab.metrics import gaussian_fit_kl
from dsclab.noise import SCHEDULES
from dsclab.seeds import derive_seed
from dsclab.samplers import SAMPLERS, steps_for_nfe
from dsclab.spec import StudyBase, TrainSpec, _Frozen, _known, _known_one, _positive_ints, _unique, seed_list
from dsclab.train import TrainConfig, TrainResult, train_group

CELL_DIMS = ("d", "k", "beta", "n", "seed")
NETWORK, ORACLE = "network", "oracle"
ESTIMATOR_NAMES = tuple(spe.BASELINES) + (NETWORK, ORACLE)


# -------------------------------------------------------------------------------------------
# Spec
# -------------------------------------------------------------------------------------------

def _default_train() -> TrainSpec:
    # Sized for 2 CPU cores (see studies/sparse_pca.yaml): the target score is linear, a small MLP fits it.
    return TrainSpec(steps=600, batch_size=128, lr=2e-3, width=64, depth=2)


class SparsePCAEvalSpec(_Frozen):
    """How each cell is evaluated."""

    t: list[float] = Field([0.01, 0.1, 1.0], description="times of the score-error grid")
    n_score: int = Field(500, gt=0, description="fresh points per t for score errors")
    n_samples: int = Field(2000, ge=2, description="samples drawn with each estimator's score")
    sampler: str = Field("exponential_integrator", description="sampler (dsclab.samplers)")
    nfe: int = Field(30, gt=0, description="score evaluations per sample")
    T: float = Field(5.0, gt=0, description="sampler start time (from N(0, I))")
    t_min: float = Field(1e-3, gt=0, description="early-stopping time of the sampler")
    schedule: str = Field("exp", description="time grid of the sampler")
    exhaustive_max_supports: int = Field(spe.EXHAUSTIVE_MAX_SUPPORTS, gt=0,
                                         description="exhaustive search runs only where C(d, k) is at most this")

    @field_validator("t")
    @classmethod
    def _t(cls, v):
        if not v or any(not (x > 0 and math.isfinite(x)) for x in v):
            raise ValueError(f"{v} must be positive times")
        _unique(v)
        return v

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v):
        return _known_one("sampler", v, SAMPLERS)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v):
        return _known_one("schedule", v, SCHEDULES)

    @model_validator(mode="after")
    def _range(self):
        if self.t_min >= self.T:
            raise ValueError(f"t_min {self.t_min} must be below T {self.T}")
        return self


class SparsePCASpec(StudyBase):
    """A sparse-PCA study: the grid d x k x beta x n x seed; every cell evaluates every estimator."""

    kind: Literal["sparse_pca"] = Field("sparse_pca", description="study kind (selects the flow)")
    d: list[int] = Field(..., description="dimensions")
    k: list[int] = Field(..., description="sparsities (nonzero entries of u); each below every d")
    beta: list[float] = Field(..., description="spike strengths (0: the null, for detection)")
    n: list[int] = Field(..., description="training sample sizes")
    seed: list[int] = Field([0], description="seeds (spike, data, initialisation, sampling)")
    estimator: list[str] = Field(list(spe.BASELINES) + [NETWORK],
                                 description="estimators evaluated in every cell (also: oracle)")
    train: TrainSpec = Field(default_factory=_default_train)
    evaluation: SparsePCAEvalSpec = SparsePCAEvalSpec()

    @field_validator("d", "k", "n")
    @classmethod
    def _pos(cls, v, info):
        return _positive_ints(info.field_name, v)

    @field_validator("beta")
    @classmethod
    def _beta(cls, v):
        if not v:
            raise ValueError("needs at least one value")
        for b in v:
            if not (math.isfinite(b) and b >= 0):
                raise ValueError(f"{b!r} is not a finite spike strength >= 0")
        _unique(v)
        return [float(b) for b in v]

    @field_validator("seed")
    @classmethod
    def _seeds(cls, v):
        return seed_list(v)

    @field_validator("estimator")
    @classmethod
    def _est(cls, v):
        return _known("estimator", v, ESTIMATOR_NAMES)

    @model_validator(mode="after")
    def _grid(self) -> "SparsePCASpec":
        if max(self.k) >= min(self.d):
            raise ValueError(f"k: {max(self.k)} must be below every d (smallest d is {min(self.d)})")
        cells = len(self.d) * len(self.k) * len(self.beta) * len(self.n) * len(self.seed)
        if cells > self.max_cells:
            raise ValueError(f"the grid has {cells} cells, over max_cells={self.max_cells}")
        return self

    def cells(self) -> list["SparsePCACell"]:
        return [SparsePCACell(d=d, k=k, beta=b, n=n, seed=s, key=self.key(d=d, k=k, beta=b, n=n, seed=s))
                for d in self.d for k in self.k for b in self.beta for n in self.n for s in self.seed]

    @property
    def trains(self) -> bool:
        return NETWORK in self.estimator


class SparsePCACell(_Frozen):
    d: int
    k: int
    beta: float
    n: int
    seed: int
    key: str


def cell_index(cell: SparsePCACell) -> dict:
    return {"d": cell.d, "k": cell.k, "beta": cell.beta, "n": cell.n, "seed": cell.seed}


def support_seed(d: int, k: int, seed: int) -> int:
    """The seed u is drawn from: one u per (d, k, seed), shared by every beta and n."""
    return derive_seed("sparse-pca-spike", d, k, seed)


def law(d: int, k: int, beta: float, seed: int) -> SparsePCA:
    return SparsePCA(d, k, beta, support_seed(d, k, seed))


# -------------------------------------------------------------------------------------------
# Store template
# -------------------------------------------------------------------------------------------

PER_ESTIMATOR = {
    "overlap": ("|<u_hat, u>| of the direction the score carries (network: top eigenvector of its samples' "
                "covariance)", "1"),
    "overlap_samples": ("|<v, u>|, v the top eigenvector of the covariance of samples drawn with the score", "1"),
    "support_recovery": ("|top-k(|u_hat|) ∩ supp(u)| / k of the overlap direction", "1"),
    "beta_hat": ("estimated spike strength along the overlap direction (baselines: u_hat^T S u_hat - 1 on the "
                 "data; network: on its samples)", "1"),
    "sliced_w2": ("sliced W2 of samples to q_t_min", "1"),
    "kl_gauss": ("KL between Gaussian fits of samples and of q_t_min draws", "nats"),
}
PER_CELL = {
    "sliced_w2_floor": ("sliced W2 between two independent q_t_min draws (metric floor)", "1"),
    "kl_gauss_floor": ("KL between Gaussian fits of two independent q_t_min draws (metric floor)", "nats"),
    "overlap_samples_floor": ("|<v, u>|, v the top eigenvector of the covariance of n_samples exact q_t_min "
                              "draws: the ceiling of overlap_samples (and of the network's overlap)", "1"),
    "train_seconds": ("training wall time of the network (its share of the batched ensemble)", "s"),
    "train_loss": ("final DSM training loss of the network (mean per sample, last 10% of steps)", "1"),
    "eval_seconds": ("evaluation wall time of the cell", "s"),
}
COORD_ATTRS = {
    "d": {"long_name": "dimension"},
    "k": {"long_name": "sparsity (nonzero entries of u)"},
    "beta": {"long_name": "spike strength beta"},
    "n": {"long_name": "training sample size"},
    "seed": {"long_name": "seed"},
    "estimator": {"long_name": "estimator of the spike / score"},
    "t": {"long_name": "OU time", "units": "1"},
    "i": {"long_name": "coordinate index of u and u_hat (NaN beyond d)"},
}


def reference(spec: SparsePCASpec) -> xr.Dataset:
    """Closed forms per (d, k, beta): the classical sample sizes; per (d, k): C(d, k)."""
    shape = (len(spec.d), len(spec.k), len(spec.beta))
    out = {name: np.full(shape, np.nan) for name in ("it", "poly", "spectral")}
    for a, d in enumerate(spec.d):
        for b, k in enumerate(spec.k):
            for c, beta in enumerate(spec.beta):
                for name, v in spe.sample_sizes(d, k, beta).items():
                    out[name][a, b, c] = v
    bbp = np.array([[[spe.pca_n_half_bbp(d, b) for b in spec.beta] for _ in spec.k] for d in spec.d])
    sup = np.array([[float(spe.n_supports(d, k)) for k in spec.k] for d in spec.d])
    dims = ("d", "k", "beta")
    return xr.Dataset({
        "n_it": (dims, out["it"], {"long_name": "information-theoretic sample size k log(d/k) / beta^2", "units": "1"}),
        "n_poly": (dims, out["poly"], {"long_name": "polynomial-time sample size k^2 log(d/k^2) / beta^2 "
                                                     "(NaN where k^2 >= d)", "units": "1"}),
        "n_spectral": (dims, out["spectral"], {"long_name": "spectral (BBP) sample size d / beta^2", "units": "1"}),
        "n_half_pca_bbp": (dims, bbp, {"long_name": "n at which PCA's overlap reaches 1/2 in the proportional "
                                                    "limit, d (1/beta + 4/beta^2) / 3 (BBP)", "units": "1"}),
        "exhaustive_supports": (("d", "k"), sup, {
            "long_name": "C(d, k), supports visited by exhaustive search",
            "max_supports": spec.evaluation.exhaustive_max_supports}),
    })


def template(spec: SparsePCASpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending, closed forms filled."""
    coords = {
        "d": np.array(spec.d, dtype=np.int64), "k": np.array(spec.k, dtype=np.int64),
        "beta": np.array(spec.beta, dtype=np.float64), "n": np.array(spec.n, dtype=np.int64),
        "seed": np.array(spec.seed, dtype=np.int64), "estimator": np.array(spec.estimator, dtype=str),
        "t": np.array(spec.evaluation.t, dtype=np.float64), "i": np.arange(max(spec.d), dtype=np.int64),
    }
    sizes = {k: len(v) for k, v in coords.items()}
    shape = lambda dims: [sizes[k] for k in dims]
    data = {"status": (CELL_DIMS, np.zeros(shape(CELL_DIMS), dtype=np.int8),
                       {"long_name": "cell status", "flag_values": [0, 1, 2], "flag_meanings": "pending done failed"})}
    for name, (long_name, units) in PER_ESTIMATOR.items():
        dims = CELL_DIMS + ("estimator",)
        data[name] = (dims, np.full(shape(dims), np.nan), {"long_name": long_name, "units": units})
    for name, (long_name, units) in {
        "score_l2": ("L2 score error E||s_hat - s||^2 on fresh x ~ q_t", "1"),
        "score_l2_rel": ("relative L2 score error E||s_hat - s||^2 / E||s||^2", "1"),
    }.items():
        dims = CELL_DIMS + ("estimator", "t")
        data[name] = (dims, np.full(shape(dims), np.nan), {"long_name": long_name, "units": units})
    for name, (long_name, units) in PER_CELL.items():
        if name.startswith("train_") and not spec.trains:
            continue  # no network, no training variables (a done cell never leaves a variable all NaN)
        data[name] = (CELL_DIMS, np.full(shape(CELL_DIMS), np.nan), {"long_name": long_name, "units": units})
    data["u"] = (CELL_DIMS + ("i",), np.full(shape(CELL_DIMS + ("i",)), np.nan),
                 {"long_name": "the spike u of the cell (drawn once per (d, k, seed))", "units": "1"})
    data["u_hat"] = (CELL_DIMS + ("estimator", "i"), np.full(shape(CELL_DIMS + ("estimator", "i")), np.nan),
                     {"long_name": "unit direction of the overlap metric (sign arbitrary)", "units": "1"})
    ds = xr.Dataset(data, coords=coords)
    ds = ds.merge(reference(spec).assign_coords(d=coords["d"], k=coords["k"], beta=coords["beta"]))
    for k, a in COORD_ATTRS.items():
        ds[k].attrs.update(a)
    ds.attrs.update({
        "study": "sparse_pca", "name": spec.name,
        "spec": json.dumps(spec.model_dump(mode="json"), sort_keys=True),
        "spec_hash": spec.hash, "dsclab_version": dsclab.__version__,
        "conventions": "x ~ N(0, I + beta u u^T), u k-sparse with entries +-1/sqrt(k); OU forward process "
                       "X_t = e^-t X_0 + sigma_t Z (dsclab.noise)",
    })
    return ds


# -------------------------------------------------------------------------------------------
# Data and training
# -------------------------------------------------------------------------------------------

def generate_data(spec: SparsePCASpec, d: int, k: int, beta: float, seed: int) -> np.ndarray:
    """max(n) draws (float64) from the law of (d, k, beta, seed); a cell uses the first n."""
    g = torch.Generator().manual_seed(derive_seed("sparse-pca-data", d, k, beta, seed))
    return law(d, k, beta, seed).sample(max(spec.n), g).numpy()


def train_config(spec: SparsePCASpec) -> TrainConfig:
    return TrainConfig.of(spec.train)


def train_cells(spec: SparsePCASpec, cells: list[SparsePCACell], data: dict[tuple, np.ndarray],
                device: str = "cpu") -> list[TrainResult | None]:
    """Train the network of each cell (cells share d) as one batched ensemble; ``data[(k, beta, seed)]``
    is that law's full dataset. A diverged member gives ``None``."""
    xs = [torch.as_tensor(data[(c.k, c.beta, c.seed)][: c.n], dtype=torch.float32) for c in cells]
    return train_group(xs, [derive_seed("sparse-pca-train", c.key) for c in cells],
                       estimators=["dsm"] * len(cells), config=train_config(spec), device=device)


# -------------------------------------------------------------------------------------------
# One cell
# -------------------------------------------------------------------------------------------

def _pad(v: torch.Tensor, size: int) -> np.ndarray:
    out = np.full(size, np.nan)
    out[: v.shape[0]] = v.to(torch.float64).numpy()
    return out


def estimate(name: str, x: torch.Tensor, k: int, max_supports: int) -> torch.Tensor:
    """u_hat of baseline ``name`` on ``x (n, d)`` (``max_supports`` bounds exhaustive search)."""
    if name == "exhaustive":
        return spe.exhaustive(x, k, max_supports=max_supports)
    return spe.BASELINES[name](x, k)


class SlicedW2:
    """Sliced W2 to a fixed target cloud with fixed directions (the target's sorted projections are
    computed once per cell): the same number as ``dsclab.metrics.sliced_w2(y, target, g, n_proj)``
    for equal cloud sizes and the same generator state."""

    def __init__(self, target: torch.Tensor, generator: torch.Generator, n_proj: int = 128):
        target = target.to(torch.float64)
        th = torch.randn(target.shape[1], n_proj, generator=generator, dtype=torch.float64)
        self.theta = th / th.norm(dim=0, keepdim=True)
        self.sorted_target = torch.sort(target @ self.theta, dim=0).values

    def __call__(self, y: torch.Tensor) -> float:
        py = torch.sort(y.to(torch.float64) @ self.theta, dim=0).values
        return float(((py - self.sorted_target) ** 2).mean().sqrt())


# Samplers whose code discards the space-time Levy area H (``dw, _ = noise(...)``; heun never
# calls noise): for them ReplayNoise does not draw it.
IGNORE_LEVY_AREA = frozenset({"euler_maruyama", "exponential_integrator", "srk", "heun"})


class ReplayNoise:
    """The same (dW, H) sequence for every sampler run of a cell, in the samplers' noise convention
    (``dsclab.samplers``: dW ~ N(0, h I) and H ~ N(0, h/12 I) independent, float32): drawn from
    ``generator`` on the first pass and replayed afterwards (common random numbers across
    estimators; the draws are most of the cost of sampling with a cheap score). With
    ``levy_area=False`` (for the samplers of :data:`IGNORE_LEVY_AREA`) H is not drawn and a zero
    tensor stands in for it. Call :meth:`rewind` before each run; a run on another grid raises."""

    def __init__(self, shape, generator: torch.Generator, levy_area: bool = True):
        self.shape, self.generator, self.levy_area = tuple(shape), generator, levy_area
        self._draws, self._i, self._zero = [], 0, torch.zeros(tuple(shape), dtype=torch.float32)

    def rewind(self) -> "ReplayNoise":
        self._i = 0
        return self

    def __call__(self, t_from: float, t_to: float):
        if self._i == len(self._draws):
            h = float(t_from - t_to)
            z = torch.randn(((2,) if self.levy_area else (1,)) + self.shape, generator=self.generator,
                            dtype=torch.float32)
            hh = math.sqrt(h / 12.0) * z[1] if self.levy_area else self._zero
            self._draws.append(((t_from, t_to), (math.sqrt(h) * z[0], hh)))
        (grid, draw), self._i = self._draws[self._i], self._i + 1
        if grid != (t_from, t_to):
            raise ValueError("ReplayNoise replays one grid; got another")
        return draw


def draw_samples(ev: SparsePCAEvalSpec, score, x0: torch.Tensor, noise_: ReplayNoise) -> torch.Tensor:
    """Samples with ``score`` from the start ``x0`` (N(0, I) at ``ev.T``) down to ``ev.t_min`` with
    ``ev.sampler`` at ``ev.nfe`` on the ``ev.schedule`` grid and the replayed Brownian path. The
    sampler runs in float32 (Gaussian scores compute in float64 inside); float64 result."""
    ts = noise.time_grid(ev.T, ev.t_min, steps_for_nfe(ev.sampler, ev.nfe), ev.schedule)
    with torch.no_grad():
        y = SAMPLERS[ev.sampler](score, x0.to(torch.float32), ts, noise=noise_.rewind()).to(torch.float64)
    if not torch.isfinite(y).all():
        raise FloatingPointError(f"sampler {ev.sampler} produced non-finite samples")
    return y


def evaluate(spec: SparsePCASpec, cell: SparsePCACell, x: np.ndarray, network=None,
             result: TrainResult | None = None) -> xr.Dataset:
    """Every estimator of the spec on the cell's first n rows of ``x`` (the full dataset).

    ``network`` is the trained ``ScoreMLP`` (needed when ``network`` is an estimator; it runs in
    float32, the Gaussian scores in float64). Every estimator sees the same score-error points
    (fresh x ~ q_t, ``evaluation.n_score`` per t), the same sampler start and Brownian path, and
    the same target draws and projections. Returns the cell's values over (estimator, t, i).
    Raises on numerical failure (the task marks the cell failed); an infeasible exhaustive search
    leaves that estimator's values NaN.
    """
    t0 = time.perf_counter()
    ev = spec.evaluation
    dist = law(cell.d, cell.k, cell.beta, cell.seed)
    u, k, d = dist.u, cell.k, cell.d
    xn = torch.as_tensor(x[: cell.n], dtype=torch.float64)
    s = spe.sample_covariance(xn)
    g = torch.Generator().manual_seed(derive_seed("sparse-pca-eval", cell.key))
    exact = dist.score
    points = []
    for t in ev.t:
        xt = dist.sample(ev.n_score, g, t=float(t))
        points.append((float(t), xt, exact(xt, float(t))))
    target = dist.sample(ev.n_samples, g, t=ev.t_min)
    target2 = dist.sample(ev.n_samples, g, t=ev.t_min)
    sw2 = SlicedW2(target, torch.Generator().manual_seed(derive_seed("sparse-pca-proj", cell.key)))
    x0 = torch.randn(ev.n_samples, d, generator=g)
    replay = ReplayNoise(x0.shape, g, levy_area=ev.sampler not in IGNORE_LEVY_AREA)
    E, T, size = len(spec.estimator), len(ev.t), max(spec.d)
    vals = {name: np.full(E, np.nan) for name in PER_ESTIMATOR}
    l2, l2_rel = np.full((E, T), np.nan), np.full((E, T), np.nan)
    u_hat_all = np.full((E, size), np.nan)
    for j, name in enumerate(spec.estimator):
        if name == NETWORK:
            if network is None:
                raise ValueError("the network estimator needs a trained network")
            score, direction, dtype = network.score, None, torch.float32
        elif name == ORACLE:
            score, direction, b_hat, dtype = exact, u.clone(), cell.beta, torch.float64
        else:
            if name == "exhaustive" and not spe.exhaustive_feasible(d, k, ev.exhaustive_max_supports):
                continue
            direction = estimate(name, xn, k, ev.exhaustive_max_supports)
            b_hat = spe.spike_strength(s, direction)
            score, dtype = spe.spike_score(direction, b_hat), torch.float64
        with torch.no_grad():
            for i, (t, xt, st) in enumerate(points):
                err = ((score(xt.to(dtype), t).to(torch.float64) - st) ** 2).sum(1)
                l2[j, i], l2_rel[j, i] = err.mean().item(), err.mean().item() / (st ** 2).sum(1).mean().item()
        y = draw_samples(ev, score, x0, replay)
        v = spe.sample_direction(y)
        if direction is None:  # the network: its direction is its samples' top eigenvector
            direction = v
            b_hat = spe.spike_strength(torch.cov(y.T), v)
        vals["overlap"][j] = spe.overlap(direction, u)
        vals["overlap_samples"][j] = spe.overlap(v, u)
        vals["support_recovery"][j] = spe.support_recovery(direction, u, k)
        vals["beta_hat"][j] = b_hat
        vals["sliced_w2"][j] = sw2(y)
        vals["kl_gauss"][j] = gaussian_fit_kl(y, target)
        u_hat_all[j] = _pad(direction / direction.norm(), size)
    floor = sw2(target2)
    kl_floor = gaussian_fit_kl(target2, target)
    ov_floor = spe.overlap(spe.sample_direction(target2), u)
    ds = xr.Dataset(
        {
            **{name: (("estimator",), v) for name, v in vals.items()},
            "score_l2": (("estimator", "t"), l2),
            "score_l2_rel": (("estimator", "t"), l2_rel),
            "sliced_w2_floor": ((), floor),
            "kl_gauss_floor": ((), kl_floor),
            "overlap_samples_floor": ((), ov_floor),
            "u": (("i",), _pad(u, size)),
            "u_hat": (("estimator", "i"), u_hat_all),
        },
        coords={"estimator": list(spec.estimator), "t": list(ev.t), "i": np.arange(size)},
    )
    if spec.trains:
        ds["train_seconds"] = ((), result.seconds if result else np.nan)
        ds["train_loss"] = ((), result.loss if result else np.nan)
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds


# -------------------------------------------------------------------------------------------
# Analysis: the smallest n at which the overlap passes 1/2
# -------------------------------------------------------------------------------------------

def crossing(ns, values, level: float = 0.5) -> tuple[float, str]:
    """The smallest n from which ``values`` stay above ``level`` (the last grid point at or below
    the level and the next one are interpolated linearly in log n).

    Returns ``(n, flag)``: flag ``""`` (interpolated), ``"<="`` (already above at the smallest n:
    n = ns[0] is an upper bound), ``">"`` (not above at the largest n: n = ns[-1] is a lower bound,
    or NaN values: n = NaN).
    """
    ns, v = np.asarray(ns, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if not np.isfinite(v).all():
        return math.nan, ">"
    above = v > level
    if not above[-1]:
        return float(ns[-1]), ">"
    j = len(v) - 1
    while j > 0 and above[j - 1]:
        j -= 1
    if j == 0:
        return float(ns[0]), "<="
    a, b = v[j - 1], v[j]
    f = (level - a) / (b - a) if b != a else 1.0
    return float(np.exp(np.log(ns[j - 1]) + f * (np.log(ns[j]) - np.log(ns[j - 1])))), ""


def _done(ds: xr.Dataset, var: str) -> xr.DataArray:
    return ds[var].where(ds["status"] == 1)


def n_half_table(ds: xr.Dataset, level: float = 0.5) -> list[dict]:
    """One row per (d, k, beta, estimator): n_half of the seed-mean overlap curve, its band (n_half
    of the pointwise max and min over seeds), the classical sizes and the mean overlap at the
    smallest and largest n. Oracle rows are left out."""
    ds = ds.load()
    ov = _done(ds, "overlap")
    ns = ds.n.values
    rows = []
    for d in ds.d.values:
        for k in ds.k.values:
            for beta in ds.beta.values:
                ref = {name: float(ds[f"n_{name}"].sel(d=d, k=k, beta=beta)) for name in ("it", "poly", "spectral")}
                for est in ds.estimator.values:
                    if est == ORACLE:
                        continue
                    cur = ov.sel(d=d, k=k, beta=beta, estimator=est)  # (n, seed)
                    mean = cur.mean("seed").values
                    n_mean, flag = crossing(ns, mean, level)
                    lo = crossing(ns, cur.max("seed").values, level)   # the plot's band: pointwise max
                    hi = crossing(ns, cur.min("seed").values, level)   # and min over seeds
                    rows.append({"d": int(d), "k": int(k), "beta": float(beta), "estimator": str(est),
                                 "n_half": n_mean, "flag": flag, "lo": lo[0], "lo_flag": lo[1],
                                 "hi": hi[0], "hi_flag": hi[1],
                                 "overlap_max_n": float(mean[-1]), "overlap_min_n": float(mean[0]), **ref})
    return rows


def _fmt_n(v: float, flag: str = "") -> str:
    if not math.isfinite(v):
        return "—" if math.isnan(v) else "inf"
    return f"{flag}{v:.0f}" if v >= 10 or flag else f"{flag}{v:.1f}"


def position(n: float, n_it: float, n_poly: float) -> float:
    """Where n sits between the two classical sizes on a log scale: 0 at n_it, 1 at n_poly."""
    if not (math.isfinite(n) and math.isfinite(n_it) and math.isfinite(n_poly)) or n_poly <= n_it:
        return math.nan
    return math.log(n / n_it) / math.log(n_poly / n_it)


def report(ds: xr.Dataset) -> str:
    """Per (d, k, beta): n_half [band over seeds] per estimator next to the three classical sizes;
    then score errors, the null rows (beta = 0) and the closing note on the network."""
    ds = ds.load()
    st = ds["status"]
    rows = n_half_table(ds)
    S = ds.sizes["seed"]
    lines = [f"sparse-PCA study {ds.attrs.get('name', '')}: cells done {int((st == 1).sum())}/{st.size}, "
             f"failed {int((st == 2).sum())}",
             f"n_half = smallest n from which the mean overlap over {S} seeds stays above 1/2 (log-interpolated "
             "between grid points; '<=' already at the smallest n, '>' not reached); band = n_half of the "
             "pointwise max..min over seeds. Classical sizes (constants dropped): IT k log(d/k)/b^2, poly k^2 log(d/k^2)/b^2 "
             "(— where k^2 >= d), spectral d/b^2. n grid: " + ", ".join(str(int(n)) for n in ds.n.values)]
    header = f"{'estimator':<24} {'n_half':>8} {'band':>15} {'n/n_IT':>7} {'n/n_poly':>8} {'n/n_spec':>8} {'ov(n_max)':>9}"
    key = lambda r: (r["d"], r["k"], r["beta"])
    for (d, k, beta) in dict.fromkeys(key(r) for r in rows):
        grp = [r for r in rows if key(r) == (d, k, beta)]
        r0 = grp[0]
        bbp = float(ds["n_half_pca_bbp"].sel(d=d, k=k, beta=beta))
        lines += ["", f"[d={d} k={k} beta={beta:g}]  n_IT={_fmt_n(r0['it'])}  n_poly={_fmt_n(r0['poly'])}  "
                      f"n_spectral={_fmt_n(r0['spectral'])}  (PCA's n_half by BBP: {_fmt_n(bbp)})", header]
        for r in grp:
            if beta == 0:
                lines.append(f"{r['estimator']:<24} {'(null)':>8} {'':>15} {'':>7} {'':>8} {'':>8} {r['overlap_max_n']:9.3f}")
                continue
            if math.isnan(r["overlap_max_n"]) and r["estimator"] == "exhaustive":
                lines.append(f"{r['estimator']:<24} {'not run: C(d,k)=' + format(spe.n_supports(d, k), '.2g'):>41}")
                continue
            band = f"{_fmt_n(r['lo'], r['lo_flag'])}..{_fmt_n(r['hi'], r['hi_flag'])}"
            ratio = lambda ref: (f"{r['flag']}{r['n_half'] / ref:.2f}" if math.isfinite(ref) and math.isfinite(r['n_half'])
                                 else "—")
            lines.append(f"{r['estimator']:<24} {_fmt_n(r['n_half'], r['flag']):>8} {band:>15} {ratio(r['it']):>7} "
                         f"{ratio(r['poly']):>8} {ratio(r['spectral']):>8} {r['overlap_max_n']:9.3f}")
    lines += ["", "score_l2 (mean over t and seeds) at the smallest and largest n, per estimator (d, k, beta):"]
    sl = _done(ds, "score_l2").mean(["t", "seed"])
    ests = [str(e) for e in ds.estimator.values]
    lines.append(f"{'d':>4} {'k':>2} {'beta':>4} {'n':>6} " + " ".join(f"{e[:12]:>12}" for e in ests))
    for d in ds.d.values:
        for k in ds.k.values:
            for beta in ds.beta.values:
                for n in (ds.n.values[0], ds.n.values[-1]):
                    v = sl.sel(d=d, k=k, beta=beta, n=n)
                    lines.append(f"{int(d):>4} {int(k):>2} {float(beta):>4g} {int(n):>6} "
                                 + " ".join(f"{float(v.sel(estimator=e)):12.4g}" for e in ests))
    if "overlap_samples_floor" in ds and (ds.beta > 0).any():
        fl = _done(ds, "overlap_samples_floor").mean(["k", "n", "seed"])
        lines += ["", "sampling ceiling of a sample-based overlap (overlap_samples_floor: top eigenvector of "
                      f"{json.loads(ds.attrs['spec'])['evaluation']['n_samples']} exact draws; mean over k, n, seeds):"]
        lines.append("  " + "  ".join(f"d={int(d)} beta={float(b):g}: {float(fl.sel(d=d, beta=b)):.3f}"
                                      for d in ds.d.values for b in ds.beta.values if b > 0))
    if (ds.beta == 0).any():
        null = _done(ds, "overlap").sel(beta=0.0)
        lines += ["", "null (beta = 0): root-mean-square overlap over n and seeds, against 1/sqrt(d) (exact for any "
                      "estimator equivariant under signed coordinate permutations)"]
        for d in ds.d.values:
            rms = np.sqrt((null.sel(d=d) ** 2).mean(["k", "n", "seed"]))
            lines.append(f"  d={int(d):<4} 1/sqrt(d)={1 / math.sqrt(d):.3f}  " + "  ".join(
                f"{e}={float(rms.sel(estimator=e)):.3f}" for e in ests if e != ORACLE))
    lines += ["", closing_note(rows)]
    return "\n".join(lines)


def closing_note(rows: list[dict]) -> str:
    """Where the trained network's n_half lands, per (d, k, beta > 0): against the classical sizes
    (``position``: 0 at n_IT, 1 at n_poly, log scale) and against the baselines' measured n_half
    (exhaustive search = the information-theoretic reference, covariance thresholding = the
    polynomial-time one, PCA = the spectral one); then medians over the cells where both values
    are interpolated (not bounds)."""
    by = {}
    for r in rows:
        if r["beta"] > 0:
            by.setdefault((r["d"], r["k"], r["beta"]), {})[r["estimator"]] = r
    if not any(NETWORK in v for v in by.values()):
        return "closing note: no network in this study."
    lines = ["closing note — where the trained network lands (n_half of the direction its samples carry; "
             "position 0 = n_IT, 1 = n_poly on a log scale; 'x name' = network n_half / that baseline's measured "
             "n_half):"]
    ratios = {"it": [], "poly": [], "spectral": [], "pca": [], "covariance_thresholding": [], "exhaustive": []}
    pos, beyond = [], 0
    for (d, k, beta), est in by.items():
        net = est[NETWORK]
        if not math.isfinite(net["n_half"]):
            continue
        exact = net["flag"] == ""
        parts = [f"  d={d:<4} k={k} beta={beta:g}: network {_fmt_n(net['n_half'], net['flag'])} "
                 f"[{_fmt_n(net['lo'], net['lo_flag'])}..{_fmt_n(net['hi'], net['hi_flag'])}]"]
        for name in ("it", "poly", "spectral"):
            if math.isfinite(net[name]):
                parts.append(f"{net['flag']}{net['n_half'] / net[name]:.1f} n_{name}")
                if exact:
                    ratios[name].append(net["n_half"] / net[name])
        p = position(net["n_half"], net["it"], net["poly"])
        if math.isfinite(p):
            parts.append(f"position {net['flag']}{p:+.1f}")
            if exact:
                pos.append(p)
                beyond += p > 1
        for name in ("exhaustive", "covariance_thresholding", "pca"):
            o = est.get(name)
            if o is not None and math.isfinite(o["n_half"]) and o["flag"] == "" and exact:
                ratios[name].append(net["n_half"] / o["n_half"])
                parts.append(f"{net['n_half'] / o['n_half']:.2f}x {name}")
        lines.append(", ".join(parts))
    med = lambda a: f"{float(np.median(a)):.2f}" if a else "—"
    rng = lambda a: f" (range {min(a):.2f}..{max(a):.2f}, {len(a)} cells)" if a else ""
    lines.append(f"  medians: network n_half = {med(ratios['it'])} n_IT, {med(ratios['poly'])} n_poly, "
                 f"{med(ratios['spectral'])} n_spectral{rng(ratios['spectral'])}; = {med(ratios['exhaustive'])}x "
                 f"exhaustive{rng(ratios['exhaustive'])}, {med(ratios['covariance_thresholding'])}x covariance "
                 f"thresholding{rng(ratios['covariance_thresholding'])}, {med(ratios['pca'])}x pca{rng(ratios['pca'])}")
    if pos:
        lines.append(f"  the network's n_half lies beyond the polynomial-time size (position > 1) in {beyond} of {len(pos)} "
                     f"(d, k, beta) where n_poly is defined (median position {med(pos)}); against the measured "
                     f"baselines it is {med(ratios['pca'])}x PCA's n_half and {med(ratios['covariance_thresholding'])}x "
                     "covariance thresholding's.")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# Figure
# -------------------------------------------------------------------------------------------

STYLE = {"pca": ("C0", "o"), "diagonal_thresholding": ("C1", "s"), "covariance_thresholding": ("C2", "^"),
         "exhaustive": ("C3", "D"), "network": ("k", "*"), "oracle": ("0.6", "")}


def plot(ds: xr.Dataset, out: str) -> str:
    """Overlap against n / (k log d), one panel per (k, beta) row and d column, a line per estimator
    (seed mean, min-max band over seeds), with the three classical sizes marked (IT dotted, poly
    dashed, spectral dash-dot) and the level 1/2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = ds.load()
    ov = _done(ds, "overlap")
    combos = [(k, b) for k in ds.k.values for b in ds.beta.values]
    nd = ds.sizes["d"]
    fig, axes = plt.subplots(len(combos), nd, figsize=(4.3 * nd, 3.1 * len(combos)), squeeze=False, sharey=True)
    for r, (k, beta) in enumerate(combos):
        for c, d in enumerate(ds.d.values):
            ax = axes[r, c]
            scale = float(k) * math.log(float(d))
            x = ds.n.values / scale
            for est in ds.estimator.values:
                if est == ORACLE:
                    continue
                cur = ov.sel(d=d, k=k, beta=beta, estimator=est)
                if not np.isfinite(cur.values).any():
                    continue
                color, marker = STYLE.get(str(est), ("C5", "x"))
                ax.plot(x, cur.mean("seed"), color=color, marker=marker, ms=4, label=str(est),
                        lw=2 if est == NETWORK else 1.2)
                ax.fill_between(x, cur.min("seed"), cur.max("seed"), color=color, alpha=0.12)
            for name, ls in (("it", ":"), ("poly", "--"), ("spectral", "-.")):
                v = float(ds[f"n_{name}"].sel(d=d, k=k, beta=beta))
                if math.isfinite(v):
                    ax.axvline(v / scale, color="0.3", ls=ls, lw=1, label=f"n_{name}" if (r, c) == (0, 0) else None)
            ax.axhline(0.5, color="0.7", lw=0.8)
            ax.axhline(1 / math.sqrt(float(d)), color="0.85", lw=0.8)
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"d={int(d)} k={int(k)} β={float(beta):g}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if r == len(combos) - 1:
                ax.set_xlabel("n / (k log d)")
            if c == 0:
                ax.set_ylabel("overlap |⟨û, u⟩|")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{ds.attrs.get('name', '')}: overlap vs n/(k log d); band = min–max over {ds.sizes['seed']} seeds; "
                 "vertical: n_IT (dotted), n_poly (dashed), n_spectral (dash-dot); grey: 1/2 and 1/sqrt(d)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
