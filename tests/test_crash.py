"""A flow run whose process dies is marked Crashed by the team server (issue 29): ``dsclab
server`` creates an automation on Prefect's flow-run heartbeats (``flows.server.crash_automation``:
a run silent for 90 s that did not end is moved to Crashed), the deployments' runs beat every 30 s.
Here the worker of a running deployment run is killed with ``kill -9``, with every process below
it (the flow run's too): the run leaves Running within the bound, and a rerun of the same spec on
a new worker resumes from the store and ends with a store equal, value for value, to an
uninterrupted run's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import xarray as xr

import storage
from flows import server as srv
from team_api import deployment_run, flow_run_logs, wait_flow_run
from test_postgres import ROOT, team_on

SPEC = {"d": [2, 3], "n": [40, 80], "seed": [0], "nfe": [4], "sampler": ["euler_maruyama"],
        "train": {"steps": 600, "width": 32, "depth": 2},
        "evaluation": {"t": [0.1, 1.0], "n_score": 100, "n_samples": 100},
        "workers": 1, "group_memory_mb": 1}  # one cell per group: the kill comes after a first training
TIMINGS = ["train_seconds", "eval_seconds"]
BOUND = 180  # s from the kill: 90 s without a heartbeat, up to 30 s since the last one, the triggers'
#              loop and a loaded machine's slack


def test_killed_run_is_marked_crashed_and_a_rerun_resumes(tmp_path):
    with team_on(None, tmp_path, workers_cpu=0, limit=1) as team:
        api, results = team["api"], team["results"]
        r = srv.api_request("POST", f"{api}/automations/filter", json={})
        assert [a["name"] for a in r.json()] == [srv.CRASH_AUTOMATION], r.text
        store = str(results / "crash.zarr")
        fr = deployment_run(api, {"spec": {**SPEC, "name": "crash", "store": store}})
        started = wait_flow_run(api, fr, 240, until={"RUNNING", "COMPLETED", "FAILED", "CRASHED"})
        assert started["state_type"] == "RUNNING", started["state"]
        checkpoints = Path(storage.files_url(store)) / "checkpoints"
        deadline = time.monotonic() + 400  # until its first cell is trained: mid-study
        while not (checkpoints.is_dir() and any(checkpoints.glob("*.pt"))):
            assert time.monotonic() < deadline and wait_flow_run(api, fr, 0)["state_type"] == "RUNNING"
            time.sleep(0.5)
        worker = psutil.Process(team["worker"].pid)
        doomed = [worker] + worker.children(recursive=True)
        assert any("flow" in " ".join(p.cmdline()) or "prefect" in " ".join(p.cmdline()) for p in doomed[1:])
        for p in doomed:
            os.kill(p.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        psutil.wait_procs(doomed, timeout=30)
        assert wait_flow_run(api, fr, 0)["state_type"] == "RUNNING"
        left = wait_flow_run(api, fr, BOUND, until={"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
        waited = time.monotonic() - t_kill
        print(f"\nkilled flow run: {left['state_type']} {waited:.0f} s after the kill: {left['state']['message']}")
        assert left["state_type"] == "CRASHED" and "no heartbeat" in left["state"]["message"], left["state"]
        done_at_kill = int((storage.read_status(store) == storage.DONE).sum())
        assert done_at_kill < 4, done_at_kill

        # a new worker; the same spec again resumes from the store; then an uninterrupted reference
        team["group"].start("dsclab worker (again)", [sys.executable, "-m", "flows.server", "worker", "--api", api,
                                                      "--gpus", "none", "--cpu", "0"],
                            team["env"], stdout=(tmp_path / "worker2.log").open("w"), stderr=subprocess.STDOUT,
                            cwd=ROOT)
        again = deployment_run(api, {"spec": {**SPEC, "name": "crash", "store": store}})
        end = wait_flow_run(api, again, 400)
        assert end["state_type"] == "COMPLETED", (end["state"], (tmp_path / "worker2.log").read_text()[-3000:])
        assert any(f"{4 - done_at_kill} to compute" in m for m in flow_run_logs(api, again)), flow_run_logs(api, again)
        ref = str(results / "ref.zarr")
        end = wait_flow_run(api, deployment_run(api, {"spec": {**SPEC, "name": "crash", "store": ref}}), 400)
        assert end["state_type"] == "COMPLETED", end["state"]
    a, b = xr.open_zarr(ref).load(), xr.open_zarr(store).load()
    assert (b.status == storage.DONE).all()
    xr.testing.assert_identical(a.drop_vars(TIMINGS), b.drop_vars(TIMINGS))
