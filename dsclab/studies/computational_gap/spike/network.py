"""A permutation-equivariant network on symmetric matrices and its drift-loss training.

Equivariance: for every permutation matrix P, ``net(P y P^T, t) = P net(y, t) P^T`` (the data law
and the noise are invariant under simultaneous row/column permutation, so the Bayes drift is
equivariant and nothing is lost by the constraint).

Layer (:class:`EquivariantLayer`, channels-last ``h (B, n, n, C)``; a DeepSets-style subset of the
linear equivariant maps on 2-D arrays, plus the diagonal):

    h'_ij = A h_ij + A' h_ji + R[r_i, c_i, d_i] + R'[r_j, c_j, d_j] + G[g, dbar]
            + 1{i=j} D[d_i, r_i, c_i, g, dbar] + bias,

with row means r_i = mean_j h_ij, column means c_j = mean_i h_ij, diagonal d_i = h_ii, global mean
g and diagonal mean dbar; A, A', R, R', G, D are linear maps on channels. Each term commutes with
the action h -> P h P^T, so the layer does; elementwise nonlinearities preserve it.

Input channels: ``y / sqrt(1 + t)`` (noise-scaled), ``y / (1 + t)`` (signal-scaled, ~x at large t),
``(y y) / (n (1 + t))`` (a power-iteration feature) and four
time features of ``s = log(1 + t) / log(1 + t_scale)``: ``s, s^2, sin(pi s), cos(pi s)``, appended
to every layer's input. Output: the symmetric part of the last layer's single channel.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dsclab.losses import drift_matching_loss
from dsclab.studies.computational_gap.spike.model import observe, sym, t_vector
from dsclab.train import fit


class EquivariantLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.w_self = nn.Linear(c_in, c_out, bias=True)
        self.w_tr = nn.Linear(c_in, c_out, bias=False)
        self.w_row = nn.Linear(3 * c_in, c_out, bias=False)
        self.w_col = nn.Linear(3 * c_in, c_out, bias=False)
        self.w_glob = nn.Linear(2 * c_in, c_out, bias=False)
        self.w_diag = nn.Linear(5 * c_in, c_out, bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[1]
        d = torch.diagonal(h, dim1=1, dim2=2).transpose(1, 2)        # (B, n, C)
        r = h.mean(dim=2)                                             # (B, n, C) row means
        c = h.mean(dim=1)                                             # (B, n, C) column means
        g = h.mean(dim=(1, 2))                                        # (B, C)
        dbar = d.mean(dim=1)                                          # (B, C)
        per_index = torch.cat([r, c, d], dim=-1)                      # (B, n, 3C)
        glob = torch.cat([g, dbar], dim=-1)                           # (B, 2C)
        out = (self.w_self(h) + self.w_tr(h).transpose(1, 2)
               + self.w_row(per_index)[:, :, None, :] + self.w_col(per_index)[:, None, :, :]
               + self.w_glob(glob)[:, None, None, :])
        diag_in = torch.cat([d, r, c, glob[:, None, :].expand(-1, n, -1)], dim=-1)  # (B, n, 5C)
        diag_out = self.w_diag(diag_in)                                # (B, n, C_out)
        return out + torch.diag_embed(diag_out.transpose(1, 2)).permute(0, 2, 3, 1)


class SpikeNet(nn.Module):
    """m_theta(y, t): ``depth`` equivariant layers of ``width`` channels with SiLU (module doc).

    Parameters are initialised from ``generator`` (uniform +-1/sqrt(fan_in), PyTorch's Linear
    default law), never from ambient randomness. Forward takes ``y (B, n, n)`` and ``t`` (float or
    ``(B,)``) and returns ``(B, n, n)`` in the network's dtype (float32).
    """

    N_TIME = 4

    def __init__(self, n: int, *, width: int = 32, depth: int = 3, t_scale: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.n, self.t_scale = n, float(4 * n if t_scale is None else t_scale)
        c_in = 3
        layers = []
        for i in range(depth):
            c_out = 1 if i == depth - 1 else width
            layers.append(EquivariantLayer(c_in + self.N_TIME, c_out))
            c_in = c_out
        self.layers = nn.ModuleList(layers)
        self.act = nn.SiLU()
        if generator is not None:
            with torch.no_grad():
                for mod in self.modules():
                    if isinstance(mod, nn.Linear):
                        b = 1.0 / math.sqrt(mod.in_features)
                        mod.weight.copy_(torch.rand(mod.weight.shape, generator=generator) * 2 * b - b)
                        if mod.bias is not None:
                            mod.bias.copy_(torch.rand(mod.bias.shape, generator=generator) * 2 * b - b)

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        s = torch.log1p(t) / math.log1p(self.t_scale)
        return torch.stack([s, s * s, torch.sin(math.pi * s), torch.cos(math.pi * s)], dim=-1)

    def forward(self, y: torch.Tensor, t) -> torch.Tensor:
        B, n, _ = y.shape
        p = next(self.parameters())
        y = y.to(dtype=p.dtype, device=p.device)
        tv = t_vector(t, B, dtype=p.dtype, device=p.device)
        a = y / torch.sqrt(1.0 + tv)[:, None, None]
        a1 = y / (1.0 + tv)[:, None, None]
        b = (y @ y) / (n * (1.0 + tv))[:, None, None]
        tf = self.time_features(tv)[:, None, None, :].expand(B, n, n, self.N_TIME)
        h = torch.stack([a, a1, b], dim=-1)
        for i, layer in enumerate(self.layers):
            h = layer(torch.cat([h, tf], dim=-1))
            if i < len(self.layers) - 1:
                h = self.act(h)
        return sym(h[..., 0])


def network_drift(net: SpikeNet, *, device="cpu", batch: int = 1024):
    """The trained network as a drift: no-grad evaluation in batches, output in y's dtype/device."""
    net = net.to(device).eval()

    def drift(y, t):
        m = y.shape[0]
        tv = t_vector(t, m, device=y.device)
        outs = []
        with torch.no_grad():
            for i in range(0, m, batch):
                outs.append(net(y[i:i + batch].to(device), tv[i:i + batch].to(device)).to(dtype=y.dtype, device=y.device))
        return torch.cat(outs, dim=0)
    return drift


def train_network(net: SpikeNet, samples: torch.Tensor, generator: torch.Generator, *, steps: int,
                  lr: float = 1e-3, device="cpu", batch: int = 64, T_max: float | None = None) -> list[float]:
    """Minimise the drift (score-matching) loss ``E_t E ||m_theta(y_t, t) - x||^2``, t ~ U[0, T_max].

    * ``samples (N, n, n)``: the training set; each step draws ``batch`` of them with replacement,
      a time per sample uniform on [0, T_max] (default ``net.t_scale`` = 4n, the paper's T) and
      fresh noise, all from ``generator`` (CPU). The uniform weighting in SL time is the one under
      which the excess loss over the Bayes drift is twice the sampler's path KL (see
      ``metrics.integrated_loss``), so this objective is the integrated loss divided by T_max.
    * Adam with learning rate ``lr`` and cosine decay to 0 over ``steps``; returns the per-step
      batch losses. The loss is ``dsclab.losses.drift_matching_loss``, minimised by the loop
      ``dsclab.train.fit``: a loss that becomes NaN or infinite raises
      :class:`dsclab.errors.TrainingDiverged`.
    """
    T_max = float(net.t_scale if T_max is None else T_max)
    net = net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    N = samples.shape[0]

    def draw(step: int):
        idx = torch.randint(0, N, (batch,), generator=generator)
        x = samples[idx].to(torch.float64)
        t = torch.rand(batch, generator=generator, dtype=torch.float64) * T_max
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        return observe(x, t, z=z).to(device), t.to(device), x

    trace = fit(net, drift_matching_loss, draw, steps=steps, optimizer=opt, scheduler=sched)
    net.eval()
    return trace.losses.tolist()
