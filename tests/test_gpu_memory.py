"""GPU tests of memory (issue 20), run by ``pytest -m gpu`` with CUDA and skipped elsewhere: the
training-group bound follows the device's free memory, the estimate bounds the measured peak, a
group that does not fit is split and trains, and a cell that does not fit alone fails with its
reason while the study completes (CPU counterparts with injected out-of-memory errors:
``tests/test_train.py``, ``tests/test_reliability.py``)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gpu import CUDA, _data, _max_diff, on_gpu  # noqa: E402

from dsclab.study import Status  # noqa: E402

# --- Memory: the bound, the estimate, splitting, a cell that does not fit -----------------

def _peak(run) -> int:
    """The peak CUDA memory ``run()`` allocates beyond what is allocated before it (bytes)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    return torch.cuda.max_memory_allocated() - base


def _capped(bytes_: int):
    """Cap this process's CUDA allocations at ``bytes_`` more than now (``set_per_process_memory_fraction``;
    the device's settings are untouched); returns a function that lifts the cap."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(min(1.0, (torch.cuda.memory_reserved() + bytes_) / total))
    return lambda: (torch.cuda.empty_cache(), torch.cuda.set_per_process_memory_fraction(1.0))


@on_gpu
def test_memory_bound_on_cuda_is_at_most_half_the_free_memory():
    """On CUDA the group bound is min(spec bound, FREE_MEMORY_SHARE x the free memory of
    ``torch.cuda.mem_get_info``; read here before and after, nothing allocating between), and the
    group size follows it."""
    from dsclab.train import FREE_MEMORY_SHARE, TrainConfig, group_memory_bytes, group_size, memory_bound_bytes

    cfg, (free0, total) = TrainConfig(width=4096, depth=4, batch_size=4096), torch.cuda.mem_get_info()
    bounds = [memory_bound_bytes(10 * total, CUDA), memory_bound_bytes(None, CUDA)]
    size, per = group_size(64, cfg, 10 * total, CUDA), group_memory_bytes(1, 64, cfg)  # ~2 GB per member
    lo, hi = (int(FREE_MEMORY_SHARE * f) for f in sorted([free0, torch.cuda.mem_get_info()[0]]))
    assert all(lo <= b <= hi for b in bounds) and memory_bound_bytes(2**20, CUDA) == 2**20
    assert lo // per <= size <= hi // per and size > 1  # several members on a GPU with 8 GB free


@on_gpu
def test_group_memory_estimate_bounds_the_measured_peak_within_its_share():
    """A batched group's measured peak on CUDA (``max_memory_allocated``, the data sets' own bytes
    added to the estimate) stays under twice ``group_memory_bytes``: what FREE_MEMORY_SHARE = 1/2
    assumes. 32 members of the quick study's network (d = 32), so that the fixed costs (cuBLAS
    workspace, the CUDA context is not counted) are small beside them."""
    from dsclab.train import TrainConfig, group_memory_bytes, train_ensemble

    cfg, data = TrainConfig(steps=40, batch_size=256, width=128, depth=3), _data([1000] * 32, d=32)
    peak = _peak(lambda: train_ensemble(data, list(range(32)), config=cfg, device=CUDA))
    estimate = group_memory_bytes(32, 32, cfg) + sum(x.numel() * 4 for x in data)
    assert 0 < peak <= 2 * estimate, (peak, estimate)


@on_gpu
def test_a_group_that_does_not_fit_is_split_and_trains(tmp_path, caplog):
    """A real CUDA out of memory: the process capped at 3x the measured peak of one cell (whose
    activations, 8192 x 512 per layer, grow with the members), a group of 4 cells does not fit;
    the train task's splitting (``tasks.stages.train_splitting``) runs it as 2 + 2, each cell
    equal to its member of an unsplit run to 1e-4 (the ensemble test's bound)."""
    from dsclab.study import parse_spec
    from dsclab.studies.sample_complexity import KIND, data_name
    from dsclab.train import TrainResult
    from tasks.stages import FileCache, train_splitting

    spec = parse_spec({"name": "split", "d": [8], "n": [100, 200, 300, 400], "nfe": [4],
                       "train": {"steps": 3, "batch_size": 8192, "width": 512, "depth": 3, "device": CUDA}})
    cells, cache = spec.cells(), FileCache(str(tmp_path / "split.zarr"))
    prepared = {(8, 0): KIND.prepare(spec, (8, 0), cache)}
    assert prepared[(8, 0)] == data_name(spec, 8, 0) and cache.exists(prepared[(8, 0)])
    unsplit = KIND.train(spec, cells, cache, prepared, CUDA)
    one, sizes = _peak(lambda: KIND.train(spec, cells[:1], cache, prepared, CUDA)), []

    class Spy:
        def train(self, spec, group, cache, prepared, device):
            sizes.append(len(group))
            return KIND.train(spec, group, cache, prepared, device)

    lift = _capped(3 * one)
    try:
        with caplog.at_level(logging.WARNING, "test_gpu"):
            out = train_splitting(Spy(), spec, cells, cache, prepared, CUDA, logging.getLogger("test_gpu"))
    finally:
        lift()
    assert sizes == [4, 2, 2] and len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("out of memory training 4 cells together on cuda (")
    for c in cells:
        a, b = TrainResult.restore(out[c.key]), TrainResult.restore(unsplit[c.key])
        assert _max_diff(a.model, b.model) < 1e-4


@on_gpu
def test_a_cell_out_of_memory_alone_fails_with_its_reason_and_the_study_completes(study_run):
    """The process capped at 256 MiB of CUDA memory: the d = 256 cell's training needs over 512
    MiB by its estimate (32 steps of draws of 8192 x 256 values dominate), the d = 2 cell's under
    64 MiB. The study completes: d = 2 done, d = 256 failed with the reason 'out of memory:
    training: CUDA out of memory. ...' and no values."""
    import storage
    from dsclab.study import parse_spec
    from dsclab.train import TrainConfig, group_memory_bytes
    from flows.study import sample_complexity

    grid = {"name": "oom", "d": [2, 256], "n": [64], "nfe": [4], "sampler": ["euler_maruyama"],
            "train": {"steps": 3, "batch_size": 8192, "width": 64, "depth": 2, "device": CUDA},
            "evaluation": {"t": [0.5], "n_score": 100, "n_samples": 100, "n_nll": 50, "n_alpha": 4,
                           "logsnr": [0.0]}}
    spec = parse_spec(grid)
    cfg = TrainConfig.of(spec.train)
    assert group_memory_bytes(1, 2, cfg) < 64 * 2**20 and group_memory_bytes(1, 256, cfg) > 512 * 2**20
    run = study_run(sample_complexity, spec, "oom.zarr")
    lift = _capped(256 * 2**20)
    try:
        out = sample_complexity(spec=run.spec, store=run.path)
    finally:
        lift()
    assert out["cells"] == 2 and out["done"] == 1 and out["failed"] == 1
    st = storage.read_status(run.path)
    assert int(st.sel(d=2).item()) == Status.DONE and int(st.sel(d=256).item()) == Status.FAILED
    (idx, reason), = storage.failures(run.path)
    assert idx["d"] == 256 and reason.startswith("out of memory: training: CUDA out of memory."), reason
    ds = xr.open_zarr(run.path)
    assert np.isfinite(ds.score_l2.sel(d=2).values).all() and np.isnan(ds.score_l2.sel(d=256).values).all()


