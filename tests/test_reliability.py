"""Reliability: concurrent writers; cells that fail (numerically, or out of memory after their group
was split) while the rest complete; errors that are not numerical fail the run; the device check's
plumbing (issues 8, 16, 20)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

import storage
from dsclab import cli
from dsclab.study import parse_spec
from dsclab.studies.sample_complexity import layout as sc_layout
from dsclab.studies.sample_complexity import numerics as sc

GRID = {"name": "conc", "d": [2, 3], "n": [10, 20, 30, 40], "seed": [0, 1], "nfe": [5],
        "evaluation": {"t": [0.1, 1.0], "delta": [0.1]}}

WRITER = textwrap.dedent("""
    import sys, numpy as np, xarray as xr
    import storage
    from dsclab.study import parse_spec
    import yaml
    spec = parse_spec(yaml.safe_load(open(sys.argv[1])))
    path, part, parts = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for i, c in enumerate(spec.cells()):
        if i % parts != part:
            continue
        v = float(c.d * 1000 + c.n * 10 + c.seed)
        vals = xr.Dataset({"score_l2": (("t",), [v, v + 0.5]), "train_seconds": ((), v)}, coords={"t": [0.1, 1.0]})
        idx = {"d": c.d, "n": c.n, "seed": c.seed, "estimator": c.estimator}
        storage.write_cell(path, vals, idx)
        storage.mark_cells(path, [idx], storage.DONE)
""")


def test_four_concurrent_writers_lose_nothing(tmp_path):
    """4 processes write disjoint cells of one store at once; the result equals a serial run."""
    spec = parse_spec(GRID)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(GRID))
    (tmp_path / "writer.py").write_text(WRITER)
    stores = {}
    for mode in ("serial", "concurrent"):
        path = str(tmp_path / f"{mode}.zarr")
        storage.create_or_open(path, sc_layout.template(spec), sc_layout.CELL_DIMS)
        args = lambda part, parts: [sys.executable, str(tmp_path / "writer.py"), str(tmp_path / "spec.yaml"),
                                    path, str(part), str(parts)]
        if mode == "serial":
            subprocess.run(args(0, 1), check=True)
        else:
            procs = [subprocess.Popen(args(k, 4)) for k in range(4)]
            assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
        stores[mode] = xr.open_zarr(path, consolidated=False).load()
    xr.testing.assert_identical(stores["serial"], stores["concurrent"])
    ds = stores["concurrent"]
    assert int((ds.status == storage.DONE).sum()) == len(spec.cells()) == 16
    want = ds.d * 1000 + ds.n * 10 + ds.seed
    np.testing.assert_array_equal(ds.train_seconds.isel(estimator=0).values, want.transpose("d", "n", "seed").values)


TINY = {"name": "fail", "d": [2], "n": [40, 80, 160], "seed": [0], "nfe": [4],
        "sampler": ["euler_maruyama"], "train": {"steps": 60, "width": 16, "depth": 2},
        "evaluation": {"t": [0.1, 1.0], "n_score": 100, "n_samples": 100}}


def test_failed_cells_marked_others_complete_rerun_retries_only_them(harness, tmp_path, monkeypatch, capsys):
    """Training of n=80 diverges and sampling of n=160 blows up: both are marked failed, n=40
    completes, `dsclab run` exits 3 and `dsclab status` shows them; a rerun computes exactly the
    two failed cells."""
    import dsclab.train as train_mod

    real_ensemble, real_evaluate = train_mod.train_ensemble, sc.evaluate

    def diverging(datasets, seeds, **kw):
        out = real_ensemble(datasets, seeds, **kw)
        return [None if x.shape[0] == 80 else r for x, r in zip(datasets, out)]  # as a NaN loss would

    def exploding(spec, cell, score_hat, result=None):
        if cell.n == 160:
            raise FloatingPointError("sampler euler_maruyama at nfe=4 produced non-finite samples")
        return real_evaluate(spec, cell, score_hat, result)

    monkeypatch.setattr(train_mod, "train_ensemble", diverging)
    monkeypatch.setattr(sc, "evaluate", exploding)
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(TINY))
    store = str(tmp_path / "fail.zarr")
    assert cli.main(["run", str(f), "--store", store]) == 3
    st = storage.read_status(store).sel(d=2, seed=0, estimator="dsm")
    assert [int(v) for v in st.values] == [storage.DONE, storage.FAILED, storage.FAILED]
    capsys.readouterr()
    assert cli.main(["status", store]) == 0
    out = capsys.readouterr().out
    assert "failed 2" in out
    reasons = dict((idx["n"], r) for idx, r in storage.failures(store))
    assert reasons == {80: "training diverged: the loss became NaN or infinite",
                       160: "evaluation: FloatingPointError: sampler euler_maruyama at nfe=4 produced non-finite samples"}
    ds = xr.open_zarr(store)
    assert ds.failure.sel(d=2, seed=0, estimator="dsm", n=40).values.item() == ""
    for n, r in reasons.items():
        assert f"d=2 n={n} seed=0 estimator=dsm: {r}" in out

    monkeypatch.setattr(train_mod, "train_ensemble", real_ensemble)
    monkeypatch.setattr(sc, "evaluate", real_evaluate)
    from flows.study import sample_complexity

    out = sample_complexity(spec=parse_spec(TINY), store=store)
    assert out["computed"] == 2 and out["done"] == 3 and out["failed"] == 0
    assert (storage.read_status(store) == storage.DONE).all()
    assert storage.failures(store) == [] and (xr.open_zarr(store).failure == "").all()  # reasons cleared


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_study_on_a_url_store(harness, tmp_path, scheme):
    """The whole flow on an fsspec URL store: ``file://`` (an absolute local path as a URL) and
    ``memory://`` (fsspec's in-process filesystem; the flow's tasks run in threads of this process).
    Every cell is done, checkpoints lie in ``<name>.files`` under the same URL scheme, and a rerun
    computes nothing."""
    import fsspec

    from flows.study import sample_complexity

    spec = parse_spec({**TINY, "name": f"url-{scheme}", "n": [40, 80]})
    url = f"file://{tmp_path}/s.zarr" if scheme == "file" else f"memory://dsclab-{tmp_path.name}/s.zarr"
    out = sample_complexity(spec=spec, store=url)
    assert isinstance(out.pop("report"), str)  # the report artifact's text
    assert out == {"store": url, "cells": 2, "done": 2, "failed": 0, "computed": 2,
                   "plot": None}  # a URL store: the figure is drawn only for local stores
    ds = xr.open_zarr(url)
    assert (ds.status == storage.DONE).all() and np.isfinite(ds.score_l2.values).all()
    fs, root = fsspec.core.url_to_fs(storage.files_url(url))
    assert len(fs.glob(f"{root}/checkpoints/*.pt")) == 2
    if scheme == "file":
        assert (tmp_path / "s.zarr" / "status").is_dir()  # really on the local disk
    assert sample_complexity(spec=spec, store=url)["computed"] == 0
    from storage.check import check_store

    assert check_store(url) == []  # `dsclab check` reads URL stores too


def test_a_non_numerical_error_fails_the_run_and_leaves_its_cell_pending(harness, tmp_path, monkeypatch, capsys):
    """A bug-like exception (here a KeyError) in one cell's evaluation is not a numerical failure:
    the cell is neither marked failed nor given NaN values, it stays pending; the other cell
    completes; `dsclab run` ends with exit 1 and a last line naming the error; once the bug is
    gone a rerun computes exactly that cell."""
    real = sc.evaluate

    def buggy(spec, cell, score_hat, result=None):
        if cell.n == 80:
            raise KeyError("no variable 'x' (a shape bug)")
        return real(spec, cell, score_hat, result)

    monkeypatch.setattr(sc, "evaluate", buggy)
    grid = {**TINY, "name": "bug", "n": [40, 80]}
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(grid))
    store = str(tmp_path / "bug.zarr")
    capsys.readouterr()
    assert cli.main(["run", str(f), "--store", store]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dsclab: error: 1 task(s) of study 'bug' raised errors that are not numerical") and \
        "KeyError" in last, last
    st = storage.read_status(store).sel(d=2, seed=0, estimator="dsm")
    assert [int(v) for v in st.values] == [storage.DONE, storage.PENDING]
    assert storage.failures(store) == []
    assert np.isnan(xr.open_zarr(store).score_l2.sel(n=80).values).all()

    monkeypatch.setattr(sc, "evaluate", real)
    from flows.study import sample_complexity

    out = sample_complexity(spec=parse_spec(grid), store=store)
    assert out["computed"] == 1 and out["done"] == 2 and out["failed"] == 0


# ------------------------------------------------------------------------------------------
# Out of memory (issue 20): a group is split in halves before any cell fails
# ------------------------------------------------------------------------------------------

OOM_GRID = {**TINY, "name": "oom", "n": [40, 80, 160, 320],  # one d: one group of 4 cells
            "train": {**TINY["train"], "device": "cpu"}}     # the CPU here, on a GPU machine too
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"

# Split into halves (down to one cell), the 4 members of the one group train as ensembles of 1
# instead of one ensemble of 4: each member sees the same initialisation and draws, and the two
# differ only in the float32 summation order of the batched matmuls (tests/test_train.py bounds
# the parameters' difference by 1e-4 after 40 steps). Evaluation (samplers, metrics, the I-MMSE
# likelihood) carries such a difference through without amplifying it: measured on 2 Xeon cores,
# the largest relative difference over every value of the store is 8e-8 (score_quantile), and
# the values that do not depend on training (mmd_floor, nll_exact) are identical.
RTOL_SPLIT = 1e-4


def _oom_study(tmp_path, name: str, monkeypatch=None, train_oom=None, eval_oom=None):
    """The 4-cell study through its flow, the kind's train stage raising torch.OutOfMemoryError
    when ``train_oom(cells)`` and its evaluation when ``eval_oom(cell)``; returns (the flow's
    result, the sizes of the train calls, the store, the tasks' warnings)."""
    import logging

    import torch

    from dsclab.study import KINDS
    from flows.study import sample_complexity

    kind, sizes = KINDS["sample_complexity"], []
    real_train, real_evaluate = type(kind).train, sc.evaluate
    if train_oom is not None:
        def train(spec, cells, cache, prepared, device):
            sizes.append(len(cells))
            if train_oom(cells):
                raise torch.OutOfMemoryError(OOM)
            return real_train(kind, spec, cells, cache, prepared, device)

        monkeypatch.setattr(kind, "train", train)
    if eval_oom is not None:
        def evaluate(spec, cell, score_hat, result=None):
            if eval_oom(cell):
                raise torch.OutOfMemoryError(OOM)
            return real_evaluate(spec, cell, score_hat, result)

        monkeypatch.setattr(sc, "evaluate", evaluate)
    store = str(tmp_path / f"{name}.zarr")
    warnings, handler = [], logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("prefect.task_runs").addHandler(handler)  # prefect's loggers do not propagate
    try:
        out = sample_complexity(spec=parse_spec(OOM_GRID), store=store)
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(handler)
        if monkeypatch is not None:
            monkeypatch.undo()
    return out, sizes, store, warnings


def _values(store: str, n=None) -> xr.Dataset:
    ds = xr.open_zarr(store).load()
    ds = ds.drop_vars([v for v in ds.data_vars if "seconds" in v or v in ("status", "failure")])
    return ds if n is None else ds.sel(n=n)


def _assert_close(a: xr.Dataset, b: xr.Dataset, rtol: float) -> None:
    """Every value of a within rtol of b (floats; NaN exactly where b is NaN), others equal."""
    for v in b.data_vars:
        x, y = a[v].values, b[v].values
        if y.dtype.kind != "f":
            np.testing.assert_array_equal(x, y)
            continue
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        ok = ~np.isnan(y)
        np.testing.assert_allclose(x[ok], y[ok], rtol=rtol, atol=0, err_msg=v)


@pytest.fixture(scope="module")
def oom_reference(harness, tmp_path_factory):
    """The 4-cell study without any out of memory (one batched group of 4)."""
    out, _, store, _ = _oom_study(tmp_path_factory.mktemp("oom-ref"), "reference")
    assert out["done"] == 4 and out["failed"] == 0
    return _values(store)


def test_out_of_memory_splits_the_group_down_to_single_cells(harness, tmp_path, monkeypatch, oom_reference):
    """Training more than one cell at once runs out of memory: the train task splits the group
    4 -> 2 + 2 -> 1 + 1 + 1 + 1, every cell ends done, and the store equals the unsplit run's
    within RTOL_SPLIT."""
    out, sizes, store, warnings = _oom_study(tmp_path, "split", monkeypatch, train_oom=lambda cells: len(cells) > 1)
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    assert [w for w in warnings if w.startswith("out of memory")] == [
        f"out of memory training {m} cells together on cpu ({OOM}); retrying as {h} + {h} cells"
        for m, h in ((4, 2), (2, 1), (2, 1))]
    assert isinstance(out.pop("report"), str)
    assert out == {"store": store, "cells": 4, "done": 4, "failed": 0, "computed": 4, "plot": storage.plot_path(store)}
    assert (storage.read_status(store) == storage.DONE).all() and storage.failures(store) == []
    _assert_close(_values(store), oom_reference, RTOL_SPLIT)
    xr.testing.assert_identical(_values(store)[["mmd_floor", "nll_exact"]], oom_reference[["mmd_floor", "nll_exact"]])


def test_a_cell_out_of_memory_alone_fails_with_its_reason_and_the_rest_completes(harness, tmp_path, monkeypatch,
                                                                                   oom_reference, capsys):
    """Training n=80 runs out of memory even alone (the group splits 4 -> 2 + 2 -> 1 + 1 around
    it), evaluating n=160 runs out of memory: both are marked failed with the reason 'out of
    memory: <stage>: <message>' (no NaN written as values), n=40 and n=320 are done with the
    unsplit run's numbers; `dsclab status` lists the reasons, and a rerun without the fault
    computes exactly the two failed cells."""
    out, sizes, store, _ = _oom_study(tmp_path, "alone", monkeypatch,
                                   train_oom=lambda cells: any(c.n == 80 for c in cells),
                                   eval_oom=lambda cell: cell.n == 160)
    assert sizes == [4, 2, 1, 1, 2]
    assert out["done"] == 2 and out["failed"] == 2
    st = storage.read_status(store).sel(d=2, seed=0, estimator="dsm")
    assert [int(v) for v in st.values] == [storage.DONE, storage.FAILED, storage.FAILED, storage.DONE]
    reasons = dict((idx["n"], r) for idx, r in storage.failures(store))
    assert reasons == {80: f"out of memory: training: {OOM}", 160: f"out of memory: evaluation: {OOM}"}
    _assert_close(_values(store, [40, 320]), oom_reference.sel(n=[40, 320]), RTOL_SPLIT)
    assert np.isnan(_values(store, [80, 160]).score_l2.values).all()  # nothing written for them
    capsys.readouterr()
    assert cli.main(["status", store]) == 0
    listing = capsys.readouterr().out
    assert "failed 2" in listing and f"n=80 seed=0 estimator=dsm: out of memory: training: {OOM}" in listing

    from flows.study import sample_complexity

    again = sample_complexity(spec=parse_spec(OOM_GRID), store=store)
    assert again["computed"] == 2 and again["done"] == 4 and again["failed"] == 0
    assert storage.failures(store) == []
    _assert_close(_values(store), oom_reference, RTOL_SPLIT)


# ------------------------------------------------------------------------------------------
# The device check (benchmarks/gpu_check.py, issue 20) where there is no GPU
# ------------------------------------------------------------------------------------------

GPU_CHECK = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_refuses_without_cuda_in_one_line(tmp_path):
    """Without an OUT_DIR it is a usage error (exit 2); without CUDA it says so in one line and
    exits 2 with nothing run or written."""
    usage = subprocess.run([sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=600)
    assert usage.returncode == 2 and "the following arguments are required: out" in usage.stderr
    out = tmp_path / "x"
    run = subprocess.run([sys.executable, str(GPU_CHECK), str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("gpu_check: no CUDA device visible"), run.stderr
    assert not out.exists()


def test_gpu_check_times_out_a_step_and_goes_on(tmp_path):
    """A command past its timeout is killed with its process group and recorded as a timeout; the
    exit code and wall time of a quick one are recorded; its output is in the log."""
    gc = _gpu_check()
    slow = gc.run_command([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                          tmp_path / "slow.log", timeout=2)
    # killed at its 2 s timeout, not at the end of its 60 s sleep: a generous bound (interpreter start
    # and the kill take seconds on a loaded machine) that still tells the two apart
    assert slow["status"] == "timeout" and 2 <= slow["wall_s"] < 45 and slow["timeout_s"] == 2
    assert "started" in (tmp_path / "slow.log").read_text()
    bad = gc.run_command([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "bad.log", timeout=60)
    assert bad["status"] == "failed" and bad["returncode"] == 3 and bad["log"] == "bad.log"


def test_gpu_check_writes_its_record_with_the_steps_mocked(tmp_path):
    """The check with its steps mocked: each step's status and figures in the JSON record, the
    ratios computed from them (batched / textbook cells per hour from the throughput record; 65 s
    over the quick study's wall time; its training cells per hour over the CPU's 7,956), a step
    that raises recorded as failed, and a step left too little of the budget skipped."""
    gc = _gpu_check()
    seen = {}

    def throughput(out, timeout):
        seen["throughput"] = timeout
        return {"status": "passed", "wall_s": 50.0, "utilisation": {"mean_percent": 71.5},
                "record": {"cells": 45, "textbook_cells_per_hour": 1000.0, "batched_cells_per_hour": 25000.0,
                           "speedup_over_textbook": 25.0, "speedup_flow_like_over_textbook": 30.0, "speedup": 9.0}}

    def quick(out, timeout):
        seen["quick"] = timeout
        return {"status": "passed", "wall_s": 13.0, "cells_done": 45, "train_seconds_sum": 2.0}

    def broken(out, timeout):  # uses up the budget, then breaks
        time.sleep(2.7)
        raise RuntimeError("no such study")

    steps = [("throughput", throughput, 1.0, 0.1), ("quick", quick, 1.0, 0.1), ("spike", broken, None, 0.1),
             ("late", broken, None, 0.5)]
    lines = []
    rec = gc.check(tmp_path / "out", steps=steps, budget=3.0, info=lambda: {"name": "Fake GPU", "torch": "x"},
                   echo=lines.append, margin=0)
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(rec, default=str))
    assert saved["device"] == {"name": "Fake GPU", "torch": "x"} and saved["budget_s"] == 3.0
    assert seen == {"throughput": 1.0, "quick": 1.0}  # their caps: the budget had room
    st = saved["steps"]
    assert [st[k]["status"] for k in ("throughput", "quick", "spike", "late")] == ["passed", "passed", "failed", "skipped"]
    assert st["spike"]["error"] == "RuntimeError: no such study" and "needs 0.5 s" in st["late"]["reason"]
    r = saved["ratios"]
    assert r["batched_over_textbook"] == 25.0 and r["batched_over_textbook_target_met"] is True
    assert r["quick_study_speedup"] == round(65.0 / 13.0, 2)
    assert r["quick_training_cells_per_hour"] == round(3600 * 45 / 2.0)
    assert r["quick_training_speedup"] == round(3600 * 45 / 2.0 / 7956, 2) and r["quick_training_speedup_target_met"]
    assert lines[0].startswith("device: Fake GPU") and lines[-1] == f"record: {tmp_path / 'out' / 'gpu_check.json'}"
    empty = gc.ratios({"throughput": {"status": "timeout"}, "quick": {"status": "timeout", "wall_s": 90}})
    assert empty["batched_over_textbook"] is None and empty["quick_study_speedup"] is None
    assert empty["batched_over_textbook_target_met"] is None
