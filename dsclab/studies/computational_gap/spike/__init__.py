"""Sparse rank-one spikes, hidden cliques and stochastic-localisation sampling (science.md §5).

Montanari & Vu (2025), "Computational bottlenecks for denoising diffusions" (arXiv:2503.08028).
Only the abstract and summaries of the paper could be read here; the constructions below are the
ones science.md §5 adopts, and where a detail (a test, a network) had to be chosen, the choice is
documented at the function. Import everything from ``dsclab.studies.computational_gap.spike``.

Conventions (stated once; every function in this package follows them)
----------------------------------------------------------------------
* **Shapes.** A matrix sample is a symmetric ``n x n`` tensor; a batch is ``(m, n, n)``, float64
  unless said otherwise. A time ``t`` is a Python float, a 0-d tensor or a ``(m,)`` tensor (one time
  per matrix). ``||.||`` is the Frobenius norm, ``<A, B> = tr(A^T B)``.
* **Data.** ``B_{n,k}`` = k-sparse u in R^n with entries in {0, +-1/sqrt(k)}; ``x = u u^T`` so
  ``||x|| = ||u||^2 = 1`` (d = n^2). u and -u give the same x, so ``mu_{n,k}`` (u uniform on B)
  puts mass ``1/N_x`` on each of ``N_x = C(n,k) 2^{k-1}`` matrices. The experiments' law is the
  mixture ``mu_bar = (1-p) delta_0 + p mu_{n,k}`` with ``p = 1/2`` (``p_spike``). The hidden-clique
  family uses the same x with all signs +1 (``N_x = C(n,k)``), see :class:`HiddenClique`.
* **Observation (stochastic-localisation time t = SNR).**

      y_t = t x + W_t,     W_t = (B_t + B_t^T) / 2,

  ``B_t`` an n x n matrix of independent standard Brownian motions. So W_t is symmetric with
  independent entries up to symmetry, off-diagonal ``W_ij ~ N(0, t/2)`` and diagonal
  ``W_ii ~ N(0, t)``; equivalently W_t is standard Brownian motion on the symmetric matrices with
  the Frobenius inner product (``<A, W_t> ~ N(0, t ||A||^2)`` for symmetric A). This y is the
  sufficient statistic of the paper's channel ``y' = t x + B_t`` in R^{n^2} (``y = (y'+y'^T)/2``
  and ``E[x | y'] = E[x | y]``), so drifts, MSE curves and samples are those of that channel.
* **Posterior weights.** As a function of x, ``p(y | x) ∝ exp(-||y - t x||^2 / (2t))
  ∝ exp(<x, y> - t ||x||^2 / 2)``. For x = u u^T this is exactly

      w_u = exp(u^T y u - t/2)       (no other constant, since ||u u^T||^2 = 1),

  and x = 0 has weight 1. The drift is the posterior mean

      m(y, t) = E[x | y_t = y] = [(p/N_x) sum_x w_x x] / [(1-p) + (p/N_x) sum_x w_x],

  which for p = 1/2 is science.md's ``[(2|B|)^{-1} sum w_u u u^T] / [1/2 + (2|B|)^{-1} sum w_u]``.
* **Thresholds** (on this SL-time scale; :data:`THRESHOLDS`). ``u^T W_t u ~ N(0, t)`` and the max
  over ``N_x ~ (n/k)^k`` candidates is ``~ sqrt(2 t k log(n/k))``, so exhaustive search detects the
  spike for ``t > 2k log(n/k)``. ``W_t / sqrt(t n/2)`` is a GOE matrix with semicircle on [-2, 2]
  and the spike has strength ``t / sqrt(t n/2)``, so the BBP (spectral) threshold is ``t = n/2``.
  Entrywise thresholding works on the scale ``k^2 log(n/k^2)`` (for k << sqrt(n)).
* **OU time** (``dsclab.noise``). For the OU process ``X = e^{-s} x + sigma_s Z`` (Z i.i.d.
  N(0,1) in R^{n^2}), ``y = sym(X) e^{-s} / sigma_s^2`` is the observation above at
  ``t = snr(s)``; see :func:`sl_from_ou`, :func:`ou_from_sl`, :func:`ou_score`.
* **Sampler (SL Euler).** ``y_0 = 0``, ``y_{l+1} = y_l + Delta m(y_l, l Delta) + sym(dB_l)`` with
  ``dB_l ~ N(0, Delta I)`` i.i.d. (so ``sym(dB_l) = sqrt(Delta) g_l``, g_l a standard symmetric
  noise in the convention above); the sample is ``m(y_T, T)``. See :func:`sample_sl_euler`.
* **Drifts** are functions ``drift(y, t) -> (m, n, n)`` estimating x; :data:`DRIFTS` (``.catalog``,
  entry-point group ``dsclab.drifts``) maps a name to a factory ``(dist, **params) -> drift``
  (:func:`make_drift`).
"""
from __future__ import annotations

from dsclab.studies.computational_gap.spike.catalog import DRIFTS, DriftEntry, make_drift
from dsclab.studies.computational_gap.spike.drifts import (
    bayes_drift,
    constant_drift,
    fixed_sample,
    gated,
    power_iteration_drift,
    project_to_support,
    spectral_drift,
    spike_test,
    threshold_drift,
)
from dsclab.studies.computational_gap.spike.metrics import (
    drift_loss,
    frac_close_rank_one,
    integrated_loss,
    mse_curve,
    nearest_rank_one,
    sample_norm,
    summarize,
    support_index,
    w1_norm_law,
)
from dsclab.studies.computational_gap.spike.model import (
    SPIKE_FAMILIES,
    THRESHOLDS,
    HiddenClique,
    SparseSpike,
    hidden_clique,
    make_spike,
    observe,
    ou_denoiser,
    ou_from_sl,
    ou_score,
    sl_from_ou,
    sparse_spike,
    sparse_spike_mixture,
    sym,
    t_vector,
    threshold_bayes,
    threshold_spectral,
    threshold_thresholding,
)
from dsclab.studies.computational_gap.spike.network import SpikeNet, network_drift, train_network
from dsclab.studies.computational_gap.spike.sampling import SLNoise, sample_sl_euler, sl_generate, sl_times

__all__ = [
    "DRIFTS", "DriftEntry", "SLNoise", "SPIKE_FAMILIES", "THRESHOLDS", "HiddenClique", "SparseSpike", "SpikeNet",
    "bayes_drift", "constant_drift", "drift_loss", "fixed_sample", "frac_close_rank_one", "gated",
    "hidden_clique", "integrated_loss", "make_drift", "make_spike", "mse_curve", "nearest_rank_one",
    "network_drift", "observe", "ou_denoiser", "ou_from_sl", "ou_score", "power_iteration_drift",
    "project_to_support", "sample_norm", "sample_sl_euler", "sl_from_ou", "sl_generate", "sl_times",
    "sparse_spike", "sparse_spike_mixture", "spectral_drift", "spike_test", "summarize",
    "support_index", "sym", "t_vector", "threshold_bayes", "threshold_drift", "threshold_spectral",
    "threshold_thresholding", "train_network", "w1_norm_law",
]
