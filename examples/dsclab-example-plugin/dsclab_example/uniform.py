"""The uniform law on the cube [-a, a]^d, with its exact forward law q_t (dsclab's OU convention,
``dsclab.noise``: X_t = e^{-t} X_0 + sigma_t Z, sigma_t^2 = 1 - e^{-2t}).

The coordinates are independent, so q_t is a product of 1-D laws. With c = e^{-t}, s = sigma_t and
the standardised ends beta(y) = (y + c a) / s, alpha(y) = (y - c a) / s, one coordinate has

    q_t(y) = (1 / (2 a)) int_{-a}^{a} phi_s(y - c u) du = [Phi(beta) - Phi(alpha)] / (2 a c),   (U1)
    s_t(y) = d/dy log q_t(y) = [phi(beta) - phi(alpha)] / (s [Phi(beta) - Phi(alpha)]),        (U2)
    E[X_0 | X_t = y] = e^{t} (y + s^2 s_t(y))                                   (Tweedie)     (U3)

(phi, Phi: the standard normal density and CDF). The posterior of X_0 given X_t = y is
N(y / c, (s / c)^2) truncated to [-a, a], and (U3) is its mean. Moments: E X_t = 0,
Var X_t = c^2 a^2 / 3 + s^2, E X_t^4 = c^4 a^4 / 5 + 2 c^2 s^2 a^2 + 3 s^4 per coordinate.

Numerics. q_t is even, so (U1)-(U2) are evaluated at y' = -|y| <= 0, where both Phi's are lower
tails (``torch.special.log_ndtr``, no cancellation) and
log[Phi(beta) - Phi(alpha)] = log Phi(beta) + log(-expm1(log Phi(alpha) - log Phi(beta))); in
(U2), phi(alpha) / phi(beta) = exp(2 c a y' / s^2) <= 1. The score is odd: s_t(y) = -sign(y) s_t(-|y|).
Float64 throughout; results in the input's dtype.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from dsclab import noise
from dsclab.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _t_col(t, m: int) -> torch.Tensor:
    """Times as a float64 tensor of shape (m, 1) (a float, a 0-d tensor or shape (m,))."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return (t.expand(m) if t.ndim == 0 else t).reshape(m, 1)


class UniformCube:
    """The uniform law on [-a, a]^d and its exact q_t; the distribution interface of
    ``dsclab.distributions`` (``d``, ``sample``, ``score``, ``denoise``, ``log_prob``) plus its
    first two moments (``mean``, ``cov``). Methods take ``x (m, d)`` and ``t`` (float or ``(m,)``)."""

    def __init__(self, d: int, a: float = 1.0):
        if not (isinstance(d, int) and d >= 1):
            raise ValueError(f"d: {d!r} is not a positive integer")
        if not (a > 0 and math.isfinite(a)):
            raise ValueError(f"a: {a!r} is not a positive half-width")
        self._d, self.a = d, float(a)

    @property
    def d(self) -> int:
        return self._d

    def mean(self) -> torch.Tensor:
        return torch.zeros(self.d, dtype=torch.float64)

    def cov(self) -> torch.Tensor:
        """Covariance of q_0: (a^2 / 3) I."""
        return torch.eye(self.d, dtype=torch.float64) * (self.a ** 2 / 3.0)

    def sample(self, m: int, generator: torch.Generator, t: float = 0.0) -> torch.Tensor:
        """m exact draws from q_t (float64, shape (m, d)): X_0 uniform, then the OU noise."""
        x0 = self.a * (2.0 * torch.rand(m, self.d, dtype=torch.float64, generator=generator) - 1.0)
        z = torch.randn(m, self.d, dtype=torch.float64, generator=generator)
        return noise.mean_coef(float(t)) * x0 + noise.sigma(float(t)) * z

    def _ends(self, x: torch.Tensor, t):
        """y' = -|x|, c, s (each broadcast to (m, d)) and log Phi(beta), log Phi(alpha) at y'."""
        x = x.to(torch.float64)
        tc = _t_col(t, x.shape[0])
        c, s = noise.mean_coef(tc), noise.sigma(tc)
        if (s <= 0).any():
            raise ValueError("the uniform law's q_t has a score only for t > 0")
        y = -x.abs()
        lb = torch.special.log_ndtr((y + c * self.a) / s)
        la = torch.special.log_ndtr((y - c * self.a) / s)
        return y, c, s, lb, la

    def _log_q1(self, x: torch.Tensor, t):
        """log q_t per coordinate, (U1), shape (m, d), and the pieces the score reuses."""
        y, c, s, lb, la = self._ends(x, t)
        log_diff = lb + torch.log(-torch.expm1(la - lb))
        return log_diff - math.log(2 * self.a) - torch.log(c), (y, c, s, log_diff)

    def log_prob(self, x: torch.Tensor, t=0.0) -> torch.Tensor:
        """log q_t(x), shape (m,); at t = 0 the uniform density (-inf outside the cube)."""
        if torch.as_tensor(t).ndim == 0 and float(t) == 0.0:
            inside = (x.abs() <= self.a).all(dim=1)
            out = torch.full((x.shape[0],), -self.d * math.log(2 * self.a), dtype=torch.float64)
            return out.masked_fill(~inside, -math.inf).to(x.dtype)
        lq, _ = self._log_q1(x, t)
        return lq.sum(dim=1).to(x.dtype)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """s_t(x) = grad log q_t(x), (U2), shape (m, d); needs t > 0."""
        _, (y, c, s, log_diff) = self._log_q1(x, t)
        beta = (y + c * self.a) / s
        log_phi_beta = -0.5 * beta * beta - LOG_SQRT_2PI
        g = torch.exp(log_phi_beta - log_diff) * (-torch.expm1(2 * c * self.a * y / (s * s))) / s  # s_t(y') >= 0
        return (-torch.sign(x.to(torch.float64)) * g).to(x.dtype)

    def denoise(self, x: torch.Tensor, t) -> torch.Tensor:
        """E[X_0 | X_t = x] by Tweedie, (U3)."""
        s = self.score(x, t).to(torch.float64)
        return noise.denoiser_from_score(x.to(torch.float64), s, _t_col(t, x.shape[0])[:, 0]).to(x.dtype)

    def __repr__(self) -> str:
        return f"UniformCube(d={self.d}, a={self.a:g})"


def uniform(d: int, *, a: float = 1.0) -> UniformCube:
    """The data family ``uniform`` (entry point, group ``dsclab.distributions``): U([-a, a]^d)."""
    return UniformCube(d, a)
