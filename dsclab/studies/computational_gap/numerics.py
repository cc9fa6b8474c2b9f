"""The computational-gap study's numerics (project issue 6; science.md §5, Montanari–Vu 2025):
training of the trained drifts (:func:`train_cell`, the kind's train stage) and evaluation of one
cell (:func:`compute_cell`; the store layout is ``.layout``). No I/O and no Prefect here (the
kind's stages, ``dsclab.studies.computational_gap``, wrap these; the spec is in ``.spec``).

Law. The spec's ``family`` (``spec.STUDY_FAMILIES``): ``sparse_spike`` is
``mu_bar = 1/2 delta_0 + 1/2 mu_{n,k}`` (``dsclab.studies.computational_gap.spike.sparse_spike_mixture``), ``hidden_clique``
the same with all signs + (a planted clique's signal, ``dsclab.studies.computational_gap.spike.hidden_clique``, p = 1/2);
x = u u^T, observed in stochastic-localisation time t (SNR): ``y_t = t x + W_t`` (conventions in
``dsclab.studies.computational_gap.spike``).

Cells. One cell per (n, k, seed) (``CELL_DIMS``). A cell's trained drifts train in the kind's
train stage, on that stage's device: the equivariant network
(``dsclab.studies.computational_gap.spike.SpikeNet``, drift loss, ``train.steps`` steps on ``train.n_train`` draws of mu_bar)
and the mpnn (below); its evaluation restores them and evaluates every drift of the ``drift``
axis on common random numbers:

* ``mse (drift, n, k, t, seed)``: E||m(y_t, t) - x||^2 on ``evaluation.n_mse`` fresh (x, z) per t
  (``dsclab.studies.computational_gap.spike.mse_curve``); the t grid is absolute SL time, shared by every n;
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

The ``mpnn`` drift (the paper's message-passing network, ``dsclab.studies.computational_gap.spike.mpnn``) trains in the
kind's train stage (:func:`train_mpnn_cell`, the paper's three stages with the spec's ``mpnn.budget``,
stage checkpoints in the files beside the store so that a killed training resumes); its samples
also give ``frac_norm_below_tenth`` (the paper's collapse: norms ~0.004-0.013).

Budget axis. ``mpnn.budget`` a list (``studies/spike_budget_cpu.yaml``) adds the cell dim
``budget`` after seed: a cell per (n, k, seed, budget), its mpnn trained at that budget. The
cells of one (n, k, seed) draw from one ``GapCell.seed_key`` (training data, initialisation,
test points, sampler noise), so they differ only by the training's length and every other drift
has the same values at each budget. Such a store also holds ``frac_norm_near_one (drift, ...)``
(samples with | ||x_hat|| - 1 | < ``layout.NEAR_ONE``) and ``loss_ratio_bayes`` /
``loss_ratio_spectral_paper`` (the mpnn's integrated loss over that drift's, same cell). A scalar
budget keeps the store, keys and draws as they were.

Drifts (``STUDY_DRIFTS``): spectral_paper / power_iteration_paper (the paper's hard-test baselines,
``dsclab.studies.computational_gap.spike.paper``), mpnn, bayes (exact enumeration; only where C(n,k) 2^{k-1} <= ``bayes_max_terms``,
else its values stay NaN and ``bayes_terms`` tells why), spectral, gated_spectral (the spectral
drift gated at t_alg = n/2: zero below 0.9 t_alg, times the spectral test above 1.1 t_alg),
power_iteration, threshold, constant (E x, MSE ``dist.constant_mse()``: 1/2 - 1/(4n) for sparse_spike), network, fixed_sample (outputs one
target draw per trajectory for all t >= 0: samples perfectly, loss ~1 per unit time for mu_bar).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import xarray as xr

from dsclab.studies.computational_gap import spike
from dsclab.seeds import rng
from dsclab.studies.computational_gap.layout import NEAR_ONE, PER_DRIFT
from dsclab.studies.computational_gap.spec import STUDY_DRIFTS, ComputationalGapSpec, GapCell


# -------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------

def network(spec: ComputationalGapSpec, n: int, generator: torch.Generator | None = None) -> spike.SpikeNet:
    """The equivariant ``network`` drift's architecture at size n (initialised from ``generator``)."""
    tr = spec.train
    return spike.SpikeNet(n, width=tr.width, depth=tr.depth, t_scale=spec.evaluation.T_mult * n, generator=generator)


def train(spec: ComputationalGapSpec, n: int, k: int, seed: int, device: str = "cpu"):
    """Train the cell's equivariant ``network`` on ``device``; returns (net, mean loss of the last
    10% of steps, seconds). A loss that becomes NaN or infinite raises
    :class:`dsclab.errors.TrainingDiverged`."""
    tr = spec.train
    dist = spec.law(n, k)
    g = rng("gap-train", spec.family, n, k, seed)
    data = dist.sample(tr.n_train, g)
    net = network(spec, n, generator=g)
    t0 = time.perf_counter()
    hist = spike.train_network(net, data, g, steps=tr.steps, lr=tr.lr, batch=tr.batch_size, device=device)
    secs = time.perf_counter() - t0
    tail = hist[-max(1, len(hist) // 10):]
    return net, float(np.mean(tail)), secs


class StageCheckpoints:
    """The mpnn's stage checkpoints of one cell in the kind's cache (files beside the store):
    ``mpnn/<cell key>/stage<s>.npy`` (``dsclab.studies.computational_gap.spike.mpnn_train`` defines the content)."""

    def __init__(self, cache, key: str):
        self.cache, self.key = cache, key

    def _name(self, stage: int) -> str:
        return f"mpnn/{self.key}/stage{stage}.npy"

    def load(self, stage: int):
        name = self._name(stage)
        return self.cache.load_array(name) if self.cache.exists(name) else None

    def save(self, stage: int, array) -> None:
        self.cache.save_array(self._name(stage), array)


def train_mpnn_cell(spec: ComputationalGapSpec, cell: GapCell, cache, device: str = "cpu", log=None) -> dict:
    """Train the cell's ``mpnn`` (the paper's schedule at the spec's budget, or the cell's on a budget
    axis; draws from the cell's ``seed_key``), resuming from its last stage checkpoint in ``cache``
    (named by its key); returns the checkpoint payload {vector, config, loss, seconds}."""
    from dsclab.studies.computational_gap.spike.mpnn import MPNN, to_vector
    from dsclab.studies.computational_gap.spike.mpnn_train import train_mpnn

    dist = spec.law(cell.n, cell.k)
    net = MPNN(cell.n, cell.k, generator=rng("mpnn-init", cell.seed_key))
    ckpt = None if cache is None else StageCheckpoints(cache, cell.key)
    net, loss, secs = train_mpnn(net, dist, spec.mpnn.schedule(cell.budget), (cell.seed_key,), device=device,
                                 checkpoints=ckpt, log=log)
    return {"vector": to_vector(net), "config": net.config(), "loss": loss, "seconds": secs}


def restore_mpnn(payload: dict):
    from dsclab.studies.computational_gap.spike.mpnn import MPNN, from_vector

    return from_vector(MPNN(**payload["config"]), torch.as_tensor(payload["vector"])).eval()


def train_cell(spec: ComputationalGapSpec, cell: GapCell, cache, device: str = "cpu", log=None) -> dict:
    """Train the cell's trained drifts on ``device``; returns its checkpoint payload (CPU tensors):
    ``network`` {state_dict, loss, seconds} when the equivariant network is a drift, ``mpnn``
    (:func:`train_mpnn_cell`, resuming from its stage checkpoints in ``cache``) when the mpnn is."""
    out = {}
    if spec.trains:
        net, loss, secs = train(spec, cell.n, cell.k, cell.seed, device)
        out["network"] = {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "loss": loss,
                          "seconds": secs}
    if spec.trains_mpnn:
        out["mpnn"] = train_mpnn_cell(spec, cell, cache, device, log)
    return out


def restore_network(spec: ComputationalGapSpec, n: int, payload: dict, device: str = "cpu") -> spike.SpikeNet:
    """The trained equivariant network of a :func:`train_cell` payload, in eval mode on ``device``."""
    net = network(spec, n)
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval()


# -------------------------------------------------------------------------------------------
# One cell
# -------------------------------------------------------------------------------------------

def _build(spec: ComputationalGapSpec, name: str, dist, m: int, cell: GapCell, purpose: str, nets: dict,
           device: str):
    """Drift ``name`` for a batch of ``m`` trajectories; its own generators derive from (purpose,
    drift, cell): fixed_sample draws its m targets, random drifts their start vectors."""
    factory, params = STUDY_DRIFTS[name]
    entry = spike.DRIFTS[factory]
    if factory == "bayes":
        return spike.make_drift("bayes", dist, max_terms=spec.evaluation.bayes_max_terms)
    if factory == "fixed_sample":
        return spike.make_drift("fixed_sample", dist, x_star=dist.sample(m, rng("gap-fixed", purpose, cell.seed_key)), t0=0.0)
    extra = {}
    if entry.trained:
        extra.update(net=nets[name], device=device)
    if entry.random:
        extra["generator"] = rng("gap-drift", purpose, name, cell.seed_key)
    return spike.make_drift(factory, dist, **params, **extra)


def evaluate(spec: ComputationalGapSpec, cell: GapCell, nets: dict | None = None, train_loss: float = math.nan,
             train_seconds: float = math.nan, device: str = "cpu", mpnn_payload: dict | None = None) -> xr.Dataset:
    """Every drift of one cell: MSE curve, integrated loss, samples and their norm statistics.
    Bayes is skipped (NaN) where its enumeration exceeds ``bayes_max_terms``. ``nets``: the trained
    networks by drift name."""
    t_start = time.perf_counter()
    ev, n, k = spec.evaluation, cell.n, cell.k
    nets = nets or {}
    dist = spec.law(n, k)
    T = ev.T_mult * n
    names = [d for d in spec.drift if not (d == "bayes" and dist.n_points > ev.bayes_max_terms)]
    D, nt = len(spec.drift), len(ev.t)
    mse = np.full((D, nt), np.nan)
    mse_se = np.full((D, nt), np.nan)
    norms = np.full((D, ev.n_samples), np.nan)
    per = {name: np.full(D, np.nan) for name in PER_DRIFT}
    near = np.full(D, np.nan)
    idx = {d: i for i, d in enumerate(spec.drift)}

    drifts = {d: _build(spec, d, dist, ev.n_mse, cell, "mse", nets, device) for d in names}
    # each t its own points (common to every drift): a value does not depend on the rest of the t grid
    per_t = [spike.mse_curve(drifts, dist, [t], ev.n_mse, rng("gap-mse", cell.seed_key, t, device=device), chunk=ev.chunk)
             for t in ev.t]
    curves = {d: np.concatenate([c[d] for c in per_t]) for d in drifts}
    for d, v in curves.items():
        mse[idx[d]], mse_se[idx[d]] = spike.summarize(v)
    for d in names:
        # same generator state per drift: common random numbers across drifts
        drift = _build(spec, d, dist, ev.n_int, cell, "int", nets, device)
        vals = spike.integrated_loss(drift, dist, T, steps=ev.int_steps, m=ev.n_int,
                                     generator=rng("gap-int", cell.seed_key, device=device))
        per["integrated_loss"][idx[d]], per["integrated_loss_se"][idx[d]] = spike.summarize(vals)
        drift = _build(spec, d, dist, ev.n_samples, cell, "sample", nets, device)
        t0 = time.perf_counter()
        x = spike.sl_generate(drift, ev.n_samples, n, delta=ev.delta, T=T,
                              generator=rng("gap-sample", cell.seed_key, device=device), device=device).cpu()
        per["sample_seconds"][idx[d]] = time.perf_counter() - t0
        # A drift can drive the sampler to overflow (an undertrained network): such a sample has
        # norm +inf (it counts as norm > 1/2 and not rank-one), and the W1 distance is then +inf.
        finite = torch.isfinite(x).flatten(1).all(dim=1)
        nr = np.full(ev.n_samples, np.inf)
        nr[finite.numpy()] = spike.sample_norm(x[finite])
        norms[idx[d]] = nr
        per["frac_diverged"][idx[d]] = 1.0 - float(finite.double().mean())
        per["frac_norm_above_half"][idx[d]] = float(np.mean(nr > 0.5))
        per["frac_norm_below_tenth"][idx[d]] = float(np.mean(nr < 0.1))
        near[idx[d]] = float(np.mean(np.abs(nr - 1.0) < NEAR_ONE))
        per["w1_norm"][idx[d]] = spike.w1_norm_law(nr, dist.p_spike) if bool(finite.all()) else math.inf
        n_fin = int(finite.sum())
        per["frac_rank_one"][idx[d]] = (spike.frac_close_rank_one(x[finite], k, signs=dist.signs) * n_fin
                                        / ev.n_samples if n_fin else 0.0)
    out = {
        "mse": (("drift", "t"), mse), "mse_se": (("drift", "t"), mse_se),
        "sample_norm": (("drift", "sample"), norms),
        **{name: (("drift",), v) for name, v in per.items()},
        "cell_seconds": ((), time.perf_counter() - t_start + (0.0 if math.isnan(train_seconds) else train_seconds)),
    }
    if spec.trains:
        out["train_seconds"] = ((), train_seconds)
        out["train_loss"] = ((), train_loss)
    if spec.budget_axis:  # the collapse against the budget: the mpnn's loss relative to the baselines'
        il = dict(zip(spec.drift, per["integrated_loss"]))
        out["frac_norm_near_one"] = (("drift",), near)
        for ref in ("bayes", "spectral_paper"):
            out[f"loss_ratio_{ref}"] = ((), float(il["mpnn"] / il[ref]) if ref in il else math.nan)
    if spec.trains_mpnn:
        out["mpnn_train_seconds"] = ((), float(mpnn_payload["seconds"]))
        out["mpnn_train_loss"] = ((), float(mpnn_payload["loss"]))
    return xr.Dataset(out)


def compute_cell(spec: ComputationalGapSpec, cell: GapCell, device: str = "cpu", trained: dict | None = None
                 ) -> xr.Dataset:
    """Evaluate one cell on ``device``; ``trained`` is its :func:`train_cell` payload (the train
    stage's) when a drift is trained (the networks are restored, never trained here)."""
    trained = trained or {}
    nets, loss, secs = {}, math.nan, math.nan
    if spec.trains:
        p = trained["network"]
        nets["network"], loss, secs = restore_network(spec, cell.n, p, device), p["loss"], p["seconds"]
    if spec.trains_mpnn:
        nets["mpnn"] = restore_mpnn(trained["mpnn"])
    return evaluate(spec, cell, nets, loss, secs, device, trained.get("mpnn"))
