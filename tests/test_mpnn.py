"""The paper's message-passing denoiser (dsclab.studies.computational_gap.spike.mpnn), its three-stage training
(dsclab.studies.computational_gap.spike.mpnn_train), its hard-test baselines (dsclab.studies.computational_gap.spike.paper) and the published numbers."""
import math

import numpy as np
import pytest
import torch

from dsclab.studies.computational_gap import spike
from dsclab.seeds import rng
from dsclab.studies.computational_gap.spike.mpnn import MPNN, mpnn_drift, to_vector, unit_vectors
from dsclab.studies.computational_gap.spike.mpnn_train import PaperSchedule, matrix_loss, train_mpnn
from dsclab.studies.computational_gap.spike.paper import power_iteration_paper_drift, published, spectral_paper_drift


def _obs(dist, m, t, g):
    x = dist.sample(m, g)
    return spike.observe(x, t, generator=g), x


def test_equivariant_under_permutations():
    n, k, m = 10, 3, 4
    net = MPNN(n, k, generator=rng("test-mpnn", 0)).double()
    g = rng("test-mpnn-data", 0)
    y, _ = _obs(spike.sparse_spike_mixture(n, k), m, 7.0, g)
    v0 = unit_vectors(m, n, g).double()
    perm = torch.randperm(n, generator=g)
    out = net(y, 7.0, v0, project=True)
    out_p = net(y[:, perm][:, :, perm], 7.0, v0[:, perm], project=True)
    # float64 network: only summation order differs between the two passes
    assert torch.allclose(out_p, out[:, perm][:, :, perm], atol=1e-10)


def test_output_rank_one_k_sparse_norm_at_most_one():
    n, k, m = 12, 3, 6
    net = MPNN(n, k, generator=rng("test-mpnn", 1))
    with torch.no_grad():
        net.readout.fill_(50.0)  # scores far above 1: the evaluation projection must bring them back
    g = rng("test-mpnn-data", 1)
    y, _ = _obs(spike.sparse_spike_mixture(n, k), m, 20.0, g)
    v0 = unit_vectors(m, n, g)
    s = net.vector(y, 20.0, v0, project=True)
    out = net(y, 20.0, v0, project=True)
    assert ((s != 0).sum(dim=1) <= k).all()
    assert torch.allclose(out, s[:, :, None] * s[:, None, :])
    assert (torch.linalg.matrix_rank(out.double(), rtol=1e-5) <= 1).all()  # float32 rounding
    assert (out.flatten(1).norm(dim=1) <= 1 + 1e-6).all()
    raw = net(y, 20.0, v0)  # training forward: no projection, the norm is free
    assert (raw.flatten(1).norm(dim=1) > 1).any()


def test_gradients_through_top_k_mask_are_finite():
    n, k, m = 12, 3, 8
    net = MPNN(n, k, generator=rng("test-mpnn", 2))
    g = rng("test-mpnn-data", 2)
    dist = spike.sparse_spike_mixture(n, k)
    y, x = _obs(dist, m, 10.0, g)
    loss = matrix_loss(net, y, torch.full((m,), 10.0), x, unit_vectors(m, n, g)).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    # the straight-through mask: value hard, gradient of the softmax (nonzero off the top k)
    v = torch.tensor([[3.0, -2.0, 0.5, 0.1]], requires_grad=True)
    mask = spike.mpnn.TopKStraightThrough(2)(v)
    assert torch.equal(mask.detach(), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    (mask * torch.arange(4.0)).sum().backward()
    assert torch.isfinite(v.grad).all() and float(v.grad.abs().sum()) > 0


def test_forward_at_paper_size_on_cpu():
    n, k = 350, 20
    net = MPNN(n, k, generator=rng("test-mpnn", 3))
    g = rng("test-mpnn-data", 3)
    y, _ = _obs(spike.sparse_spike_mixture(n, k), 2, 300.0, g)
    out = mpnn_drift(net, g)(y, 300.0)
    assert out.shape == (2, n, n) and out.dtype == y.dtype and torch.isfinite(out).all()
    assert (out.flatten(1).norm(dim=1) <= 1 + 1e-6).all()


class _Store(dict):
    def load(self, stage):
        return self.get(stage)

    def save(self, stage, array):
        self[stage] = array


class _Killed(Exception):
    pass


SMALL = PaperSchedule(budget=0.01, n_train=100, batch_size=25)  # epochs 6/3/3, 4 steps each: 48 steps
TINY = PaperSchedule(budget=0.005, n_train=50, batch_size=50)    # epochs 3/2/2, 1 step each


def _held_out_losses(net, dist, n):
    """Per-matrix losses on a fixed held-out set at t = 2n (above the spectral threshold n/2)."""
    g = rng("test-mpnn-heldout", n)
    m = 400
    y, x = _obs(dist, m, 2.0 * n, g)
    with torch.no_grad():
        return matrix_loss(net.eval(), y, torch.full((m,), 2.0 * n), x, unit_vectors(m, n, g)).double()


def test_training_lowers_the_loss():
    n, k = 12, 2
    dist = spike.sparse_spike_mixture(n, k)
    before = _held_out_losses(MPNN(n, k, generator=rng("test-mpnn-init", n)), dist, n)
    net, loss, _ = train_mpnn(MPNN(n, k, generator=rng("test-mpnn-init", n)), dist, SMALL, ("t",))
    diff = before - _held_out_losses(net, dist, n)
    # Paired on the same held-out set: the improvement must exceed 3 standard errors of its mean.
    assert math.isfinite(loss) and float(diff.mean()) > 3 * float(diff.std() / math.sqrt(diff.numel())), diff.mean()


def test_killed_training_resumes_from_its_last_stage_checkpoint():
    n, k = 8, 2
    dist = spike.sparse_spike_mixture(n, k)
    store = _Store()
    net, loss, _ = train_mpnn(MPNN(n, k, generator=rng("test-mpnn-init", n)), dist, TINY, ("t",), checkpoints=store)
    assert sorted(store) == [1, 2, 3]

    class KillAtStage2(_Store):
        def save(self, stage, array):
            if stage == 2:
                raise _Killed
            super().save(stage, array)

    killed = KillAtStage2()
    with pytest.raises(_Killed):
        train_mpnn(MPNN(n, k, generator=rng("test-mpnn-init", n)), dist, TINY, ("t",), checkpoints=killed)
    assert sorted(killed) == [1]
    resumed = _Store(killed)
    net2, loss2, _ = train_mpnn(MPNN(n, k, generator=rng("test-mpnn-other-init", n)), dist, TINY, ("t",),
                                checkpoints=resumed)
    # stages 2 and 3 redrawn from the same generators: the same weights as the uninterrupted run
    assert torch.equal(to_vector(net2), to_vector(net)) and loss2 == loss


def test_budget_scales_the_schedule():
    full = PaperSchedule()
    assert full.steps() == 50 * 1200  # the paper's 60,000 steps
    assert [full.active_depth(e, 10) for e in (0, 149, 150, 249, 250)] == [7, 7, 9, 9, 10]
    half = PaperSchedule(budget=0.5)
    assert [half.stage_epochs(s) for s in range(3)] == [300, 150, 150] and half.active_depth(75, 10) == 9
    grid, p = full.time_probs(0, 350)
    assert math.isclose(float(p[grid <= 400].sum()), 0.05, rel_tol=1e-9) and math.isclose(float(p.sum()), 1.0)
    assert math.isclose(float(grid[-1]), 700.0)


def test_spectral_paper_zero_below_threshold_rank_one_above():
    n, k, m = 40, 4, 16
    dist = spike.sparse_spike(n, k)
    g = rng("test-spectral-paper", 0)
    x = dist.sample(m, g)
    drift = spectral_paper_drift(dist)
    # pure noise at large t: <Y, u u^T> ~ N(0, 1/t) is far below 0.8, so the output is exactly 0
    zero = drift(spike.observe(torch.zeros_like(x), 1e4, generator=g), 1e4)
    assert torch.equal(zero, torch.zeros_like(zero))
    # strong spike: the test passes and the output is the rank-one k-sparse u u^T = x
    out = drift(spike.observe(x, 1e5, generator=g), 1e5)
    assert torch.allclose(out, x)
    assert ((out.abs() > 0).flatten(1).sum(1) == k * k).all()
    pw = power_iteration_paper_drift(dist, rng("test-power-paper", 0))
    assert torch.allclose(pw(spike.observe(x, 1e5, generator=g), 1e5), x)
    assert torch.equal(drift(torch.zeros_like(x), 0.0), torch.zeros_like(x))


def test_mpnn_mse_not_below_bayes():
    """Bayes is the MMSE: on common random numbers the per-sample excess of any drift has
    nonnegative mean, so mpnn - bayes must not be below -3 standard errors at any t."""
    n, k = 8, 2
    dist = spike.sparse_spike_mixture(n, k)
    net, _, _ = train_mpnn(MPNN(n, k, generator=rng("test-mpnn-init", n)), dist, TINY, ("b",))
    drifts = {"bayes": spike.bayes_drift(dist), "mpnn": mpnn_drift(net, rng("test-mpnn-eval", n))}
    curves = spike.mse_curve(drifts, dist, [1.0, 4.0, 8.0, 16.0, 32.0], 300, rng("test-mpnn-mse", n))
    diff = curves["mpnn"] - curves["bayes"]
    mean, se = diff.mean(1), diff.std(1, ddof=1) / math.sqrt(diff.shape[1])
    assert (mean >= -3 * se).all(), (mean, se)


def test_published_numbers():
    pub = published()
    assert pub["network"].shape == (6, 70) and pub["spectral"].shape == (70,)
    assert np.allclose(pub["t"], np.arange(20, 1401, 20))
    i = {t: int(t // 20 - 1) for t in (200, 300, 400, 500)}
    # science.md §5's table (3 significant digits): network mean and spectral
    for t, mean in ((200, 0.458), (300, 0.190), (400, 0.034), (500, 0.0075)):
        assert abs(pub["network"][:, i[t]].mean() - mean) < 1e-3 * max(1.0, 10 * mean)
    assert abs(pub["spectral"][i[400]] - 0.091) < 1e-3


def test_registry_declares_facts():
    assert spike.DRIFTS["mpnn"].trained and spike.DRIFTS["mpnn"].random
    assert spike.DRIFTS["power_iteration_paper"].needs == ("generator",)
    assert not spike.DRIFTS["spectral_paper"].random
    with pytest.raises(ValueError, match="needs net"):
        spike.make_drift("mpnn", spike.sparse_spike(6, 2), generator=rng("x"))
