"""Targets of the sampler-convergence study and their scores (closed-form, perturbed, trained).

Targets (``target`` axis):

* ``gaussian``: the anisotropic N(mean 1, diag(lam)), lam log-spaced from ``scale`` to
  ``scale / cond`` (``distributions.gaussian``). Every step of every sampler is affine, so the
  output law is exactly Gaussian: ``kl`` is exact (``dsclab.studies.sampler_convergence.gaussian_exact``).
* ``product_mixture``: the product of d identical 1-D two-component mixtures (:class:`ProductMixture`).
  Samplers act coordinatewise, so KL(output || q_tmin) = d x the 1-D KL (``exact``).
* ``mixture``: a non-product isotropic mixture (``distributions.gaussian_mixture``, k = 4:
  modes at +-(separation/2) e_1 and +-(separation/2) e_2). No exact KL: ``sliced_w2`` and
  ``mmd`` from samples (``sampled``).

Score kinds (``score`` axis):

* ``exact``: the closed-form score (fast special-cased evaluations, equal to
  ``dist.score``);
* ``perturbed``: s + eta g with g = (1, ..., 1), a constant bias of eta in every coordinate,
  so E||s_hat - s||^2 = eta^2 d at every t. Chosen because it is affine (the Gaussian output
  law stays exactly Gaussian) and coordinatewise (the product KL stays d x a 1-D KL), and it
  keeps the relative score error the same in every d, as the KL of the product targets grows
  like d. Every SDE sampler then levels off at the KL of the exact perturbed reverse SDE
  (measured, gaussian cond 10: 0.13 eta^2 d, i.e. 1.3e-4 d at eta = 0.01; srk, sra1 and shark
  sit within 1 % of it from NFE 256, Euler–Maruyama and the exponential integrator are still
  13-20 % above it at NFE 512); heun levels off at the (10x higher) floor of the perturbed
  probability-flow ODE;
* ``trained``: a ``ScoreMLP`` trained by DSM on ``n_train`` draws of the target, one network
  per seed (``dsclab.train.train_ensemble``: all seeds as one batched ensemble, member r equal
  to ``train_score`` with that seed), in the kind's train stage on that stage's device
  (:func:`train_members`); the evaluation restores them (:func:`trained_score`). A trained
  network is neither affine nor coordinatewise, so no exact route holds: ``kl`` is NaN and the
  error is measured from samples (``sliced_w2``, ``mmd``), for every target.

A score is a callable ``score(x, t)`` of a batch x (m, d) and a forward time t, returning (m, d).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dsclab import distributions, noise
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.errors import TrainingDiverged
from dsclab.studies.sampler_convergence.exact_kl import mixture1d
from dsclab.studies.sampler_convergence.gaussian_exact import gaussian_score
from dsclab.nets import EnsembleMLP, ScoreMLP
from dsclab.seeds import derive_seed, rng
from dsclab.studies.sampler_convergence.spec import SamplerConvergenceSpec, SrkCell
from dsclab.train import TrainConfig, TrainResult, device_score, train_ensemble

Score = Callable[[torch.Tensor, float], torch.Tensor]


def mixture1d_score(weights, means, stds) -> Score:
    """Exact score of q_t for the 1-D mixture, applied elementwise to a tensor of any shape.

    s_t(x) = -sum_k r_k(x) (x - e^{-t} mu_k) / v_k,  v_k = e^{-2t} s_k^2 + sigma_t^2,
    r_k the responsibilities (log space). Equal to ``mixture1d(...).score`` on (m, 1) inputs.
    """
    lw = torch.log(torch.tensor(weights, dtype=torch.float64) / sum(weights))
    mu = torch.tensor(means, dtype=torch.float64)
    s2 = torch.tensor(stds, dtype=torch.float64) ** 2

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        a, sig2 = math.exp(-float(t)), -math.expm1(-2.0 * float(t))
        v = a * a * s2 + sig2
        r = x.to(torch.float64)[..., None] - a * mu
        lg = lw - 0.5 * r * r / v - 0.5 * torch.log(v)
        e = torch.exp(lg - lg.max(dim=-1, keepdim=True).values)
        return (-(e * r / v).sum(-1) / e.sum(-1)).to(x.dtype)

    return score


class ProductMixture:
    """prod_{i<d} p(x_i) for a 1-D mixture p, with the exact q_t (a product too)."""

    def __init__(self, d: int, weights, means, stds):
        self.d = d
        self.factor = mixture1d(weights, means, stds)
        self._score = mixture1d_score(weights, means, stds)

    def sample(self, m: int, generator: torch.Generator, t: float = 0.0) -> torch.Tensor:
        return self.factor.sample(m * self.d, generator, t=t).reshape(m, self.d)

    def score(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        return self._score(x, float(t))

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        m = x.shape[0]
        return self.factor.log_prob(x.reshape(-1, 1), float(t)).reshape(m, self.d).sum(1)


def isotropic_mixture_score(dist: GaussianMixture) -> Score:
    """Exact score of a mixture of isotropic components N(mu_k, c_k I), in O(m K d).

    s_t(x) = -x sum_k r_k / v_k + e^{-t} sum_k (r_k / v_k) mu_k, v_k = e^{-2t} c_k + sigma_t^2,
    with log r_k = log w_k - ||x - e^{-t} mu_k||^2 / (2 v_k) - (d/2) log v_k + const.
    Equal to ``dist.score``; raises ValueError for a non-isotropic component.
    """
    c = dist.lam[:, 0]
    eye = torch.eye(dist.d, dtype=torch.float64)
    if not torch.allclose(dist.covs, c[:, None, None] * eye, rtol=1e-12, atol=1e-14):
        raise ValueError("isotropic_mixture_score needs components with covariance c_k I")
    lw, d = torch.log(dist.weights), dist.d
    mus = {dt: dist.means.to(dt) for dt in (torch.float32, torch.float64)}
    mu2 = (dist.means * dist.means).sum(1)

    def score(x: torch.Tensor, t: float) -> torch.Tensor:
        # Computed in x's dtype (float32 on the sampled route, where Monte Carlo error dominates);
        # the (m, K) responsibilities in float64.
        a, sig2 = math.exp(-float(t)), -math.expm1(-2.0 * float(t))
        v = a * a * c + sig2  # (K,)
        mu = mus.get(x.dtype, dist.means)
        r2 = (x * x).sum(1, keepdim=True).to(torch.float64) - 2 * a * (x @ mu.T).to(torch.float64) + a * a * mu2
        lg = lw - 0.5 * r2 / v - 0.5 * d * torch.log(v)
        p = (torch.softmax(lg, dim=1) / v).to(x.dtype)  # r_k / v_k
        return -x * p.sum(1, keepdim=True) + a * (p @ mu)

    return score


def make_target(spec: SamplerConvergenceSpec, name: str, d: int):
    """The target law in dimension d: a ``GaussianMixture`` or a :class:`ProductMixture`."""
    if name == "gaussian":
        g = spec.gaussian
        return distributions.make("gaussian", d, cond=g.cond, mean=g.mean, scale=g.scale)
    if name == "product_mixture":
        p = spec.product_mixture
        return ProductMixture(d, p.weights, p.means, p.stds)
    if name == "mixture":
        m = spec.mixture
        return distributions.make("gaussian_mixture", d, k=m.k, separation=m.separation, std=m.std)
    raise ValueError(f"unknown target {name!r}")


def exact_score(name: str, dist) -> Score:
    """Fast closed-form score of a target (equal to ``dist.score``)."""
    if name == "gaussian":
        return gaussian_score(dist)
    if name == "product_mixture":
        return dist.score
    return isotropic_mixture_score(dist)


def perturb(score: Score, eta: float) -> Score:
    """s + eta g with g = (1, ..., 1) (see the module docstring)."""
    def perturbed(x: torch.Tensor, t: float) -> torch.Tensor:
        return score(x, t) + eta
    return perturbed


def train_config(spec: SamplerConvergenceSpec) -> TrainConfig:
    return TrainConfig.of(spec.train)


def train_members(spec: SamplerConvergenceSpec, cell: SrkCell, device: str) -> list[TrainResult]:
    """Train one ``ScoreMLP`` per seed on ``n_train`` draws of the cell's target (seed r: its own
    data, initialisation and minibatches), all seeds at once as one batched ensemble on ``device``
    (``train.train_ensemble``: member r equals ``train_score`` with the same seed). Returns the
    members' ``TrainResult`` in seed order (models on the CPU); raises ``TrainingDiverged`` if a
    member diverged."""
    dist = make_target(spec, cell.target, cell.d)
    data, seeds = [], []
    for seed in spec.seed:
        g = rng("srk-train-data", spec.target_params(cell.target), cell.d, seed)
        data.append(dist.sample(spec.n_train, g).to(torch.float32))
        seeds.append(derive_seed("srk-train", cell.key, seed))
    results = train_ensemble(data, seeds, config=train_config(spec), device=device)
    if any(r is None for r in results):
        raise TrainingDiverged(f"training diverged for seeds {[s for s, r in zip(spec.seed, results) if r is None]}")
    return results


def trained_score(models: list[ScoreMLP]) -> Score:
    """The score of the trained members (:func:`train_members`), as one batched ensemble on the
    members' device: member r evaluates rows [r m, (r + 1) m) of a batch of R m rows (the layout
    of ``sampled.sampled_curves``), whatever device the batch is on (it comes back there)."""
    net = EnsembleMLP(models).eval()
    dev = next(net.parameters()).device

    def score(y: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((y.shape[0],), float(t), dtype=torch.float64, device=dev)
        with torch.no_grad():
            eps = net(y.to(dev, torch.float32), tt)
        return noise.score_from_eps(eps, tt.to(torch.float32)).to(y.device, y.dtype)

    return score


def member_score(model) -> Score:
    """The score of one trained ``ScoreMLP`` (float32 network on its device, output in the input's
    dtype and device)."""
    run = device_score(model)

    def score(y: torch.Tensor, t: float) -> torch.Tensor:
        with torch.no_grad():
            return run(y.to(torch.float32), float(t)).to(y.dtype)
    return score
