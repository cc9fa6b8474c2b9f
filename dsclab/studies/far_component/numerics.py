"""The far-component study (Gupta, Parulekar, Price and Xun 2023, the two laws of the lower-bound
construction of their Figure 1, learned by a network; science.md §2, project issue 28 item 2).
The paper's figure itself could not be read: this trains a network on the construction science.md
and project issue 28 name; it does not reproduce the figure's numbers.

The laws are those of the two-scores study (``dsclab.studies.two_scores``, where the learner is
the ERM over their two exact scores):

    p_1 = N(0, I_d)  (the control: eta = 0, the bulk alone),
    p_2 = (1 - eta) N(0, I_d) + eta N(R e_1, I_d).

Under the OU process X_t = e^-t X_0 + sigma_t Z (``dsclab.noise``) unit-variance components stay
unit-variance: q_t of p_2 is (1 - eta) N(0, I) + eta N(e^-t R e_1, I), whose exact score is

    s_2(x, t) = -x + r_t(x) e^-t R e_1,   logit r_t(x) = log(eta / (1 - eta)) + e^-t R x_1 - e^-2t R^2 / 2,

and s_1(x, t) = -x. Here the learner is a ``dsclab.nets.ScoreMLP`` trained by DSM
(``dsclab.train.train_score``) on the cell's n samples. Paper's statement (Figure 1, as
science.md §2 gives it): with m << 1/eta samples no learner can tell p_2 from p_1, so a score
learned from p_2 is large in L2 (about eta e^-2t R^2 from the far component it never saw) with high
probability, while its (1 - delta)-quantile error for delta > eta is not.

The control. A network's error has a part the far component causes and a part it would have on the
bulk alone (its bulk error, which at small n is large: the issue-28 reading of
``studies/quantile_vs_l2.yaml``, where the bulk error dominates and the (1 - delta)-quantile, a
high quantile of a bulk error, exceeds the L2 error's root). Each cell of ``p2`` has a control cell
of ``p1`` with the same (d, n, seed), coupled:

* the same draws: sample i is z_i + R e_1 1[u_i < eta] under p_2 and z_i under p_1 (one (z_i, u_i)
  for both), so the control's samples are p_2's with the far shift removed; with no far sample
  among the n the two training sets are equal;
* the same training: initialisation, minibatches, times and noise from the same generators, so two
  equal training sets give the same network;
* the same evaluation draws: the points of q_t are z + e^-t R e_1 1[u < eta] and z.

The report (:mod:`.report`) subtracts the control: the far component's part of the L2 error is
L2[p_2] - L2[p_1] and of a quantile error q_delta[p_2] - q_delta[p_1]. The store also keeps the
far component's share of the L2 error directly, ``far_l2`` = E[||s_hat - s||^2 1(x from the far
component)], and ``bulk_score_l2`` = E||s_1 - s||^2 under the truth: the L2 error of the bulk's
exact score, what a learner pays at best for never seeing the far component.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import xarray as xr

from dsclab import noise
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.metrics import quantile_error
from dsclab.seeds import derive_seed, draw_rows, rng
from dsclab.train import TrainConfig, TrainResult, device_score, train_score

from .spec import FarCell, FarComponentSpec

F64 = torch.float64


def law(truth: str, d: int, eta: float, R: float) -> GaussianMixture:
    """p_1 (one component N(0, I)) or p_2 ((1 - eta) N(0, I) + eta N(R e_1, I)) as a
    ``GaussianMixture`` (its ``score(x, t)`` is the exact score of q_t)."""
    if truth == "p1":
        return GaussianMixture([1.0], np.zeros((1, d)), np.eye(d)[None])
    means = np.zeros((2, d))
    means[1, 0] = R
    return GaussianMixture([1.0 - eta, eta], means, np.broadcast_to(np.eye(d), (2, d, d)).copy())


def coupled(truth: str, zu: torch.Tensor, eta: float, R: float, t: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of q_t of ``truth`` from shared draws ``zu (m, d + 1)`` (z ~ N(0, I_d), u ~ U(0, 1)):
    x = z + e^-t R e_1 far with far = 1[u < eta] under p_2, x = z (far = 0) under p_1. Returns
    (x (m, d), far (m,))."""
    z, u = zu[:, :-1], zu[:, -1]
    far = (u < eta).to(F64) if truth == "p2" else torch.zeros_like(u)
    x = z.clone()
    x[:, 0] += noise.mean_coef(float(t)) * R * far
    return x, far


def _draws(m: int, d: int, g: torch.Generator) -> torch.Tensor:
    return torch.cat([torch.randn(m, d, generator=g, dtype=F64), torch.rand(m, 1, generator=g, dtype=F64)], dim=1)


def training_set(spec: FarComponentSpec, cell: FarCell) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's n samples and their far-component labels; the draws depend on (d, seed) only (the
    same for both truths, the first n rows the same whatever the grid's largest n)."""
    zu = draw_rows(lambda m, g: _draws(m, cell.d, g), cell.n, "far-component-data", cell.d, cell.seed)
    return coupled(cell.truth, zu, spec.eta, spec.R)


def train_seed(cell: FarCell) -> int:
    """The training seed (initialisation, minibatches, times, noise): (d, seed) only, so a cell and
    its control train with the same randomness."""
    return derive_seed("far-component-train", cell.d, cell.seed)


def train_cell(spec: FarComponentSpec, cell: FarCell, device) -> TrainResult:
    x, _ = training_set(spec, cell)
    return train_score(x, config=TrainConfig.of(spec.train), seed=train_seed(cell), device=device)


def errors(score_hat, spec: FarComponentSpec, cell: FarCell) -> dict[str, np.ndarray]:
    """Per t, on ``evaluation.n_score`` fresh points of q_t of the truth (shared draws, the same for
    every n and both truths): the L2 error of ``score_hat`` and its far component's share, its
    quantile errors, and the L2 error of s_1 = -x (``bulk_score_l2``)."""
    ev = spec.evaluation
    truth = law(cell.truth, cell.d, spec.eta, spec.R)
    out = {k: [] for k in ("l2", "far_l2", "quantile", "bulk_l2")}
    for t in ev.t:
        zu = _draws(ev.n_score, cell.d, rng("far-component-eval", cell.d, cell.seed, float(t)))
        x, far = coupled(cell.truth, zu, spec.eta, spec.R, float(t))
        s = truth.score(x, float(t))
        with torch.no_grad():
            sh = score_hat(x.to(torch.float32), float(t)).to(F64)
        e2 = ((sh - s) ** 2).sum(1)
        out["l2"].append(float(e2.mean()))
        out["far_l2"].append(float((e2 * far).mean()))
        out["quantile"].append(quantile_error(e2.sqrt(), ev.delta))
        out["bulk_l2"].append(float(((-x - s) ** 2).sum(1).mean()))
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def evaluate(spec: FarComponentSpec, cell: FarCell, trained: dict, device) -> xr.Dataset:
    """One cell's values: its network (restored from ``trained``) evaluated per t and delta, the
    far samples among its n, the training record."""
    t0 = time.perf_counter()
    res = TrainResult.restore(trained, device)
    err = errors(device_score(res.model), spec, cell)
    _, far = training_set(spec, cell)
    ds = xr.Dataset(
        {
            "score_l2": (("t",), err["l2"]),
            "far_l2": (("t",), err["far_l2"]),
            "score_quantile": (("t", "delta"), err["quantile"]),
            "bulk_score_l2": (("t",), err["bulk_l2"]),
            "far_samples": ((), float(far.sum())),
            "train_seconds": ((), float(res.seconds)),
            "train_loss": ((), float(res.loss)),
        },
        coords={"t": list(spec.evaluation.t), "delta": list(spec.evaluation.delta)},
    )
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds
