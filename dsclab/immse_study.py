"""The I-MMSE study: likelihoods of exact, mismatched, trained and ensembled denoisers read off
their MSE curves (Kong, Brekelmans & Ver Steeg 2023; science.md §6; project issue 4).
Numerics, store layout, report and figure; no I/O and no Prefect here (``tasks/immse.py`` and
``flows/immse.py`` wrap these).

Data laws (the ``data`` axis, one ``DistributionSpec`` each, any d of the ``d`` axis):
``gaussian`` (anisotropic: eigenvalues log-spaced, ``cond``), ``gaussian_mixture`` and
``rademacher`` (independent +-1 coordinates: the discrete case).

Denoisers (the ``denoiser`` axis), each evaluated on the same held-out points and draws:

* ``exact``: the Bayes denoiser of the data law (its estimate is -log p up to truncation);
* ``gaussian``: the moment-matched Gaussian N(mean, cov) of the law (linear, Wiener). For
  Gaussian data it *is* the exact denoiser, and the two rows agree to rounding;
* ``mismatched``: Bayes for a nearby wrong law (:data:`MISMATCHED`): the mixture with the
  weights' odds tilted by ``mismatch`` ([1/2, 1/2] -> [0.8, 0.2] at 4), +-1 data with the odds
  of +1 multiplied by ``mismatch``, Gaussian data -> the isotropic Gaussian of the same trace;
* ``trained``: ``dsclab.train.train_score`` (``ScoreMLP``, DSM) on the cell's n training points,
  turned into a denoiser by Tweedie (the network runs in float32, Tweedie in float64);
* ``ensemble``: for each log-SNR draw, the member (``gaussian``, ``mismatched``, ``trained``:
  everything but ``exact``) with the smallest data-averaged MSE (:data:`ENSEMBLE_MEMBERS`).

Discrete data. The discrete identity -log P(x) = 1/2 int mmse_eps d alpha needs a denoiser that
snaps to the lattice at high SNR, or the integral diverges. Every denoiser of +-1 data is
clamped to the box [-1, 1]^d (projection onto the lattice's hull, which can only lower the
error) and the integral is truncated at b = loc + clip scale, with the Gaussian left-tail term
below a. Truncation is the same as switching to hard rounding above b, whose share is
< 1e-15 nats at clip = 4 (``dsclab.immse.data_set_nll``); so the trained network is used only
where it was trained (t >= t_min of training covers alpha <= 6.2, b ~ 4.2 here).

Cells and storage. One cell per (data, d, n, seed): it trains one network and evaluates all
denoisers. Held-out points and (alpha, eps) draws depend on (data, d, seed) only, so the
n-independent denoisers (exact, gaussian, mismatched) are recomputed in every cell on identical
inputs and stored identically along n (the reruns cost less than a separate cell kind would),
and differences between n are free of the points' sampling noise (common random numbers).

Variables (nats per dimension; ``*_se`` cover the held-out points and the draws):
``nll_immse``, ``nll_immse_se``, ``nll_gap_se`` (SE of ``nll_immse - nll_exact``, paired on the
same points) and ``ensemble_share`` over (data, d, n, seed, denoiser); ``nll_exact``,
``nll_exact_se`` over the cell dims; ``mmse (..., denoiser, logsnr)`` the data-averaged
E||eps - eps_hat||^2 / d on the log-SNR grid (for ``ensemble`` the per-point minimum over
members, i.e. the envelope); and, filled in when the store is created (closed forms),
``mmse_gauss (data, d, logsnr)`` = mean_i sigmoid(alpha + log lam_i) (the Gaussian reference
curve), ``logsnr_min``/``logsnr_max (data, d)``, the integration range, and ``train_t_min (data, d)``.

Training range. By default (``train_logsnr_margin``) a network is trained on t >= t(logsnr_max
+ 0.5) of its law: the noise levels the likelihood integrates, plus a margin, and no higher SNR
(for +-1 data the denoiser there is a near-step the network would spend its capacity on).
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
from dsclab import distributions, immse, noise
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.distributions.rademacher import Rademacher
from dsclab.seeds import derive_seed
from dsclab.spec import DistributionSpec, StudyBase, TrainSpec, _Frozen, _positive_ints, _unique, seed_list
from dsclab.train import TrainConfig, resolve_device, train_score

CELL_DIMS = ("data", "d", "n", "seed")
DENOISERS = ("exact", "gaussian", "mismatched", "trained", "ensemble")
ENSEMBLE_MEMBERS = ("gaussian", "mismatched", "trained")


# -------------------------------------------------------------------------------------------
# Spec
# -------------------------------------------------------------------------------------------

class ImmseEvalSpec(_Frozen):
    """How the likelihoods are estimated (``dsclab.immse``)."""

    n_points: int = Field(1000, ge=2, description="held-out points from the exact law")
    n_alpha: int = Field(128, ge=2, description="log-SNR draws, each shared by all points and denoisers")
    clip: float = Field(4.0, gt=0, description="truncation of the logistic proposal (loc +- clip scale)")
    logsnr: list[float] = Field([float(a) for a in range(-8, 9)], description="log-SNR grid of the MSE curves")

    @field_validator("logsnr")
    @classmethod
    def _logsnr(cls, v: list[float]) -> list[float]:
        if not v or any(not math.isfinite(x) for x in v):
            raise ValueError(f"{v} must be finite log-SNR values")
        _unique(v)
        return v


def _default_data() -> list[DistributionSpec]:
    return [DistributionSpec(name="gaussian", params={"cond": 10.0}),
            DistributionSpec(name="gaussian_mixture", params={"k": 2, "separation": 4.0, "std": 1.0}),
            DistributionSpec(name="rademacher", params={"p": 0.3})]


class ImmseSpec(StudyBase):
    """An I-MMSE study: the grid data x d x n x seed; every cell evaluates all denoisers."""

    kind: Literal["immse"] = Field("immse", description="study kind (selects the flow)")
    data: list[DistributionSpec] = Field(default_factory=_default_data, description="data laws (distinct names)")
    d: list[int] = Field(..., description="dimensions")
    n: list[int] = Field(..., description="training sample sizes of the trained denoiser")
    seed: list[int] = Field([0], description="seeds (training data, held-out data, initialisation, draws)")
    mismatch: float = Field(4.0, gt=0, description="odds factor of the mismatched mixture weights / +-1 law")
    train_logsnr_margin: float | None = Field(
        0.5, ge=0, description="train each network on log-SNR <= (upper end of its law's integration range) + margin, "
                               "i.e. t >= t(that log-SNR), instead of t >= train.t_min; null: train.t_min")
    train: TrainSpec = TrainSpec()
    evaluation: ImmseEvalSpec = ImmseEvalSpec()

    @field_validator("d", "n")
    @classmethod
    def _pos(cls, v, info):
        return _positive_ints(info.field_name, v)

    @field_validator("seed")
    @classmethod
    def _seeds(cls, v):
        return seed_list(v)

    @field_validator("data")
    @classmethod
    def _data(cls, v):
        if not v:
            raise ValueError("needs at least one value")
        _unique([x.name for x in v])
        for x in v:
            if x.name not in MISMATCHED:
                raise ValueError(f"no mismatched law for {x.name!r} (known: {', '.join(MISMATCHED)})")
        return v

    @model_validator(mode="after")
    def _budget(self) -> "ImmseSpec":
        cells = len(self.data) * len(self.d) * len(self.n) * len(self.seed)
        if cells > self.max_cells:
            raise ValueError(f"the grid has {cells} cells, over max_cells={self.max_cells}")
        return self

    def cells(self) -> list["ImmseCell"]:
        return [ImmseCell(data=x.name, d=d, n=n, seed=s, key=self.key(data=x.name, d=d, n=n, seed=s))
                for x in self.data for d in self.d for n in self.n for s in self.seed]

    def law(self, name: str, d: int):
        spec = next(x for x in self.data if x.name == name)
        return distributions.make(spec.name, d, **spec.params)

    def data_params(self, name: str) -> dict:
        return next(x for x in self.data if x.name == name).model_dump(mode="json")


class ImmseCell(_Frozen):
    data: str
    d: int
    n: int
    seed: int
    key: str


def cell_index(cell: ImmseCell) -> dict:
    return {"data": cell.data, "d": cell.d, "n": cell.n, "seed": cell.seed}


# -------------------------------------------------------------------------------------------
# Laws: mismatched and moment-matched
# -------------------------------------------------------------------------------------------

def _mismatched_gaussian(law: GaussianMixture, r: float) -> GaussianMixture:
    """The isotropic Gaussian with the law's mean and trace (wrong shape, right scale)."""
    d = law.d
    return immse.moment_matched_gaussian(law.mean(), torch.eye(d, dtype=torch.float64) * torch.trace(law.cov()) / d)


def _mismatched_mixture(law: GaussianMixture, r: float) -> GaussianMixture:
    """Same components, weights w'_j ∝ w_j r^(-j/(K-1)): the odds of the first component to the
    last multiplied by r (k = 2, uniform, r = 4 -> [0.8, 0.2])."""
    K = law.n_components
    tilt = torch.tensor([r ** (-j / max(K - 1, 1)) for j in range(K)], dtype=torch.float64)
    return GaussianMixture(law.weights * tilt, law.means, law.covs)


def _mismatched_rademacher(law: Rademacher, r: float) -> Rademacher:
    """+-1 coordinates with the odds of +1 multiplied by r (p = 0.3, r = 4 -> p' = 0.63)."""
    odds = r * law.p / (1 - law.p)
    return Rademacher(law.d, odds / (1 + odds))


MISMATCHED = {"gaussian": _mismatched_gaussian, "gaussian_mixture": _mismatched_mixture,
              "rademacher": _mismatched_rademacher}


def denoisers_for(spec: ImmseSpec, name: str, law) -> dict[str, immse.Denoiser]:
    """The n-independent denoisers of a law: exact, moment-matched Gaussian, mismatched."""
    gauss = immse.moment_matched_gaussian(law.mean(), law.cov())
    return {"exact": law.denoise, "gaussian": gauss.denoise,
            "mismatched": MISMATCHED[name](law, spec.mismatch).denoise}


# -------------------------------------------------------------------------------------------
# Store template
# -------------------------------------------------------------------------------------------

PER_DENOISER = {
    "nll_immse": ("I-MMSE estimate of -log p(x) on held-out data (nats per dimension; matched-Gaussian "
                  "reference, discrete estimator for lattice data)", "nats per dimension"),
    "nll_immse_se": ("standard error of nll_immse (held-out points and log-SNR draws)", "nats per dimension"),
    "nll_gap_se": ("standard error of nll_immse - nll_exact, paired on the same points", "nats per dimension"),
    "ensemble_share": ("fraction of log-SNR draws at which the ensemble picks this member", "1"),
}
PER_CELL = {
    "nll_exact": ("exact -log p(x) averaged over the held-out points", "nats per dimension"),
    "nll_exact_se": ("standard error of nll_exact over the held-out points", "nats per dimension"),
    "train_seconds": ("training wall time of the trained denoiser", "s"),
    "train_loss": ("final training loss (mean per sample, last 10% of steps)", "1"),
    "eval_seconds": ("evaluation wall time of the cell", "s"),
}
COORD_ATTRS = {
    "data": {"long_name": "data law"},
    "d": {"long_name": "dimension"},
    "n": {"long_name": "training sample size of the trained denoiser"},
    "seed": {"long_name": "seed"},
    "denoiser": {"long_name": "denoiser", "ensemble_members": ", ".join(ENSEMBLE_MEMBERS)},
    "logsnr": {"long_name": "log-SNR alpha = log(e^-2t / sigma_t^2)", "units": "1"},
}


def reference(spec: ImmseSpec) -> xr.Dataset:
    """Closed forms per (data, d): the Gaussian reference curve and the integration range."""
    names, grid = [x.name for x in spec.data], torch.tensor(spec.evaluation.logsnr, dtype=torch.float64)
    curve = np.full((len(names), len(spec.d), len(grid)), np.nan)
    lo, hi, tmin = (np.full((len(names), len(spec.d)), np.nan) for _ in range(3))
    for i, name in enumerate(names):
        for j, d in enumerate(spec.d):
            law = spec.law(name, d)
            lam = immse.spectrum(law.cov())
            curve[i, j] = (immse.mmse_gaussian(grid, lam) / d).numpy()
            lo[i, j], hi[i, j] = immse.logsnr_range(*immse.loc_scale(lam), spec.evaluation.clip)
            tmin[i, j] = train_t_min(spec, law)
    return xr.Dataset({
        "mmse_gauss": (("data", "d", "logsnr"), curve, {
            "long_name": "noise-prediction MMSE / d of the matched Gaussian, mean_i sigmoid(alpha + log lam_i)",
            "units": "1"}),
        "logsnr_min": (("data", "d"), lo, {"long_name": "lower end of the log-SNR integration range", "units": "1"}),
        "logsnr_max": (("data", "d"), hi, {"long_name": "upper end of the log-SNR integration range", "units": "1"}),
        "train_t_min": (("data", "d"), tmin, {"long_name": "smallest OU time the networks are trained on", "units": "1"}),
    })


def template(spec: ImmseSpec) -> xr.Dataset:
    """The empty store: dims, coordinates, attributes; floats NaN, status pending, closed forms filled."""
    coords = {
        "data": np.array([x.name for x in spec.data], dtype=str), "d": np.array(spec.d, dtype=np.int64),
        "n": np.array(spec.n, dtype=np.int64), "seed": np.array(spec.seed, dtype=np.int64),
        "denoiser": np.array(DENOISERS, dtype=str), "logsnr": np.array(spec.evaluation.logsnr, dtype=np.float64),
    }
    sizes = {k: len(v) for k, v in coords.items()}
    shape = lambda dims: [sizes[k] for k in dims]
    data = {"status": (CELL_DIMS, np.zeros(shape(CELL_DIMS), dtype=np.int8),
                       {"long_name": "cell status", "flag_values": [0, 1, 2], "flag_meanings": "pending done failed"})}
    for name, (long_name, units) in PER_DENOISER.items():
        dims = CELL_DIMS + ("denoiser",)
        data[name] = (dims, np.full(shape(dims), np.nan), {"long_name": long_name, "units": units})
    for name, (long_name, units) in PER_CELL.items():
        data[name] = (CELL_DIMS, np.full(shape(CELL_DIMS), np.nan), {"long_name": long_name, "units": units})
    dims = CELL_DIMS + ("denoiser", "logsnr")
    data["mmse"] = (dims, np.full(shape(dims), np.nan), {
        "long_name": "data-averaged noise-prediction MSE E||eps - eps_hat||^2 / d (ensemble: envelope)", "units": "1"})
    ds = xr.Dataset(data, coords=coords)
    ds = ds.merge(reference(spec).assign_coords(data=coords["data"], d=coords["d"], logsnr=coords["logsnr"]))
    for k, a in COORD_ATTRS.items():
        ds[k].attrs.update(a)
    ds.attrs.update({
        "study": "immse", "name": spec.name,
        "spec": json.dumps(spec.model_dump(mode="json"), sort_keys=True),
        "spec_hash": spec.hash, "dsclab_version": dsclab.__version__,
        "conventions": "Gaussian channel z = sqrt(gamma) x + eps = X_t / sigma_t of the OU process (dsclab.noise); "
                       "alpha = log gamma",
        "ensemble_members": ", ".join(ENSEMBLE_MEMBERS),
    })
    return ds


# -------------------------------------------------------------------------------------------
# One cell
# -------------------------------------------------------------------------------------------

def training_data(spec: ImmseSpec, name: str, d: int, seed: int) -> torch.Tensor:
    """max(n) draws from the law for (data, d, seed); a cell trains on the first n."""
    g = torch.Generator().manual_seed(derive_seed("immse-train-data", spec.data_params(name), d, seed))
    return spec.law(name, d).sample(max(spec.n), g)


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


def run_cell(spec: ImmseSpec, cell: ImmseCell) -> xr.Dataset:
    """Train the cell's network, evaluate every denoiser on shared held-out points and draws.

    Returns the cell's values over (denoiser, logsnr). Raises on numerical failure
    (``TrainingDiverged``, non-finite estimates); the task marks the cell failed.
    """
    law = spec.law(cell.data, cell.d)
    x_train = training_data(spec, cell.data, cell.d, cell.seed)[: cell.n]
    res = train_score(x_train.to(torch.float32), config=train_config(spec, law), seed=derive_seed("immse-train", cell.key),
                      device=resolve_device(spec.train.device))
    t0 = time.perf_counter()
    model = res.model.cpu().eval()
    dens = denoisers_for(spec, cell.data, law)
    dens["trained"] = immse.denoiser_from_score_fn(model.score, dtype=torch.float32)
    order = list(dens)  # exact, gaussian, mismatched, trained
    ev = spec.evaluation
    g = torch.Generator().manual_seed(derive_seed("immse-heldout", spec.data_params(cell.data), cell.d, cell.seed))
    x = law.sample(ev.n_points, g)
    out = immse.data_set_nll(x, [dens[k] for k in order], law, g, logsnr=ev.logsnr,
                             members=[order.index(k) for k in ENSEMBLE_MEMBERS], n_alpha=ev.n_alpha, clip=ev.clip)
    if not (np.isfinite(out.value).all() and np.isfinite(out.ens_value) and np.isfinite(out.curve).all()):
        raise FloatingPointError(f"non-finite likelihood estimates in cell {cell_index(cell)}")
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


# -------------------------------------------------------------------------------------------
# Report and figure
# -------------------------------------------------------------------------------------------

def _done(ds: xr.Dataset, var: str) -> xr.DataArray:
    return ds[var].where(ds["status"] == 1)


def gap(ds: xr.Dataset) -> xr.DataArray:
    """nll_immse - nll_exact (nats per dimension), done cells only."""
    return _done(ds, "nll_immse") - _done(ds, "nll_exact")


def seed_mean_se(se: xr.DataArray) -> xr.DataArray:
    """SE of a mean over seeds of independent estimates: sqrt(sum se^2) / S."""
    s = se.notnull().sum("seed")
    return np.sqrt((se ** 2).sum("seed")) / s.where(s > 0)


def ensemble_check(ds: xr.Dataset) -> xr.DataArray:
    """(ensemble - nll_exact) / paired SE per cell: the number of SEs the ensemble sits above the
    held-out points' exact entropy estimate (negative: below)."""
    ens = gap(ds).sel(denoiser="ensemble")
    return ens / _done(ds, "nll_gap_se").sel(denoiser="ensemble")


def report(ds: xr.Dataset) -> str:
    """Gap tables per data law (rows d, n; columns denoisers; mean over seeds +- SE), the
    trained gap's trend in n, and the ensemble against its members and the entropy."""
    ds = ds.load()
    g = gap(ds).mean("seed")
    g_se = seed_mean_se(_done(ds, "nll_gap_se"))
    ex = _done(ds, "nll_exact").mean(["seed", "n"])
    lines = [f"I-MMSE study {ds.attrs.get('name', '')}: nll_immse - nll_exact in nats per dimension "
             f"(mean over {ds.sizes['seed']} seeds +- SE); ensemble members: {ds.attrs.get('ensemble_members', '')}"]
    for data in ds.data.values:
        lines += ["", f"[{data}]"]
        header = f"{'d':>4} {'n':>7} {'entropy/d':>10} " + " ".join(f"{k:>19}" for k in ds.denoiser.values)
        lines.append(header)
        for d in ds.d.values:
            for n in ds.n.values:
                cells = [f"{float(g.sel(data=data, d=d, n=n, denoiser=k)):+9.4f} ±{float(g_se.sel(data=data, d=d, n=n, denoiser=k)):7.4f}"
                         for k in ds.denoiser.values]
                lines.append(f"{int(d):>4} {int(n):>7} {float(ex.sel(data=data, d=d)):10.4f} " + " ".join(f"{c:>19}" for c in cells))
    lines += ["", "trained gap along n (mean over seeds): shrinks as n grows?"]
    for data in ds.data.values:
        for d in ds.d.values:
            tr = g.sel(data=data, d=d, denoiser="trained").values
            mono = bool(np.all(np.diff(tr) < 0)) if np.isfinite(tr).all() else None
            lines.append(f"  {data:>17} d={int(d):<3} " + " -> ".join(f"{v:.4f}" for v in tr) + f"   {'yes' if mono else 'NO' if mono is False else 'incomplete'}")
    z = ensemble_check(ds)
    best_member = gap(ds).sel(denoiser=list(ENSEMBLE_MEMBERS)).min("denoiser")
    share = _done(ds, "ensemble_share").sel(denoiser=list(ENSEMBLE_MEMBERS)).mean(["seed", "n"])
    lines += ["", "ensemble vs best member and entropy (over n and seeds): mean gaps, worst (ensemble - exact) / SE,"
                  " share of draws picked per member"]
    for data in ds.data.values:
        for d in ds.d.values:
            zz = z.sel(data=data, d=d)
            sh = ", ".join(f"{k} {float(share.sel(data=data, d=d, denoiser=k)):.2f}" for k in ENSEMBLE_MEMBERS)
            lines.append(f"  {data:>17} d={int(d):<3} ensemble {float(gap(ds).sel(data=data, d=d, denoiser='ensemble').mean()):+.4f}"
                         f"  best member {float(best_member.sel(data=data, d=d).mean()):+.4f}"
                         f"  min z {float(zz.min()):+.2f}  [{sh}]")
    zmin = float(z.min()) if np.isfinite(z).any() else math.nan
    lines.append(f"no ensemble more than 3 SE below the entropy: {'yes' if zmin >= -3 else 'NO'} (min z = {zmin:+.2f})")
    return "\n".join(lines)


def plot(ds: xr.Dataset, out: str) -> str:
    """Figure 1 of the paper, per data law (rows): MSE curves against alpha for each denoiser
    (seed 0; trained at every n), the Gaussian reference and the ensemble envelope (largest n),
    one panel per d; last column: the likelihood gap against n per d (mean over seeds, SE bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = ds.load()
    nd, nr = ds.sizes["d"], ds.sizes["data"]
    fig, axes = plt.subplots(nr, nd + 1, figsize=(4.2 * (nd + 1), 3.4 * nr), squeeze=False)
    alpha = ds.logsnr.values
    mmse = _done(ds, "mmse").isel(seed=0)
    g, g_se = gap(ds).mean("seed"), seed_mean_se(_done(ds, "nll_gap_se"))
    fixed = {"exact": ("k", "-"), "gaussian": ("C2", "--"), "mismatched": ("C3", "-.")}
    for i, data in enumerate(ds.data.values):
        for j, d in enumerate(ds.d.values):
            ax = axes[i, j]
            sel = mmse.sel(data=data, d=d)
            ax.axvspan(float(ds.logsnr_min.sel(data=data, d=d)), float(ds.logsnr_max.sel(data=data, d=d)),
                       color="0.93", zorder=0)
            ax.plot(alpha, ds.mmse_gauss.sel(data=data, d=d), color="0.5", lw=3, alpha=0.5, label="Gaussian reference")
            for k, (c, ls) in fixed.items():
                ax.plot(alpha, sel.sel(denoiser=k).isel(n=-1), color=c, ls=ls, label=k)
            for m, n in enumerate(ds.n.values):
                ax.plot(alpha, sel.sel(denoiser="trained", n=n), color=plt.cm.viridis(m / max(1, len(ds.n) - 1)),
                        lw=1, label=f"trained n={int(n)}")
            ax.plot(alpha, sel.sel(denoiser="ensemble").isel(n=-1), color="C1", lw=2.5, ls=":",
                    label=f"ensemble (n={int(ds.n[-1])})")
            top = 1.3 * float(max(ds.mmse_gauss.sel(data=data, d=d).max(),
                                  sel.sel(denoiser=list(fixed)).max()))
            ax.set_ylim(-0.02 * top, top)  # badly overfitted networks (small n) leave the panel
            ax.set_title(f"{data}, d={int(d)}", fontsize=10)
            ax.set_xlabel("log-SNR α"), ax.set_ylabel("E‖ε − ε̂‖² / d")
            ax.grid(alpha=0.3)
        ax = axes[i, nd]
        for j, d in enumerate(ds.d.values):
            for k, ls, mk in [("trained", "-", "o"), ("ensemble", ":", "s")]:
                ax.errorbar(ds.n.values, g.sel(data=data, d=d, denoiser=k), yerr=g_se.sel(data=data, d=d, denoiser=k),
                            color=f"C{j}", ls=ls, marker=mk, capsize=2, label=f"{k}, d={int(d)}")
            ax.axhline(float(g.sel(data=data, d=d, denoiser="exact").mean()), color=f"C{j}", lw=0.8, ls="--")
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xscale("log"), ax.set_xlabel("n (training samples)")
        ax.set_ylabel("nll_immse − nll_exact (nats/dim)")
        ax.set_title(f"{data}: likelihood gap (dashed: exact)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    axes[0, nd].legend(fontsize=7)
    fig.suptitle(f"{ds.attrs.get('name', '')}: MSE curves (seed 0; shaded: the log-SNR range the likelihood "
                 "integrates) and likelihood gaps (symlog)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
