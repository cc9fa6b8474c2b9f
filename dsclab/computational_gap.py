"""The computational-gap study (project issue 6; science.md §5, Montanari–Vu 2025): spec, store
layout, one cell's numerics, report and figure. No I/O and no Prefect here
(``tasks/computational_gap.py`` and ``flows/computational_gap.py`` wrap these).

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

import json
import math
import time
from typing import Literal

import numpy as np
import torch
import xarray as xr
from pydantic import Field, field_validator, model_validator

import dsclab
from dsclab import spike
from dsclab.seeds import derive_seed
from dsclab.spec import StudyBase, _Frozen, _known, _positive_ints, _unique, seed_list

CELL_DIMS = ("n", "k", "seed")
# study drift name -> (dsclab.spike.DRIFTS factory, its parameters)
STUDY_DRIFTS: dict[str, tuple[str, dict]] = {
    "bayes": ("bayes", {}),
    "spectral": ("spectral", {}),
    "gated_spectral": ("gated", {"inner": "spectral", "test": "spectral"}),
    "power_iteration": ("power_iteration", {}),
    "threshold": ("threshold", {}),
    "constant": ("constant", {}),
    "network": ("network", {}),
    "fixed_sample": ("fixed_sample", {}),
}


# -------------------------------------------------------------------------------------------
# Spec
# -------------------------------------------------------------------------------------------

class GapTrainSpec(_Frozen):
    """Training of the network drift (``dsclab.spike.train_network``)."""

    steps: int = Field(300, gt=0, description="Adam steps (cosine decay)")
    batch_size: int = Field(32, gt=0, description="matrices per step")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    width: int = Field(16, gt=0, description="channels of the equivariant layers")
    depth: int = Field(3, ge=1, description="equivariant layers")
    n_train: int = Field(2000, gt=0, description="training draws of mu_bar")
    device: str = Field("cpu", description="cpu, cuda or auto")


class GapEvalSpec(_Frozen):
    """How each cell is evaluated."""

    t: list[float] = Field([1, 2, 4, 8, 16, 32, 64, 128, 256], description="SL times of the MSE curve")
    n_mse: int = Field(200, ge=2, description="fresh (x, z) per t for the MSE")
    n_int: int = Field(100, ge=2, description="samples of the integrated loss")
    int_steps: int = Field(32, gt=0, description="trapezoid steps of the integrated loss on [0, T]")
    n_samples: int = Field(100, ge=2, description="samples drawn with each drift")
    delta: float = Field(0.5, gt=0, description="SL Euler step")
    T_mult: float = Field(4.0, gt=0, description="sampler horizon T = T_mult * n")
    bayes_max_terms: float = Field(5e4, gt=0, description="Bayes runs only where C(n,k) 2^(k-1) <= this")

    @field_validator("t")
    @classmethod
    def _t(cls, v):
        if not v or any(not (x > 0 and math.isfinite(x)) for x in v):
            raise ValueError(f"{v} must be positive times")
        _unique(v)
        return [float(x) for x in v]


class ComputationalGapSpec(StudyBase):
    """A computational-gap study: the grid n x k x seed; every cell evaluates every drift."""

    kind: Literal["computational_gap"] = Field("computational_gap", description="study kind (selects the flow)")
    n: list[int] = Field(..., description="matrix sizes (d = n^2)")
    k: list[int] = Field(..., description="sparsities; each below every n")
    seed: list[int] = Field([0], description="seeds (training data, initialisation, evaluation)")
    drift: list[str] = Field(list(STUDY_DRIFTS), description="drifts evaluated in every cell")
    train: GapTrainSpec = GapTrainSpec()
    evaluation: GapEvalSpec = GapEvalSpec()

    @field_validator("n", "k")
    @classmethod
    def _pos(cls, v, info):
        return _positive_ints(info.field_name, v)

    @field_validator("seed")
    @classmethod
    def _seeds(cls, v):
        return seed_list(v)

    @field_validator("drift")
    @classmethod
    def _drift(cls, v):
        return _known("drift", v, STUDY_DRIFTS)

    @model_validator(mode="after")
    def _grid(self):
        if max(self.k) >= min(self.n):
            raise ValueError(f"k: {max(self.k)} must be below every n (smallest n is {min(self.n)})")
        for n in self.n:
            if not math.isclose(self.evaluation.T_mult * n / self.evaluation.delta,
                                round(self.evaluation.T_mult * n / self.evaluation.delta), abs_tol=1e-9):
                raise ValueError(f"T = {self.evaluation.T_mult} * {n} is not a multiple of delta")
        cells = len(self.n) * len(self.k) * len(self.seed)
        if cells > self.max_cells:
            raise ValueError(f"the grid has {cells} cells, over max_cells={self.max_cells}")
        return self

    @property
    def trains(self) -> bool:
        return "network" in self.drift

    def cells(self) -> list["GapCell"]:
        return [GapCell(n=n, k=k, seed=s, key=self.key(n=n, k=k, seed=s))
                for n in self.n for k in self.k for s in self.seed]


class GapCell(_Frozen):
    n: int
    k: int
    seed: int
    key: str


def cell_index(cell: GapCell) -> dict:
    return {"n": cell.n, "k": cell.k, "seed": cell.seed}


def bayes_terms(n: int, k: int) -> float:
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
    sz = {k: len(v) for k, v in coords.items()}
    nan = lambda dims: np.full([sz[d] for d in dims], np.nan)
    data = {"status": (CELL_DIMS, np.zeros([sz[d] for d in CELL_DIMS], dtype=np.int8),
                       {"long_name": "cell status", "flag_values": [0, 1, 2], "flag_meanings": "pending done failed"})}
    data["mse"] = (("drift", "n", "k", "t", "seed"), nan(("drift", "n", "k", "t", "seed")),
                   {"long_name": "MSE(t) = E||m(y_t, t) - x||^2", "units": "1"})
    data["mse_se"] = (("drift", "n", "k", "t", "seed"), nan(("drift", "n", "k", "t", "seed")),
                      {"long_name": "standard error of mse", "units": "1"})
    data["sample_norm"] = (("drift", "n", "k", "seed", "sample"), nan(("drift", "n", "k", "seed", "sample")),
                           {"long_name": "||x_hat||_F of generated samples", "units": "1"})
    for name, (ln, u) in PER_DRIFT.items():
        data[name] = (("drift",) + CELL_DIMS, nan(("drift",) + CELL_DIMS), {"long_name": ln, "units": u})
    for name, (ln, u) in PER_CELL.items():
        if name.startswith("train_") and not spec.trains:
            continue
        data[name] = (CELL_DIMS, nan(CELL_DIMS), {"long_name": ln, "units": u})
    nk = ("n", "k")
    grid = lambda f: np.array([[f(n, k) for k in spec.k] for n in spec.n], dtype=np.float64)
    data["t_bayes"] = (nk, grid(spike.threshold_bayes), {"long_name": "Bayes threshold 2k log(n/k)", "units": "1"})
    data["t_spectral"] = (nk, grid(spike.threshold_spectral), {"long_name": "spectral (BBP) threshold n/2", "units": "1"})
    data["t_threshold"] = (nk, grid(spike.threshold_thresholding),
                           {"long_name": "entrywise-thresholding scale k^2 log(n/k^2)", "units": "1"})
    data["bayes_terms"] = (nk, grid(bayes_terms), {"long_name": "C(n,k) 2^(k-1), terms of the Bayes enumeration",
                                                    "max_terms": ev.bayes_max_terms})
    data["mse_constant"] = (("n",), np.array([0.5 - 0.25 / n for n in spec.n]),
                            {"long_name": "MSE of the best constant drift, 1/2 - 1/(4n)", "units": "1"})
    ds = xr.Dataset(data, coords=coords)
    ds["t"].attrs.update({"long_name": "stochastic-localisation time (SNR)", "units": "1"})
    ds["n"].attrs["long_name"] = "matrix size (d = n^2)"
    ds["k"].attrs["long_name"] = "sparsity"
    ds.attrs.update({
        "study": "computational_gap", "name": spec.name,
        "spec": json.dumps(spec.model_dump(mode="json"), sort_keys=True),
        "spec_hash": spec.hash, "dsclab_version": dsclab.__version__,
        "conventions": "x = u u^T, u k-sparse in {0, +-1/sqrt k}, law 1/2 delta_0 + 1/2 mu_{n,k}; "
                       "y_t = t x + W_t (SL time), see dsclab.spike",
    })
    return ds


# -------------------------------------------------------------------------------------------
# One cell
# -------------------------------------------------------------------------------------------

def train(spec: ComputationalGapSpec, n: int, k: int, seed: int, device: str = "cpu"):
    """Train the cell's network; returns (net, mean loss of the last 10% of steps, seconds)."""
    tr = spec.train
    dist = spike.sparse_spike_mixture(n, k)
    g = torch.Generator().manual_seed(derive_seed("gap-train", n, k, seed))
    data = dist.sample(tr.n_train, g)
    net = spike.SpikeNet(n, width=tr.width, depth=tr.depth, t_scale=spec.evaluation.T_mult * n, generator=g)
    t0 = time.perf_counter()
    hist = spike.train_network(net, data, g, steps=tr.steps, lr=tr.lr, batch=tr.batch_size, device=device)
    secs = time.perf_counter() - t0
    tail = hist[-max(1, len(hist) // 10):]
    loss = float(np.mean(tail))
    if not math.isfinite(loss):
        raise ArithmeticError(f"network training diverged (loss {loss})")
    return net, loss, secs


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


# -------------------------------------------------------------------------------------------
# Report and figure
# -------------------------------------------------------------------------------------------

def _done(ds: xr.Dataset) -> xr.DataArray:
    return ds["status"] == 1


def report(ds: xr.Dataset) -> str:
    """Per drift and (n, k), seed means over done cells: fraction of samples with norm > 1/2
    (target 1/2), W1 of the norm law to the target's, fraction close to rank-one; then the
    integrated losses of the spectral drift and its gated version side by side."""
    done = _done(ds)
    mean = lambda v: ds[v].where(done).mean("seed")
    frac, w1, r1, il = mean("frac_norm_above_half"), mean("w1_norm"), mean("frac_rank_one"), mean("integrated_loss")
    dv = mean("frac_diverged")
    drifts = [str(d) for d in ds.drift.values]
    lines = [f"computational gap '{ds.attrs.get('name', '')}': {int(done.sum())}/{done.size} cells done; "
             "seed means; targets: frac(norm>1/2) = 0.5, W1 = 0, frac rank-one = 0.5"]
    lines.append(f"{'n':>4} {'k':>3} {'drift':>16} {'frac(norm>1/2)':>15} {'W1(norm law)':>13} "
                 f"{'frac rank-one':>14} {'integrated loss':>16} {'diverged':>9}")
    skipped = []
    for n in ds.n.values:
        for k in ds.k.values:
            sel = {"n": n, "k": k}
            for d in drifts:
                f = float(frac.sel(sel).sel(drift=d))
                lines.append(f"{int(n):>4} {int(k):>3} {d:>16} {f:>15.3f} {float(w1.sel(sel).sel(drift=d)):>13.3f} "
                             f"{float(r1.sel(sel).sel(drift=d)):>14.3f} {float(il.sel(sel).sel(drift=d)):>16.3f} "
                             f"{float(dv.sel(sel).sel(drift=d)):>9.2f}")
            if "bayes" in drifts and float(ds.bayes_terms.sel(sel)) > ds.bayes_terms.attrs.get("max_terms", math.inf):
                skipped.append(f"(n={int(n)}, k={int(k)}: {float(ds.bayes_terms.sel(sel)):.3g} terms)")
    if skipped:
        lines.append(f"bayes not computed (NaN), enumeration above max_terms="
                     f"{ds.bayes_terms.attrs.get('max_terms'):.3g}: " + ", ".join(skipped))
    if "spectral" in drifts and "gated_spectral" in drifts:
        lines.append("integrated loss, spectral vs gated spectral (gate at n/2), and frac(norm>1/2) of each:")
        for n in ds.n.values:
            for k in ds.k.values:
                sel = {"n": n, "k": k}
                lines.append(f"  n={int(n)} k={int(k)}: integrated loss spectral {float(il.sel(sel).sel(drift='spectral')):.3f}"
                             f" | gated {float(il.sel(sel).sel(drift='gated_spectral')):.3f}"
                             f" ; frac(norm>1/2) {float(frac.sel(sel).sel(drift='spectral')):.2f}"
                             f" | {float(frac.sel(sel).sel(drift='gated_spectral')):.2f}")
    return "\n".join(lines)


def plot(ds: xr.Dataset, out: str) -> str:
    """MSE(t) per drift for each (n, k) (first row of panels) with vertical lines at the Bayes
    2k log(n/k), spectral n/2 and thresholding k^2 log(n/k^2) thresholds and the constant
    1/2 - 1/(4n); histograms of sample norms per drift (second row). Writes ``out``; returns it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = _done(ds)
    pairs = [(n, k) for n in ds.n.values for k in ds.k.values]
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.6 * len(pairs), 6.5), squeeze=False)
    mse = ds.mse.where(done).mean("seed")
    for j, (n, k) in enumerate(pairs):
        ax = axes[0, j]
        for d in ds.drift.values:
            ax.plot(ds.t.values, mse.sel(n=n, k=k, drift=d).values, marker=".", label=str(d))
        for var, style in (("t_bayes", ":"), ("t_spectral", "--"), ("t_threshold", "-.")):
            v = float(ds[var].sel(n=n, k=k))
            if math.isfinite(v) and v > 0:
                ax.axvline(v, color="k", ls=style, lw=0.8, label=var)
        ax.axhline(float(ds.mse_constant.sel(n=n)), color="grey", lw=0.8, label="1/2 - 1/(4n)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.5)  # an undertrained network (or t beyond its training range T) can go far above
        ax.set_title(f"n={int(n)} k={int(k)}", fontsize=9)
        ax.set_xlabel("SL time t")
        if j == 0:
            ax.set_ylabel("MSE(t)")
        ax2 = axes[1, j]
        bins = np.linspace(0, 1.2, 25)
        for d in ds.drift.values:
            v = ds.sample_norm.sel(n=n, k=k, drift=d).where(done.sel(n=n, k=k)).values.ravel()
            v = v[np.isfinite(v)]
            if v.size:
                ax2.hist(np.clip(v, 0, 1.2), bins=bins, histtype="step", label=str(d))
        ax2.set_xlabel("||x_hat||_F")
        if j == 0:
            ax2.set_ylabel("samples")
    axes[0, 0].legend(fontsize=6)
    axes[1, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
