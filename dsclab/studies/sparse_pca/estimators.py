"""Baseline estimators of the sparse spike u from n samples, and their Gaussian scores (issue 10).

Model: ``x_1..x_n ~ N(0, I_d + beta u u^T)``, u k-sparse with entries +-1/sqrt(k)
(:mod:`dsclab.distributions.sparse_pca`). Conventions, stated once:

* ``x (n, d)`` float64; ``S = x^T x / n`` is the sample covariance about the known mean 0
  (:func:`sample_covariance`); k is known to every sparse estimator.
* An estimator is a plain function ``estimator(x, k) -> u_hat`` returning a unit vector ``(d,)``
  (float64; its sign is arbitrary, every metric uses |<u_hat, u>|). :data:`BASELINES` maps a name
  to it.
* Each estimate becomes a law and a score through the Gaussian formula: the spike strength is
  the Rayleigh quotient's excess ``beta_hat = max(u_hat^T S u_hat - 1, 0)`` (:func:`spike_strength`)
  and the estimated law is ``N(0, I + beta_hat u_hat u_hat^T)`` (:func:`gaussian_law`), whose q_t
  and score are exact (``GaussianMixture``; the same score in O(m d) closed form: :func:`spike_score`). So baselines and trained networks are scored with the
  same metrics (score error against the exact score, samples from the same sampler).

Estimators (rank one, k known):

* ``pca``: top eigenvector of S. Succeeds (overlap bounded away from 0) above the BBP/spectral
  size n ~ d / beta^2; below it the overlap -> 0 (Baik-Ben Arous-Peche; Paul 2007).
* ``diagonal_thresholding`` (Johnstone & Lu 2009): support = the k largest diagonal entries of S,
  u_hat = top eigenvector of S restricted to it. Works for n >~ k^2 log d / beta^2.
* ``covariance_thresholding`` (Krauthgamer, Nadler & Vilenchik 2015; analysed by Deshpande &
  Montanari 2016): soft-threshold every entry of ``S - I`` at ``tau / sqrt(n)``, take the top
  eigenvector v of the result, support = the k largest |v_i|, u_hat = top eigenvector of S on it.
  Works for n >~ k^2 log(d / k^2) / beta^2 (k <~ sqrt(d)). The papers' text could not be read
  here; this is the construction adopted, with two documented choices: no sample splitting
  (Deshpande & Montanari split the samples into halves for the analysis; at the study's smallest
  n a half would hold 2 points) and ``tau = sqrt(max(2 log(d / k^2), 1))``, i.e. the noise level of
  a Gaussian entry's maximum over ~d/k^2 entries, floored at one noise standard deviation.
* ``exhaustive``: the k-sparse principal component, max over all C(d, k) supports of the top
  eigenvalue of S restricted to the support; u_hat its eigenvector. The information-theoretic
  reference: it succeeds at n ~ k log(d / k) / beta^2. Cost up to C(d, k) small eigenproblems
  (exact search with Gershgorin pruning, :func:`exhaustive`); above ``max_supports`` it refuses
  with :class:`ExhaustiveTooLarge`.

Classical sample sizes (constants dropped, as in the literature; :func:`sample_sizes`):
information-theoretic ``k log(d/k) / beta^2``, polynomial-time ``k^2 log(d/k^2) / beta^2`` (defined
for k^2 < d; NaN otherwise, where the spectral size is the smaller one), spectral ``d / beta^2``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from dsclab.distributions.gaussian import GaussianMixture
from dsclab.lazy import deferred
from dsclab.registry import Needs, Registry

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


EXHAUSTIVE_MAX_SUPPORTS = 1_000_000


class ExhaustiveTooLarge(ValueError):
    """Exhaustive search over C(d, k) supports was asked above its limit."""


def n_supports(d: int, k: int) -> int:
    """C(d, k): the number of supports exhaustive search visits."""
    return math.comb(d, k)


def exhaustive_feasible(d: int, k: int, max_supports: int = EXHAUSTIVE_MAX_SUPPORTS) -> bool:
    return n_supports(d, k) <= max_supports


# ----------------------------------------------------------------------------------------------
# linear algebra helpers
# ----------------------------------------------------------------------------------------------

def sample_covariance(x: torch.Tensor) -> torch.Tensor:
    """``S = x^T x / n`` (float64, (d, d)): second moment about the known mean 0."""
    x = x.to(torch.float64)
    return x.T @ x / x.shape[0]


def top_eigvec(a: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Largest eigenvalue and a unit eigenvector of a symmetric matrix (float64)."""
    lam, vec = torch.linalg.eigh(0.5 * (a + a.T))
    return float(lam[-1]), vec[:, -1].contiguous()


def restricted_top_eigvec(s: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Top eigenvector of ``S[support, support]`` embedded in R^d (zeros off the support)."""
    support = torch.as_tensor(support, dtype=torch.long)
    _, v = top_eigvec(s[support][:, support])
    u = torch.zeros(s.shape[0], dtype=torch.float64)
    u[support] = v
    return u


def top_k(v: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of the k largest entries of v."""
    return torch.sort(torch.topk(v, k).indices).values


# ----------------------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------------------

def pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """Top eigenvector of S (k unused)."""
    return top_eigvec(sample_covariance(x))[1]


def diagonal_thresholding(x: torch.Tensor, k: int) -> torch.Tensor:
    """Johnstone-Lu: support = k largest S_ii; u_hat = top eigenvector of S on it."""
    s = sample_covariance(x)
    return restricted_top_eigvec(s, top_k(torch.diagonal(s), k))


def ct_threshold(d: int, k: int) -> float:
    """The default tau of :func:`covariance_thresholding`: sqrt(max(2 log(d / k^2), 1))."""
    return math.sqrt(max(2.0 * math.log(d / k ** 2), 1.0))


def covariance_thresholding(x: torch.Tensor, k: int, tau: float | None = None) -> torch.Tensor:
    """Soft-threshold ``S - I`` entrywise at ``tau / sqrt(n)``; support = k largest |v_i| of the
    result's top eigenvector v; u_hat = top eigenvector of S on that support (module docstring)."""
    s = sample_covariance(x)
    n, d = x.shape
    tau = ct_threshold(d, k) if tau is None else float(tau)
    g = s - torch.eye(d, dtype=torch.float64)
    eta = torch.sign(g) * (g.abs() - tau / math.sqrt(n)).clamp_min(0.0)
    _, v = top_eigvec(eta)
    return restricted_top_eigvec(s, top_k(v.abs(), k))


@functools.lru_cache(maxsize=4)
def _supports(d: int, k: int) -> torch.Tensor:
    """All k-subsets of range(d) in lexicographic order, (C(d, k), k) (cached: it is the slow part)."""
    return torch.combinations(torch.arange(d), r=k) if k > 1 else torch.arange(d)[:, None]


def exhaustive(x: torch.Tensor, k: int, max_supports: int = EXHAUSTIVE_MAX_SUPPORTS,
               chunk: int = 1 << 15) -> torch.Tensor:
    """The k-sparse principal component: argmax over |T| = k of lambda_max(S_TT), by enumeration.

    Exact, with pruning: Gershgorin's bound ``lambda_max(S_TT) <= g_T = max_i sum_j |S_ij|``
    (i, j in T) is computed for every support (cheap), supports are visited in decreasing g_T in
    chunks of ``chunk`` (batched ``eigvalsh`` of (chunk, k, k) blocks), and the search stops once
    the next bound is at most the best eigenvalue found: no unvisited support can beat it. (Below
    the spectral threshold the bounds are loose and most supports are visited; above it the true
    support's eigenvalue ~ 1 + beta prunes the noise supports, whose bounds are ~ 1 + O(k / sqrt(n)).)
    Ties (probability zero for continuous data) go to the support visited first. Raises
    :class:`ExhaustiveTooLarge` when C(d, k) > ``max_supports``.
    """
    s = sample_covariance(x)
    d = s.shape[0]
    total = n_supports(d, k)
    if total > max_supports:
        raise ExhaustiveTooLarge(
            f"exhaustive search over C({d},{k}) = {total:.3g} supports is above max_supports={max_supports:.3g}")
    supports = _supports(d, k)
    sa = s.abs()
    bound = torch.empty(total, dtype=torch.float64)
    for start in range(0, total, 1 << 17):
        idx = supports[start:start + (1 << 17)]
        bound[start:start + idx.shape[0]] = sa[idx[:, :, None], idx[:, None, :]].sum(-1).amax(-1)
    order = torch.argsort(bound, descending=True)
    best_val, best = -math.inf, None
    for start in range(0, total, chunk):
        ids = order[start:start + chunk]
        if float(bound[ids[0]]) <= best_val:
            break
        idx = supports[ids]
        lam = torch.linalg.eigvalsh(s[idx[:, :, None], idx[:, None, :]])[:, -1]   # (c,)
        j = int(torch.argmax(lam))
        if float(lam[j]) > best_val:
            best_val, best = float(lam[j]), idx[j]
    return restricted_top_eigvec(s, best)


BASELINES: Registry[Callable[..., "torch.Tensor"]] = Registry(
    "dsclab.sparse_pca_baselines", "sparse-PCA baseline", check=Needs("sparse-PCA baseline"), builtins={
        "pca": pca,
        "diagonal_thresholding": diagonal_thresholding,
        "covariance_thresholding": covariance_thresholding,
        "exhaustive": exhaustive,
    })
"""Classical estimators of the spike direction, ``(x (n, d), k) -> u_hat (d,)``, by name (entry-point
group ``dsclab.sparse_pca_baselines``)."""


# ----------------------------------------------------------------------------------------------
# from an estimate to a score; metrics of a direction
# ----------------------------------------------------------------------------------------------

def spike_strength(s: torch.Tensor, u_hat: torch.Tensor) -> float:
    """``beta_hat = max(u_hat^T S u_hat - 1, 0)`` (S's excess variance along u_hat)."""
    return max(float(u_hat @ s @ u_hat) - 1.0, 0.0)


def gaussian_law(u_hat: torch.Tensor, beta_hat: float) -> GaussianMixture:
    """The estimated law ``N(0, I + beta_hat u_hat u_hat^T)``; its ``.score(x, t)`` is exact for it."""
    d = u_hat.shape[0]
    cov = torch.eye(d, dtype=torch.float64) + beta_hat * torch.outer(u_hat, u_hat)
    return GaussianMixture([1.0], torch.zeros(1, d, dtype=torch.float64), cov[None])


def spike_score(u_hat: torch.Tensor, beta_hat: float):
    """The exact score of q_t for the law ``N(0, I + beta_hat u_hat u_hat^T)`` in closed form
    (Sherman-Morrison; O(m d) per call instead of the O(m d^2) of ``GaussianMixture.score``):

        s_t(x) = -x + c_t (u_hat^T x) u_hat,   c_t = e^{-2t} beta_hat / (1 + e^{-2t} beta_hat)

    (u_hat a unit vector). Returns ``score(x, t) -> (m, d)`` computed in x's dtype; t a float or an
    (m,) tensor.
    """
    u64 = (u_hat / u_hat.norm()).to(torch.float64)
    cache: dict = {}

    def score(x: torch.Tensor, t) -> torch.Tensor:
        u = cache.get(x.dtype)
        if u is None:
            u = cache[x.dtype] = u64.to(x.dtype)
        tt = torch.as_tensor(t, dtype=torch.float64)
        a = float(beta_hat) * torch.exp(-2.0 * tt)
        c = (a / (1.0 + a)).to(x.dtype)
        c = c.reshape(-1, 1) if tt.ndim else c
        return c * (x @ u)[:, None] * u[None, :] - x    # in x's dtype (float32 while sampling)
    return score


def overlap(u_hat: torch.Tensor, u: torch.Tensor) -> float:
    """|<u_hat, u>| / (|u_hat| |u|), in [0, 1]."""
    u_hat, u = u_hat.to(torch.float64), u.to(torch.float64)
    return float((u_hat @ u).abs() / (u_hat.norm() * u.norm()))


def support_recovery(u_hat: torch.Tensor, u: torch.Tensor, k: int) -> float:
    """Fraction of the true support among the k largest |u_hat_i|: |S_hat ∩ S| / k."""
    est = set(top_k(u_hat.abs(), k).tolist())
    true = set(torch.nonzero(u).flatten().tolist())
    return len(est & true) / k


def sample_direction(y: torch.Tensor) -> torch.Tensor:
    """Top eigenvector of the (centred) covariance of samples ``y (m, d)``: the direction a
    sampler's output carries."""
    y = y.to(torch.float64)
    return top_eigvec(torch.cov(y.T).reshape(y.shape[1], y.shape[1]))[1]


def null_overlap_rms(d: int) -> float:
    """Root-mean-square overlap of any estimator under beta = 0: E<u_hat, u>^2 = 1/d exactly for an
    estimator equivariant under signed permutations of the coordinates (the null law and u's
    entries make the cross terms vanish and E u_hat_i^2 = 1/d)."""
    return 1.0 / math.sqrt(d)


def pca_n_half_bbp(d: int, beta: float, level: float = 0.5) -> float:
    """The n at which PCA's overlap reaches ``level`` in the proportional limit (BBP / Paul 2007):
    overlap^2 -> (1 - g / beta^2) / (1 + g / beta) with g = d / n, so
    n = d (level^2 / beta + 1 / beta^2) / (1 - level^2)  (= d (1/beta + 4/beta^2) / 3 at 1/2);
    the spectral size d / beta^2 with its constant. inf at beta = 0."""
    if beta <= 0:
        return math.inf
    r2 = level * level
    return d * (r2 / beta + 1.0 / beta ** 2) / (1.0 - r2)


def sample_sizes(d: int, k: int, beta: float) -> dict[str, float]:
    """The classical sample sizes (constants dropped): ``it = k log(d/k) / beta^2``,
    ``poly = k^2 log(d/k^2) / beta^2`` (NaN when k^2 >= d), ``spectral = d / beta^2``; all inf at
    beta = 0."""
    if beta <= 0:
        return {"it": math.inf, "poly": math.inf, "spectral": math.inf}
    b2 = beta * beta
    poly = k * k * math.log(d / (k * k)) / b2 if k * k < d else math.nan
    return {"it": k * math.log(d / k) / b2, "poly": poly, "spectral": d / b2}
