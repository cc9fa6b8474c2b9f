"""Kill -9 of the study process at random points (issue 8): reruns complete the study, the final
store equals an uninterrupted run value for value, and no done cell is computed again."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

import storage
from dsclab.study import parse_spec

SPEC = {"name": "kill", "d": [2, 3], "n": [40, 80, 160], "seed": [0, 1], "nfe": [4],
        "sampler": ["euler_maruyama"], "train": {"steps": 80, "width": 16, "depth": 2},
        "evaluation": {"t": [0.1, 1.0], "n_score": 200, "n_samples": 200},
        "workers": 2, "group_memory_mb": 1}  # small groups: cells finish one by one
TIMINGS = ["train_seconds", "eval_seconds"]  # wall times: the only values allowed to differ


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONUNBUFFERED="1",
               PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)  # each run starts its own ephemeral server
    return env


def _run(spec_file: Path, store: str, env: dict, kill: bool, rng: random.Random) -> int | None:
    """Run `dsclab run`; with ``kill``, SIGKILL its process group at a random moment: 0-3 s after
    the flow reports how many cells it will compute, or 0-0.3 s after the first cell of this run
    is done, whichever comes first (so it lands in data generation, training, evaluation or a
    store write, and each run leaves work for the next). Returns the exit code, or None when it
    was killed."""
    cmd = [sys.executable, "-m", "dsclab.cli", "run", str(spec_file), "--store", store]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True)

    def killpg():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = None
    deadline = time.monotonic() + 240
    for line in p.stdout:
        if kill and timer is None and "to compute" in line:
            timer = threading.Timer(rng.uniform(0.0, 3.0), killpg)
            timer.start()
        if kill and timer is not None and " done (" in line and p.poll() is None:
            time.sleep(rng.uniform(0.0, 0.3))
            killpg()
        assert time.monotonic() < deadline, "study did not finish in time"
    code = p.wait(timeout=60)
    if timer is not None:
        timer.cancel()
    return None if code == -signal.SIGKILL else code


def _checkpoint_mtimes(store: str) -> dict:
    d = Path(storage.files_url(store)) / "checkpoints"
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*.pt")} if d.exists() else {}


def test_kill_minus_nine_at_random_points_then_resume(tmp_path):
    rng = random.Random(8)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    env = _env(tmp_path)

    ref = str(tmp_path / "ref.zarr")
    assert _run(spec_file, ref, env, False, rng) == 0

    store = str(tmp_path / "killed.zarr")
    keys = {(c.d, c.n, c.seed): c.key for c in parse_spec(SPEC).cells()}
    kills = 0
    for _ in range(3):  # three kills at random moments
        done_before = {}
        if Path(store).exists():
            st = storage.read_status(store).isel(estimator=0)
            mt = _checkpoint_mtimes(store)
            done_before = {keys[k]: mt[f"{keys[k]}.pt"] for k in keys
                           if int(st.sel(d=k[0], n=k[1], seed=k[2])) == storage.DONE}
        if _run(spec_file, store, env, True, rng) is not None:
            break  # the run finished before its kill point
        kills += 1
        now = _checkpoint_mtimes(store)
        assert all(now[f"{k}.pt"] == t for k, t in done_before.items()), "a done cell was computed again"
        st = storage.read_status(store).isel(estimator=0)
        assert all(int(st.sel(d=k[0], n=k[1], seed=k[2])) == storage.DONE
                   for k in keys if keys[k] in done_before), "a done cell lost its status"
    assert kills == 3, f"only {kills} kills landed"
    status_before_last = storage.read_status(store)
    assert _run(spec_file, store, env, False, rng) == 0
    a, b = xr.open_zarr(ref).load(), xr.open_zarr(store).load()
    assert (b.status == storage.DONE).all() and int((status_before_last == storage.DONE).sum()) < b.status.size
    xr.testing.assert_identical(a.drop_vars(TIMINGS), b.drop_vars(TIMINGS))
    for v in TIMINGS:
        assert np.isfinite(b[v].values).all()
