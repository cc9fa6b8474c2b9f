"""The deployments (flows/deployments.py: generated from the registry of study kinds and the
presets in studies/), and the team server end to end: a real ``prefect server`` on 127.0.0.1
(temporary PREFECT_HOME, free port) set up by the README's "Team server and GPU workers" commands
(``team`` in tests/prefect_team.py: ``dsclab server`` = server, work pools, ``prefect deploy --all`` of every registered kind from deploy/prefect.local.yaml; ``dsclab
worker`` for the gpu pool, running on the CPU here). A tiny study is triggered through the REST API
the way the UI's run form does, it runs on the gpu worker, and the store it writes is opened with
plain xarray."""
import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import storage
from dsclab.spec import load_yaml
from dsclab.study import parse_spec
from dsclab.study import BUILTIN, KINDS
from flows import deployments
from flows import server as srv
from prefect_team import TINY

pytest_plugins = ["prefect_team"]
ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"


def kind_of_deployment(dep: dict) -> str:
    path, kind = dep["entrypoint"].split(":")
    assert path == "flows/study.py", dep
    return kind


def study_deployments(deps: list[dict]) -> list[dict]:
    """The study flows' deployments (the n* search's, flows/search.py:search, checked apart)."""
    return [d for d in deps if d["entrypoint"] != "flows/search.py:search"]


def check_search_deployment(deps: list[dict]) -> None:
    """The n* search's deployment: on the gpu pool, its request the search spec of studies/ plus
    the settings of flows.deployments.SEARCH, valid for the flow's parameter model."""
    from flows.search import SearchRequest

    (dep,) = [d for d in deps if d["entrypoint"] == "flows/search.py:search"]
    assert dep["name"] == "gpu" and dep["work_pool"]["name"] == "gpu" and dep["schedules"] == []
    request = dep["parameters"]["request"]
    assert request["spec"] == load_yaml(ROOT / "studies" / deployments.SEARCH_SPEC)
    assert {k: request[k] for k in deployments.SEARCH} == deployments.SEARCH
    assert SearchRequest.model_validate(request).spec.name == "search_quick"


# -- the deployment files -----------------------------------------------------------------------

def test_checked_in_file_is_current():
    assert deployments.check() is None
    p = subprocess.run([sys.executable, "-m", "flows.deployments", "check"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_check_names_the_first_stale_line(tmp_path, capsys):
    f = tmp_path / "prefect.yaml"
    assert deployments.main(["write", "--builtin-only", "--out", str(f)]) == 0
    assert f.read_text() == PREFECT_YAML.read_text()
    assert deployments.main(["check", "--file", str(f)]) == 0
    lines = f.read_text().splitlines()
    i = lines.index("      name: quick")  # the sample-complexity default spec's name
    lines[i] = "      name: quick2"
    f.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert deployments.main(["check", "--file", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"line {i + 1}:" in err and "write --builtin-only" in err, err
    f.write_text("\n".join(lines[:i]) + "\n")  # truncated
    assert deployments.main(["check", "--file", str(f)]) == 1
    assert f"line {i + 1}:" in capsys.readouterr().err
    f.unlink()
    assert deployments.main(["check", "--file", str(f)]) == 1 and "missing" in capsys.readouterr().err


def test_default_specs_are_the_study_presets():
    """Built-in kinds: the studies/ preset, as the file holds it; every default spec parses with
    its kind's model."""
    all_deps = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    check_search_deployment(all_deps)
    deps = study_deployments(all_deps)
    assert sorted({kind_of_deployment(d) for d in deps}) == sorted(BUILTIN)
    for dep in deps:
        kind, spec = kind_of_deployment(dep), dep["parameters"]["spec"]
        assert KINDS[kind].preset == f"{spec['name']}.yaml", dep  # a preset file is named after its study
        assert spec == load_yaml(ROOT / "studies" / KINDS[kind].preset)
        assert KINDS[kind].parse(spec) == parse_spec(spec)
    for dep in study_deployments(deployments.document(KINDS)["deployments"]):  # plugins included
        kind = kind_of_deployment(dep)
        assert KINDS[kind].parse(dep["parameters"]["spec"]).name, dep


def test_a_kind_without_a_preset_deploys_its_small_preset():
    """A plugin kind (here: the immse kind under another name, registered at run time)."""
    immse = KINDS["immse"]
    KINDS.register("immse_plugin", type("ImmsePlugin", (type(immse),), {"name": "immse_plugin", "preset": None})())
    try:
        assert KINDS["immse_plugin"].preset is None
        deps = deployments.document(["immse", "immse_plugin"])["deployments"]
        assert [(kind_of_deployment(d), d["name"]) for d in deps] == [("immse", "gpu"), ("immse_plugin", "gpu")]
        assert deps[1]["parameters"]["spec"] == immse.small and deps[0]["parameters"]["spec"]["name"] == "immse"
        deployments.validate(["immse_plugin"])
    finally:
        KINDS.unregister("immse_plugin")


@pytest.mark.parametrize("which", ["checked-in", "all kinds"])
def test_pools_schedules_and_flows(which):
    from prefect.flows import load_flow_from_entrypoint

    kinds = list(BUILTIN) if which == "checked-in" else list(KINDS)
    doc = yaml.safe_load(PREFECT_YAML.read_text()) if which == "checked-in" else deployments.document(KINDS)
    check_search_deployment(doc["deployments"])
    assert load_flow_from_entrypoint(str(ROOT / "flows/search.py:search")).name == "search-n-star"
    deps = study_deployments(doc["deployments"])
    pools: dict[str, list] = {}
    for dep in deps:
        pool = dep["work_pool"]
        assert pool["name"] == dep["name"] and pool["name"] in ("cpu", "gpu")
        env = pool["job_variables"]["env"]
        if pool["name"] == "gpu":  # the worker's own CUDA_VISIBLE_DEVICES must reach the run
            assert "CUDA_VISIBLE_DEVICES" not in env and env["DSCLAB_DEVICE"] == "auto"
        else:
            assert env["CUDA_VISIBLE_DEVICES"] == "" and env["DSCLAB_DEVICE"] == "cpu"
        assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert dep["tags"] == ["dsclab"] and dep["enforce_parameter_schema"] is True
        assert dep["parameters"]["runner"] == {"kind": "threads"}
        kind = kind_of_deployment(dep)
        schedules = dep["schedules"]
        if (kind, dep["name"]) == ("sample_complexity", "gpu"):  # the example cron schedule, inactive
            assert schedules == [{"cron": "0 3 * * 1", "timezone": "UTC", "active": False}]
        else:
            assert schedules == []
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        assert flow.name == KINDS[kind].flow_name
        pools.setdefault(kind, []).append(dep["name"])
    assert list(pools) == kinds  # every kind, in the registry's order, and each a gpu deployment
    assert pools == {k: ["gpu", "cpu"] if k == "sample_complexity" else ["gpu"] for k in kinds}


def test_worker_plan_one_per_gpu():
    assert srv.worker_specs(["0", "1"], 1, host="h") == [
        ("gpu0-h", "gpu", "0"), ("gpu1-h", "gpu", "1"), ("cpu0-h", "cpu", "")]
    assert srv.worker_specs([], 0, host="h") == [("gpu-cpu-h", "gpu", "")]  # no GPU: the gpu pool on the CPU
    assert srv.detect_gpus("none") == [] and srv.detect_gpus("0, 2") == ["0", "2"]


# -- end to end on a real server (tests/prefect_team.py) -----------------------------------------

def test_every_registered_kind_is_deployed(team):
    """``dsclab server`` deployed every kind of KINDS (plugins included) as ``<flow_name>/gpu``."""
    api = team["api"]
    flows = {f["id"]: f["name"] for f in srv.api_request("POST", f"{api}/flows/filter", json={}).json()}
    deployed = {(flows[d["flow_id"]], d["name"])
                for d in srv.api_request("POST", f"{api}/deployments/filter", json={}).json()}
    expect = {(k.flow_name, "gpu") for k in KINDS.values()} | {("sample-complexity", "cpu"), ("search-n-star", "gpu")}
    assert deployed == expect
    for name, kind in KINDS.items():
        dep = srv.api_request("GET", f"{api}/deployments/name/{kind.flow_name}/gpu").json()
        assert dep["entrypoint"] == f"flows/study.py:{name}" and dep["work_pool_name"] == "gpu"
        got, want = kind.parse(dep["parameters"]["spec"]), kind.parse(deployments.preset(name)[1])
        assert got.model_dump() == want.model_dump(), name


def test_deployed_flow_runs_on_the_gpu_worker(team, tiny_run):
    api = team["api"]
    dep = srv.api_request("GET", f"{api}/deployments/name/sample-complexity/gpu").json()
    assert dep["work_pool_name"] == "gpu"
    props = dep["parameter_openapi_schema"]["properties"]
    assert set(props) == {"spec", "runner"}  # the typed form the UI renders; the store is spec.store
    assert dep["parameters"]["spec"]["name"] == "quick"
    assert [s["active"] for s in dep["schedules"]] == [False]
    other = srv.api_request("GET", f"{api}/deployments/name/sample-complexity/cpu").json()
    assert other["work_pool_name"] == "cpu"
    for pool in ("cpu", "gpu"):
        assert srv.api_request("GET", f"{api}/work_pools/{pool}").json()["type"] == "process"
    # no Prefect concurrency limit guards GPUs (a slot of a run that dies would stay taken): a lock
    # on the training machine does (flows.gpu_lock; tests/test_slots.py)
    assert srv.api_request("GET", f"{api}/concurrency_limits/tag/gpu").status_code == 404

    fr, fr_id, store = tiny_run["flow_run"], tiny_run["id"], tiny_run["store"]
    assert fr["state_type"] == "COMPLETED", fr["state"]
    assert fr["work_pool_name"] == "gpu"

    spec = parse_spec(tiny_run["spec"])
    ds = xr.open_zarr(store)  # plain xarray, consolidated metadata
    assert (ds.status == storage.DONE).all()
    for var in ["score_l2", "sliced_w2", "mmd", "train_seconds"]:
        assert np.isfinite(ds[var].values).all(), var

    # training tasks: one per (d, seed) group, none carrying a Prefect tag (none asks for a slot)
    trs = srv.api_request("POST", f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [fr_id]}}}).json()
    train = [t for t in trs if t["name"].startswith("train-")]
    assert len(train) == len(spec.d) * len(spec.seed)
    assert all(t["tags"] == [] for t in trs), [t["tags"] for t in trs]

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


def test_a_run_the_schema_refuses_is_not_created(team):
    """Through the API, as the UI's Custom run does: ``n: [0]`` is refused at creation (409) with a
    message naming ``spec.n``, and no flow run is created; a run the schema accepts is."""
    api = team["api"]
    dep = srv.api_request("GET", f"{api}/deployments/name/sample-complexity/gpu").json()
    assert dep["enforce_parameter_schema"] is True

    def runs() -> int:
        return srv.api_request("POST", f"{api}/flow_runs/count",
                               json={"deployments": {"id": {"any_": [dep["id"]]}}}).json()

    before = runs()
    for bad, field in [({"n": [0]}, "spec.n[0]"), ({"sampler": ["nope"]}, "spec.sampler[0]"),
                       ({"nfe": [-5]}, "spec.nfe[0]"), ({"seed": [1, 1]}, "spec.seed")]:
        r = srv.api_request("POST", f"{api}/deployments/{dep['id']}/create_flow_run", json={
            "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"},
            "parameters": {"spec": {**TINY, **bad, "store": str(team["tmp"] / "refused.zarr")}}})
        assert r.status_code == 409, r.text
        assert f"'{field}'" in r.json()["detail"], r.text
    assert runs() == before  # nothing scheduled
    assert not (team["tmp"] / "refused.zarr").exists()

