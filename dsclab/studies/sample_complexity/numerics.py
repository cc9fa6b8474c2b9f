"""The sample-complexity study's numerics: data, training and evaluation of one cell, and the
labelled layout of its results (science.md §2). No I/O and no Prefect here: the kind's adapter
(``dsclab.studies.sample_complexity.KIND``) calls these from the generic stages of ``tasks.stages``.

Every draw of a cell is seeded by what it is for and the cell's key, and each value of an inner
axis by its own coordinate (a score error at t by (key, t); samples by (key, sampler, nfe); the
projections of a metric by (key, metric), the same for every sampler, NFE and the floor), so a
cell's numbers do not depend on the other values of any axis and a store grows in place. The
training data of (d, seed) are drawn in blocks (``dsclab.seeds.draw_rows``): the first n rows
are the same whatever the largest n of the grid.

The store's layout is in ``.layout``.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from dsclab import distributions, immse, noise
from dsclab.errors import NonFiniteSamples
from dsclab.metrics import SAMPLE_METRICS, against, score_errors
from dsclab.noise_sources import GaussianNoise
from dsclab.samplers import SAMPLERS, steps_for_nfe
from dsclab.seeds import block_rows, derive_seed, draw_rows, rng
from dsclab.studies.sample_complexity.spec import Cell, StudySpec
from dsclab.train import TrainConfig, TrainResult, group_size, train_group

def data_rows(spec: StudySpec) -> int:
    """Rows of the data file of a (d, seed): max(n) rounded up to whole blocks."""
    return block_rows(max(spec.n))


def generate_data(spec: StudySpec, d: int, seed: int, rows: int | None = None) -> np.ndarray:
    """The training data of every cell with this (d, seed): ``rows`` draws (default
    :func:`data_rows`) in independently seeded blocks (``dsclab.seeds.draw_rows``); a cell of size
    n uses the first n rows, the same whatever ``rows`` is."""
    dist = distributions.make(spec.distribution.name, d, **spec.distribution.params)
    rows = data_rows(spec) if rows is None else rows
    return draw_rows(dist.sample, rows, "data", spec.distribution.model_dump(mode="json"), d, seed).numpy()


def train_config(spec: StudySpec) -> TrainConfig:
    return TrainConfig.of(spec.train)


def train_cells(spec: StudySpec, cells: list[Cell], data: dict[int, np.ndarray], device: str) -> list[TrainResult]:
    """Train the cells of a group sharing d; ``data[seed]`` is that seed's full dataset."""
    datasets = [torch.as_tensor(data[c.seed][: c.n], dtype=torch.float32) for c in cells]
    seeds = [derive_seed("train", c.key) for c in cells]
    return train_group(datasets, seeds, estimators=[c.estimator for c in cells],
                       config=train_config(spec), device=device)


def immse_eval(spec: StudySpec, cell: Cell, score_hat, dist) -> immse.DataSetNLL:
    """The trained score as a likelihood model (science.md §6; :func:`dsclab.immse.data_set_nll`).

    ``evaluation.n_nll`` held-out points from the exact law and ``evaluation.n_alpha`` log-SNR
    draws; points and draws depend on (distribution, d, seed) only, so every n and estimator of
    that (d, seed) is scored on the same points with the same noise (common random numbers:
    differences along n are much less noisy than each value). The network runs in float32.
    """
    ev = spec.evaluation
    g = rng("immse", spec.distribution.model_dump(mode="json"), cell.d, cell.seed)
    x = dist.sample(ev.n_nll, g)
    den = immse.denoiser_from_score_fn(score_hat, dtype=torch.float32)
    return immse.data_set_nll(x, [den], dist, g, logsnr=ev.logsnr, n_alpha=ev.n_alpha)


def split_groups(spec: StudySpec, cells: list[Cell], device: str | None = None) -> list[list[Cell]]:
    """Cells sharing d in groups whose estimated training memory (``group_memory_bytes``) stays
    under ``spec.group_memory_mb`` and, on a CUDA device, under a share of its free memory
    (``dsclab.train.group_size``); each group trains as one batched ensemble. ``device``
    defaults to the spec's ``train.device`` ('auto': CUDA when this process sees one)."""
    if not cells:
        return []
    size = group_size(cells[0].d, train_config(spec), spec.group_memory_mb * 2**20, device or spec.train.device)
    return [cells[i:i + size] for i in range(0, len(cells), size)]


def evaluate(spec: StudySpec, cell: Cell, score_hat, result: TrainResult | None = None) -> xr.Dataset:
    """All metrics of one trained cell as a Dataset over (t, delta, sampler, nfe, logsnr).

    Score errors use fresh points from the exact q_t; samples start from N(0, I) at
    ``evaluation.T`` and are compared with fresh draws from q_{t_min}, the law the reverse SDE
    targets with early stopping; the likelihood variables come from :func:`immse_eval`.
    """
    ev = spec.evaluation
    t0 = time.perf_counter()
    dist = distributions.make(spec.distribution.name, cell.d, **spec.distribution.params)
    errs = score_errors(score_hat, dist, ev.t, ev.n_score, ev.delta, lambda t: rng("score", cell.key, t))
    target = dist.sample(ev.n_samples, rng("target", cell.key), t=ev.t_min)
    target2 = dist.sample(ev.n_samples, rng("target-2", cell.key), t=ev.t_min)
    names = list(SAMPLE_METRICS.builtin_names)  # the template's variables, whatever plugins add

    # the same projections (a fresh generator, one seed per metric) for every call; what depends on
    # the target alone (directions, sorted projections, bandwidth) computed once for the cell's calls
    scorers = {k: against(SAMPLE_METRICS[k], target, lambda k=k: rng("projections", cell.key, k)) for k in names}

    def metric(k, y):
        return scorers[k](y)

    vals = {k: np.full((len(spec.sampler), len(spec.nfe)), np.nan) for k in names}
    for i, name in enumerate(spec.sampler):
        for j, nfe in enumerate(spec.nfe):
            ts = noise.time_grid(ev.T, ev.t_min, steps_for_nfe(name, nfe), ev.schedule)
            gs = rng("sample", cell.key, name, nfe)
            x = torch.randn(ev.n_samples, cell.d, generator=gs)
            with torch.no_grad():
                y = SAMPLERS[name](score_hat, x, ts, noise=GaussianNoise(x.shape, gs)).to(torch.float64)
            if not torch.isfinite(y).all():
                raise NonFiniteSamples(f"sampler {name} at nfe={nfe} produced non-finite samples")
            for k in names:
                vals[k][i, j] = metric(k, y)
    nll = immse_eval(spec, cell, score_hat, dist)
    ds = xr.Dataset(
        {
            "nll_immse": ((), nll.value[0]),
            "nll_immse_se": ((), nll.se[0]),
            "nll_exact": ((), nll.exact),
            "mmse": (("logsnr",), nll.curve[0]),
            "score_l2": (("t",), errs["l2"]),
            "score_l2_rel": (("t",), errs["l2_rel"]),
            "score_quantile": (("t", "delta"), errs["quantile"]),
            **{k: (("sampler", "nfe"), v) for k, v in vals.items()},
            **{f"{k}_floor": ((), metric(k, target2)) for k in names},
            "train_seconds": ((), result.seconds if result else np.nan),
            "train_loss": ((), result.loss if result else np.nan),
        },
        coords={"t": list(ev.t), "delta": list(ev.delta), "sampler": list(spec.sampler), "nfe": list(spec.nfe),
                "logsnr": list(ev.logsnr)},
    )
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds
