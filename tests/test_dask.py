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
from dsclab.study import parse_spec
from dsclab.studies.sample_complexity import numerics as sc
from flows import runners
from flows.runners import RunnerSpec
from team_api import TERMINAL, deployment_run, flow_run_logs, held_slots, wait_flow_run

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


def _worker_facts():
    import os

    import torch

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), torch.get_num_threads()


def test_local_workers_keep_malloc_defaults_and_share_the_cores(monkeypatch):
    """The workers of a local cluster are spawned without Dask's MALLOC_TRIM_THRESHOLD_ (it made
    training 1.8x slower: flows.runners._keep_malloc_defaults), even when an earlier nanny left it
    in this process's environment, which is restored afterwards; each worker's PyTorch threads
    are the cores split between the workers' threads."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as a nanny leaves it in its process
    spec = RunnerSpec(kind="dask", n_workers=2, threads_per_worker=1)
    with runners.start(spec, workers=2) as run:
        facts = run.client.run(_worker_facts)
    assert len(facts) == 2
    assert set(facts.values()) == {(None, runners.local_torch_threads(spec))}
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"


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
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # heartbeats as dsclab's runs send them: the team server marks a run silent for 90 s Crashed
    with temporary_settings({PREFECT_API_URL: team["api"], PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        yield team["api"]


def test_gpu_tasks_never_overlap_on_a_worker(api, tmp_path):
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    from flows.study import sample_complexity

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
        out = sample_complexity(spec=spec.model_copy(update={"store": path}),
                                runner=RunnerSpec(kind="dask", address=cluster.scheduler_address))
        timelines = client.run(lambda dask_worker: dask_worker.plugins["test-timeline"].records)

    cells = spec.cells()
    assert isinstance(out.pop("report"), str)
    assert out == {"store": path, "cells": len(cells), "done": len(cells), "failed": 0, "computed": len(cells),
                   "plot": storage.plot_path(path)}
    ds = xr.open_zarr(path)
    assert (ds.status == storage.DONE).all()
    assert np.isfinite(ds.score_l2.values).all() and np.isfinite(ds.sliced_w2.values).all()

    recs = {k: r for tl in timelines.values() for k, r in tl.items()}
    gpu = {k: r for k, r in recs.items() if r["resources"] == {"GPU": 1}}
    # exactly the training tasks, one per batched group, carry the annotation
    groups = sum(len(sc.split_groups(spec, [c for c in cells if c.d == d])) for d in spec.d)
    assert groups >= 2 * len(spec.d)  # the memory bound split each d
    assert len(gpu) == groups, recs
    assert all(k.startswith("train-") for k in gpu), list(gpu)
    assert not any(k.startswith("train-") for k in recs.keys() - gpu.keys())
    # + prepare per (d, seed), evaluate per cell
    assert len(recs) == len(gpu) + len(spec.d) * len(spec.seed) + len(cells), list(recs)
    for w, tl in timelines.items():
        spans = sorted((r["start"], r["stop"]) for k, r in tl.items() if k in gpu)
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            assert s1 >= e0, f"GPU tasks overlap on {w}: {spans}"


def _training_probe(dask_worker):
    """On a worker: its pid and the key of the train task it is executing *and* that is
    inside the training loop (a thread's stack is in ``train_cells``, so past the Prefect ``gpu``
    slot), or None."""
    import os
    import sys
    import traceback

    executing = [str(k) for k, ts in dask_worker.state.tasks.items()
                 if ts.state == "executing" and str(k).startswith("train-")]
    in_training = any(f.name == "train_cells" for fr in sys._current_frames().values()
                      for f in traceback.extract_stack(fr))
    # GPU=1: at most one train task executes on a worker
    return {"pid": os.getpid(), "key": executing[0] if executing and in_training else None,
            "executing": executing}


def test_worker_killed_mid_task_is_retried_elsewhere(api, team, tmp_path):
    """A Dask worker process killed (SIGKILL) while it trains a group: the scheduler reruns that
    train task on another worker, the nanny restarts the killed one, and the study (the
    sample-complexity flow on a LocalCluster of 2 worker processes, reporting to the team server)
    completes: every cell done, none failed, finite values, the killed task's key completed on a
    worker other than the killed one, and the stored numbers equal those of the same study run
    serially on threads (each task is deterministic from its seeds, so a rerun changes nothing).

    Under Dask the training tasks hold no Prefect ``gpu`` slot (``flows.runners``: Dask's GPU
    resource guards them), so the dead task leaves no slot behind: its rerun and the other
    training tasks go on at once instead of waiting ~75 s for a Prefect lease to expire."""
    import signal
    import threading
    import time

    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    from flows.study import sample_complexity

    class Done(WorkerPlugin):
        """On each worker: the keys it finished executing (executing -> memory), with the time."""

        name = "test-done"

        def setup(self, worker):
            self.done = {}

        def transition(self, key, start, finish, **kwargs):
            import time

            if start == "executing" and finish == "memory":
                self.done[str(key)] = time.time()

    spec = parse_spec({**TINY, "name": "tiny-dask-kill"})
    path = str(tmp_path / "kill.zarr")
    kill: dict = {}
    stop = threading.Event()

    def killer(client):
        """Find a worker inside a training loop, check it still is 0.5 s later, SIGKILL it."""
        try:
            while not stop.is_set() and not kill:
                for addr, p in client.run(_training_probe).items():
                    if p["key"] is None:
                        continue
                    time.sleep(0.5)
                    again = client.run(_training_probe, workers=[addr])[addr]
                    if again["key"] == p["key"] and again["pid"] == p["pid"]:  # still mid-training
                        os.kill(p["pid"], signal.SIGKILL)
                        kill.update(addr=addr, pid=p["pid"], key=p["key"], t=time.time())
                    break
                time.sleep(0.1)
        except Exception as e:  # noqa: BLE001 - reported by the assertions below
            kill.setdefault("error", repr(e))

    t0, t_wall = time.perf_counter(), time.time()
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1},
                      dashboard_address=None, local_directory=str(tmp_path / "dask")) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.register_plugin(Done())
        before = set(client.scheduler_info()["workers"])
        watcher = threading.Thread(target=killer, args=(client,), daemon=True)
        watcher.start()
        try:
            state = sample_complexity(spec=spec.model_copy(update={"store": path}), return_state=True,
                                      runner=RunnerSpec(kind="dask", address=cluster.scheduler_address))
        finally:
            stop.set()
            watcher.join(30)
        t_flow = time.perf_counter() - t0
        out = state.result()
        assert "error" not in kill, kill
        assert kill, "no worker was ever caught inside a training loop: the kill did not happen"
        done = client.run(lambda dask_worker: (os.getpid(), dask_worker.plugins["test-done"].done))
        after = set(client.scheduler_info()["workers"])
        story = client.run_on_scheduler(lambda dask_scheduler, key=kill["key"]: [
            tuple(str(x) for x in t[:4]) for t in dask_scheduler.story(key)])
    finished_on = {w: (pid, d[kill["key"]]) for w, (pid, d) in done.items() if d.get(kill["key"], 0) > kill["t"]}
    print(f"\nkilled {kill} at {kill['t'] - t_wall:.1f} s; flow took {t_flow:.1f} s; workers before {before} "
          f"after {after}; the killed key finished on {finished_on} "
          f"{[round(t - kill['t'], 1) for _, t in finished_on.values()]} s after the kill\nstory {story}")

    cells = spec.cells()
    assert isinstance(out.pop("report"), str)
    assert out == {"store": path, "cells": len(cells), "done": len(cells), "failed": 0, "computed": len(cells),
                   "plot": storage.plot_path(path)}
    ds = xr.open_zarr(path)
    assert (ds.status == storage.DONE).all()
    for name in ("score_l2", "sliced_w2", "train_seconds", "train_loss"):
        assert np.isfinite(ds[name].values).all(), name

    # the killed worker was replaced (its nanny restarted it under a new address)
    assert kill["addr"] in before and kill["addr"] not in after and len(after) == 2
    # the scheduler saw the task lost with its worker, rescheduled it, and it then finished ...
    moves = [(start, finish) for key, start, finish, *_ in story if key == kill["key"]]
    assert ("processing", "released") in moves, moves
    lost = moves.index(("processing", "released"))
    assert ("waiting", "processing") in moves[lost:] and ("processing", "memory") in moves[lost:], moves
    # ... on another worker process than the killed one
    assert len(finished_on) == 1, (kill, done)
    assert kill["addr"] not in finished_on and kill["pid"] not in [pid for pid, _ in finished_on.values()]

    # the flow run's log says why it waited: the worker, and the training task Dask reruns
    fr = str(state.state_details.flow_run_id)
    logs = flow_run_logs(api, fr)
    lost_lines = [m for m in logs if f"Dask worker {kill['addr']} left the cluster" in m]
    assert len(lost_lines) == 1 and kill["key"] in lost_lines[0], logs
    # no concurrency slot is held, and a deployment run that follows starts at once
    assert held_slots(api) == {}
    t0 = time.perf_counter()
    follow = deployment_run(api, {"spec": {**TINY, "name": "tiny-dask-follow", "d": [2], "n": [60], "seed": [0],
                                           "store": str(team["tmp"] / "dask-follow.zarr")}})
    started = wait_flow_run(api, follow, 120, until={"RUNNING"} | TERMINAL)
    t_start = time.perf_counter() - t0
    final = wait_flow_run(api, follow, 120)
    print(f"following deployment run: Running {t_start:.1f} s after it was created, {final['state_type']} "
          f"{time.perf_counter() - t0:.1f} s after")
    # No slot of the killed worker holds it back: no "waiting for" line and no held slot (below).
    # The bound on its start is generous, the worker's polling and a flow-run process's start take
    # 3-11 s on 2 loaded cores (10.88 s failed a bound of 10 s), yet below the ~75 s a held slot lasts.
    assert started["state_type"] in {"RUNNING", "COMPLETED"} and t_start < 60, (started["state"], t_start)
    assert final["state_type"] == "COMPLETED", final["state"]
    assert not [m for m in flow_run_logs(api, follow) if m.startswith("waiting for")]
    assert held_slots(api) == {}

    # the same study run serially on threads gives the same numbers
    ref = str(tmp_path / "ref.zarr")
    sample_complexity(spec=spec.model_copy(update={"store": ref}))
    r = xr.open_zarr(ref)
    for name in ("score_l2", "sliced_w2", "train_loss"):
        np.testing.assert_array_equal(ds[name].values, r[name].values, err_msg=name)


def test_worker_config_file_unsets_malloc_trim():
    """deploy/dask/dsclab.yaml (DASK_CONFIG for `dask worker`) takes MALLOC_TRIM_THRESHOLD_ out of
    the nanny's environment for its workers and keeps Dask's other entries."""
    import dask
    from distributed.nanny import _get_env_variables

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy", "dask")
    assert "MALLOC_TRIM_THRESHOLD_" in _get_env_variables("distributed.nanny.pre-spawn-environ")
    cfg = dask.config.collect(paths=[root], env={})
    with dask.config.set(dask.config.merge(dask.config.config, cfg)):
        env = _get_env_variables("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" not in env and env["OMP_NUM_THREADS"] == "1"
