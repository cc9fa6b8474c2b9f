"""Dask scale-out: a tiny study on a LocalCluster of 2 worker processes, each declaring the
resource GPU=1 and running 2 threads, through the flow's ``runner`` parameter (an existing
scheduler address, as ``dask worker --resources GPU=1`` on a real cluster), reporting to the team
server of tests/prefect_team.py. Each worker's own clock (a worker plugin) gives the start/end of
every task: no two GPU-annotated (training) tasks overlap on one worker, although each worker
has two threads. Plus the runner selection helpers."""
import argparse
import os
import sys

import numpy as np
import pytest
import xarray as xr

import storage
from dsclab import sample_complexity as sc
from dsclab.spec import parse_spec
from flows import runners
from flows.runners import RunnerSpec

pytest_plugins = ["prefect_team"]

TINY = {
    "name": "tiny-dask", "d": [2, 3], "n": [60, 120], "seed": [0, 1], "nfe": [4],
    "sampler": ["euler_maruyama"],
    "train": {"steps": 100, "width": 32, "depth": 2},
    "evaluation": {"t": [0.05, 0.5], "n_score": 200, "n_samples": 100},
    "workers": 2,
    "group_memory_mb": 1,  # small batched-training groups: several GPU tasks per worker
}


def test_runner_spec_and_flags():
    assert RunnerSpec().kind == "threads"
    assert RunnerSpec(kind="dask", address="  ").address is None  # an empty UI field
    with pytest.raises(ValueError, match="address is for kind 'dask'"):
        RunnerSpec(kind="threads", address="tcp://h:8786")

    ns = argparse.Namespace
    assert runners.runner_from_args(ns(runner=None, dask_address=None, dask_workers=None)) is None
    assert runners.runner_from_args(ns(runner="dask", dask_address=None, dask_workers=3)) == \
        RunnerSpec(kind="dask", n_workers=3)
    assert runners.runner_from_args(ns(runner=None, dask_address="tcp://h:8786", dask_workers=None)) == \
        RunnerSpec(kind="dask", address="tcp://h:8786")
    with pytest.raises(ValueError, match="need --runner dask"):
        runners.runner_from_args(ns(runner="threads", dask_address="tcp://h:8786", dask_workers=None))

    p = argparse.ArgumentParser()
    runners.add_runner_args(p)
    assert runners.runner_from_args(p.parse_args(["--dask-workers", "2"])) == RunnerSpec(kind="dask", n_workers=2)


def test_task_device_follows_the_worker_environment(monkeypatch):
    monkeypatch.setenv("DSCLAB_DEVICE", "cpu")
    assert runners.task_device("auto") == "cpu"
    assert runners.task_device("cpu") == "cpu"
    monkeypatch.delenv("DSCLAB_DEVICE")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible -> the CPU
    import torch

    assert runners.task_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_preimport_ignores_a_shadowing_folder(tmp_path, monkeypatch):
    """A Dask worker's scratch folder (first on sys.path) holds a 'storage' directory."""
    (tmp_path / "storage").mkdir()
    # As on a worker: the scratch folder first, the repository root not on sys.path (the package
    # is found through the editable install's import hook, consulted after the path search).
    real = [p for p in sys.path if not os.path.exists(os.path.join(p or ".", "storage", "__init__.py"))]
    monkeypatch.setattr(sys, "path", [str(tmp_path), *real])
    saved = {k: v for k, v in sys.modules.items() if k == "storage" or k.startswith("storage.")}
    for k in saved:
        del sys.modules[k]
    try:
        import importlib

        shadow = importlib.import_module("storage")  # what a worker would get
        if getattr(shadow, "__file__", None) is not None:
            pytest.skip("storage is not installed through an import hook here: no shadowing to undo")
        runners.preimport_packages()
        assert hasattr(sys.modules["storage"], "write_cell")
    finally:
        for k in [k for k in sys.modules if k == "storage" or k.startswith("storage.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture
def api(team):
    """Report to the team server of tests/prefect_team.py (saves starting a test server)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: team["api"]}):
        yield team["api"]


def test_gpu_tasks_never_overlap_on_a_worker(api, tmp_path):
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    from flows.sample_complexity import sample_complexity

    class Timeline(WorkerPlugin):
        """On each worker, its own clock: when each task starts executing (it holds its resources
        from then) and stops (they are released), and the task's resource restrictions."""

        name = "test-timeline"

        def setup(self, worker):
            self.worker, self.records = worker, {}

        def transition(self, key, start, finish, **kwargs):
            import time

            if finish == "executing":
                ts = self.worker.state.tasks[key]
                self.records[str(key)] = {"start": time.time(), "resources": dict(ts.resource_restrictions or {})}
            elif start == "executing":
                self.records.setdefault(str(key), {"resources": {}})["stop"] = time.time()

    spec = parse_spec(TINY)
    path = str(tmp_path / "tiny.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1},
                      dashboard_address=None, local_directory=str(tmp_path / "dask")) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.register_plugin(Timeline())
        out = sample_complexity(spec=spec, store=path, runner=RunnerSpec(kind="dask", address=cluster.scheduler_address))
        timelines = client.run(lambda dask_worker: dask_worker.plugins["test-timeline"].records)

    cells = spec.cells()
    assert out == {"store": path, "cells": len(cells), "done": len(cells), "failed": 0, "computed": len(cells)}
    ds = xr.open_zarr(path)
    assert (ds.status == storage.DONE).all()
    assert np.isfinite(ds.score_l2.values).all() and np.isfinite(ds.sliced_w2.values).all()

    recs = {k: r for tl in timelines.values() for k, r in tl.items()}
    gpu = {k: r for k, r in recs.items() if r["resources"] == {"GPU": 1}}
    # exactly the training tasks, one per batched group, carry the annotation
    groups = sum(len(sc.split_groups(spec, [c for c in cells if c.d == d])) for d in spec.d)
    assert groups >= 2 * len(spec.d)  # the memory bound split each d
    assert len(gpu) == groups, recs
    assert all(k.startswith("train_group") for k in gpu), list(gpu)
    assert not any(k.startswith("train_group") for k in recs.keys() - gpu.keys())
    # + generate-data per (d, seed), evaluate-cell per cell
    assert len(recs) == len(gpu) + len(spec.d) * len(spec.seed) + len(cells), list(recs)
    for w, tl in timelines.items():
        spans = sorted((r["start"], r["stop"]) for k, r in tl.items() if k in gpu)
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s1 >= e0, f"GPU tasks overlap on {w}: {spans}"
