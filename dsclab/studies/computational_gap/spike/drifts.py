"""Drifts ``m(y, t) -> estimate of x`` (conventions: ``dsclab.studies.computational_gap.spike``; science.md §5).

Every drift takes ``y (m, n, n)`` and ``t`` (float or ``(m,)``) and returns ``(m, n, n)`` in y's
dtype. The registry of drifts by name is ``.catalog`` (:data:`DRIFTS`). The paper's hard-test baselines are in ``dsclab.studies.computational_gap.spike.paper``, its
message-passing network in ``dsclab.studies.computational_gap.spike.mpnn``.

Polynomial-time drifts (spectral, power iteration, thresholding) share one last step: a candidate
``u_hat in B_{n,k}`` is turned into an estimate by the *single-candidate posterior*

    gamma = sigmoid(q - t/2 + log p - log N_x),   q = u_hat^T y u_hat,
    m_hat = gamma u_hat u_hat^T + (1 - gamma) E[x].

gamma is the exact posterior probability of ``x = u_hat u_hat^T`` when every other point of the
support is replaced by its null expectation ``E[w_u | x = 0] = 1`` (then ``sum_u w_u ~ w_uhat +
N_x``): it is the test "0 vs spike" (gamma -> 1 once ``q - t/2 > log(N_x/p)``, i.e. for a correct
candidate once t exceeds ~2 log N_x ~ the Bayes threshold; it stays ~0 on pure noise because
``max_u u^T W_t u ~ sqrt(2 t log N_x) < t/2 + log N_x``). The (1 - gamma) E[x] term makes the
undetected estimate the best constant, so at t = 0 the MSE is the constant baseline's.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from dsclab.studies.computational_gap.spike.model import SparseSpike, sym, t_vector

Drift = Callable[[torch.Tensor, object], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# constant baseline
# ----------------------------------------------------------------------------------------------

def constant_drift(dist: SparseSpike) -> Drift:
    """``m(y, t) = E[x]``, the best constant (MSE ``dist.constant_mse()``; 1/2 - 1/(4n) for mu_bar)."""
    mu = dist.mean()

    def drift(y, t):
        return mu.to(dtype=y.dtype, device=y.device).expand(y.shape).clone()
    return drift


# ----------------------------------------------------------------------------------------------
# exact Bayes drift by enumeration
# ----------------------------------------------------------------------------------------------

def _sign_patterns(k: int, signs: str) -> torch.Tensor:
    """``(P, k)`` sign patterns, first sign fixed to +1 (u and -u identified)."""
    if signs == "plus":
        return torch.ones((1, k), dtype=torch.float64)
    rest = list(itertools.product((1.0, -1.0), repeat=k - 1))
    return torch.tensor([(1.0,) + r for r in rest], dtype=torch.float64).reshape(-1, k)


def bayes_drift(dist: SparseSpike, *, max_terms: float = 2e6, chunk_elems: int = 1 << 22) -> Drift:
    """Exact posterior mean E[x | y_t = y] by enumeration of all N_x = C(n,k) P matrices u u^T.

    Weights ``w_u = exp(u^T y u - t/2)`` (package docstring); the delta_0 component enters with
    prior mass 1 - p and weight 1. Sums run in log space with a running maximum (streaming
    log-sum-exp), in float64, over chunks of supports holding at most ``chunk_elems`` numbers per
    intermediate array, so memory is O(m n^2 + chunk_elems) for any N_x.

    Raises ``ValueError`` when N_x exceeds ``max_terms`` (cost is O(m N_x k^2) per call).
    The returned drift has an attribute ``posterior(y, t) -> (mean, P(x != 0 | y))``.
    """
    n, k, p = dist.n, dist.k, dist.p_spike
    if dist.n_points > max_terms:
        raise ValueError(
            f"Bayes drift by enumeration needs C({n},{k}) * {dist.n_patterns} = {dist.n_points:.3g} terms, "
            f"above max_terms={max_terms:.3g}; raise max_terms or use a polynomial-time drift")
    supports = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long)  # (C, k)
    flat = (supports[:, :, None] * n + supports[:, None, :]).reshape(-1, k * k)            # (C, k^2)
    pat = _sign_patterns(k, dist.signs)                                                     # (P, k)
    ss = (pat[:, :, None] * pat[:, None, :]).reshape(-1, k * k) / k                        # (P, k^2)
    log_prior_spike = math.log(p) - math.log(dist.n_points)
    log_prior_zero = math.log1p(-p) if p < 1.0 else -math.inf
    cache: dict = {}

    def _on(device):
        if device not in cache:
            cache[device] = (flat.to(device), ss.to(device))
        return cache[device]

    def posterior(y: torch.Tensor, t):
        m = y.shape[0]
        dev = y.device
        fl_all, ssd = _on(dev)
        tv = t_vector(t, m, device=dev)
        yf = y.reshape(m, n * n).to(torch.float64)
        mx = torch.full((m,), log_prior_zero, dtype=torch.float64, device=dev)
        z = torch.ones(m, dtype=torch.float64, device=dev) if p < 1.0 else torch.zeros(m, dtype=torch.float64, device=dev)
        acc = torch.zeros((m, n * n), dtype=torch.float64, device=dev)
        shift = (log_prior_spike - 0.5 * tv)[:, None, None]
        per_support = m * max(k * k, ssd.shape[0])
        cs = max(1, chunk_elems // per_support)
        for c0 in range(0, fl_all.shape[0], cs):
            fl = fl_all[c0:c0 + cs]                                   # (c, k^2)
            c = fl.shape[0]
            ysub = yf[:, fl.reshape(-1)].reshape(m, c, k * k)         # y restricted to S x S
            logw = ysub @ ssd.T + shift                               # (m, c, P): u^T y u - t/2 + log prior
            new = torch.maximum(mx, logw.amax(dim=(1, 2)))
            scale = torch.exp(mx - new)
            z = z * scale
            acc = acc * scale[:, None]
            e = torch.exp(logw - new[:, None, None])
            z = z + e.sum(dim=(1, 2))
            acc.index_add_(1, fl.reshape(-1), (e @ ssd).reshape(m, c * k * k))
            mx = new
        mean = (acc / z[:, None]).reshape(m, n, n).to(y.dtype)
        p_zero = torch.exp(log_prior_zero - mx) / z if p < 1.0 else torch.zeros_like(z)
        return mean, (1.0 - p_zero).to(y.dtype)

    def drift(y, t):
        return posterior(y, t)[0]

    drift.posterior = posterior
    return drift


# ----------------------------------------------------------------------------------------------
# polynomial-time drifts
# ----------------------------------------------------------------------------------------------

def project_to_support(v: torch.Tensor, k: int, signs: str = "pm") -> torch.Tensor:
    """Nearest point of B_{n,k} to ``v (m, n)`` up to sign: ``argmax_{u in B} |<u, v>|``.

    pm: the k largest |v_i| with their signs; plus: the better of the k largest entries of v and
    of -v. All u in B have norm 1, so this is the Euclidean projection of v/||v|| onto B (mod +-).
    """
    m, n = v.shape
    if signs == "pm":
        idx = v.abs().topk(k, dim=1).indices
        s = torch.sign(v.gather(1, idx))
        s = torch.where(s == 0, torch.ones_like(s), s)
    else:
        top_p, idx_p = v.topk(k, dim=1)
        top_m, idx_m = (-v).topk(k, dim=1)
        use_p = top_p.sum(1, keepdim=True) >= top_m.sum(1, keepdim=True)
        idx = torch.where(use_p, idx_p, idx_m)
        s = torch.ones((m, k), dtype=v.dtype, device=v.device)
    return torch.zeros_like(v).scatter_(1, idx, s / math.sqrt(k))


def top_eigvec(a: torch.Tensor) -> torch.Tensor:
    """Eigenvector of the largest eigenvalue of each symmetric ``a (m, n, n)``."""
    return torch.linalg.eigh(sym(a))[1][..., -1]


def _single_candidate(dist: SparseSpike, uh: torch.Tensor, y: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m_hat, gamma)`` of the module docstring for candidates ``uh (m, n)``."""
    m = y.shape[0]
    tv = t_vector(t, m, device=y.device)
    y64 = y.to(torch.float64)
    q = torch.einsum("mi,mij,mj->m", uh, y64, uh)
    gamma = torch.sigmoid(q - 0.5 * tv + math.log(dist.p_spike) - dist.log_n_points)
    mu = dist.mean().to(y.device)
    est = gamma[:, None, None] * (uh[:, :, None] * uh[:, None, :]) + (1.0 - gamma)[:, None, None] * mu
    return est.to(y.dtype), gamma.to(y.dtype)


def _cand_spectral(dist: SparseSpike):
    def cand(y, t):
        return project_to_support(top_eigvec(y.to(torch.float64)), dist.k, dist.signs)
    return cand


def _cand_power(dist: SparseSpike, n_iter: int):
    spectral = _cand_spectral(dist)

    def cand(y, t):
        y64 = sym(y.to(torch.float64))
        v = spectral(y, t)
        for _ in range(n_iter):
            w = torch.einsum("mij,mj->mi", y64, v)
            idx = w.abs().topk(dist.k, dim=1).indices
            v = torch.zeros_like(w).scatter_(1, idx, w.gather(1, idx))
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
        return project_to_support(v, dist.k, dist.signs)
    return cand


def _default_tau_mult(n: int, k: int) -> float:
    return math.sqrt(2.0 * max(math.log(n / (k * k)), 1.0))


def _cand_threshold(dist: SparseSpike, tau_mult: float | None):
    n, k = dist.n, dist.k
    mult = _default_tau_mult(n, k) if tau_mult is None else float(tau_mult)
    # per-entry noise standard deviation / sqrt(t): 1/sqrt(2) off the diagonal, 1 on it
    sd = torch.full((n, n), math.sqrt(0.5), dtype=torch.float64)
    sd.fill_diagonal_(1.0)

    def cand(y, t):
        m = y.shape[0]
        y64 = y.to(torch.float64)
        tau = mult * t_vector(t, m, device=y.device).sqrt()[:, None, None] * sd.to(y.device)
        eta = torch.sign(y64) * (y64.abs() - tau).clamp_min(0.0)
        return project_to_support(top_eigvec(eta), k, dist.signs)
    return cand


def _candidate_drift(dist: SparseSpike, cand) -> Drift:
    def drift(y, t):
        return _single_candidate(dist, cand(y, t), y, t)[0]
    return drift


def spectral_drift(dist: SparseSpike) -> Drift:
    """Top eigenvector of y -> top-k projection onto B (:func:`project_to_support`) -> test.

    Output ``gamma u_hat u_hat^T + (1 - gamma) E[x]`` (single-candidate posterior, module doc).
    Locates the spike above the BBP threshold t = n/2.
    """
    return _candidate_drift(dist, _cand_spectral(dist))


def power_iteration_drift(dist: SparseSpike, n_iter: int = 10) -> Drift:
    """Truncated power method (Yuan & Zhang 2013) started at the spectral candidate.

    ``v <- T_k(y v) / ||T_k(y v)||`` for ``n_iter`` steps, T_k keeping the k largest |entries|;
    then projection onto B and the single-candidate test. A local sparse-PCA refinement of the
    spectral candidate (science.md lists "power iteration" without details; this is the choice).
    """
    return _candidate_drift(dist, _cand_power(dist, int(n_iter)))


def threshold_drift(dist: SparseSpike, tau_mult: float | None = None) -> Drift:
    """Entrywise soft thresholding, then spectral: covariance-thresholding style (Deshpande–Montanari).

    ``eta_ij = sign(y_ij) (|y_ij| - tau_ij)_+`` with ``tau_ij = c sd_ij`` where sd_ij is the noise
    standard deviation (sqrt(t/2) off the diagonal, sqrt(t) on it) and by default
    ``c = sqrt(2 max(log(n/k^2), 1))``; then the top eigenvector of eta, projection onto B and the
    single-candidate test (evaluated on y). Works on the scale t ~ k^2 log(n/k^2).
    """
    return _candidate_drift(dist, _cand_threshold(dist, tau_mult))


_CANDIDATES = {
    "spectral": lambda dist, **kw: _cand_spectral(dist),
    "power_iteration": lambda dist, n_iter=10, **kw: _cand_power(dist, int(n_iter)),
    "threshold": lambda dist, tau_mult=None, **kw: _cand_threshold(dist, tau_mult),
}


def spike_test(dist: SparseSpike, candidate: str = "spectral", **params) -> Callable:
    """Test "0 vs spike": ``test(y, t) -> gamma (m,)`` in [0, 1], the single-candidate posterior
    probability of the candidate (``spectral``, ``power_iteration`` or ``threshold``)."""
    cand = _CANDIDATES[candidate](dist, **params)

    def test(y, t):
        return _single_candidate(dist, cand(y, t), y, t)[1]
    return test


# ----------------------------------------------------------------------------------------------
# constructions of Montanari–Vu: gated drift (Theorem 1) and fixed sample (Proposition 2.1)
# ----------------------------------------------------------------------------------------------

def gated(drift: Drift, t_alg: float, test: Callable | None = None, *, lo: float = 0.9, hi: float = 1.1) -> Drift:
    """Gated drift (Montanari–Vu Theorem 1, as science.md §5 states it):

        m_g(y, t) = phi(t) T(y, t) m(y, t),   phi = 0 for t <= lo t_alg, 1 for t >= hi t_alg,

    linear in between (the interpolation is this project's choice). ``T`` is a test in [0, 1]
    (e.g. :func:`spike_test`); ``None`` means T = 1. On the forward process the loss barely moves
    when m is near-trivial below t_alg and T detects the spike above it; along the sampler the
    trajectory is pure noise up to lo t_alg, T then answers "no spike", and samples collapse to 0.
    """
    a, b = lo * float(t_alg), hi * float(t_alg)
    if not 0 <= a < b:
        raise ValueError(f"need 0 <= lo t_alg < hi t_alg, got {a}, {b}")

    def drift_g(y, t):
        m = y.shape[0]
        phi = ((t_vector(t, m, device=y.device) - a) / (b - a)).clamp(0.0, 1.0)
        out = torch.zeros_like(y)
        on = phi > 0
        if bool(on.any()):
            idx = on.nonzero().squeeze(1)
            tv = t_vector(t, m, device=y.device)[idx]
            val = drift(y[idx], tv)
            if test is not None:
                val = test(y[idx], tv).to(y.dtype)[:, None, None] * val
            out[idx] = phi[idx].to(y.dtype)[:, None, None] * val
        return out
    return drift_g


def fixed_sample(x_star: torch.Tensor, t0: float, below: Drift | None = None) -> Drift:
    """Drift that outputs a fixed sample for t >= t0 (Montanari–Vu Proposition 2.1).

    ``x_star`` is ``(n, n)`` or ``(m, n, n)`` (one per trajectory, drawn from the target by the
    caller). For ``t >= t0`` the drift is ``x_star``; below t0 it is ``below(y, t)``, zero when
    ``below is None`` (this project's choice). The SL sampler then returns ``m(y_T, T) = x_star``
    exactly for T >= t0, so with x_star ~ mu it samples mu perfectly, while its loss per unit time
    above t0 is ``E||x_star - x||^2 = 2(E||x||^2 - ||E x||^2)`` (x_star independent of x):
    ~2 for mu_{n,k}, ~1 for mu_bar.
    """
    t0 = float(t0)

    def drift(y, t):
        m = y.shape[0]
        xs = x_star.to(dtype=y.dtype, device=y.device)
        xs = xs.expand(y.shape) if xs.ndim == 2 else xs
        if xs.shape != y.shape:
            raise ValueError(f"x_star has shape {tuple(xs.shape)}, y has {tuple(y.shape)}")
        low = torch.zeros_like(y) if below is None else below(y, t)
        after = (t_vector(t, m, device=y.device) >= t0)[:, None, None]
        return torch.where(after, xs, low)
    return drift
