"""Authentication and confinement of the team server (issue 21), on loopback only.

``dsclab server --host 0.0.0.0`` without credentials is refused in one line, exit 2, before
anything starts. ``secured``: ``dsclab server`` on 127.0.0.1 with Prefect's API auth string (its
own temporary PREFECT_HOME and free port; the deployment sample-complexity/gpu of
flows/deployments.py), and ``dsclab worker --results-root ROOT`` with the credentials. A request
without them is refused (401); a worker or ``dsclab run`` without them is refused in one line,
exit 2. Three runs of the deployment, created through the API as the UI's Custom run does, run at
once on the worker: a tiny study under ROOT completes; a store outside ROOT, and a spec breaking a
rule between fields (which the parameter schema cannot say), each end the run Failed at its first
step with one line, no traceback in the run's log, and nothing written.
"""
from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import xarray as xr
import yaml

import storage
from flows import deployments
from flows import server as srv
from prefect_team import TERMINAL, free_port

ROOT = Path(__file__).resolve().parents[1]
AUTH_VARS = ("PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING")
TINY = {"name": "auth-tiny", "d": [2], "n": [20], "seed": [0], "nfe": [4], "sampler": ["euler_maruyama"],
        "train": {"steps": 20, "width": 16, "depth": 1}, "workers": 1,
        "evaluation": {"t": [0.5], "delta": [0.1], "n_score": 50, "n_samples": 50, "n_nll": 50, "n_alpha": 8}}


def env_without_credentials(**extra: str) -> dict[str, str]:
    env = srv.base_env(None, **extra)
    for var in (*AUTH_VARS, "PREFECT_API_URL"):
        env.pop(var, None)
    return {**env, **extra}


def one_line_refusal(cmd: list[str], env: dict, timeout: float = 120) -> str:
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    err = p.stderr.strip()
    assert p.returncode == 2 and err.count("\n") == 0 and err.startswith("dsclab"), (p.returncode, p.stderr[-3000:])
    return err


def test_an_open_server_needs_credentials():
    port = free_port()
    err = one_line_refusal([sys.executable, "-m", "dsclab.cli", "server", "--host", "0.0.0.0", "--port", str(port)],
                           env_without_credentials())
    assert "PREFECT_API_AUTH_STRING" in err and "0.0.0.0" in err, err
    assert not srv.health(f"http://127.0.0.1:{port}/api", timeout=0.5)  # nothing was started


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secured")
    port, auth = free_port(), f"dsclab:{secrets.token_hex(12)}"
    api = f"http://127.0.0.1:{port}/api"
    env = env_without_credentials(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                                  PREFECT_SERVER_API_AUTH_STRING=auth)
    clients = env_without_credentials(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                                      PREFECT_API_URL=api, PREFECT_API_AUTH_STRING=auth)
    logs = {"server": tmp / "server.log", "worker": tmp / "worker.log"}
    group = srv.Group()
    t0 = time.perf_counter()
    try:
        server = group.start("dsclab server", [sys.executable, "-m", "flows.server", "server", "--host", "127.0.0.1",
                                               "--port", str(port), "--no-deploy"],
                             env, stdout=logs["server"].open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 240
        while "Prefect server ready" not in logs["server"].read_text():  # up, the pools and the gpu limit
            assert server.poll() is None and time.monotonic() < deadline, logs["server"].read_text()[-3000:]
            time.sleep(0.3)
        doc = deployments.document(["sample_complexity"])  # one deployment, sample-complexity/gpu: quicker
        doc["deployments"] = [d for d in doc["deployments"]
                              if (d["entrypoint"], d["name"]) == ("flows/study.py:sample_complexity", "gpu")]
        prefect_file = tmp / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        deployments.deploy(prefect_file, clients)
        results = tmp / "results"
        group.start("dsclab worker", [sys.executable, "-m", "flows.server", "worker", "--api", api, "--gpus", "none",
                                      "--cpu", "0", "--limit", "3", "--results-root", str(results)],
                    clients, stdout=logs["worker"].open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        print(f"\nsecured server and worker ready in {time.perf_counter() - t0:.1f} s at {api}")
        yield {"api": api, "auth": auth, "tmp": tmp, "results": results, "logs": logs}
    except BaseException:
        for name, f in logs.items():
            if f.exists():
                print(f"--- {name} log (tail)\n{f.read_text()[-3000:]}")
        raise
    finally:
        group.stop(grace=10)


def test_requests_without_credentials_are_refused(secured):
    api = secured["api"]
    assert httpx.post(f"{api}/flows/filter", json={}).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, auth=("dsclab", "wrong")).status_code == 401
    user, password = secured["auth"].split(":", 1)
    assert httpx.post(f"{api}/flows/filter", json={}, auth=(user, password)).status_code == 200
    assert httpx.get(f"{api}/health").status_code == 200  # the health probe stays open


def test_clients_without_credentials_are_refused(secured, tmp_path):
    api = secured["api"]
    err = one_line_refusal([sys.executable, "-m", "flows.server", "worker", "--api", api, "--gpus", "none", "--cpu", "0"],
                           env_without_credentials())
    assert "requires credentials" in err and "PREFECT_API_AUTH_STRING" in err, err
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: t\nd: [2]\nn: [20]\nnfe: [4]\n")
    err = one_line_refusal([sys.executable, "-m", "dsclab.cli", "run", str(spec), "--store", str(tmp_path / "t.zarr")],
                           env_without_credentials(PREFECT_API_URL=api, PREFECT_API_AUTH_STRING="dsclab:wrong"))
    assert "refuses the credentials" in err, err
    assert not (tmp_path / "t.zarr").exists()


@pytest.fixture(scope="module")
def runs(secured):
    """Three runs of sample-complexity/gpu created through the API at once, waited for."""
    api, tmp, results = secured["api"], secured["tmp"], secured["results"]
    stores = {"study": results / "auth-tiny.zarr", "outside": tmp / "outside" / "auth-tiny.zarr",
              "rule": results / "rule.zarr"}
    specs = {"study": {**TINY, "store": str(stores["study"])},
             "outside": {**TINY, "store": str(stores["outside"])},
             "rule": {**TINY, "store": str(stores["rule"]), "train": {**TINY["train"], "t_min": 6.0, "T": 5.0}}}
    headers = {"Authorization": "Basic " + base64.b64encode(secured["auth"].encode()).decode()}
    dep = srv.api_request("GET", f"{api}/deployments/name/sample-complexity/gpu", headers=headers).json()
    ids = {}
    t0 = time.perf_counter()
    for name, spec in specs.items():
        r = srv.api_request("POST", f"{api}/deployments/{dep['id']}/create_flow_run", headers=headers, json={
            "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"}, "parameters": {"spec": spec}})
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    out, deadline = {}, time.monotonic() + 300
    while len(out) < len(ids) and time.monotonic() < deadline:
        for name, fr_id in ids.items():
            fr = srv.api_request("GET", f"{api}/flow_runs/{fr_id}", headers=headers).json()
            if fr["state_type"] in TERMINAL:
                out.setdefault(name, fr)
        time.sleep(1)
    print(f"\nthree runs finished {time.perf_counter() - t0:.1f} s after they were created")
    if len(out) < len(ids):
        print(f"--- worker log (tail)\n{secured['logs']['worker'].read_text()[-5000:]}")

    def logs(fr_id: str, needle: str) -> list[str]:
        """The run's log messages, once one holds ``needle`` (logs arrive in batches; bounded)."""
        end = time.monotonic() + 15
        while True:
            found = srv.api_request("POST", f"{api}/logs/filter", headers=headers,
                                    json={"logs": {"flow_run_id": {"any_": [fr_id]}}}).json()
            messages = [entry["message"] for entry in found]
            if any(needle in m for m in messages) or time.monotonic() > end:
                return messages
            time.sleep(0.5)

    return {"runs": out, "stores": stores, "logs": logs, "ids": ids}


def test_a_worker_with_credentials_runs_a_study(runs):
    fr = runs["runs"]["study"]
    assert fr["state_type"] == "COMPLETED", fr["state"]
    ds = xr.open_zarr(str(runs["stores"]["study"]))
    assert int(ds.status.size) == 1 and (ds.status == storage.DONE).all()


@pytest.mark.parametrize("name,needle", [("outside", "is outside the results root (DSCLAB_RESULTS_ROOT="),
                                         ("rule", "train: t_min 6.0 must be below T 5.0")])
def test_a_refused_run_fails_at_its_first_step_in_one_line(runs, name, needle):
    fr, store = runs["runs"][name], runs["stores"][name]
    assert fr["state_type"] == "FAILED", fr["state"]
    message = fr["state"]["message"]
    assert needle in message and "\n" not in message, message
    logs = runs["logs"](runs["ids"][name], needle)
    errors = [m for m in logs if needle in m]
    assert errors and all("\n" not in m for m in errors), logs
    assert not any("Traceback" in m for m in logs), logs
    assert not store.exists() and not Path(storage.files_url(str(store))).exists(), "nothing written"
