"""Montanari–Vu's message-passing denoiser (science.md §5; the architecture of the paper's official
code, github vietvu2001/SparseDiffusion, rewritten here).

Input and output (conventions: ``dsclab.studies.computational_gap.spike``). The network sees the rescaled observation

    Y = sym(y_t) / t = x + sym(Z) / sqrt(t)      (B, n, n),

the paper's channel ``Y = x + Z/sqrt(t)`` symmetrised, and a random unit start vector ``v0 (B, n)``.
It returns ``x_hat = s s^T`` with s k-sparse, so its output is rank-one, k-sparse and (at
evaluation, ``project=True``) of norm ``||s||^2 <= 1``: it can estimate "this spike" or "about 0",
never E[x].

Forward pass (one vector ``v (B, n)`` per matrix; every map acts on each index i alike):

1. soft power iteration, ``soft_iters`` = 3 times: ``v <- Y v / max(||Y v||, 1e-5)``;
2. ``depth`` (10; the first ``active`` of them run, see depth growth in ``mpnn_train``)
   message-passing layers l:
   ``m_ij = MLP_l(v_i, v_j, Y_ij)`` (3 -> 32 -> 1, LeakyReLU), ``a_i = mean_j m_ij``,
   ``v_new_i = U_l(v_i, a_i)`` (2 -> 16 -> 1), ``v <- alpha_l v + (1 - alpha_l) v_new`` with the
   learned mixing ``alpha_l = 0.85 sigmoid(theta_l)``;
3. time embedding ``tau = tanh(e^{s} t / n)`` (s learned, initially 0) and decoder
   ``v <- c v tau + D(v, tau)`` (D: 2 -> 4 -> 1; c learned, initially 1);
4. top-k straight-through mask (:class:`TopKStraightThrough`, temperature 0.2):
   ``s = v * mask``; at evaluation ``s <- s / max(||s||, 1)``; output ``s s^T``.

Permutation equivariance: for a permutation P, ``net(P y P^T, t, P v0) = P net(y, t, v0) P^T``
(every step acts on indices alike, means over j are symmetric, top-k commutes with P up to ties).

Since the message MLP's last layer is linear, ``mean_j (W2 h_ij + b2) = W2 mean_j h_ij + b2``:
the forward pass averages the 32 hidden channels before that layer, the same function with an
``(B, n, 32)`` instead of ``(B, n, n, 1)`` result; its first layer is split into
``W_a v_i + W_b v_j + W_c Y_ij + b`` (broadcast, no concatenated ``(B, n, n, 3)`` input).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dsclab.studies.computational_gap.spike.model import sym, t_vector


class TopKStraightThrough(nn.Module):
    """Mask of the k largest |v_i|, with the gradient of a softmax.

    Forward value: the hard mask (1 on the top-k of |v|, 0 elsewhere); gradient: that of
    ``softmax(|v| / temp)`` (``hard + soft - soft.detach()``), so a coordinate just outside the
    top k still receives a gradient."""

    def __init__(self, k: int, temp: float = 0.2):
        super().__init__()
        self.k, self.temp = int(k), float(temp)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        soft = torch.softmax(v.abs() / self.temp, dim=1)
        idx = v.abs().topk(self.k, dim=1).indices
        hard = torch.zeros_like(v).scatter_(1, idx, 1.0)
        return hard + (soft - soft.detach())


def _mlp(c_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, width), nn.LeakyReLU(), nn.Linear(width, 1))


class MPNN(nn.Module):
    """The paper's denoiser (module docstring). ``forward(y, t, v0, project=False) -> (B, n, n)``.

    * ``y (B, n, n)``: the SL observation y_t (any float dtype, any device: moved to the network's);
      ``t``: float or ``(B,)``, positive; ``v0 (B, n)``: the start vectors (unit norm).
    * ``project``: rescale s to norm <= 1 (the paper's evaluation; training runs without it).
    * ``active``: the number of message-passing layers that run (depth growth); all ``depth``
      layers exist from the start.

    Parameters are initialised from ``generator``: weights Xavier-uniform with gain 0.2, biases
    uniform +-1/sqrt(fan_in) times 0.2 (the paper's rule), mixing logits 0, time scale log 0,
    readout coefficient 1.
    """

    def __init__(self, n: int, k: int, *, depth: int = 10, msg_width: int = 32, upd_width: int = 16,
                 dec_width: int = 4, soft_iters: int = 3, alpha_max: float = 0.85, temp: float = 0.2,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.n, self.k, self.depth, self.soft_iters, self.alpha_max = n, k, depth, soft_iters, alpha_max
        self.active = depth
        self.msg = nn.ModuleList(_mlp(3, msg_width) for _ in range(depth))
        self.upd = nn.ModuleList(_mlp(2, upd_width) for _ in range(depth))
        self.decoder = _mlp(2, dec_width)
        self.logit_alpha = nn.Parameter(torch.zeros(depth))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.readout = nn.Parameter(torch.ones(()))
        self.mask = TopKStraightThrough(k, temp)
        with torch.no_grad():
            for mod in self.modules():
                if isinstance(mod, nn.Linear):
                    fan_out, fan_in = mod.weight.shape
                    a = 0.2 * math.sqrt(6.0 / (fan_in + fan_out))
                    mod.weight.copy_((torch.rand(mod.weight.shape, generator=generator) * 2 - 1) * a)
                    b = 1.0 / math.sqrt(fan_in)
                    mod.bias.copy_((torch.rand(mod.bias.shape, generator=generator) * 2 - 1) * b * 0.2)

    def config(self) -> dict:
        """The constructor's arguments (with the checkpoint, enough to rebuild the network)."""
        return {"n": self.n, "k": self.k, "depth": self.depth, "msg_width": self.msg[0][0].out_features,
                "upd_width": self.upd[0][0].out_features, "dec_width": self.decoder[0].out_features,
                "soft_iters": self.soft_iters, "alpha_max": self.alpha_max, "temp": self.mask.temp}

    def _layer(self, l: int, v: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        first, last = self.msg[l][0], self.msg[l][2]
        w = first.weight                                                   # (32, 3)
        h = (v[:, :, None, None] * w[:, 0] + v[:, None, :, None] * w[:, 1]
             + Y[..., None] * w[:, 2] + first.bias)                        # (B, n, n, 32)
        agg = last(nn.functional.leaky_relu(h).mean(dim=2))[..., 0]       # (B, n) = mean_j m_ij
        v_new = self.upd[l](torch.stack([v, agg], dim=-1))[..., 0]        # (B, n)
        alpha = self.alpha_max * torch.sigmoid(self.logit_alpha[l])
        return alpha * v + (1 - alpha) * v_new

    def vector(self, y: torch.Tensor, t, v0: torch.Tensor, *, project: bool = False) -> torch.Tensor:
        """s ``(B, n)``, k-sparse (the output is s s^T)."""
        p = self.logit_alpha
        B, n, _ = y.shape
        tv = t_vector(t, B, dtype=p.dtype, device=p.device)
        Y = sym(y.to(dtype=p.dtype, device=p.device)) / tv[:, None, None]
        v = v0.to(dtype=p.dtype, device=p.device)
        for _ in range(self.soft_iters):
            v = torch.bmm(Y, v[:, :, None])[..., 0]
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-5)
        for l in range(self.active):
            v = self._layer(l, v, Y)
        tau = torch.tanh(torch.exp(self.log_scale) * tv / n)[:, None].expand(B, n)
        v = self.readout * v * tau + self.decoder(torch.stack([v, tau], dim=-1))[..., 0]
        s = v * self.mask(v)
        if project:
            s = s / s.norm(dim=1, keepdim=True).clamp_min(1.0)
        return s

    def forward(self, y: torch.Tensor, t, v0: torch.Tensor, *, project: bool = False) -> torch.Tensor:
        s = self.vector(y, t, v0, project=project)
        return s[:, :, None] * s[:, None, :]


def unit_vectors(m: int, n: int, generator: torch.Generator, device="cpu") -> torch.Tensor:
    """``(m, n)`` independent uniform unit vectors (normalised Gaussians) in float32; drawn on
    the generator's device, returned on ``device``."""
    g = torch.randn((m, n), generator=generator, device=generator.device)
    return (g / g.norm(dim=1, keepdim=True)).to(device)


def mpnn_drift(net: MPNN, generator: torch.Generator, *, device="cpu", batch: int = 512):
    """The trained network as a drift ``m(y, t)``: eval mode, no gradients, ``project=True``, a fresh
    random start vector per matrix and call (drawn from ``generator``, as the paper's evaluation and
    sampler draw one per call), in batches of ``batch``; output in y's dtype and device.

    At t = 0 the observation carries no information and Y = y/t is undefined: the drift is 0 there
    (the paper's sampler starts from x_hat = 0 and first calls the network at t = Delta)."""
    net = net.to(device).eval()

    def drift(y, t):
        m = y.shape[0]
        tv = t_vector(t, m, device=y.device)
        v0 = unit_vectors(m, net.n, generator, device)
        out = torch.zeros_like(y)
        live = (tv > 0).nonzero().squeeze(1)
        with torch.no_grad():
            for i in range(0, live.numel(), batch):
                idx = live[i:i + batch]
                pred = net(y[idx].to(device), tv[idx].to(device), v0[idx.to(v0.device)], project=True)
                out[idx] = pred.to(dtype=y.dtype, device=y.device)
        return out
    return drift


def to_vector(net: MPNN) -> torch.Tensor:
    """All parameters as one float32 CPU vector (state_dict order); :func:`from_vector` inverts it."""
    return torch.cat([v.detach().reshape(-1).float().cpu() for v in net.state_dict().values()])


def from_vector(net: MPNN, vec: torch.Tensor) -> MPNN:
    """Load the parameters of ``vec`` (from :func:`to_vector` of a network of the same config)."""
    state, i = {}, 0
    for name, v in net.state_dict().items():
        state[name] = torch.as_tensor(vec[i:i + v.numel()]).reshape(v.shape).to(v.dtype)
        i += v.numel()
    if i != len(vec):
        raise ValueError(f"parameter vector has {len(vec)} numbers, the network {i}")
    net.load_state_dict(state)
    return net
