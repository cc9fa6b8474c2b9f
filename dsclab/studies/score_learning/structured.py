"""The structured hypothesis class of the score-learning study (science.md §4a): a network whose
size does not grow with d. Its own module because it subclasses ``torch.nn.Module``:
:mod:`dsclab.studies.score_learning.bootstrap`, which a spec reads, imports it only when a
network is built (``dsclab.lazy``)."""
from __future__ import annotations

import math

import torch
from torch import nn

from dsclab import noise
from dsclab.nets import _init_linear


class StructuredScore(nn.Module):
    """s(t, x) = -x + g(t, x_1) e_1 with g a small network of (x_1, t) only: its size does not
    grow with d (science.md §4a). Exact for x_0 = +-a e_1 + N(0, I_d), whose score is
    -x + a e^{-t} tanh(a e^{-t} x_1) e_1 at every t.

    As an eps-predictor: eps_hat = -sigma_t s = sigma_t x + f(t, x_1) e_1, f = -sigma_t g; f has
    the log-SNR Fourier embedding of ``ScoreMLP`` and starts at zero. Shapes: ``x (m, d)``,
    ``t`` float or ``(m,)``.
    """

    def __init__(self, d: int, *, width: int = 32, depth: int = 2, n_freq: int = 8,
                 generator: torch.Generator | None = None):
        super().__init__()
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        self.d, self.n_freq = d, n_freq
        self.register_buffer("freqs", torch.arange(1, n_freq + 1, dtype=torch.float32) * (math.pi / 8.0))
        dims = [1 + 2 * n_freq] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(width, 1)
        for layer in self.hidden:
            _init_linear(layer, g, gain=math.sqrt(3.0))
        _init_linear(self.out, g, gain=0.0)

    def _times(self, t, x):
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        return t.expand(x.shape[0]) if t.ndim == 0 else t

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t = self._times(t, x)
        ang = noise.logsnr(t).to(x.dtype)[:, None] * self.freqs[None, :]
        h = torch.cat([x[:, :1], torch.sin(ang), torch.cos(ang)], dim=1)
        for layer in self.hidden:
            h = torch.nn.functional.silu(layer(h))
        f = self.out(h)  # (m, 1)
        eps = noise.sigma(t).to(x.dtype)[:, None] * x
        return torch.cat([eps[:, :1] + f, eps[:, 1:]], dim=1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        t = self._times(t, x)
        return noise.score_from_eps(self(x, t), t.to(x.dtype))
