"""One score-learning cell: its training data, its training (:func:`train_cell`, the kind's train
stage, on that stage's device) and its evaluation (:func:`evaluate`, with the trained network
restored: :func:`restore`); numerics only: no Prefect, no store.

Common random numbers: the clean data and the per-row times depend on (d, seed) only, the noise
on (d, seed, data_mode), the initialisation and minibatches on (d, seed, model), and all
evaluation draws on (d, seed), so ratios between estimators or data modes of one
(d, n, seed, model) are paired. Every seed comes from :func:`dsclab.seeds.derive_seed`.
"""
from __future__ import annotations

import dataclasses

import threading
import time

import numpy as np
import torch
import xarray as xr

from dsclab.studies.score_learning import bootstrap as bs
from dsclab.studies.score_learning import bootstrap_targets as bt
from dsclab import noise
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.errors import NonFiniteSamples
from dsclab.metrics import gaussian_kl, score_errors, sliced_w2
from dsclab.noise_sources import GaussianNoise
from dsclab.samplers import SAMPLERS, steps_for_nfe
from dsclab.seeds import DATA_BLOCK, block_rows, rng
from dsclab.train import device_score

from .spec import ScoreLearningSpec, SLCell

_DATA_CACHE: dict[tuple, bs.NoisedData] = {}
_DATA_LOCK = threading.Lock()
_DATA_CACHE_SIZE = 2


def training_data(spec: ScoreLearningSpec, d: int, seed: int, data_mode: str) -> bs.NoisedData:
    """The fixed training set of every cell with this (d, seed, data_mode), at max(n) rows rounded
    up to whole blocks; a cell uses the first n (the same whatever the grid's largest n). Clean
    points and row times depend on (d, seed) only. The last few sets are
    kept in memory (float32), so cells sharing one (the flow runs them together) draw it once."""
    key = (spec.settings_hash, block_rows(max(spec.n)), d, seed, data_mode)
    with _DATA_LOCK:
        if key in _DATA_CACHE:
            return _DATA_CACHE[key]
    data = draw_training_data(spec, d, seed, data_mode)
    data = bs.NoisedData(data.x0.float(), data.times, data.xt.float(), data.prev.float(), data.t_prev)
    with _DATA_LOCK:
        _DATA_CACHE[key] = data
        while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
            _DATA_CACHE.pop(next(iter(_DATA_CACHE)))
    return data


def draw_training_data(spec: ScoreLearningSpec, d: int, seed: int, data_mode: str) -> bs.NoisedData:
    """Draw the training set of (d, seed, data_mode) at max(n) rows rounded up to whole blocks of
    ``dsclab.seeds.DATA_BLOCK`` rows (float64, not cached). Rows are independent; block b's clean
    points, row times and noise come from generators of (..., b), so the first n rows do not
    depend on the grid's largest n."""
    law = spec.law(d)
    dist_key = spec.distribution.model_dump(mode="json")
    tr = spec.train
    parts = []
    for b in range(block_rows(max(spec.n)) // DATA_BLOCK):
        x0 = law.sample(DATA_BLOCK, rng("sl-x0", dist_key, d, seed, b))
        times = bs.row_times(DATA_BLOCK, tr.K, tr.t_min, tr.T, rng("sl-times", d, seed, b))
        parts.append(bs.DATA_MODES[data_mode](x0, times, rng("sl-noise", dist_key, d, seed, data_mode, b)))
    return bs.NoisedData(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(bs.NoisedData)))


def fit_config(spec: ScoreLearningSpec) -> bs.FitConfig:
    tr, b = spec.train, spec.bsm
    return bs.FitConfig(steps=tr.steps, batch_size=tr.batch_size, lr=tr.lr, t_c=b.t_c, lag=b.lag, mix=b.mix,
                        grid_ratio=tr.ratio, T=tr.T)


def make_model(spec: ScoreLearningSpec, cell: SLCell, generator: torch.Generator) -> torch.nn.Module:
    """The cell's network (its hypothesis class at the spec's width and depth), initialised from
    ``generator``."""
    return bs.HYPOTHESES[cell.model](cell.d, width=spec.train.width, depth=spec.train.depth, generator=generator)


def train_cell(spec: ScoreLearningSpec, cell: SLCell, device: str = "cpu",
               data: bs.NoisedData | None = None) -> bs.FitResult:
    """Fit the cell's network on the first n rows of its training set, on ``device`` (the draws
    come from CPU generators, the same on every device); a loss that becomes NaN or infinite
    raises :class:`dsclab.errors.TrainingDiverged` (the cell is marked failed)."""
    data = (data or training_data(spec, cell.d, cell.seed, cell.data_mode)).head(cell.n).to(device)
    model = make_model(spec, cell, rng("sl-init", cell.d, cell.seed, cell.model)).to(device)
    g = rng("sl-batches", cell.d, cell.seed, cell.model)
    return bs.fit(model, data, cell.estimator, fit_config(spec), g, law=spec.law(cell.d))


def payload(result: bs.FitResult) -> dict:
    """The checkpoint payload of a trained cell: its network's state (CPU tensors) and its training
    record."""
    return {"state_dict": {k: v.cpu() for k, v in result.model.state_dict().items()},
            "loss": result.loss, "seconds": result.seconds}


def restore(spec: ScoreLearningSpec, cell: SLCell, payload: dict, device: str = "cpu") -> bs.FitResult:
    """The inverse of :func:`payload`: the cell's network in eval mode on ``device``, and its record."""
    model = make_model(spec, cell, torch.Generator())
    model.load_state_dict(payload["state_dict"])
    return bs.FitResult(model.to(device).eval(), payload["loss"], payload["seconds"])


def mode_tv(law: GaussianMixture, y: torch.Tensor, t: float) -> float:
    """1/2 sum_j |mean_y r_j(y, t) - pi_j| (a lower bound on TV(law of y, q_t) by data processing)."""
    r = law.responsibilities(y.to(torch.float64), t).mean(dim=0)
    return float(0.5 * (r - law.weights).abs().sum())


def gauss_kl_to(law: GaussianMixture, y: torch.Tensor, t: float) -> float:
    """KL(N(mean, cov of y) || N(mean, cov of q_t)): the Gaussian fit of samples against the exact
    first two moments of q_t (e^{-t} mean_0, e^{-2t} Cov_0 + sigma_t^2 I)."""
    qt = law.at(t)
    y = y.to(torch.float64)
    return gaussian_kl(y.mean(0), torch.cov(y.T).reshape(law.d, law.d), qt.mean(), qt.cov())


def evaluate(spec: ScoreLearningSpec, cell: SLCell, model, result: bs.FitResult | None = None) -> xr.Dataset:
    """All metrics of one trained cell as a Dataset over (t, delta) (the variables of
    :mod:`.layout`); ``model`` runs on its device, the draws and metrics on the CPU. Samples that
    are not finite raise :class:`dsclab.errors.NonFiniteSamples`."""
    ev, tr = spec.evaluation, spec.train
    t0 = time.perf_counter()
    law = spec.law(cell.d)
    score = device_score(model)
    # common random numbers across n, estimators and models: every draw depends on (law, d, seed)
    # and, per t, on t alone (a value does not depend on the rest of the t grid)
    crn = (spec.distribution.model_dump(mode="json"), cell.d, cell.seed)
    errs = score_errors(score, law, ev.t, ev.n_score, ev.delta, lambda t: rng("sl-score", *crn, t))
    tv, tv1, tvo = (np.full(len(ev.t), np.nan) for _ in range(3))
    for i, t in enumerate(ev.t):
        g = rng("sl-var", *crn, t)
        x = law.sample(ev.n_var, g, t=t)
        t_prev = t / tr.ratio
        state = g.get_state()
        kw = dict(estimator=cell.estimator, t_c=spec.bsm.t_c, mix=spec.bsm.mix)
        h_hat = law.score if bs.BOOTSTRAP_ESTIMATORS[cell.estimator].oracle else score  # the h_hat the cell trained with
        v, v1 = bt.conditional_variance(bt.target_draws(law, x, t, t_prev, ev.n_draws, g, score_prev=h_hat, **kw))
        g.set_state(state)  # the oracle uses the same posterior draws (paired)
        vo, _ = bt.conditional_variance(bt.target_draws(law, x, t, t_prev, ev.n_draws, g, score_prev=law.score,
                                                        dtype=torch.float64, **kw))
        tv[i], tv1[i], tvo[i] = float(v.mean()), float(v1.mean()), float(vo.mean())
    T, t_min = tr.T, tr.t_min
    ts = noise.time_grid(T, t_min, steps_for_nfe(ev.sampler, ev.nfe), ev.schedule)
    gs = rng("sl-sample", cell.key)
    y0 = law.sample(ev.n_samples, gs, t=T).to(torch.float32)
    with torch.no_grad():
        y = SAMPLERS[ev.sampler](score, y0, ts, noise=GaussianNoise(y0.shape, gs)).to(torch.float64)
    if not torch.isfinite(y).all():
        raise NonFiniteSamples(f"sampler {ev.sampler} produced non-finite samples")
    target = law.sample(ev.n_samples, rng("sl-target", *crn), t=t_min)
    target2 = law.sample(ev.n_samples, rng("sl-target-2", *crn), t=t_min)
    ds = xr.Dataset(
        {
            "score_l2": (("t",), errs["l2"]),
            "score_l2_rel": (("t",), errs["l2_rel"]),
            "score_quantile": (("t", "delta"), errs["quantile"]),
            "target_var": (("t",), tv), "target_var_1": (("t",), tv1), "target_var_oracle": (("t",), tvo),
            "sliced_w2": ((), sliced_w2(y, target, rng("sl-projections", *crn))),  # the same directions
            "sliced_w2_floor": ((), sliced_w2(target2, target, rng("sl-projections", *crn))),
            "mode_tv": ((), mode_tv(law, y, t_min)),
            "mode_tv_floor": ((), mode_tv(law, target2, t_min)),
            "kl_gauss": ((), gauss_kl_to(law, y, t_min)),
            "kl_gauss_floor": ((), gauss_kl_to(law, target2, t_min)),
            "n_params": ((), float(bs.n_parameters(model))),
            "train_seconds": ((), result.seconds if result else np.nan),
            "train_loss": ((), result.loss if result else np.nan),
        },
        coords={"t": list(ev.t), "delta": list(ev.delta)},
    )
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds


