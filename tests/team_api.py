"""Questions to the team server's REST API shared by the tests that use it (tests/test_slots.py,
test_dask.py, test_postgres.py): concurrency slots held, a flow run's logs and task runs, a
deployment run created as the UI's Custom run does, and a bounded wait for a flow run's state."""
from __future__ import annotations

import time

from flows import server as srv

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def held_slots(api: str) -> dict[str, int]:
    """{name: active slots} of every concurrency limit on the server that holds one."""
    r = srv.api_request("POST", f"{api}/v2/concurrency_limits/filter", json={})
    r.raise_for_status()
    return {c["name"]: c["active_slots"] for c in r.json() if c["active_slots"]}


def flow_run_logs(api: str, flow_run_id: str) -> list[str]:
    r = srv.api_request("POST", f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                            "limit": 200})
    r.raise_for_status()
    return [x["message"] for x in r.json()]


def task_runs(api: str, flow_run_id: str) -> list[dict]:
    r = srv.api_request("POST", f"{api}/task_runs/filter",
                        json={"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
    r.raise_for_status()
    return r.json()


def wait_flow_run(api: str, fr_id: str, timeout: float, until: set[str] = TERMINAL) -> dict:
    """The flow run once its state type is one of ``until`` (or ``timeout`` s have passed)."""
    deadline = time.monotonic() + timeout
    while True:
        fr = srv.api_request("GET", f"{api}/flow_runs/{fr_id}").json()
        if fr["state_type"] in until or time.monotonic() > deadline:
            return fr
        time.sleep(0.2)


def deployment_run(api: str, parameters: dict, deployment: str = "sample-complexity/gpu") -> str:
    """A run of ``deployment`` created as the UI's Custom run does; its id."""
    dep = srv.api_request("GET", f"{api}/deployments/name/{deployment}").json()
    r = srv.api_request("POST", f"{api}/deployments/{dep['id']}/create_flow_run", json={
        "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"}, "parameters": parameters})
    assert r.status_code == 201, r.text
    return r.json()["id"]
