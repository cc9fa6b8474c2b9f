"""The memorization study's numerics (science.md §7): a data set's rows at d, the two networks of
a cell, and the metrics of a cell that need no exact score. No I/O and no Prefect here: the
kind's adapter (``dsclab.studies.memorization.KIND``) calls these from the generic stages.

**Rows.** The data file of (d, seed) holds every row of the data set preprocessed at d, in the
split's order (``Dataset.permutation``: the test part first, then the training part). The training
part is cut in two halves, A (its first half) and B (the second); a cell of size n trains network A
on the first n rows of A — the first n training rows, the same whatever the grid's largest n — and
network B on the first n rows of B, disjoint from A's (so n is at most half the training part).

**Seeds.** Each network's training is seeded by the cell's key and its name (``a``, ``b``). Every
evaluation draw that is compared along n is keyed by (data set, d, seed) only, never by n: the
held-out DSM noise at each t, the I-MMSE log-SNR and noise draws, the sampler's initial noise and
Brownian path (the same for A and B: Kadkhodaie et al.), the projections of the sliced W2 and the
rows of the floors. So differences along n are paired, and A and B differ only by their data.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from dsclab import distributions, immse, noise
from dsclab.distributions import Dataset
from dsclab.errors import NonFiniteSamples
from dsclab.metrics import (SAMPLE_METRICS, heldout_dsm, memorization_fraction, nearest_two, nearest_similarity,
                            paired_similarity)
from dsclab.noise_sources import GaussianNoise
from dsclab.samplers import SAMPLERS, steps_for_nfe
from dsclab.seeds import derive_seed, rng
from dsclab.studies.memorization.spec import Cell, StudySpec
from dsclab.train import TrainConfig, TrainResult, group_size, train_group

DISTANCES = ("sliced_w2", "mmd")
"""Sample distances to the test part (``dsclab.metrics.SAMPLE_METRICS``), each with its floor."""
NETWORKS = ("a", "b")


def data_set(spec: StudySpec, d: int) -> Dataset:
    return distributions.make(spec.distribution.name, d, **spec.distribution.params)


def data_tag(spec: StudySpec) -> dict:
    """The data set's identity in every evaluation seed: its family and parameters."""
    return spec.distribution.model_dump(mode="json")


def rows(spec: StudySpec, d: int, seed: int) -> np.ndarray:
    """Every row at d in the split's order, test part first (float32)."""
    ds = data_set(spec, d)
    return ds.load()[ds.permutation(seed)].astype(np.float32)


def parts(spec: StudySpec, d: int, data: np.ndarray) -> dict[str, np.ndarray]:
    """``test``, ``train`` (the whole training part), and the halves ``a`` and ``b``."""
    ds = data_set(spec, d)
    test, train = data[:ds.n_test], data[ds.n_test:]
    half = ds.n_train // 2
    return {"test": test, "train": train, "a": train[:half], "b": train[half:2 * half]}


def train_config(spec: StudySpec) -> TrainConfig:
    return TrainConfig.of(spec.train)


def split_groups(spec: StudySpec, cells: list[Cell], device: str | None = None) -> list[list[Cell]]:
    """Cells sharing d in groups within the memory bound (two members per cell)."""
    if not cells:
        return []
    size = group_size(cells[0].d, train_config(spec), spec.group_memory_mb * 2**20, device or spec.train.device)
    size = None if size is None else max(1, size // 2)
    return [cells[i:i + size] for i in range(0, len(cells), size)] if size else [cells]


def train_cells(spec: StudySpec, cells: list[Cell], data: dict[int, np.ndarray], device: str) -> list[dict | None]:
    """Train networks A and B of every cell of a group sharing d, as one batched ensemble on
    ``device``; per cell ``{"a": payload, "b": payload}``, or None when either diverged."""
    sets, seeds = [], []
    for c in cells:
        p = parts(spec, c.d, data[c.seed])
        for net in NETWORKS:
            sets.append(torch.as_tensor(p[net][:c.n]))
            seeds.append(derive_seed("train", c.key, net))
    res = train_group(sets, seeds, estimators=["dsm"] * len(sets), config=train_config(spec), device=device)
    out = []
    for i in range(len(cells)):
        a, b = res[2 * i], res[2 * i + 1]
        out.append(None if a is None or b is None else {"a": a.payload(), "b": b.payload()})
    return out


def restore(payload: dict, device: str) -> TrainResult:
    """A network's checkpoint payload as an eval-mode model on ``device`` (evaluation never trains)."""
    return TrainResult.restore(payload, device)


def _denoised(score, y: torch.Tensor, t: float) -> torch.Tensor:
    """Tweedie's E[X_0 | X_t = y] from a score, float64."""
    tt = torch.full((y.shape[0],), float(t), dtype=torch.float64, device=y.device)
    with torch.no_grad():
        s = score(y.to(torch.float32), float(t)).to(torch.float64)
    return noise.denoiser_from_score(y.to(torch.float64), s, tt)


def generate(spec: StudySpec, cell: Cell, score, device: str) -> torch.Tensor:
    """``evaluation.n_samples`` samples of a network: the reverse SDE from N(0, I) at T to t_min,
    then the denoised E[X_0 | X_t_min] (clamped to the lattice's box), float64. The initial noise
    and the Brownian path are keyed by (data set, d, seed): the same for both networks and every n."""
    ev = spec.evaluation
    ds = data_set(spec, cell.d)
    g = rng("sample", data_tag(spec), cell.d, cell.seed)
    x = torch.randn(ev.n_samples, cell.d, generator=g).to(device)
    ts = noise.time_grid(ev.T, ev.t_min, steps_for_nfe(ev.sampler, ev.nfe), ev.schedule)
    with torch.no_grad():
        y = SAMPLERS[ev.sampler](score, x, ts, noise=GaussianNoise(x.shape, g, device=device))
    y = _denoised(score, y, ev.t_min)
    if not torch.isfinite(y).all():
        raise NonFiniteSamples(f"sampler {ev.sampler} at nfe={ev.nfe} produced non-finite samples")
    return y.clamp(*ds.box) if ds.box else y


def likelihood(spec: StudySpec, cell: Cell, score, train_rows: torch.Tensor, parts_: dict, device: str) -> dict:
    """The I-MMSE NLL of the test part (bits per dimension, with SE) of the network and of the
    Gaussian moment-matched to the cell's training rows, on the same (alpha, eps) draws (keyed by
    (data set, d, seed)). Lattice data: the discrete estimator with the Gaussian left-tail term and
    denoisers clamped to the box; else the continuous one with the matched reference. The proposal's
    spectrum is the whole training part's covariance (the same for every n), its eigenvalues held
    above 1e-4 of the largest (constant pixels, e.g. the digits' corners, have none). The Gaussian's
    covariance gets a ridge of 1e-4 of its mean variance (n < d rows give a singular one).

    On a lattice both models are completed above the top of the networks' training range,
    log-SNR logsnr(train.t_min), by rounding onto the lattice (``immse.held_out_nll``'s ``lattice``,
    ``top``), the same rule for both and for every n and d: the network is a fitted model only where
    it was trained (the sampler stops at t_min too), and a denoiser that never snaps to the lattice
    makes the discrete estimate grow by 1/2 nat per coordinate and unit of log-SNR up to the range's
    end, an end set by the spectrum, not by the lattice (at d = 64 the digits' range reaches 14.6,
    8.4 units above the training top, and this term was most of the estimate)."""
    ds = data_set(spec, cell.d)
    test = torch.as_tensor(parts_["test"], dtype=torch.float64, device=device)
    lam = immse.spectrum(torch.cov(torch.as_tensor(parts_["train"], dtype=torch.float64).T))
    lam = lam.clamp_min(1e-4 * float(lam.max()))
    mean, cov = immse.empirical_moments(train_rows)
    # n < d rows give a singular covariance (eigenvalues ~ -1e-17 by rounding): a small ridge
    cov = cov + (1e-4 * float(cov.diagonal().mean()) + 1e-12) * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    gauss = immse.moment_matched_gaussian(mean, cov)
    dens = [immse.denoiser_from_score_fn(score, dtype=torch.float32), gauss.denoise]
    lattice = ds.lattice_points()
    top = None if lattice is None else float(noise.logsnr(spec.train.t_min))
    bpd = immse.held_out_nll(test, dens, rng("immse", data_tag(spec), cell.d, cell.seed), lam=lam, box=ds.box,
                             n_alpha=spec.evaluation.n_alpha, lattice=lattice, top=top)
    v, s = bpd.value.cpu().numpy(), bpd.se.cpu().numpy()
    return {"nll_bpd": v[0], "nll_bpd_se": s[0], "nll_gauss_bpd": v[1], "nll_gauss_bpd_se": s[1]}


def evaluate(spec: StudySpec, cell: Cell, data: np.ndarray, trained: dict, device: str) -> xr.Dataset:
    """Every metric of one cell (science.md §7) as a Dataset over (t, network, sample, pixel)."""
    ev = spec.evaluation
    t0 = time.perf_counter()
    ds = data_set(spec, cell.d)
    p = parts(spec, cell.d, data)
    nets = {k: restore(trained[k], device) for k in NETWORKS}
    score = {k: r.model.score for k, r in nets.items()}
    own = {k: torch.as_tensor(p[k][:cell.n], dtype=torch.float64, device=device) for k in NETWORKS}
    test = torch.as_tensor(p["test"], dtype=torch.float64, device=device)
    centre = torch.as_tensor(p["train"], dtype=torch.float64, device=device).mean(0)
    tag = data_tag(spec)

    dsm = [heldout_dsm(score["a"], test, t, rng("heldout-dsm", tag, cell.d, cell.seed, t)) for t in ev.t]
    nll = likelihood(spec, cell, score["a"], own["a"], p, device)
    y = {k: generate(spec, cell, score[k], device) for k in NETWORKS}

    m = ev.n_samples
    g_floor = rng("floor", tag, cell.d, cell.seed)
    floor_rows = torch.as_tensor(p["train"], dtype=torch.float64, device=device)[
        torch.randperm(ds.n_train, generator=g_floor)[:m].to(device)]

    def distance(k, x):  # the same projections for every n and the floor
        return SAMPLE_METRICS[k](x, test, rng("projections", tag, cell.d, cell.seed, k))

    keep = ev.keep
    _, _, nearest = nearest_two(y["a"][:keep], own["a"]) if keep else (None, None, torch.zeros(0, dtype=torch.long))
    up = lambda v: ds.upsample(v.cpu().numpy()) if len(v) else np.zeros((0, ds.native))
    out = xr.Dataset(
        {
            "dsm_heldout": (("t",), np.array(dsm)),
            **{k: ((), float(v)) for k, v in nll.items()},
            **{k: ((), distance(k, y["a"])) for k in DISTANCES},
            **{f"{k}_floor": ((), distance(k, floor_rows)) for k in DISTANCES},
            "memorized": (("network",), np.array([memorization_fraction(y[k], own[k]) for k in NETWORKS])),
            "memorized_test": ((), memorization_fraction(test, own["a"])),
            "similarity_ab": ((), paired_similarity(y["a"], y["b"], centre)),
            "train_similarity": (("network",), np.array([nearest_similarity(y[k], own[k], centre) for k in NETWORKS])),
            "samples": (("network", "sample", "pixel"), np.stack([up(y[k][:keep]) for k in NETWORKS])),
            "samples_nearest": (("sample", "pixel"), up(own["a"][nearest])),
            "train_loss": (("network",), np.array([nets[k].loss for k in NETWORKS])),
            "train_seconds": ((), float(sum(nets[k].seconds for k in NETWORKS))),
        },
        coords={"t": list(ev.t), "network": list(NETWORKS)},
    )
    out["eval_seconds"] = ((), time.perf_counter() - t0)
    return out
