"""The computational-gap study's numerics (project issue 6; science.md §5, Montanari–Vu 2025):
store layout, training of the network drift and evaluation of one cell. No I/O and no Prefect
here (the kind's stages, ``dsclab.studies.computational_gap``, wrap these; the spec is in
``.spec``).

Law. ``mu_bar = 1/2 delta_0 + 1/2 mu_{n,k}`` (``dsclab.spike.sparse_spike_mixture``), x = u u^T,
observed in stochastic-localisation time t (SNR): ``y_t = t x + W_t`` (conventions in
``dsclab.spike``).

Cells. One cell per (n, k, seed) (``CELL_DIMS``). A cell trains the equivariant network
(``dsclab.spike.SpikeNet``, drift loss, ``train.steps`` steps on ``train.n_train`` draws of mu_bar),
then evaluates every drift of the ``drift`` axis on common random numbers:

* ``mse (drift, n, k, t, seed)``: E||m(y_t, t) - x||^2 on ``evaluation.n_mse`` fresh (x, z) per t
  (``dsclab.spike.mse_curve``); the t grid is absolute SL time, shared by every n;
* ``integrated_loss (drift, n, k, seed)``: int_0^T E||m - x||^2 dt with T = ``T_mult`` n
  (trapezoid, ``evaluation.int_steps`` steps, ``evaluation.n_int`` samples; uniform weight in SL
  time, the one under which the excess over Bayes is twice the path KL);
* ``sample_norm (drift, n, k, seed, sample)``: ||x_hat||_F of ``evaluation.n_samples`` samples of
  the SL Euler sampler (delta, T = T_mult n; the paper's runs: delta = 0.5, T = 4n), and from
  them ``frac_norm_above_half`` (target 1/2), ``w1_norm`` (W1 of the norm law to the target's
  Bernoulli(1/2) on {0, 1}) and ``frac_rank_one`` (fraction within Frobenius distance
  min(0.25, 0.45/sqrt k) of some u u^T; target 1/2). A sample that overflows (a badly trained
  network can drive the sampler to infinity) gets norm +inf, counts in ``frac_diverged`` and
  makes ``w1_norm`` +inf; the cell still completes.

Drifts (``STUDY_DRIFTS``): bayes (exact enumeration; only where C(n,k) 2^{k-1} <= ``bayes_max_terms``,
else its values stay NaN and ``bayes_terms`` tells why), spectral, gated_spectral (the spectral
drift gated at t_alg = n/2: zero below 0.9 t_alg, times the spectral test above 1.1 t_alg),
power_iteration, threshold, constant (E x, MSE 1/2 - 1/(4n)), network, fixed_sample (outputs one
target draw per trajectory for all t >= 0: samples perfectly, loss ~1 per unit time for mu_bar).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import xarray as xr

from dsclab import layout, spike
from dsclab.seeds import derive_seed
from dsclab.studies.computational_gap.spec import CELL_DIMS, STUDY_DRIFTS, ComputationalGapSpec, GapCell


def bayes_terms(n: int, k: int) -> float:
    """C(n,k) 2^(k-1): the terms of the exact Bayes enumeration over the supports and signs of u
    (u and -u give the same x)."""
    return float(math.comb(n, k) * 2 ** (k - 1))


# -------------------------------------------------------------------------------------------
# Store template
# -------------------------------------------------------------------------------------------

PER_DRIFT = {
    "integrated_loss": ("int_0^T E||m(y_t,t) - x||^2 dt, T = T_mult n (uniform in SL time)", "1"),
    "integrated_loss_se": ("standard error of integrated_loss over samples", "1"),
    "frac_norm_above_half": ("fraction of generated samples with ||x_hat||_F > 1/2 (target 1/2)", "1"),
    "w1_norm": ("W1 between the law of ||x_hat||_F and the target's (0 or 1 w.p. 1/2)", "1"),
    "frac_rank_one": ("fraction of samples within min(0.25, 0.45/sqrt k) of some u u^T (target 1/2)", "1"),
    "frac_diverged": ("fraction of generated samples that overflowed (non-finite; their norm is stored as inf)", "1"),
    "sample_seconds": ("wall time of the SL sampler with this drift", "s"),
}
PER_CELL = {
    "train_seconds": ("training wall time of the network", "s"),
    "train_loss": ("mean drift loss over the last 10% of training steps", "1"),
    "cell_seconds": ("wall time of the cell", "s"),
}


def template(spec: ComputationalGapSpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending, closed forms filled."""
    ev = spec.evaluation
    coords = {"n": np.array(spec.n, dtype=np.int64), "k": np.array(spec.k, dtype=np.int64),
              "seed": np.array(spec.seed, dtype=np.int64), "drift": np.array(spec.drift, dtype=str),
              "t": np.array(ev.t, dtype=np.float64), "sample": np.arange(ev.n_samples, dtype=np.int64)}
    curve = ("drift", "n", "k", "t", "seed")
    variables = {
        "mse": (curve, "MSE(t) = E||m(y_t, t) - x||^2", "1"),
        "mse_se": (curve, "standard error of mse", "1"),
        "sample_norm": (("drift", "n", "k", "seed", "sample"), "||x_hat||_F of generated samples", "1"),
        **layout.over(("drift",) + CELL_DIMS, PER_DRIFT),
        **layout.over(CELL_DIMS, {name: v for name, v in PER_CELL.items()
                                  if spec.trains or not name.startswith("train_")}),
    }
    nk = ("n", "k")
    grid = lambda f: np.array([[f(n, k) for k in spec.k] for n in spec.n], dtype=np.float64)
    closed = {
        "t_bayes": (nk, grid(spike.threshold_bayes), {"long_name": "Bayes threshold 2k log(n/k)", "units": "1"}),
        "t_spectral": (nk, grid(spike.threshold_spectral), {"long_name": "spectral (BBP) threshold n/2", "units": "1"}),
        "t_threshold": (nk, grid(spike.threshold_thresholding),
                        {"long_name": "entrywise-thresholding scale k^2 log(n/k^2)", "units": "1"}),
        "bayes_terms": (nk, grid(bayes_terms), {"long_name": "C(n,k) 2^(k-1), terms of the Bayes enumeration",
                                                "units": "1", "max_terms": ev.bayes_max_terms}),
        "mse_constant": (("n",), np.array([0.5 - 0.25 / n for n in spec.n]),
                         {"long_name": "MSE of the best constant drift, 1/2 - 1/(4n)", "units": "1"}),
    }
    coord_attrs = layout.coord_attrs(t={"long_name": "stochastic-localisation time (SNR)", "units": "1"},
                                     n="matrix size (d = n^2)", k="sparsity")
    return layout.template(spec, coords, CELL_DIMS, variables, coord_attrs, closed=closed, attrs={
        "conventions": "x = u u^T, u k-sparse in {0, +-1/sqrt k}, law 1/2 delta_0 + 1/2 mu_{n,k}; "
                       "y_t = t x + W_t (SL time), see dsclab.spike",
    })


# -------------------------------------------------------------------------------------------
# One cell
# -------------------------------------------------------------------------------------------

def train(spec: ComputationalGapSpec, n: int, k: int, seed: int, device: str = "cpu"):
    """Train the cell's network; returns (net, mean loss of the last 10% of steps, seconds).
    A loss that becomes NaN or infinite raises :class:`dsclab.errors.TrainingDiverged` (from the
    training loop, ``dsclab.train.fit``)."""
    tr = spec.train
    dist = spike.sparse_spike_mixture(n, k)
    g = torch.Generator().manual_seed(derive_seed("gap-train", n, k, seed))
    data = dist.sample(tr.n_train, g)
    net = spike.SpikeNet(n, width=tr.width, depth=tr.depth, t_scale=spec.evaluation.T_mult * n, generator=g)
    t0 = time.perf_counter()
    hist = spike.train_network(net, data, g, steps=tr.steps, lr=tr.lr, batch=tr.batch_size, device=device)
    secs = time.perf_counter() - t0
    tail = hist[-max(1, len(hist) // 10):]
    return net, float(np.mean(tail)), secs


def _build(spec: ComputationalGapSpec, name: str, dist, m: int, g: torch.Generator, net, device: str):
    """Drift ``name`` for a batch of ``m`` trajectories (fixed_sample draws its m targets from g)."""
    factory, params = STUDY_DRIFTS[name]
    if factory == "bayes":
        return spike.make_drift("bayes", dist, max_terms=spec.evaluation.bayes_max_terms)
    if factory == "network":
        return spike.make_drift("network", dist, net=net, device=device)
    if factory == "fixed_sample":
        return spike.make_drift("fixed_sample", dist, x_star=dist.sample(m, g), t0=0.0)
    return spike.make_drift(factory, dist, **params)


def evaluate(spec: ComputationalGapSpec, cell: GapCell, net=None, train_loss: float = math.nan,
             train_seconds: float = math.nan, device: str = "cpu") -> xr.Dataset:
    """Every drift of one cell: MSE curve, integrated loss, samples and their norm statistics.
    Bayes is skipped (NaN) where its enumeration exceeds ``bayes_max_terms``."""
    t_start = time.perf_counter()
    ev, n, k = spec.evaluation, cell.n, cell.k
    dist = spike.sparse_spike_mixture(n, k)
    T = ev.T_mult * n
    names = [d for d in spec.drift if not (d == "bayes" and bayes_terms(n, k) > ev.bayes_max_terms)]
    D, nt = len(spec.drift), len(ev.t)
    mse = np.full((D, nt), np.nan)
    mse_se = np.full((D, nt), np.nan)
    norms = np.full((D, ev.n_samples), np.nan)
    per = {name: np.full(D, np.nan) for name in PER_DRIFT}
    idx = {d: i for i, d in enumerate(spec.drift)}

    g = torch.Generator().manual_seed(derive_seed("gap-mse", n, k, cell.seed))
    gf = torch.Generator().manual_seed(derive_seed("gap-fixed", n, k, cell.seed))
    drifts = {d: _build(spec, d, dist, ev.n_mse, gf, net, device) for d in names}
    curves = spike.mse_curve(drifts, dist, ev.t, ev.n_mse, g)
    for d, v in curves.items():
        mse[idx[d]], mse_se[idx[d]] = spike.summarize(v)
    for d in names:
        # same generator state per drift: common random numbers across drifts
        gi = torch.Generator().manual_seed(derive_seed("gap-int", n, k, cell.seed))
        drift = _build(spec, d, dist, ev.n_int, gf, net, device)
        vals = spike.integrated_loss(drift, dist, T, steps=ev.int_steps, m=ev.n_int, generator=gi)
        per["integrated_loss"][idx[d]], per["integrated_loss_se"][idx[d]] = spike.summarize(vals)
        gs = torch.Generator().manual_seed(derive_seed("gap-sample", n, k, cell.seed))
        drift = _build(spec, d, dist, ev.n_samples, gf, net, device)
        t0 = time.perf_counter()
        x = spike.sl_generate(drift, ev.n_samples, n, delta=ev.delta, T=T, generator=gs)
        per["sample_seconds"][idx[d]] = time.perf_counter() - t0
        # A drift can drive the sampler to overflow (an undertrained network): such a sample has
        # norm +inf (it counts as norm > 1/2 and not rank-one), and the W1 distance is then +inf.
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        nr = np.full(ev.n_samples, np.inf)
        nr[finite.numpy()] = spike.sample_norm(x[finite])
        norms[idx[d]] = nr
        per["frac_diverged"][idx[d]] = 1.0 - float(finite.double().mean())
        per["frac_norm_above_half"][idx[d]] = float(np.mean(nr > 0.5))
        per["w1_norm"][idx[d]] = spike.w1_norm_law(nr, dist.p_spike) if bool(finite.all()) else math.inf
        n_fin = int(finite.sum())
        per["frac_rank_one"][idx[d]] = (spike.frac_close_rank_one(x[finite], k) * n_fin / ev.n_samples
                                        if n_fin else 0.0)
    out = {
        "mse": (("drift", "t"), mse), "mse_se": (("drift", "t"), mse_se),
        "sample_norm": (("drift", "sample"), norms),
        **{name: (("drift",), v) for name, v in per.items()},
        "cell_seconds": ((), time.perf_counter() - t_start + (0.0 if math.isnan(train_seconds) else train_seconds)),
    }
    if spec.trains:
        out["train_seconds"] = ((), train_seconds)
        out["train_loss"] = ((), train_loss)
    return xr.Dataset(out)


def compute_cell(spec: ComputationalGapSpec, cell: GapCell, device: str = "cpu") -> xr.Dataset:
    """Train (when the network is a drift) and evaluate one cell."""
    if spec.trains:
        net, loss, secs = train(spec, cell.n, cell.k, cell.seed, device)
        return evaluate(spec, cell, net, loss, secs, device)
    return evaluate(spec, cell, device=device)
