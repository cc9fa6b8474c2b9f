"""The sample-complexity study's numerics: data, training and evaluation of one cell, and the
labelled layout of its results (science.md §2). No I/O and no Prefect here: the kind's adapter
(``dsclab.studies.sample_complexity.KIND``) calls these from the generic stages of ``tasks.stages``.

Results layout (the store's template):

* dims ``d, n, seed, estimator`` (the cell axes), ``sampler, nfe`` (evaluations), ``t`` (score-error
  grid) and ``delta`` (quantile levels);
* ``status (d, n, seed, estimator)`` int8, a :class:`dsclab.study.Status` (0 pending, 1 done, 2 failed);
* ``train_seconds``, ``train_loss``, ``eval_seconds``, ``mmd_floor`` per cell;
* ``score_l2``, ``score_l2_rel (..., t)``; ``score_quantile (..., t, delta)``;
* ``sliced_w2``, ``mmd``, ``w2``, ``kl_gauss (..., sampler, nfe)``;
* ``nll_immse``, ``nll_immse_se``, ``nll_exact`` (nats per dimension) and ``mmse (..., logsnr)``:
  the trained model as a likelihood model through the I-MMSE identity (science.md §6).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from dsclab import distributions, immse, layout, noise
from dsclab.errors import NonFiniteSamples
from dsclab.metrics import SAMPLE_METRICS, mmd, score_errors
from dsclab.noise_sources import GaussianNoise
from dsclab.samplers import SAMPLERS, steps_for_nfe
from dsclab.seeds import derive_seed
from dsclab.studies.sample_complexity.spec import Cell, StudySpec
from dsclab.train import TrainConfig, TrainResult, group_size, train_group

CELL_DIMS = ("d", "n", "seed", "estimator")

VARIABLES = {
    # name: (extra dims, long name, units)
    "train_seconds": ((), "training wall time", "s"),
    "train_loss": ((), "final training loss (mean per sample, last 10% of steps)", "1"),
    "eval_seconds": ((), "evaluation wall time", "s"),
    "score_l2": (("t",), "L2 score error E||s_hat - s||^2", "1"),
    "score_l2_rel": (("t",), "relative L2 score error E||s_hat - s||^2 / E||s||^2", "1"),
    "score_quantile": (("t", "delta"), "(1 - delta)-quantile of ||s_hat - s||", "1"),
    "sliced_w2": (("sampler", "nfe"), "sliced W2 distance of samples to q_t_min", "1"),
    "mmd": (("sampler", "nfe"), "RBF MMD of samples to q_t_min", "1"),
    "w2": (("sampler", "nfe"), "exact W2 distance of samples to q_t_min (optimal transport)", "1"),
    "kl_gauss": (("sampler", "nfe"), "KL between Gaussian fits of samples and q_t_min", "nats"),
    "mmd_floor": ((), "RBF MMD between two independent target samples (bias floor)", "1"),
    "nll_immse": ((), "I-MMSE estimate of -log p(x) of the trained model on held-out data (matched-Gaussian "
                      "reference; discrete estimator for lattice data)", "nats per dimension"),
    "nll_immse_se": ((), "standard error of nll_immse (held-out points and log-SNR draws)", "nats per dimension"),
    "nll_exact": ((), "exact -log p(x) of the data law averaged over the same held-out points", "nats per dimension"),
    "mmse": (("logsnr",), "data-averaged noise-prediction MSE E||eps - eps_hat||^2 / d of the trained model", "1"),
}

COORD_ATTRS = layout.coord_attrs("d", "n", "seed", "estimator", "sampler", "nfe", "t", "delta", "logsnr")


def template(spec: StudySpec) -> xr.Dataset:
    """The empty store: every dim, coordinate and attribute; floats NaN, status pending."""
    coords = {
        "d": np.array(spec.d, dtype=np.int64), "n": np.array(spec.n, dtype=np.int64),
        "seed": np.array(spec.seed, dtype=np.int64), "estimator": np.array(spec.estimator, dtype=str),
        "sampler": np.array(spec.sampler, dtype=str), "nfe": np.array(spec.nfe, dtype=np.int64),
        "t": np.array(spec.evaluation.t, dtype=np.float64), "delta": np.array(spec.evaluation.delta, dtype=np.float64),
        "logsnr": np.array(spec.evaluation.logsnr, dtype=np.float64),
    }
    variables = {name: (CELL_DIMS + extra, long_name, units) for name, (extra, long_name, units) in VARIABLES.items()}
    return layout.template(spec, coords, CELL_DIMS, variables, COORD_ATTRS, attrs={
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise)"})


def generate_data(spec: StudySpec, d: int, seed: int) -> np.ndarray:
    """The training data of every cell with this (d, seed): max(n) draws; a cell uses a prefix."""
    dist = distributions.make(spec.distribution.name, d, **spec.distribution.params)
    g = torch.Generator().manual_seed(derive_seed("data", spec.distribution.model_dump(mode="json"), d, seed))
    return dist.sample(max(spec.n), g).numpy()


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
    g = torch.Generator().manual_seed(derive_seed("immse", spec.distribution.model_dump(mode="json"), cell.d, cell.seed))
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
    g = torch.Generator().manual_seed(derive_seed("eval", cell.key))
    errs = score_errors(score_hat, dist, ev.t, ev.n_score, ev.delta, g)
    target = dist.sample(ev.n_samples, g, t=ev.t_min)
    target2 = dist.sample(ev.n_samples, g, t=ev.t_min)
    names = list(SAMPLE_METRICS.builtin_names)  # the template's variables, whatever plugins add
    vals = {k: np.full((len(spec.sampler), len(spec.nfe)), np.nan) for k in names}
    for i, name in enumerate(spec.sampler):
        for j, nfe in enumerate(spec.nfe):
            ts = noise.time_grid(ev.T, ev.t_min, steps_for_nfe(name, nfe), ev.schedule)
            gs = torch.Generator().manual_seed(derive_seed("sample", cell.key, name, nfe))
            x = torch.randn(ev.n_samples, cell.d, generator=gs)
            with torch.no_grad():
                y = SAMPLERS[name](score_hat, x, ts, noise=GaussianNoise(x.shape, gs)).to(torch.float64)
            if not torch.isfinite(y).all():
                raise NonFiniteSamples(f"sampler {name} at nfe={nfe} produced non-finite samples")
            for k in names:
                vals[k][i, j] = SAMPLE_METRICS[k](y, target, g)
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
            "mmd_floor": ((), mmd(target2, target)),
            "train_seconds": ((), result.seconds if result else np.nan),
            "train_loss": ((), result.loss if result else np.nan),
        },
        coords={"t": list(ev.t), "delta": list(ev.delta), "sampler": list(spec.sampler), "nfe": list(spec.nfe),
                "logsnr": list(ev.logsnr)},
    )
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds
