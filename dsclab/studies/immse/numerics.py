"""One cell of the I-MMSE study: its data, its network's training (:func:`train_cell`, the kind's
train stage) and the evaluation of every denoiser (``denoisers``; :func:`evaluate_cell`, with the
trained network restored). Plain numerics: no Prefect, no store.

Discrete data. The discrete identity -log P(x) = 1/2 int mmse_eps d alpha needs a denoiser that
snaps to the lattice at high SNR, or the integral diverges. Every denoiser of +-1 data is
clamped to the box [-1, 1]^d (projection onto the lattice's hull, which can only lower the
error) and the integral is truncated at b = loc + clip scale, with the Gaussian left-tail term
below a. Truncation is the same as switching to hard rounding above b, whose share is
< 1e-15 nats at clip = 4 (``dsclab.immse.data_set_nll``); so the trained network is used only
where it was trained (t >= t_min of training covers alpha <= 6.2, b ~ 4.2 here).

Cells. One cell per (data, d, n, seed): it trains one network (in the train stage, on that
stage's device) and evaluates all denoisers.
Held-out points and (alpha, eps) draws depend on (data, d, seed) only, so the n-independent
denoisers (exact, gaussian, mismatched) are recomputed in every cell on identical inputs and
stored identically along n (the reruns cost less than a separate cell kind would), and
differences between n are free of the points' sampling noise (common random numbers).

Training range. By default (``train_logsnr_margin``) a network is trained on t >= t(logsnr_max
+ 0.5) of its law: the noise levels the likelihood integrates, plus a margin, and no higher SNR
(for +-1 data the denoiser there is a near-step the network would spend its capacity on).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from dsclab import immse, noise
from dsclab.errors import NonFiniteSamples
from dsclab.seeds import derive_seed, draw_rows, rng
from dsclab.studies.immse.denoisers import DENOISERS, ENSEMBLE_MEMBERS, denoisers_for
from dsclab.studies.immse.spec import ImmseCell, ImmseSpec, cell_index
from dsclab.train import TrainConfig, TrainResult, device_score, train_score


def training_data(spec: ImmseSpec, name: str, d: int, seed: int) -> torch.Tensor:
    """max(n) draws from the law for (data, d, seed), in independently seeded blocks
    (``dsclab.seeds.draw_rows``); a cell trains on the first n, the same whatever the grid's
    largest n."""
    return draw_rows(spec.law(name, d).sample, max(spec.n), "immse-train-data", spec.data_params(name), d, seed)


def train_t_min(spec: ImmseSpec, law) -> float:
    """Smallest training time: t(logsnr_max + margin) for the law's integration range (the noise
    levels the likelihood uses, plus a margin), or ``train.t_min`` when the margin is null."""
    if spec.train_logsnr_margin is None:
        return spec.train.t_min
    lam = immse.spectrum(law.cov())
    top = immse.logsnr_range(*immse.loc_scale(lam), spec.evaluation.clip)[1] + spec.train_logsnr_margin
    return float(noise.t_from_logsnr(top))


def train_config(spec: ImmseSpec, law) -> TrainConfig:
    tr = spec.train
    t_min = train_t_min(spec, law)
    if t_min >= tr.T:
        raise ValueError(f"training range is empty: t_min {t_min:.3g} >= T {tr.T}")
    return TrainConfig.of(tr, t_min=t_min)


def train_cell(spec: ImmseSpec, cell: ImmseCell, device: str) -> TrainResult:
    """Train the cell's network on its first n training points, on ``device``. A loss that becomes
    NaN or infinite raises :class:`dsclab.errors.TrainingDiverged` (the cell is marked failed)."""
    law = spec.law(cell.data, cell.d)
    x_train = training_data(spec, cell.data, cell.d, cell.seed)[: cell.n]
    return train_score(x_train.to(torch.float32), config=train_config(spec, law),
                       seed=derive_seed("immse-train", cell.key), device=device)


def evaluate_cell(spec: ImmseSpec, cell: ImmseCell, res: TrainResult) -> xr.Dataset:
    """Evaluate every denoiser on shared held-out points and draws, the trained one being
    ``res.model`` (run on its device; :func:`train_cell`'s result, restored).

    Returns the cell's values over (denoiser, logsnr). Raises on numerical failure (non-finite
    estimates: ``dsclab.errors.NonFiniteSamples``); the task marks the cell failed.
    """
    law = spec.law(cell.data, cell.d)
    t0 = time.perf_counter()
    dens = denoisers_for(cell.data, law, spec.mismatch)
    dens["trained"] = immse.denoiser_from_score_fn(device_score(res.model.eval()), dtype=torch.float32)
    order = list(dens)  # exact, gaussian, mismatched, trained
    ev = spec.evaluation
    g = rng("immse-heldout", spec.data_params(cell.data), cell.d, cell.seed)
    x = law.sample(ev.n_points, g)
    out = immse.data_set_nll(x, [dens[k] for k in order], law, g, logsnr=ev.logsnr,
                             members=[order.index(k) for k in ENSEMBLE_MEMBERS], n_alpha=ev.n_alpha, clip=ev.clip)
    if not (np.isfinite(out.value).all() and np.isfinite(out.ens_value) and np.isfinite(out.curve).all()):
        raise NonFiniteSamples(f"non-finite likelihood estimates in cell {cell_index(cell)}")
    cat = lambda a, e: np.append(np.asarray(a, dtype=np.float64), e)
    share = np.append(out.share, np.nan)
    ds = xr.Dataset(
        {
            "nll_immse": (("denoiser",), cat(out.value, out.ens_value)),
            "nll_immse_se": (("denoiser",), cat(out.se, out.ens_se)),
            "nll_gap_se": (("denoiser",), cat(out.gap_se, out.ens_gap_se)),
            "ensemble_share": (("denoiser",), share),
            "mmse": (("denoiser", "logsnr"), np.vstack([out.curve, out.ens_curve[None]])),
            "nll_exact": ((), out.exact),
            "nll_exact_se": ((), out.exact_se),
            "train_seconds": ((), res.seconds),
            "train_loss": ((), res.loss),
        },
        coords={"denoiser": list(DENOISERS), "logsnr": list(ev.logsnr)},
    )
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds
