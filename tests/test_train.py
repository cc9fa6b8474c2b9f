"""Training: determinism, batched ensembles equal separate training (issue 9), and the one loop
(``dsclab.train.fit``) against hand-computed steps."""
import logging
import math

import numpy as np
import pytest
import torch

from dsclab import errors
from dsclab.distributions import make
from dsclab.errors import TrainingDiverged
from dsclab.losses import EnsembleLoss, dsm_loss
from dsclab.train import (Trace, TrainConfig, fit, group_memory_bytes, train_ensemble, train_group,
                          train_score)

CFG = TrainConfig(steps=40, batch_size=64, width=32, depth=2)


def _data(ns, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dist = make("gaussian_mixture", d)
    return [dist.sample(n, g).float() for n in ns]


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def test_training_is_deterministic_for_a_seed():
    (x,) = _data([50])
    a, b = train_score(x, config=CFG, seed=7), train_score(x, config=CFG, seed=7)
    assert _max_diff(a.model, b.model) == 0.0
    c = train_score(x, config=CFG, seed=8)
    assert _max_diff(a.model, c.model) > 1e-3


def test_batched_ensemble_equals_separate_training():
    """Each member: same init, minibatches, times, noise and Adam as alone. Float32 summation
    order may differ between batched and plain matmuls; after 40 Adam steps (each moving a
    weight by at most lr = 2e-3) a difference above 1e-4 would mean a different trajectory."""
    data = _data([20, 100, 400, 100])
    seeds = [3, 4, 5, 6]
    sep = [train_score(x, config=CFG, seed=s) for x, s in zip(data, seeds)]
    ens = train_ensemble(data, seeds, config=CFG)
    for a, b in zip(sep, ens):
        assert _max_diff(a.model, b.model) < 1e-4
        assert math.isclose(a.loss, b.loss, rel_tol=1e-4)
    # and the members really differ from each other
    assert _max_diff(ens[0].model, ens[1].model) > 1e-3


def test_diverging_member_is_isolated():
    data = _data([50, 50, 50])
    data[1] = data[1].clone()
    data[1][:, 0] = float("nan")  # every minibatch of member 1 gives a NaN loss
    res = train_group(data, [0, 1, 2], estimators=["dsm"] * 3, config=CFG)
    assert res[1] is None and res[0] is not None and res[2] is not None
    alone = train_score(data[2], config=CFG, seed=2)
    assert _max_diff(alone.model, res[2].model) < 1e-4
    unbatched = train_group(data, [0, 1, 2], estimators=["dsm"] * 3, config=CFG, batched=False)
    assert unbatched[1] is None


def test_group_memory_estimate_counts_parameters():
    """For a one-member group with no activations term the estimate is 16 bytes per parameter
    (param, grad, two Adam moments; float32): check against the real parameter count."""
    from dsclab.nets import ScoreMLP

    cfg = TrainConfig(width=64, depth=3, batch_size=0)
    net = ScoreMLP(5, width=64, depth=3)
    assert group_memory_bytes(1, 5, cfg) == 16 * sum(p.numel() for p in net.parameters())
    assert group_memory_bytes(10, 5, cfg) == 10 * group_memory_bytes(1, 5, cfg)


def test_bfloat16_step_changes_the_arithmetic_not_the_fit():
    """``precision='bfloat16'`` runs the step's matrix products in bfloat16 (8 mantissa bits), so
    the parameters leave the float32 trajectory; the fit of a Gaussian mixture's score, measured
    against its exact score, must stay as good: the mean over 6 seeds of the paired ratio of
    errors within 2% of 1. The pairs share every draw, so only the arithmetic separates them
    (measured: 0.9996, while the error itself spreads 11% between seeds). A member trained
    alone in bfloat16 follows the ensemble's member: the same arithmetic, its products summed in
    another order (one matrix product against a batched one), so where the CPU has no bfloat16
    units and rounds float32 sums to bfloat16 a rounding can flip. Bound: a quarter of the
    smallest distance between a member's float32 and bfloat16 trajectories, i.e. far closer than
    a change of arithmetic (measured, 300 steps: AMD EPYC without AMX 2.3e-4 against 2.0e-3;
    Xeon with AMX below 1e-4)."""
    from dsclab.metrics import score_errors

    cfg = TrainConfig(steps=300, batch_size=128, width=32, depth=2)
    bf = TrainConfig(steps=300, batch_size=128, width=32, depth=2, precision="bfloat16")
    dist = make("gaussian_mixture", 2)
    x = dist.sample(2000, torch.Generator().manual_seed(0)).float()
    seeds = list(range(6))
    f32 = train_ensemble([x] * 6, seeds, config=cfg)
    b16 = train_ensemble([x] * 6, seeds, config=bf)
    apart = min(_max_diff(a.model, b.model) for a, b in zip(f32, b16))
    assert apart > 1e-4  # really another arithmetic

    def err(r):
        return score_errors(r.model.score, dist, [0.05, 0.3, 1.0], 4000, [0.1], torch.Generator().manual_seed(1))["l2"].mean()

    e32, e16 = torch.tensor([err(r) for r in f32]), torch.tensor([err(r) for r in b16])
    ratio = (e16 / e32).mean().item()
    assert abs(ratio - 1) < 0.02, (e32, e16)
    alone = train_score(x, config=bf, seed=seeds[2])
    assert _max_diff(alone.model, b16[2].model) < apart / 4


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        TrainConfig(precision="float16")


# ------------------------------------------------------------------------------------------
# The loop itself (dsclab.train.fit), against hand-computed updates
# ------------------------------------------------------------------------------------------

class _Linear(torch.nn.Module):
    """f(x) = <w, x>, float64; ``members`` stacks M independent w along dim 0 (rows grouped by
    member, the layout of ``EnsembleMLP``)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64).clone())

    def forward(self, x):
        if self.w.ndim == 1:
            return x @ self.w
        M = self.w.shape[0]
        return (x.reshape(M, -1, x.shape[-1]) @ self.w[:, :, None]).reshape(-1)


def _quadratic(model, x, y):
    """Per-sample (<w, x_i> - y_i)^2, shape (m,)."""
    return (model(x) - y) ** 2


def _batches(steps, m=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(m, generator=g, dtype=torch.float64))
            for _ in range(steps)]


def _sgd(model, lr=0.1):
    """Plain SGD with lr_k = lr 2^-k (checks that the schedule steps once per step, after it)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 ** k)


def _by_hand(w, batches, lr=0.1, clip=None):
    """w_{k+1} = w_k - lr 2^-k g_k, g_k = (2/m) X_k^T (X_k w_k - y_k) (scaled by
    min(1, clip / (||g_k|| + 1e-6)) when clipping); returns the iterates and the losses."""
    w = np.asarray(w, dtype=np.float64)
    ws, losses = [w], []
    for k, (x, y) in enumerate(batches):
        X, Y = x.numpy(), y.numpy()
        r = X @ w - Y
        losses.append(np.mean(r ** 2))
        g = 2.0 / len(Y) * X.T @ r
        if clip is not None:
            g = g * min(1.0, clip / (np.linalg.norm(g) + 1e-6))
        w = w - lr * 0.5 ** k * g
        ws.append(w)
    return ws, losses


def test_loop_takes_the_hand_computed_sgd_steps_and_records_the_losses():
    batches = _batches(4)
    w0 = [0.3, -0.2, 0.5]
    model = _Linear(w0)
    opt, sched = _sgd(model)
    calls = []

    def draw(step):
        calls.append(("draw", step))
        return batches[step]

    trace = fit(model, _quadratic, draw, steps=4, optimizer=opt, scheduler=sched,
                before_step=lambda step: calls.append(("before", step)))
    ws, losses = _by_hand(w0, batches)
    np.testing.assert_allclose(model.w.detach().numpy(), ws[-1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(trace.losses.numpy(), losses, rtol=1e-13)
    assert trace.losses.dtype == torch.float64 and trace.diverged is None
    assert calls == [(w, k) for k in range(4) for w in ("before", "draw")]
    # the tail (last 10%, at least one step) and its mean
    assert trace.tail == 1 and trace.tail_mean() == trace.losses[-1].item()


def test_tail_mean_is_the_mean_of_the_last_tenth():
    t = Trace(torch.arange(1.0, 41.0, dtype=torch.float64))              # tail 4: 37..40
    assert t.tail == 4 and t.tail_mean() == 38.5
    e = Trace(torch.arange(1.0, 41.0, dtype=torch.float64).reshape(20, 2), torch.zeros(2, dtype=torch.bool))
    assert e.tail == 2 and e.tail_mean() == [(37 + 39) / 2, (38 + 40) / 2]


def test_nan_raises_for_one_model_after_exactly_the_steps_before_it():
    batches = _batches(5)
    batches[2][1][3] = float("nan")
    model = _Linear([0.3, -0.2, 0.5])
    opt, sched = _sgd(model)
    with pytest.raises(TrainingDiverged, match="at step 2"):
        fit(model, _quadratic, lambda s: batches[s], steps=5, optimizer=opt, scheduler=sched)
    ws, _ = _by_hand([0.3, -0.2, 0.5], batches[:2])
    np.testing.assert_allclose(model.w.detach().numpy(), ws[-1], rtol=1e-13, atol=1e-15)
    assert issubclass(TrainingDiverged, errors.NumericalFailure)


def _nan_ensemble(M=3, steps=6, nan_step=3):
    """Three linear members on their own batches, member 1's batch at ``nan_step`` holding a NaN:
    (w0, per-member batches, the ensemble, its SGD and schedule, the draw of its batches)."""
    per_member = [_batches(steps, seed=s) for s in range(M)]
    per_member[1][nan_step][0][2, 1] = float("nan")
    w0 = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.4, -0.3], [-0.5, 0.2, 0.2]], dtype=torch.float64)
    ens = _Linear(w0)

    def draw(step):  # (M, m, ...): member m's batch in slice m
        return tuple(torch.stack([per_member[m][step][i] for m in range(M)]) for i in range(2))

    return (w0, per_member, ens, *_sgd(ens), draw)


def test_nan_masks_exactly_that_member_and_the_others_equal_their_separate_training():
    M, steps, nan_step = 3, 6, 3
    w0, per_member, ens, opt, sched, draw = _nan_ensemble(M, steps, nan_step)
    trace = fit(ens, EnsembleLoss(_quadratic), draw, steps=steps, optimizer=opt, scheduler=sched)
    assert trace.diverged.tolist() == [False, True, False]
    assert trace.losses.shape == (steps, M) and math.isnan(trace.losses[nan_step, 1])
    for m in range(M):
        ws, losses = _by_hand(w0[m], per_member[m][:nan_step] if m == 1 else per_member[m])
        if m != 1:
            np.testing.assert_allclose(ens.w[m].detach().numpy(), ws[-1], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(trace.losses[:len(losses), m].numpy(), losses, rtol=1e-13)


class _Lines(logging.Handler):
    """The messages of the records it receives."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def progress_lines(monkeypatch):
    """``dsclab.train``'s progress lines on a clock that advances 10 s at every reading (so a line
    every 3 steps at the default 30 s), from a fresh per-thread state; yields the messages."""
    import itertools
    import threading

    from dsclab import train

    ticks = itertools.count()
    monkeypatch.setattr(train, "_clock", lambda: 10.0 * next(ticks))
    monkeypatch.setattr(train, "_reported", threading.local())
    logger = logging.getLogger("dsclab.train")
    lines, level = _Lines(), logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the loggers' isEnabledFor cache
    logger.addHandler(lines)
    yield lines.messages
    logger.removeHandler(lines)
    logger.setLevel(level)


def test_fit_logs_its_progress_every_interval_with_the_steps_loss(progress_lines):
    """One model, 10 steps, clock readings 0 (the call), 10, 20, ... (after each step): a line after
    steps 3, 6 and 9 (30 s apart), each with the loss of that step computed by hand, the time since
    the call and the ETA at that pace."""
    batches = _batches(10)
    model = _Linear([0.3, -0.2, 0.5])
    opt, sched = _sgd(model)
    fit(model, _quadratic, lambda s: batches[s], steps=10, optimizer=opt, scheduler=sched)
    _, losses = _by_hand([0.3, -0.2, 0.5], batches)
    assert progress_lines == [
        f"training: step {k}/10 ({10 * k}%), loss {losses[k - 1]:.4g}, {k // 3 * 30 // 60}m{k // 3 * 30 % 60:02d}s "
        f"elapsed, ETA {(10 - k) * 10 // 60}m{(10 - k) * 10 % 60:02d}s" for k in (3, 6, 9)]


def test_a_caller_that_trains_in_parts_names_the_part(progress_lines):
    batches = _batches(3)
    model = _Linear([0.3, -0.2, 0.5])
    opt, sched = _sgd(model)
    fit(model, _quadratic, lambda s: batches[s], steps=3, optimizer=opt, scheduler=sched, label="stage 2/3, epoch 5/40")
    assert [m.split(": step ")[0] for m in progress_lines] == ["stage 2/3, epoch 5/40"]
    assert progress_lines[0].split(": step ")[1].startswith("3/3 (100%), loss ")


def test_ensemble_progress_is_the_mean_loss_of_the_members_not_masked(progress_lines):
    """Three members, member 1's loss NaN from step 4 on (masked): the line after step 3 is the
    mean of the three hand-computed losses of that step, the one after step 6 the mean of members
    0 and 2."""
    M, steps, nan_step = 3, 6, 3
    w0, per_member, ens, opt, sched, draw = _nan_ensemble(M, steps, nan_step)
    fit(ens, EnsembleLoss(_quadratic), draw, steps=steps, optimizer=opt, scheduler=sched)
    hand = [_by_hand(w0[m], per_member[m][:nan_step] if m == 1 else per_member[m])[1] for m in range(M)]
    first = (hand[0][2] + hand[1][2] + hand[2][2]) / 3  # step 3 (index 2): member 1 still in
    sixth = (hand[0][5] + hand[2][5]) / 2
    assert [m.split(", loss ")[1].split(",")[0] for m in progress_lines] == [f"{first:.4g}", f"{sixth:.4g}"]
    assert all(m.startswith("training 3 networks: step ") for m in progress_lines)


def test_a_train_task_forwards_the_lines_to_its_run_logger_with_the_groups_label(monkeypatch):
    """``tasks.progress.TrainingProgress``: inside a task run a ``dsclab.train`` line reaches the
    task's run logger after the label the train task sets; outside one it is dropped. The
    ``dsclab.train`` logger's state is restored after (``training_group`` installs the handler)."""
    from prefect.context import TaskRunContext

    import cloudpickle
    import prefect

    from tasks import progress, stages

    train_logger = logging.getLogger("dsclab.train")
    saved = (list(train_logger.handlers), train_logger.level, train_logger.propagate)
    try:
        got = _Lines()
        run_logger = logging.getLogger("test.run_logger")
        run_logger.addHandler(got)
        run_logger.setLevel(logging.INFO)
        monkeypatch.setattr(prefect, "get_run_logger", lambda: run_logger)
        handler = progress.TrainingProgress()
        record = logging.LogRecord("dsclab.train", logging.INFO, __file__, 1, "training: step %d/%d", (5, 10), None)
        with progress.training_group(_Kind(), [_Cell(8, 0), _Cell(8, 1)]):
            handler.emit(record)  # no task run here
            monkeypatch.setattr(TaskRunContext, "get", classmethod(lambda cls: object()))
            handler.emit(record)
        handler.emit(record)  # the label is gone after the group
        run_logger.removeHandler(got)
        assert got.messages == ["d=8 (2 cells): training: step 5/10", "training: step 5/10"]
        assert [h for h in train_logger.handlers if isinstance(h, progress.TrainingProgress)]
    finally:  # also when an assertion fails: later tests in this process see the logger as before
        train_logger.handlers[:], train_logger.propagate = saved[0], saved[2]
        train_logger.setLevel(saved[1])
    cloudpickle.loads(cloudpickle.dumps(stages.train))  # the task still travels to Dask workers


class _Cell:
    def __init__(self, d, seed):
        self.d, self.seed = d, seed


class _Kind:
    @staticmethod
    def index(cell):
        return {"d": cell.d, "seed": cell.seed}


def test_clipping_bounds_the_gradient_norm_per_model_and_per_member():
    batches = [(10.0 * x, y) for x, y in _batches(3)]  # large gradients: clipping is active
    w0 = [0.3, -0.2, 0.5]
    model = _Linear(w0)
    opt, sched = _sgd(model)
    fit(model, _quadratic, lambda s: batches[s], steps=3, optimizer=opt, scheduler=sched, clip=0.5)
    ws, _ = _by_hand(w0, batches, clip=0.5)
    np.testing.assert_allclose(model.w.detach().numpy(), ws[-1], rtol=1e-12, atol=1e-15)
    steps = np.diff(np.stack(ws), axis=0)
    assert all(np.linalg.norm(s) <= 0.1 * 0.5 ** k * 0.5 * (1 + 1e-12) for k, s in enumerate(steps))
    unclipped, _ = _by_hand(w0, batches)
    assert np.abs(unclipped[1] - ws[1]).max() > 0.1  # the bound was binding
    # ensemble: member 0's large gradient is clipped alone, member 1's small one is untouched
    ens = _Linear(torch.tensor([w0, w0], dtype=torch.float64))
    small = _batches(3, seed=9)
    small = [(0.01 * x, 0.01 * y) for x, y in small]
    opt, sched = _sgd(ens)
    draw = lambda s: (torch.stack([batches[s][0], small[s][0]]), torch.stack([batches[s][1], small[s][1]]))
    fit(ens, EnsembleLoss(_quadratic), draw, steps=3, optimizer=opt, scheduler=sched, clip=0.5)
    np.testing.assert_allclose(ens.w[0].detach().numpy(), ws[-1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ens.w[1].detach().numpy(), _by_hand(w0, small)[0][-1], rtol=1e-12, atol=1e-15)


def test_the_loss_runs_under_autocast_and_the_backward_outside_it():
    seen = []

    def loss(model, x, y):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return _quadratic(model, x, y)

    model = _Linear([0.3, -0.2, 0.5])
    opt, sched = _sgd(model)
    batches = _batches(2)
    fit(model, loss, lambda s: batches[s], steps=2, optimizer=opt, scheduler=sched, autocast=torch.bfloat16)
    fit(model, loss, lambda s: batches[s], steps=1, optimizer=opt)
    assert seen[:2] == [(True, torch.bfloat16)] * 2 and seen[2][0] is False
    assert not torch.is_autocast_enabled("cpu")


def test_ensemble_loss_is_each_members_own_loss():
    """``EnsembleLoss(dsm_loss)`` on an ``EnsembleMLP`` with draws laid out (M, m, ...) equals
    ``dsm_loss`` of each member alone on its slice."""
    from dsclab.nets import EnsembleMLP, ScoreMLP

    g = torch.Generator().manual_seed(3)
    members = [ScoreMLP(2, width=8, depth=2, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    with torch.no_grad():
        for net in members:
            net.out.weight.normal_(generator=g)
    ens = EnsembleMLP(members)
    x0, z = torch.randn(3, 7, 2, generator=g), torch.randn(3, 7, 2, generator=g)
    t = 0.1 + torch.rand(3, 7, generator=g, dtype=torch.float64)
    per = EnsembleLoss(dsm_loss)(ens, x0, t, z)
    assert per.shape == (3, 7)
    want = torch.stack([dsm_loss(net, x0[m], t[m], z[m]) for m, net in enumerate(members)])
    torch.testing.assert_close(per, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# The training-group memory bound: the spec's, and on CUDA a share of the free memory (issue 20)
# ------------------------------------------------------------------------------------------

MiB = 2**20


def _fake_free_memory(monkeypatch, free: int, total: int = 80 * 1024 * MiB) -> list:
    """``torch.cuda.mem_get_info`` answering (free, total) on this CUDA-less machine; returns the
    list of devices it was asked about."""
    asked = []

    def mem_get_info(device=None):
        asked.append(device)
        return free, total

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return asked


def test_memory_bound_is_the_spec_bound_on_the_cpu_and_at_most_a_share_of_free_memory_on_cuda(monkeypatch):
    from dsclab.train import FREE_MEMORY_SHARE, group_size, memory_bound_bytes

    assert FREE_MEMORY_SHARE == 0.5
    asked = _fake_free_memory(monkeypatch, free=1024 * MiB)
    assert memory_bound_bytes(2048 * MiB, "cpu") == 2048 * MiB and memory_bound_bytes(None, "cpu") is None
    assert asked == []  # the CPU never asks CUDA
    assert memory_bound_bytes(2048 * MiB, "cuda") == 512 * MiB          # min(spec bound, free / 2)
    assert memory_bound_bytes(100 * MiB, "cuda:0") == 100 * MiB
    assert memory_bound_bytes(None, torch.device("cuda")) == 512 * MiB  # no spec bound: free / 2
    assert [torch.device(d) for d in asked] == [torch.device("cuda"), torch.device("cuda:0"), torch.device("cuda")]
    per = group_memory_bytes(1, 8, CFG)
    assert group_size(8, CFG, 2048 * MiB, "cpu") == 2048 * MiB // per
    assert group_size(8, CFG, 2048 * MiB, "cuda") == 512 * MiB // per
    assert group_size(8, CFG, None, "cpu") is None
    _fake_free_memory(monkeypatch, free=per)  # not even one cell fits in half of it: still one
    assert group_size(8, CFG, 2048 * MiB, "cuda") == 1


def test_split_groups_uses_the_free_cuda_memory(monkeypatch):
    """The sample-complexity plan on a CUDA device with (faked) free memory for 3 cells' estimates
    in its half splits 8 cells of one d as 3 + 3 + 2; on the CPU the spec's bound (2 GiB) keeps
    them in one group, and the kind's plan follows the spec's device."""
    from dsclab.study import parse_spec
    from dsclab.studies.sample_complexity import KIND
    from dsclab.studies.sample_complexity import numerics as sc

    spec = parse_spec({"name": "mem", "d": [4], "n": [10, 20, 30, 40, 50, 60, 70, 80], "nfe": [4],
                       "train": {"steps": 10, "width": 32, "depth": 2, "device": "cuda"}})
    cells = spec.cells()
    per = group_memory_bytes(1, 4, sc.train_config(spec))
    _fake_free_memory(monkeypatch, free=2 * (3 * per + per // 2))  # half of it: 3.5 cells
    assert [len(g) for g in sc.split_groups(spec, cells)] == [3, 3, 2]
    assert [c.key for g in sc.split_groups(spec, cells) for c in g] == [c.key for c in cells]
    assert [len(g.cells) for g in KIND.plan(spec, cells)] == [3, 3, 2]
    assert [len(g) for g in sc.split_groups(spec, cells, device="cpu")] == [8]
    _fake_free_memory(monkeypatch, free=100 * 1024 * MiB)  # a large device: the spec's bound rules
    small = spec.model_copy(update={"group_memory_mb": 1})
    assert [len(g) for g in sc.split_groups(small, cells)] == [len(g) for g in sc.split_groups(small, cells, "cpu")]
    assert len(sc.split_groups(small, cells)) == -(-8 // max(1, MiB // per))


def test_sparse_pca_trains_in_chunks_within_the_free_cuda_memory(monkeypatch):
    """sparse_pca trains a (d, k) group as one ensemble on the CPU, and on CUDA as consecutive
    ensembles of at most (free / 2) / estimate cells, in cell order (train_group recorded)."""
    from dsclab.study import parse_spec
    from dsclab.studies.sparse_pca import KIND
    from dsclab.studies.sparse_pca import numerics as spn

    spec = parse_spec({**KIND.small, "n": [6, 20, 60]}, KIND.spec_model)
    cells = [c for c in KIND.cells(spec)]
    data = {(c.k, c.beta, c.seed): np.zeros((max(spec.n), c.d)) for c in cells}
    calls = []

    def record(xs, seeds, *, estimators, config, device):
        calls.append((len(xs), device))
        return [f"net-{s}" for s in seeds]

    monkeypatch.setattr(spn, "train_group", record)
    want = [f"net-{spn.derive_seed('sparse-pca-train', c.key)}" for c in cells]
    assert spn.train_cells(spec, cells, data, "cpu") == want and calls == [(len(cells), "cpu")]
    per = group_memory_bytes(1, cells[0].d, spn.train_config(spec))
    _fake_free_memory(monkeypatch, free=2 * 5 * per)
    calls.clear()
    assert spn.train_cells(spec, cells, data, "cuda") == want
    assert calls == [(5, "cuda")] * (len(cells) // 5) + ([(len(cells) % 5, "cuda")] if len(cells) % 5 else [])


def test_cosine_adam_takes_torchs_fused_adam_steps_bit_for_bit():
    """``CosineAdam`` against an independent computation, PyTorch's own ``torch.optim.Adam(fused=True)``
    under ``cosine_decay`` (``LambdaLR``): the same network trained by ``fit`` on the same draws,
    one member of a batched ensemble skipped at a step (no gradient, as a masked member's
    slice never is, but a parameter without a gradient is), has equal parameters bit for bit."""
    from dsclab.nets import ScoreMLP
    from dsclab.train import CosineAdam, cosine_decay

    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(64, 4, generator=g), torch.rand(64, generator=g) + 0.05, torch.randn(64, 4, generator=g))
               for _ in range(40)]
    steps = 40
    nets = [ScoreMLP(4, width=32, depth=2, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    ours = CosineAdam(nets[0].parameters(), 2e-3, steps)
    theirs = torch.optim.Adam(nets[1].parameters(), lr=2e-3, fused=True)
    fit(nets[0], dsm_loss, lambda s: batches[s], steps=steps, optimizer=ours)
    fit(nets[1], dsm_loss, lambda s: batches[s], steps=steps, optimizer=theirs, scheduler=cosine_decay(theirs, steps))
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(nets[0].out.weight, ScoreMLP(4, width=32, depth=2, generator=torch.Generator().manual_seed(0)).out.weight)

    # a parameter without a gradient at some steps is left alone there, by both
    w = [torch.nn.Parameter(torch.ones(3)) for _ in range(2)]
    u = [torch.nn.Parameter(torch.ones(2)) for _ in range(2)]
    opts = [CosineAdam([w[0], u[0]], 0.1, 5), torch.optim.Adam([w[1], u[1]], lr=0.1, fused=True)]
    sched = cosine_decay(opts[1], 5)
    for k in range(5):
        for i in range(2):
            opts[i].zero_grad(set_to_none=True)
            ((w[i] * torch.arange(3.0)).sum() + (u[i].sum() if k % 2 else 0.0)).backward()
            opts[i].step()
        sched.step()
    assert torch.equal(w[0], w[1]) and torch.equal(u[0], u[1])
    assert opts[0].lr == opts[1].param_groups[0]["lr"]  # the next step's rate, the same float


def test_training_a_score_network_imports_no_dynamo():
    """Every ``torch.optim`` optimiser's step imports ``torch._dynamo`` (~1.2 CPU-s) in torch 2.13;
    the score networks' trainer does not (``CosineAdam``), in a fresh process."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import torch\n"
            "from dsclab.train import TrainConfig, train_score\n"
            "train_score(torch.randn(50, 3), config=TrainConfig(steps=5, batch_size=16, width=8, depth=1))\n"
            "print('torch._dynamo' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "False"
