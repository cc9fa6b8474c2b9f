"""The two-scores study (Gupta, Parulekar, Price and Xun 2023, the lower-bound construction of
their Figure 1; science.md §2). The paper's figure itself could not be read: this implements the
construction science.md and project issue 28 name, not a reproduction of the figure's numbers.

Two laws within TV distance eta whose scores differ greatly on a set of mass about eta:

    p_1 = N(0, I_d),        p_2 = (1 - eta) N(0, I_d) + eta N(R e_1, I_d).

Under the OU process X_t = e^-t X_0 + sigma_t Z (``dsclab.noise``) unit-variance components stay
unit-variance, so q_t of p_2 is (1 - eta) N(0, I) + eta N(e^-t R e_1, I) and the exact scores are

    s_1(x, t) = -x,     s_2(x, t) = -x + r_t(x) e^-t R e_1,                                  (1)
    logit r_t(x) = log(eta / (1 - eta)) + e^-t R x_1 - e^-2t R^2 / 2

(r_t the posterior weight of the far component). They differ by r_t(x) e^-t R: about e^-t R on
the far component's mass, about 0 on the bulk. The learner is the ERM over the class {s_1, s_2}:
on the n samples of the true law, each noised K times, (t, z) shared by both candidates, it picks
the score with the smaller empirical DSM loss (sigma_t^2-weighted, ``dsclab.losses``):

    L(s) = mean_{i,k} || sigma_t s(X_t, t) + z ||^2,   X_t = e^-t x_i + sigma_t z.            (2)

With no sample from the far component (probability (1 - eta)^n under p_2) the data cannot tell
the laws apart: on a few bulk points the two losses (2) differ by less than their noise and the
ERM picks either one (under p_2, studies/two_scores.yaml: wrong at 55-70% of 40 seeds for n <= 25);
as bulk points accumulate they favour s_1, whose expected loss on them is lower, and P[wrong pick]
approaches P[no far sample] = (1 - eta)^n (0.40 against 0.37 at n = 100). A learner that cannot tell the laws apart errs on one of them, and a wrong pick
under p_2 costs an L2 error E||s_hat - s||^2 of about eta e^-2t R^2, while its (1 - delta)-quantile
error for delta > eta stays near 0 (the quantile sits in the bulk, where the scores agree). That is
the statement of Figure 1: for n < 1/eta the L2 error is large with a probability bounded away from
0, the quantile error is not. (Under p_1 a wrong pick costs little in either error: s_2 departs
from s_1 only where p_1 has almost no mass.)

Draws: the n samples of (truth, d, seed) and their K noisings are drawn in blocks
(``dsclab.seeds.draw_rows``), so a cell of size n uses the first n rows whatever the grid's
largest n; the evaluation points of (truth, d, seed, t) are shared by every n (paired).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import xarray as xr

from dsclab import noise
from dsclab.metrics import quantile_error
from dsclab.seeds import draw_rows, rng
from dsclab.studies.two_scores.spec import TwoScoresCell, TwoScoresSpec

F64 = torch.float64


def sample_law(law: str, m: int, d: int, eta: float, R: float, t: float, g: torch.Generator) -> torch.Tensor:
    """m draws of q_t of ``law`` with their component labels: (m, d + 1), the last column 1.0
    where the draw comes from p_2's far component (never for p_1)."""
    far = (torch.rand(m, generator=g, dtype=F64) < (eta if law == "p2" else 0.0)).to(F64)
    x = torch.randn(m, d, generator=g, dtype=F64)
    x[:, 0] += noise.mean_coef(float(t)) * R * far
    return torch.cat([x, far[:, None]], dim=1)


def score(which: int, x: torch.Tensor, t: torch.Tensor | float, eta: float, R: float) -> torch.Tensor:
    """s_1 or s_2 of (1) at (x (m, d), t (scalar or (m,)))."""
    if which == 1:
        return -x
    a = noise.mean_coef(torch.as_tensor(t, dtype=F64))
    r = torch.sigmoid(math.log(eta / (1 - eta)) + a * R * x[:, 0] - a * a * R * R / 2)
    out = -x.clone()
    out[:, 0] += r * a * R
    return out


def dsm_losses(x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor, eta: float, R: float) -> torch.Tensor:
    """The empirical DSM losses (2) of s_1 and s_2, (2,), on samples ``x0 (n, d)`` noised at
    ``t (n, K)`` with ``z (n, K, d)``."""
    n, K, d = z.shape
    tt = t.reshape(-1)
    sig = noise.sigma(tt)
    xt = noise.mean_coef(tt)[:, None] * x0.repeat_interleave(K, 0) + sig[:, None] * z.reshape(-1, d)
    zz = z.reshape(-1, d)
    return torch.stack([((sig[:, None] * score(j, xt, tt, eta, R) + zz) ** 2).sum(1).mean() for j in (1, 2)])


def training_rows(spec: TwoScoresSpec, cell: TwoScoresCell) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cell's n samples (x (n, d), far (n,)) and their noisings (t (n, K), z (n, K, d))."""
    d, K, dsm = cell.d, spec.dsm.K, spec.dsm
    data = draw_rows(lambda m, g: sample_law(cell.truth, m, d, spec.eta, spec.R, 0.0, g), cell.n,
                     "two-scores-data", cell.truth, d, spec.eta, spec.R, cell.seed)

    def noisings(m, g):
        u = torch.rand(m, K, generator=g, dtype=F64)
        t = dsm.t_min * (dsm.T / dsm.t_min) ** u  # log-uniform
        return torch.cat([t, torch.randn(m, K * d, generator=g, dtype=F64)], dim=1)

    nz = draw_rows(noisings, cell.n, "two-scores-noise", d, cell.seed)
    return data[:, :d], data[:, d], nz[:, :K], nz[:, K:].reshape(cell.n, K, d)


def errors(spec: TwoScoresSpec, cell: TwoScoresCell, picked: int) -> dict[str, np.ndarray]:
    """L2 and quantile errors per t of the picked score against the truth's, and of the other one
    (what a wrong pick costs), on ``evaluation.n_score`` fresh points of q_t of the truth."""
    ev, truth = spec.evaluation, 1 if cell.truth == "p1" else 2
    out = {k: [] for k in ("l2", "quantile", "wrong_l2", "wrong_quantile")}
    for t in ev.t:
        g = rng("two-scores-eval", cell.truth, cell.d, spec.eta, spec.R, cell.seed, float(t))
        x = sample_law(cell.truth, ev.n_score, cell.d, spec.eta, spec.R, float(t), g)[:, : cell.d]
        wrong = (score(3 - truth, x, float(t), spec.eta, spec.R) - score(truth, x, float(t), spec.eta, spec.R)).norm(dim=1)
        mine = wrong if picked != truth else torch.zeros_like(wrong)
        for pre, norms in (("", mine), ("wrong_", wrong)):
            out[pre + "l2"].append(float((norms ** 2).mean()))
            out[pre + "quantile"].append(quantile_error(norms, ev.delta))
    return {k: np.array(v, dtype=np.float64) for k, v in out.items()}


def evaluate(spec: TwoScoresSpec, cell: TwoScoresCell) -> xr.Dataset:
    """One cell: the ERM's pick on the cell's n samples, the DSM losses behind it, the samples from
    the far component, and the picked score's errors (beside those of a wrong pick)."""
    t0 = time.perf_counter()
    x, far, t, z = training_rows(spec, cell)
    loss = dsm_losses(x, t, z, spec.eta, spec.R)
    picked = 1 if float(loss[0]) <= float(loss[1]) else 2
    err = errors(spec, cell, picked)
    ds = xr.Dataset(
        {
            "picked": ((), float(picked)),
            "dsm_loss_gap": ((), float(loss[1] - loss[0])),
            "far_samples": ((), float(far.sum())),
            "score_l2": (("t",), err["l2"]),
            "score_quantile": (("t", "delta"), err["quantile"]),
            "wrong_l2": (("t",), err["wrong_l2"]),
            "wrong_quantile": (("t", "delta"), err["wrong_quantile"]),
        },
        coords={"t": list(spec.evaluation.t), "delta": list(spec.evaluation.delta)},
    )
    ds["eval_seconds"] = ((), time.perf_counter() - t0)
    return ds
