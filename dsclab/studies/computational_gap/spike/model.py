"""Data laws, the observation channel, OU-time conversion and thresholds (conventions: ``dsclab.studies.computational_gap.spike``)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dsclab import noise as _noise


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def sym(a: torch.Tensor) -> torch.Tensor:
    """Symmetric part (a + a^T)/2 over the last two axes."""
    return 0.5 * (a + a.transpose(-1, -2))


def t_vector(t, m: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """A time (float, 0-d or (m,) tensor) as a ``(m,)`` tensor."""
    if isinstance(t, torch.Tensor):
        t = t.to(dtype=dtype, device=device)
        if t.ndim == 0:
            return t.expand(m).clone()
        if t.shape != (m,):
            raise ValueError(f"t has shape {tuple(t.shape)}, expected () or ({m},)")
        return t
    return torch.full((m,), float(t), dtype=dtype, device=device)


def log_comb(n: int, k: int) -> float:
    """log C(n, k) (via lgamma; exact enough for any n)."""
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


# ----------------------------------------------------------------------------------------------
# data laws
# ----------------------------------------------------------------------------------------------

class SparseSpike:
    """``(1 - p) delta_0 + p mu_{n,k}``: x = u u^T with u uniform on B_{n,k} (science.md §5).

    ``signs="pm"``: nonzero entries +-1/sqrt(k) (the sparse spike, N_x = C(n,k) 2^{k-1} matrices);
    ``signs="plus"``: all +1/sqrt(k) (the hidden-clique signal, N_x = C(n,k)). ``p_spike = 1`` is
    mu_{n,k} itself, ``p_spike = 1/2`` is science.md's mu_bar. Sampling is exact: the support is a
    uniform k-subset (argsort of i.i.d. uniforms), signs are independent fair coins, and the
    component is a Bernoulli(p) draw, all from the given ``torch.Generator``.
    """

    def __init__(self, n: int, k: int, p_spike: float = 1.0, signs: str = "pm"):
        if not (isinstance(n, int) and isinstance(k, int) and 1 <= k <= n):
            raise ValueError(f"need integers 1 <= k <= n, got n={n}, k={k}")
        if not 0.0 < p_spike <= 1.0:
            raise ValueError(f"p_spike must be in (0, 1], got {p_spike}")
        if signs not in ("pm", "plus"):
            raise ValueError(f"signs must be 'pm' or 'plus', got {signs!r}")
        self.n, self.k, self.p_spike, self.signs = n, k, float(p_spike), signs

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, k={self.k}, p_spike={self.p_spike}, signs={self.signs!r})"

    # -- counting ----------------------------------------------------------------------------
    @property
    def d(self) -> int:
        return self.n * self.n

    @property
    def n_patterns(self) -> int:
        """Sign patterns per support, u and -u identified: 2^{k-1} (pm) or 1 (plus)."""
        return 2 ** (self.k - 1) if self.signs == "pm" else 1

    @property
    def n_points(self) -> int:
        """N_x = number of distinct matrices u u^T in the support of mu_{n,k}."""
        return math.comb(self.n, self.k) * self.n_patterns

    @property
    def log_n_points(self) -> float:
        return log_comb(self.n, self.k) + (self.k - 1) * math.log(2.0) * (self.signs == "pm")

    # -- sampling ----------------------------------------------------------------------------
    def sample_u(self, m: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """u ``(m, n)``: a point of B_{n,k}, or the zero vector for the delta_0 component (on the
        generator's device)."""
        n, k, dev = self.n, self.k, generator.device
        support = torch.rand((m, n), generator=generator, dtype=torch.float64, device=dev).argsort(dim=1)[:, :k]
        if self.signs == "pm":
            s = torch.randint(0, 2, (m, k), generator=generator, device=dev).to(torch.float64) * 2.0 - 1.0
        else:
            s = torch.ones((m, k), dtype=torch.float64, device=dev)
        u = torch.zeros((m, n), dtype=torch.float64, device=dev).scatter_(1, support, s / math.sqrt(k))
        if self.p_spike < 1.0:
            keep = torch.rand(m, generator=generator, dtype=torch.float64, device=dev) < self.p_spike
            u = u * keep[:, None]
        return u.to(dtype)

    def sample(self, m: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
        """x = u u^T, shape ``(m, n, n)``."""
        u = self.sample_u(m, generator, dtype)
        return u[:, :, None] * u[:, None, :]

    # -- moments -----------------------------------------------------------------------------
    def mean(self, dtype=torch.float64) -> torch.Tensor:
        """E[x] ``(n, n)``: diagonal p/n; off-diagonal 0 (pm) or p (k-1)/(n(n-1)) (plus)."""
        n, k, p = self.n, self.k, self.p_spike
        mu = torch.eye(n, dtype=torch.float64) * (p / n)
        if self.signs == "plus" and n > 1:
            mu = mu + (torch.ones(n, n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)) * (
                p * (k - 1) / (n * (n - 1)))
        return mu.to(dtype)

    def second_moment(self) -> float:
        """E||x||^2 = p."""
        return self.p_spike

    def constant_mse(self) -> float:
        """Best constant's MSE, min_c E||x - c||^2 = E||x||^2 - ||E x||^2 (c = E x).

        pm: p - p^2/n (= 1/2 - 1/(4n) for mu_bar, science.md §5); plus: p - p^2 [1/n + (k-1)^2/(n(n-1))].
        """
        n, k, p = self.n, self.k, self.p_spike
        if self.signs == "pm":
            return p - p * p / n
        off = (k - 1) ** 2 / (n * (n - 1)) if n > 1 else 0.0
        return p - p * p * (1.0 / n + off)


class HiddenClique(SparseSpike):
    """Planted k-clique in G(n, 1/2), written in the spike model's language.

    Signal: ``x = u u^T`` with ``u = 1_S / sqrt(k)``, S a uniform k-subset (``signs="plus"``; with
    ``p_spike < 1`` no clique is planted with probability 1 - p).
    Graph: the +-1 adjacency matrix A (``A_ij = +1`` for an edge, -1 otherwise, ``A_ii = 0``);
    edges are i.i.d. fair coins except inside S, where all are present.
    Centring/normalisation: ``E[A | S] = 1_S 1_S^T - diag(1_S)`` and ``A - E[A | S]`` is +-1 noise
    (variance 1) off the clique, 0 on it. The rescaled matrix

        y = (k/2) A     at SL time     t = k^2/2

    matches ``y_t = t x + W_t`` in its off-diagonal entries to two moments: the mean is
    ``t x_ij = (k/2) 1{i,j in S}`` and the noise variance is ``k^2/4 = t/2`` (Rademacher instead of
    Gaussian, zero inside the clique); the diagonal is not observed. So the clique sits at
    t = k^2/2 on the spike's time axis: the spectral threshold t = n/2 is k = sqrt(n), and the
    exhaustive-search threshold 2k log(n/k) is k ~ 4 log(n/k) (2 log_2 n for the exact clique
    problem; the Gaussian model loses a constant).
    """

    def __init__(self, n: int, k: int, p_spike: float = 1.0):
        super().__init__(n, k, p_spike=p_spike, signs="plus")

    def adjacency(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """+-1 adjacency ``(m, n, n)`` (zero diagonal) with the clique on supp(diag x)."""
        m, n = x.shape[0], self.n
        coins = torch.randint(0, 2, (m, n, n), generator=generator).to(torch.float64) * 2.0 - 1.0
        upper = torch.triu(coins, diagonal=1)
        a = upper + upper.transpose(1, 2)
        s = torch.diagonal(x, dim1=1, dim2=2) > 0
        clique = s[:, :, None] & s[:, None, :] & ~torch.eye(n, dtype=torch.bool)[None]
        return torch.where(clique, torch.ones_like(a), a)

    def sample_graph(self, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, x)``: adjacency matrices and their clique signals."""
        x = self.sample(m, generator)
        return self.adjacency(x, generator), x

    def observation(self, a: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``(y, t) = ((k/2) A, k^2/2)``: the adjacency as an observation of x (see class doc)."""
        return 0.5 * self.k * a, 0.5 * self.k * self.k


def sparse_spike(n: int, k: int) -> SparseSpike:
    """mu_{n,k}: x = u u^T, u uniform on B_{n,k}."""
    return SparseSpike(n, k, p_spike=1.0, signs="pm")


def sparse_spike_mixture(n: int, k: int, p_spike: float = 0.5) -> SparseSpike:
    """mu_bar = (1 - p) delta_0 + p mu_{n,k}, p = 1/2 by default (science.md §5)."""
    return SparseSpike(n, k, p_spike=p_spike, signs="pm")


def hidden_clique(n: int, k: int, p_spike: float = 1.0) -> HiddenClique:
    """Planted k-clique in G(n, 1/2) (see :class:`HiddenClique` for the normalisation)."""
    return HiddenClique(n, k, p_spike=p_spike)


SPIKE_FAMILIES: dict[str, Callable[..., SparseSpike]] = {
    "sparse_spike": sparse_spike,
    "sparse_spike_mixture": sparse_spike_mixture,
    "hidden_clique": hidden_clique,
}


def make_spike(name: str, n: int, k: int, **params) -> SparseSpike:
    """Build spike family ``name`` with size n and sparsity k."""
    try:
        family = SPIKE_FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown spike family {name!r} (known: {', '.join(sorted(SPIKE_FAMILIES))})") from None
    return family(n, k, **params)


# ----------------------------------------------------------------------------------------------
# observation channel and OU time
# ----------------------------------------------------------------------------------------------

def observe(x: torch.Tensor, t, *, generator: torch.Generator | None = None,
            z: torch.Tensor | None = None) -> torch.Tensor:
    """``y_t = t x + W_t`` with ``W_t = sqrt(t) sym(z)``, z i.i.d. N(0, 1) of x's shape.

    Pass ``z`` to reuse noise across drifts or times (common random numbers); otherwise it is
    drawn from ``generator``.
    """
    m = x.shape[0]
    if z is None:
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.dtype)
    tv = t_vector(t, m, dtype=x.dtype, device=x.device)[:, None, None]
    return tv * x + tv.sqrt() * sym(z.to(device=x.device, dtype=x.dtype))


def sl_from_ou(X: torch.Tensor, t_ou: float):
    """OU state ``X = e^{-s} x + sigma_s Z`` at time s -> ``(y, t)`` with t = snr(s).

    ``y = sym(X) e^{-s} / sigma_s^2 = snr(s) x + sqrt(snr(s)) sym(Z)``. X may be ``(m, n, n)`` or
    flattened ``(m, n^2)``; y is returned as ``(m, n, n)``.
    """
    if X.ndim == 2:
        n = math.isqrt(X.shape[1])
        X = X.reshape(X.shape[0], n, n)
    s = float(t_ou)
    return sym(X) * (_noise.mean_coef(s) / _noise.sigma2(s)), _noise.snr(s)


def ou_from_sl(y: torch.Tensor, t_sl: float):
    """Inverse of :func:`sl_from_ou`: ``(X, s)`` with ``s = t_from_snr(t)``, ``X = y e^{s} sigma_s^2``.

    X is symmetric: it is the symmetric part of an OU state, which is all the drift depends on.
    """
    s = _noise.t_from_sl_time(float(t_sl))
    return y * (_noise.sigma2(s) / _noise.mean_coef(s)), s


def ou_denoiser(drift) -> Callable:
    """``E[x | X_s = X]`` as a function of an OU state: ``drift(*sl_from_ou(X, s))``."""
    def denoise(X: torch.Tensor, s: float) -> torch.Tensor:
        y, t = sl_from_ou(X, s)
        return drift(y, t)
    return denoise


def ou_score(drift, n: int) -> Callable:
    """OU score ``s_s(X) = (e^{-s} m - X) / sigma_s^2`` on flattened states ``(m, n^2)``.

    Lets the reverse-OU samplers of ``dsclab.samplers`` (``score(x, t) -> (m, d)``) run on this
    data with any drift. X contains i.i.d. noise in all n^2 coordinates; the antisymmetric part is
    pure noise, whose score -X_anti / sigma^2 the formula already gives.
    """
    def score(X: torch.Tensor, s: float) -> torch.Tensor:
        x0 = drift(*sl_from_ou(X, s)).reshape(X.shape[0], n * n).to(X.dtype)
        return _noise.score_from_denoiser(X, x0, float(s))
    return score


# ----------------------------------------------------------------------------------------------
# thresholds (SL time scale; see the package docstring for the derivations)
# ----------------------------------------------------------------------------------------------

def threshold_bayes(n: int, k: int) -> float:
    """Information (exhaustive search) threshold 2k log(n/k)."""
    return 2.0 * k * math.log(n / k)


def threshold_spectral(n: int, k: int) -> float:
    """BBP threshold of the top eigenvalue, n/2 (independent of k)."""
    return n / 2.0


def threshold_thresholding(n: int, k: int) -> float:
    """Scale k^2 log(n/k^2) of entrywise thresholding (meaningful for k << sqrt(n); may be <= 0)."""
    return k * k * math.log(n / (k * k))


THRESHOLDS: dict[str, Callable[[int, int], float]] = {
    "bayes": threshold_bayes,
    "spectral": threshold_spectral,
    "power_iteration": threshold_spectral,
    "threshold": threshold_thresholding,
}
