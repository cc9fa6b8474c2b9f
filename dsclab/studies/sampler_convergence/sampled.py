"""Sampled route of the sampler-convergence study: sample metrics against fresh target draws,
with their Monte Carlo floors, and the score error of a (trained) score.

Where the KL is not exact (mixture target, trained score; every cell with ``sample_all``):
``sliced_w2`` and ``mmd`` of ``sampling.n_samples`` samples against fresh draws of q_tmin, with
their floors (the same metrics between two independent draws of q_tmin), up to
``sampling.max_nfe``; +inf where the sampler's output was not finite (a diverged sampler: its
distance is infinite, stored as such, not an error).

Seeds for Monte Carlo: start points, reference draws and projection directions depend on
(target, d, seed) only and the sampler noise on (target, d, seed, sampler, NFE) only, so every
score kind sees the same random numbers (their differences are free of that noise). All seeds
of a cell run as one batch (seed r = rows [r m, (r + 1) m)), paying the per-step cost once.
"""
from __future__ import annotations

import numpy as np
import torch

from dsclab.metrics import SlicedW2, mmd
from dsclab.noise_sources import BlockGaussianNoise
from dsclab.samplers import SAMPLERS, uses_levy_area
from dsclab.seeds import rng
from dsclab.studies.sampler_convergence.schemes import grid
from dsclab.studies.sampler_convergence.spec import SamplerConvergenceSpec, SrkCell
from dsclab.studies.sampler_convergence.targets import Score, exact_score


def _bandwidth(ref: torch.Tensor) -> float:
    """The RBF bandwidth ``metrics.mmd`` uses by default: the median pairwise distance of ``ref``."""
    dist = torch.cdist(ref, ref)
    return float(dist[dist > 0].median())


class Reference:
    """Seed r's Monte Carlo reference: start points ``x0 (m, d)`` at T, a draw ``ref`` of q_tmin,
    the metrics against it (``sliced_w2`` with fixed projection directions, ``mmd`` with the
    bandwidth ``metrics.mmd`` picks for ``ref``), and the floors: the same metrics between
    ``ref`` and a second independent draw of q_tmin. Everything comes from (target, d, seed)."""

    def __init__(self, spec: SamplerConvergenceSpec, cell: SrkCell, dist, seed: int):
        tp, m = spec.target_params(cell.target), spec.sampling.n_samples
        g = rng("srk-points", tp, cell.d, seed)
        self.x0 = (dist.sample(m, g, t=spec.T) if spec.start == "exact"
                   else torch.randn(m, cell.d, generator=g, dtype=torch.float64))
        self.ref, ref2 = dist.sample(m, g, t=spec.t_min), dist.sample(m, g, t=spec.t_min)
        self.sliced_w2 = SlicedW2(self.ref, rng("srk-proj", tp, cell.d, seed),
                                  n_proj=spec.sampling.n_proj)
        self.bandwidth = _bandwidth(self.ref)
        self.sliced_w2_floor, self.mmd_floor = self.sliced_w2(ref2), self.mmd(ref2)

    def mmd(self, y: torch.Tensor) -> float:
        return mmd(y, self.ref, bandwidth=self.bandwidth)


def sampled_curves(spec: SamplerConvergenceSpec, cell: SrkCell, score: Score, refs: list[Reference],
                   dtype=torch.float32) -> dict[str, np.ndarray]:
    """sliced W2 and MMD (sampler, nfe, seed) of ``n_samples`` samples per seed against the
    seed's q_tmin draw (:class:`Reference`), for NFE up to ``sampling.max_nfe`` (NaN beyond).

    All seeds run as one batch of R m rows (seed r: rows [r m, (r + 1) m)), so the per-step cost
    is paid once. Seed r's noise comes from (target, d, seed, sampler, NFE): the same for every
    score kind and independent of the other seeds. A sampler whose output is not finite gets +inf.
    """
    tp = spec.target_params(cell.target)
    m, sp, R = spec.sampling.n_samples, spec.sampling, len(spec.seed)
    x0 = torch.cat([ref.x0 for ref in refs]).to(dtype)
    S, N = len(spec.sampler), len(spec.nfe)
    out = {"sliced_w2": np.full((S, N, R), np.nan), "mmd": np.full((S, N, R), np.nan)}
    for i, name in enumerate(spec.sampler):
        levy_area = uses_levy_area(SAMPLERS[name])
        for j, nfe in enumerate(spec.nfe):
            if sp.max_nfe is not None and nfe > sp.max_nfe:
                continue
            gens = [rng("srk-noise", tp, cell.d, seed, name, nfe)
                    for seed in spec.seed]
            src = BlockGaussianNoise((m, cell.d), gens, dtype=dtype, levy_area=levy_area)
            with torch.no_grad():
                y = SAMPLERS[name](score, x0, grid(spec, name, nfe), noise=src).to(torch.float64)
            for r in range(R):
                yr = y[r * m:(r + 1) * m]
                if not torch.isfinite(yr).all():
                    out["sliced_w2"][i, j, r] = out["mmd"][i, j, r] = np.inf
                    continue
                out["sliced_w2"][i, j, r] = refs[r].sliced_w2(yr)
                out["mmd"][i, j, r] = refs[r].mmd(yr)
    return out


def score_l2(spec: SamplerConvergenceSpec, cell: SrkCell, dist, score: Score, seed: int) -> np.ndarray:
    """E||s_hat - s||^2 at each ``sampling.score_t`` on fresh x ~ q_t (n_samples points)."""
    tp = spec.target_params(cell.target)
    ex = exact_score(cell.target, dist)
    out = []
    for t in spec.sampling.score_t:  # each t its own points: a value does not depend on the t grid
        x = dist.sample(spec.sampling.n_samples, rng("srk-score-points", tp, cell.d, seed, t), t=float(t))
        out.append(float(((score(x, float(t)).to(torch.float64) - ex(x, float(t))) ** 2).sum(1).mean()))
    return np.array(out)
