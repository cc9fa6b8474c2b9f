"""No GPU guard can leak (issue 21). Training tasks never take a Prefect concurrency slot (they
are submitted without tags): under threads they hold their device's lock on the machine
(flows.gpu_lock), which the kernel frees the moment the holder dies, and log a line when they
wait; under Dask the resource GPU=1 guards them (tests/test_dask.py kills a worker
mid-training). ``dsclab run`` without PREFECT_API_URL uses a temporary server with a database of
its own, so runs of it on a Dask cluster whose workers report to the team server, and a
team-server run on that cluster after them, all complete.

The team server is tests/prefect_team.py's (one per session); the Dask cluster here (a ``dask
scheduler`` and two ``dask worker`` processes, as in the README) one per module."""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

import storage
from dsclab.study import parse_spec
from flows import gpu_lock
from flows import server as srv
from team_api import flow_run_logs, held_slots, task_runs

pytest_plugins = ["prefect_team"]

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "slots", "d": [2, 3], "n": [40], "seed": [0], "nfe": [4], "sampler": ["euler_maruyama"],
        "train": {"steps": 150, "width": 16, "depth": 2},
        "evaluation": {"t": [0.1], "n_score": 100, "n_samples": 100},
        "workers": 2}  # a training group per d: two training tasks at once to guard


class Lines:
    """A logger that keeps its lines."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, fmt, *args):
        self.lines.append(fmt % args)


def test_a_killed_holder_frees_the_lock_at_once(tmp_path, monkeypatch):
    """A process holding a device's lock is SIGKILLed: the task waiting for it (which logged the
    holder's name and pid) gets it within a second, with a line saying how long it waited."""
    monkeypatch.setenv("DSCLAB_GPU_LOCK_DIR", str(tmp_path))
    code = ("import time; from flows import gpu_lock; cm = gpu_lock.hold('cuda-test', 'holder X'); cm.__enter__(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == "held"
        log, got = Lines(), {}

        def wait():
            with gpu_lock.hold("cuda-test", "waiter", log) as waited:
                got.update(t=time.monotonic(), waited=waited)

        t = threading.Thread(target=wait, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while not log.lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.lines and "holder X" in log.lines[0] and f"pid {holder.pid}" in log.lines[0], log.lines
        time.sleep(0.5)
        assert not got, "the lock was taken while its holder lived"
        t_kill = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        t.join(30)
        # the kernel drops the dead process's lock as it closes its files (well under a second when
        # idle); the bound is generous for a loaded machine (a thread of this process has to be
        # scheduled) and still far below the 60 s lease a Prefect slot would hold
        assert got and got["t"] - t_kill < 15.0, got
        assert log.lines[-1].startswith("got cuda-test after waiting"), log.lines
    finally:
        holder.kill()
        holder.wait()


def _recording_reads(monkeypatch) -> list[str]:
    """Every read of a lock file's holder line by a waiter, in order."""
    reads, read = [], gpu_lock._holder
    monkeypatch.setattr(gpu_lock, "_holder", lambda fd: reads.append(read(fd)) or reads[-1])
    monkeypatch.setattr(gpu_lock, "NAMING_SECONDS", 120.0)  # whatever the load, the holder below decides
    return reads


def _until(cond, what):
    deadline = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.parametrize("names_itself", [True, False])
def test_a_waiter_gives_a_new_holder_time_to_name_itself(tmp_path, monkeypatch, names_itself):
    """A holder caught between taking the lock and writing its name (a thread paused there on a
    loaded machine: CI once logged "held by an unnamed holder"): the waiter reads again until the
    name is there and logs it; if the lock comes free first, the waiter takes it and logs nothing.
    A clean release leaves the file naming nobody."""
    monkeypatch.setenv("DSCLAB_GPU_LOCK_DIR", str(tmp_path))
    reads, log, got = _recording_reads(monkeypatch), Lines(), []
    path = tmp_path / "cuda-test.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # taken, not yet named

    def wait():
        with gpu_lock.hold("cuda-test", "waiter", log):
            got.append(path.read_text())

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    try:
        _until(lambda: "" in reads, "the waiter never read the lock file")
        assert not log.lines and not got
        if names_itself:
            os.pwrite(fd, b"holder Y (pid 1 on here)\n", 0)
            _until(lambda: log.lines, "the waiter never logged")
            assert log.lines == [f"waiting for cuda-test (lock {path}): held by holder Y (pid 1 on here)"]
            assert not got
    finally:
        os.close(fd)
    t.join(60)
    assert got and got[0].startswith(f"waiter (pid {os.getpid()} on "), got
    assert len(log.lines) == (2 if names_itself else 0), log.lines
    assert path.read_text() == ""


def test_no_lock_on_the_cpu():
    assert gpu_lock.device_key("cpu") is None


@pytest.fixture
def api(team):
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # heartbeats as dsclab's runs send them: the team server marks a run silent for 90 s Crashed
    with temporary_settings({PREFECT_API_URL: team["api"], PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        yield team["api"]


def test_threads_hold_the_device_lock_not_a_prefect_slot(api, tmp_path, monkeypatch):
    """Under threads, the training tasks of one flow run (two at once: two threads) take turns on
    the device's lock (here the CPU made to count as a device), the second logging whom it waits
    for; none carries a Prefect tag (so none asks the server for a concurrency slot), and no slot
    is held after. The first holder keeps the lock until the second has read its name, so that the
    two overlap however the machine's load staggers their starts."""
    from flows.study import sample_complexity

    monkeypatch.setenv("DSCLAB_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(gpu_lock, "device_key", lambda device: "test-device")
    found_held, name_or_take, hold = threading.Event(), gpu_lock._name_or_take, gpu_lock.hold

    def noting(fd):
        name = name_or_take(fd)  # read while the first still holds the lock: it waits for this
        found_held.set()
        return name

    @contextlib.contextmanager
    def hold_until_found_held(*args, **kwargs):
        with hold(*args, **kwargs) as waited:
            found_held.wait(120)
            yield waited

    monkeypatch.setattr(gpu_lock, "_name_or_take", noting)
    monkeypatch.setattr(gpu_lock, "hold", hold_until_found_held)
    spec = parse_spec({**TINY, "store": str(tmp_path / "s.zarr")})
    state = sample_complexity(spec=spec, return_state=True)
    assert state.is_completed(), state
    fr = str(state.state_details.flow_run_id)
    trains = sorted((t["start_time"], t["end_time"], t["tags"]) for t in task_runs(api, fr)
                    if t["name"].startswith("train"))
    assert len(trains) == len(spec.cells()) == 2
    assert all(tags == [] for *_, tags in trains), trains
    logs = flow_run_logs(api, fr)
    waits = [m for m in logs if m.startswith("waiting for test-device")]
    assert len(waits) == 1 and "held by task run train" in waits[0], logs
    got = [m for m in logs if m.startswith("got test-device after waiting")]
    assert len(got) == 1 and float(got[0].split()[-2]) > 0, logs  # the second trained after the first
    assert held_slots(api) == {}


# Acceptance: `dsclab run` without PREFECT_API_URL twice on one Dask cluster, then a team run ---------

@pytest.fixture(scope="module")
def dask_cluster(team, tmp_path_factory):
    """A ``dask scheduler`` on 127.0.0.1 and two ``dask worker`` processes declaring GPU=1, whose
    environment names the team server (PREFECT_API_URL), as on the README's worker machines."""
    tmp = tmp_path_factory.mktemp("dask")
    sched_file = tmp / "scheduler.json"
    env = srv.base_env(team["api"], DASK_CONFIG=str(ROOT / "deploy" / "dask"), OMP_NUM_THREADS="1")
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    group = srv.Group()
    log = (tmp / "dask.log").open("w")
    try:
        group.start("dask scheduler", [*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                       "--scheduler-file", str(sched_file)], env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, (tmp / "dask.log").read_text()
            time.sleep(0.2)
        group.start("dask workers", [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                     str(sched_file), "--nworkers", "2", "--nthreads", "2", "--resources", "GPU=1",
                                     "--no-dashboard", "--local-directory", str(tmp / "work")],
                    env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp))
        from distributed import Client

        with Client(scheduler_file=str(sched_file), timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
            address = c.scheduler.address
        yield address
    finally:
        group.stop(grace=10)
        log.close()


def test_temporary_server_runs_then_a_team_run_on_one_dask_cluster(team, dask_cluster, tmp_path):
    api = team["api"]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**TINY, "name": "slots-dask"}))
    env = srv.base_env(None, PREFECT_HOME=str(tmp_path / "home"))  # the team's server is not named
    env.pop("PREFECT_API_URL", None)
    times = []
    for k in range(2):
        store = str(tmp_path / f"run{k}.zarr")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "dsclab.cli", "run", str(spec_file), "--store", store,
                              "--dask-address", dask_cluster], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
        times.append(time.perf_counter() - t0)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert (xr.open_zarr(store).status == storage.DONE).all()
    # the team-server run: `dsclab run` naming the team server (a deployment run with a Dask
    # runner fails apart, see the report of issue 21: the flow loaded from its entrypoint pickles
    # as module `study`, which the scheduler cannot import)
    store = str(team["tmp"] / "slots-dask-team.zarr")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dsclab.cli", "run", str(spec_file), "--store", store,
                          "--dask-address", dask_cluster], cwd=ROOT, env=env | {"PREFECT_API_URL": api},
                         capture_output=True, text=True, timeout=600)
    times.append(time.perf_counter() - t0)
    print(f"\ntwo `dsclab run` without an API and a team run on one Dask cluster: "
          f"{', '.join(f'{t:.1f}' for t in times)} s")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (xr.open_zarr(store).status == storage.DONE).all()
    assert held_slots(api) == {}
