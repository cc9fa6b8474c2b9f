"""Team server end to end: a real ``prefect server`` on 127.0.0.1 (temporary PREFECT_HOME, free
port) set up by the README's "Team server and GPU workers" commands (``team`` in
tests/prefect_team.py: ``dsclab server`` = server, work pools, the gpu concurrency limit,
``prefect deploy --all`` from deploy/prefect.yaml; ``dsclab worker`` for the gpu pool, running on
the CPU here). A tiny study is triggered through the REST API the way the UI's run form does, it
runs on the gpu worker, and the store it writes is opened with plain xarray."""
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import storage
from dsclab.spec import parse_spec
from flows import server as srv

pytest_plugins = ["prefect_team"]
ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"

def deployments_in_yaml() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


# -- the deployment file ------------------------------------------------------------------------

def test_prefect_yaml_defaults_are_the_study_presets():
    """Each deployment's default spec is one of studies/*.yaml, field for field."""
    from dsclab.spec import load_yaml
    from dsclab.study import KINDS, kind_of

    def parse(data):
        return kind_of(data).parse(data)

    presets = {}
    for f in sorted((ROOT / "studies").glob("*.yaml")):
        data = load_yaml(f)
        if data.get("kind", "sample_complexity") in KINDS:
            presets[data["name"]] = parse(data)
    deps = deployments_in_yaml()
    assert deps
    for dep in deps:
        spec = dep["parameters"]["spec"]
        assert spec["name"] in presets, f"{dep['name']}: no studies/ preset named {spec['name']!r}"
        assert parse(spec) == presets[spec["name"]], dep["name"]


def test_prefect_yaml_pools_schedules_and_flows():
    from prefect.flows import load_flow_from_entrypoint

    from dsclab.study import BUILTIN, KINDS

    deps = deployments_in_yaml()
    by_flow: dict[str, set] = {}
    for dep in deps:
        pool = dep["work_pool"]
        assert pool["name"] in ("cpu", "gpu")
        env = pool["job_variables"]["env"]
        if pool["name"] == "gpu":  # the worker's own CUDA_VISIBLE_DEVICES must reach the run
            assert "CUDA_VISIBLE_DEVICES" not in env and env["DSCLAB_DEVICE"] == "auto"
        else:
            assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DSCLAB_DEVICE"] == "cpu"
        assert all(s.get("active") is False for s in dep.get("schedules", []))
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        by_flow.setdefault(flow.name, set()).add(dep["name"])
    assert any(dep.get("schedules") for dep in deps)  # the example cron schedule is there
    for kind in BUILTIN:  # every built-in study kind has a gpu deployment
        assert "gpu" in by_flow.get(KINDS[kind].flow_name, set()), kind


def test_worker_plan_one_per_gpu():
    assert srv.worker_specs(["0", "1"], 1, host="h") == [
        ("gpu0-h", "gpu", "0"), ("gpu1-h", "gpu", "1"), ("cpu0-h", "cpu", "")]
    assert srv.worker_specs([], 0, host="h") == [("gpu-cpu-h", "gpu", "")]  # no GPU: the gpu pool on the CPU
    assert srv.detect_gpus("none") == [] and srv.detect_gpus("0, 2") == ["0", "2"]


# -- end to end on a real server (tests/prefect_team.py) -----------------------------------------

def test_deployed_flow_runs_on_the_gpu_worker(team, tiny_run):
    api = team["api"]
    dep = srv.api_request("GET", f"{api}/deployments/name/sample-complexity/gpu").json()
    assert dep["work_pool_name"] == "gpu"
    props = dep["parameter_openapi_schema"]["properties"]
    assert {"spec", "store", "runner"} <= set(props)  # the typed form the UI renders
    assert dep["parameters"]["spec"]["name"] == "quick"
    assert [s["active"] for s in dep["schedules"]] == [False]
    other = srv.api_request("GET", f"{api}/deployments/name/sample-complexity/cpu").json()
    assert other["work_pool_name"] == "cpu"
    for pool in ("cpu", "gpu"):
        assert srv.api_request("GET", f"{api}/work_pools/{pool}").json()["type"] == "process"
    limit = srv.api_request("GET", f"{api}/concurrency_limits/tag/gpu").json()
    assert limit["concurrency_limit"] == 1  # one slot per GPU; 1 on a machine without one

    fr, fr_id, store = tiny_run["flow_run"], tiny_run["id"], tiny_run["store"]
    assert fr["state_type"] == "COMPLETED", fr["state"]
    assert fr["work_pool_name"] == "gpu"

    spec = parse_spec(tiny_run["spec"])
    ds = xr.open_zarr(store)  # plain xarray, consolidated metadata
    assert (ds.status == storage.DONE).all()
    for var in ["score_l2", "sliced_w2", "mmd", "train_seconds"]:
        assert np.isfinite(ds[var].values).all(), var

    # gpu-tagged training tasks: one per (d, seed) group, never two at once (gpu limit 1)
    trs = srv.api_request("POST", f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [fr_id]}}}).json()
    gpu = sorted((t["start_time"], t["end_time"]) for t in trs if "gpu" in t["tags"])
    assert len(gpu) == len(spec.d) * len(spec.seed)
    assert all(t["name"].startswith("train-") for t in trs if "gpu" in t["tags"])
    for (s0, e0), (s1, e1) in zip(gpu, gpu[1:]):
        assert s1 >= e0, gpu

    # artifacts on the flow run: progress at 100 %, the summary table, the report, the plot
    arts = srv.api_request("POST", f"{api}/artifacts/filter",
                           json={"artifacts": {"flow_run_id": {"any_": [fr_id]}}}).json()
    by_type = {a["type"]: a for a in arts}
    assert set(by_type) == {"progress", "table", "markdown", "image"}
    assert float(by_type["progress"]["data"]) == 100.0
    table = json.loads(by_type["table"]["data"])
    assert [row["n"] for row in table] == spec.n
    assert set(table[0]) == {"n", *(f"d={d}" for d in spec.d)}
    expect = ds.score_l2.where(ds.status == 1).isel(estimator=0).mean(["seed", "t"]).sel(n=40, d=2)
    assert table[0]["d=2"] == pytest.approx(float(expect), rel=1e-5)  # 6 significant digits kept
    assert store in by_type["markdown"]["data"]
    url = by_type["image"]["data"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
