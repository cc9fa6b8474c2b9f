"""A pytest plugin (``pytest_plugins = ["prefect_team"]`` in a test module): one team setup shared
by tests/test_deploy.py, test_browser.py and test_dask.py, started once per session.

``team``: the README's "Team server and GPU workers" commands on 127.0.0.1 with a temporary
PREFECT_HOME and a free port: ``dsclab server`` (``python -m flows.server server``, which runs
``prefect server start``, ``prefect work-pool create cpu|gpu --type process``,
``prefect concurrency-limit create gpu 1`` and ``prefect deploy --all --prefect-file
deploy/prefect.local.yaml``, the deployments of every registered study kind written by
``flows.deployments``), then ``dsclab worker`` for the gpu pool (``prefect worker start --pool gpu
--limit 1`` with ``CUDA_VISIBLE_DEVICES`` empty: it runs on the CPU), whose runs may write under
the temporary folder only (``--results-root``). Every process started here is
stopped at the end of the session (SIGTERM to its process group and descendants, SIGKILL after
10 s).

``tiny_run``: a tiny sample-complexity study triggered once on that server through the REST API,
the way the UI's "Custom run" form does (POST /deployments/{id}/create_flow_run), and waited for
(bounded); the flow run as the API reports it at the end."""
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import server as srv

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def team(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("team")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = f"{base}/api"
    env = srv.base_env(None, PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_WORKER_QUERY_SECONDS="1")
    env.pop("PREFECT_API_URL", None)
    group = srv.Group()
    logs = {"server": tmp / "server.log", "worker": tmp / "worker.log"}
    t0 = time.perf_counter()
    try:
        server = group.start("dsclab server", [sys.executable, "-m", "flows.server", "server", "--host", "127.0.0.1",
                                               "--port", str(port)],
                             env, stdout=logs["server"].open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 240
        while "Prefect server ready" not in logs["server"].read_text():  # up, pools, limit, deployments
            assert server.poll() is None, logs["server"].read_text()[-3000:]
            assert time.monotonic() < deadline, logs["server"].read_text()[-3000:]
            time.sleep(0.3)
        group.start("dsclab worker", [sys.executable, "-m", "flows.server", "worker", "--api", api, "--gpus", "none",
                                      "--cpu", "0", "--results-root", str(tmp)],
                    env, stdout=logs["worker"].open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        print(f"\nteam server ready in {time.perf_counter() - t0:.1f} s at {base}")
        yield {"base": base, "api": api, "tmp": tmp, "logs": logs}
    except BaseException:
        for name, f in logs.items():
            if f.exists():
                print(f"--- {name} log (tail)\n{f.read_text()[-3000:]}")
        raise
    finally:
        group.stop(grace=10)


TINY = {
    "name": "tiny-e2e", "d": [2, 3], "n": [40, 200], "seed": [0], "nfe": [4],
    "sampler": ["euler_maruyama"],
    "train": {"steps": 100, "width": 32, "depth": 2},
    "evaluation": {"t": [0.05, 0.5], "n_score": 200, "n_samples": 100},
    "workers": 2,
}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="session")
def tiny_run(team):
    api = team["api"]
    dep = srv.api_request("GET", f"{api}/deployments/name/sample-complexity/gpu").json()
    store = str(team["tmp"] / "tiny-e2e.zarr")
    t0 = time.perf_counter()
    r = srv.api_request("POST", f"{api}/deployments/{dep['id']}/create_flow_run", json={
        "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"},
        "parameters": {"spec": {**TINY, "store": store}}})
    assert r.status_code == 201, r.text
    fr_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while True:
        fr = srv.api_request("GET", f"{api}/flow_runs/{fr_id}").json()
        if fr["state_type"] in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(f"\ntiny flow run: {fr['state_type']} {time.perf_counter() - t0:.1f} s after it was triggered")
    if fr["state_type"] != "COMPLETED":
        print(f"--- worker log (tail)\n{team['logs']['worker'].read_text()[-5000:]}")
    return {"id": fr_id, "flow_run": fr, "store": store, "spec": TINY, "deployment": dep}
