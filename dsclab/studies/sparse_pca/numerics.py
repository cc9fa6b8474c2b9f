"""The sparse-PCA numerics of one cell: the law and its data, the batched training of the
networks, and the evaluation of every estimator (see :mod:`dsclab.studies.sparse_pca` for the
design). Plain numerics: no Prefect, no store."""
from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from dsclab import noise
from dsclab.studies.sparse_pca import estimators as spe
from dsclab.distributions.sparse_pca import SparsePCA
from dsclab.errors import NonFiniteSamples
from dsclab.metrics import SlicedW2, gaussian_fit_kl
from dsclab.noise_sources import GaussianNoise, Replay
from dsclab.samplers import SAMPLERS, steps_for_nfe, uses_levy_area
from dsclab.seeds import block_rows, derive_seed, draw_rows, rng
from dsclab.studies.sparse_pca.layout import PER_ESTIMATOR
from dsclab.studies.sparse_pca.spec import NETWORK, ORACLE, SparsePCACell, SparsePCAEvalSpec, SparsePCASpec
from dsclab.train import TrainConfig, TrainResult, device_score, group_size, train_group

# -------------------------------------------------------------------------------------------
# Data and training
# -------------------------------------------------------------------------------------------

def support_seed(d: int, k: int, seed: int) -> int:
    """The seed u is drawn from: one u per (d, k, seed), shared by every beta and n."""
    return derive_seed("sparse-pca-spike", d, k, seed)


def law(d: int, k: int, beta: float, seed: int) -> SparsePCA:
    """The law N(0, I_d + beta u u^T) of a cell, its u drawn from :func:`support_seed`."""
    return SparsePCA(d, k, beta, support_seed(d, k, seed))


def data_rows(spec: SparsePCASpec) -> int:
    """Rows of a data file: max(n) rounded up to whole blocks (``dsclab.seeds.draw_rows``)."""
    return block_rows(max(spec.n))


def generate_data(spec: SparsePCASpec, d: int, k: int, beta: float, seed: int) -> np.ndarray:
    """:func:`data_rows` draws (float64) from the law of (d, k, beta, seed), in independently
    seeded blocks; a cell uses the first n, the same whatever the grid's largest n."""
    return draw_rows(law(d, k, beta, seed).sample, data_rows(spec), "sparse-pca-data", d, k, beta, seed).numpy()


def train_config(spec: SparsePCASpec) -> TrainConfig:
    return TrainConfig.of(spec.train)


def train_cells(spec: SparsePCASpec, cells: list[SparsePCACell], data: dict[tuple, np.ndarray],
                device: str = "cpu") -> list[TrainResult | None]:
    """Train the network of each cell (cells share d) as one batched ensemble, or on a CUDA
    device as consecutive ensembles within a share of its free memory (``dsclab.train.group_size``);
    ``data[(k, beta, seed)]`` is that law's full dataset. A diverged member gives ``None``."""
    if not cells:
        return []
    cfg = train_config(spec)
    xs = [torch.as_tensor(data[(c.k, c.beta, c.seed)][: c.n], dtype=torch.float32) for c in cells]
    seeds = [derive_seed("sparse-pca-train", c.key) for c in cells]
    size = group_size(cells[0].d, cfg, None, device) or len(cells)
    out: list[TrainResult | None] = []
    for i in range(0, len(cells), size):
        out += train_group(xs[i:i + size], seeds[i:i + size], estimators=["dsm"] * len(xs[i:i + size]),
                           config=cfg, device=device)
    return out


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


N_PROJ = 128  # directions of the sliced W2 (fixed per cell)


def replay_noise(ev: SparsePCAEvalSpec, shape, generator: torch.Generator) -> Replay:
    """The cell's Brownian increments, the same for every estimator's sampler run (common random
    numbers): float32 (dW, H) from ``generator``, H drawn only when ``ev.sampler`` uses it."""
    levy_area = uses_levy_area(SAMPLERS[ev.sampler])
    return Replay(GaussianNoise(shape, generator, torch.float32, draw_dtype=torch.float32, levy_area=levy_area))


def draw_samples(ev: SparsePCAEvalSpec, score, x0: torch.Tensor, noise_: Replay) -> torch.Tensor:
    """Samples with ``score`` from the start ``x0`` (N(0, I) at ``ev.T``) down to ``ev.t_min`` with
    ``ev.sampler`` at ``ev.nfe`` on the ``ev.schedule`` grid and the replayed Brownian path. The
    sampler runs in float32 (Gaussian scores compute in float64 inside); float64 result."""
    ts = noise.time_grid(ev.T, ev.t_min, steps_for_nfe(ev.sampler, ev.nfe), ev.schedule)
    with torch.no_grad():
        y = SAMPLERS[ev.sampler](score, x0.to(torch.float32), ts, noise=noise_.rewind()).to(torch.float64)
    if not torch.isfinite(y).all():
        raise NonFiniteSamples(f"sampler {ev.sampler} produced non-finite samples")
    return y


def evaluate(spec: SparsePCASpec, cell: SparsePCACell, x: np.ndarray, network=None,
             result: TrainResult | None = None) -> xr.Dataset:
    """Every estimator of the spec on the cell's first n rows of ``x`` (the full dataset).

    ``network`` is the trained ``ScoreMLP`` (needed when ``network`` is an estimator; it runs in
    float32 on its device, the Gaussian scores in float64 on the CPU). Every estimator sees the same score-error points
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
    exact = dist.score
    points = []
    for t in ev.t:  # each t its own points: a value does not depend on the rest of the t grid
        xt = dist.sample(ev.n_score, rng("sparse-pca-score", cell.key, t), t=float(t))
        points.append((float(t), xt, exact(xt, float(t))))
    target = dist.sample(ev.n_samples, rng("sparse-pca-target", cell.key), t=ev.t_min)
    target2 = dist.sample(ev.n_samples, rng("sparse-pca-target-2", cell.key), t=ev.t_min)
    g = rng("sparse-pca-sampler", cell.key)
    sw2 = SlicedW2(target, rng("sparse-pca-proj", cell.key), n_proj=N_PROJ)
    x0 = torch.randn(ev.n_samples, d, generator=g)
    replay = replay_noise(ev, x0.shape, g)
    E, T, size = len(spec.estimator), len(ev.t), max(spec.d)
    vals = {name: np.full(E, np.nan) for name in (*PER_ESTIMATOR, "sliced_w2", "kl_gauss")}  # .layout's per-estimator variables
    l2, l2_rel = np.full((E, T), np.nan), np.full((E, T), np.nan)
    u_hat_all = np.full((E, size), np.nan)
    for j, name in enumerate(spec.estimator):
        if name == NETWORK:
            if network is None:
                raise ValueError("the network estimator needs a trained network")
            score, direction, dtype = device_score(network), None, torch.float32
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

