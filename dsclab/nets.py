"""Score networks.

A network predicts the noise eps_hat(x, t) ~ E[Z | X_t = x] (``dsclab.noise`` convention), so the
score is s_t(x) = -eps_hat / sigma_t and the DSM loss sigma_t^2 ||s + Z / sigma_t||^2 is simply
||eps_hat - Z||^2. The output is written as eps_hat = sigma_t x + f_theta(x, t): the first term is
exact for standard-normal data (where s_t(x) = -x), so f_theta learns the departure from it and
starts at zero.

Time enters through Fourier features of the log-SNR, which spreads the noise levels evenly over
the embedding. Parameters are initialised from a passed ``torch.Generator``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dsclab import noise


def _init_linear(layer: nn.Linear, generator: torch.Generator, gain: float = 1.0) -> None:
    bound = gain / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=generator))
        layer.bias.zero_()


class ScoreMLP(nn.Module):
    """MLP eps-predictor with a log-SNR Fourier time embedding.

    Shapes: ``x (m, d)``, ``t`` float or ``(m,)``; ``forward`` returns eps_hat ``(m, d)``.
    """

    def __init__(self, d: int, *, width: int = 128, depth: int = 3, n_freq: int = 8,
                 generator: torch.Generator | None = None):
        super().__init__()
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        self.d, self.n_freq, self.width, self.depth = d, n_freq, width, depth
        self.register_buffer("freqs", torch.arange(1, n_freq + 1, dtype=torch.float32) * (math.pi / 8.0))
        dims = [d + 2 * n_freq] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(width, d)
        for layer in self.hidden:
            _init_linear(layer, g, gain=math.sqrt(3.0))
        _init_linear(self.out, g, gain=0.0)  # f_theta = 0 at start: eps_hat = sigma_t x

    def _times(self, t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return t

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = self._times(t, x)
        alpha = noise.logsnr(t).to(x.dtype)  # log-SNR, ~[-10, 14] over the useful range
        ang = alpha[:, None] * self.freqs[None, :]
        h = torch.cat([x, torch.sin(ang), torch.cos(ang)], dim=1)
        for layer in self.hidden:
            h = torch.nn.functional.silu(layer(h))
        sig = noise.sigma(t).to(x.dtype)[:, None]
        return sig * x + self.out(h)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """s_t(x) = -eps_hat(x, t) / sigma_t."""
        t = self._times(t, x)
        return noise.score_from_eps(self(x, t), t.to(x.dtype))


NETWORKS = {"mlp": ScoreMLP}


class EnsembleMLP(nn.Module):
    """M independent ``ScoreMLP`` members evaluated as one batched network (grouped linear layers
    through ``torch.baddbmm``): member m's parameters are slice m of each stacked tensor, so the
    gradient of a sum of member losses is each member's own gradient, and Adam (elementwise)
    updates each member exactly as if it were trained alone.

    Inputs are flat: ``x (M * B, d)`` and ``t (M * B,)`` with rows grouped by member (member m
    owns rows m*B ... (m+1)*B - 1); ``forward`` returns eps_hat of the same shape.
    """

    def __init__(self, members: list[ScoreMLP]):
        super().__init__()
        first = members[0]
        self.M, self.d = len(members), first.d
        self.register_buffer("freqs", first.freqs.clone())
        n_hidden = len(first.hidden)
        stack = lambda f: nn.Parameter(torch.stack([f(m) for m in members]).detach().clone())
        self.W = nn.ParameterList(stack(lambda m, i=i: m.hidden[i].weight.T) for i in range(n_hidden))
        self.b = nn.ParameterList(stack(lambda m, i=i: m.hidden[i].bias[None, :]) for i in range(n_hidden))
        self.W_out = stack(lambda m: m.out.weight.T)
        self.b_out = stack(lambda m: m.out.bias[None, :])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        ang = noise.logsnr(t).to(x.dtype)[:, None] * self.freqs[None, :]
        h = torch.cat([x, torch.sin(ang), torch.cos(ang)], dim=1).reshape(self.M, -1, self.d + 2 * self.freqs.numel())
        for W, b in zip(self.W, self.b):
            h = torch.nn.functional.silu(torch.baddbmm(b, h, W))
        out = torch.baddbmm(self.b_out, h, self.W_out).reshape(-1, self.d)
        return noise.sigma(t).to(x.dtype)[:, None] * x + out

    def member(self, m: int, template: ScoreMLP) -> ScoreMLP:
        """Member m as a standalone ``ScoreMLP`` (``template`` gives the architecture)."""
        with torch.no_grad():
            for i, layer in enumerate(template.hidden):
                layer.weight.copy_(self.W[i][m].T)
                layer.bias.copy_(self.b[i][m, 0])
            template.out.weight.copy_(self.W_out[m].T)
            template.out.bias.copy_(self.b_out[m, 0])
        return template
