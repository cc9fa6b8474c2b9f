"""Validation before scheduling (issue 21): a deployment's parameter schema (the flow's, from the
kind's spec model and the JSON Schema facts of dsclab/axes.py) refuses what the CLI refuses and
JSON Schema can express, with Prefect's own validator (the one its server runs when a run is
created: ``prefect.utilities.schema_tools.validate``); every preset passes it; what it cannot
express is refused by the flow's first step in one line, the run Failed, nothing written; a store
outside the results root likewise (storage/confine.py; the runs themselves: tests/test_auth.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from dsclab.samplers import SAMPLERS
from dsclab.spec import SpecError
from dsclab.study import KINDS
from flows import deployments
from flows.study import kind_flow
from storage import StoreError
from storage.confine import ENV, confine, under
from test_bad_inputs import GOOD, SPECS

ROOT = Path(__file__).resolve().parents[1]

# The corpus of tests/test_bad_inputs.py: what JSON Schema can express (a bound, an enum of
# registered names, distinct values, a pattern, a type, a required or unknown field), and what is
# the flow's first step's to refuse (rules between fields, a budget).
IN_SCHEMA = {"d-string", "d-float", "n-zero", "n-negative", "n-empty", "n-word", "d-zero", "nfe-negative",
             "seed-negative", "seed-bool", "n-duplicate", "seed-duplicate", "unknown-sampler", "unknown-estimator",
             "unknown-distribution", "unknown-field", "missing-name", "bad-name", "steps-zero", "lr-negative",
             "delta-one", "t-negative", "schedule-unknown"}
NOT_IN_SCHEMA = {"unknown-param", "k-over-d", "over-budget", "tmin-above-T", "too-many-samples", "spike-k-over-n",
                 "spca-k-over-d", "nfe-srk-odd", "nfe-score-learning", "nfe-sparse-pca", "nfe-sampler-convergence"}


def schema(kind: str) -> dict:
    """The parameter schema ``prefect deploy`` stores for ``kind``'s deployments, made now."""
    return parameter_schema(kind_flow(kind).fn).model_dump()


def errors(kind: str, spec) -> list[str]:
    return [e.message for e in validate({"spec": spec, "runner": {"kind": "threads"}}, schema(kind))]


def test_axis_facts_are_in_the_schema():
    defs = schema("sample_complexity")["definitions"]
    props = defs["StudySpec"]["properties"]
    assert props["n"]["items"] == {"type": "integer", "minimum": 1}
    assert props["seed"]["items"] == {"type": "integer", "minimum": 0}
    for axis in ("n", "seed", "nfe", "sampler", "estimator"):
        assert props[axis]["minItems"] == 1 and props[axis]["uniqueItems"] is True, axis
    assert props["sampler"]["items"]["enum"] == list(SAMPLERS)
    assert defs["EvalSpec"]["properties"]["delta"]["items"] == {"type": "number", "exclusiveMinimum": 0,
                                                                 "exclusiveMaximum": 1}
    assert defs["EvalSpec"]["properties"]["schedule"]["enum"] == ["uniform", "exp"]
    assert defs["StudySpec"]["properties"]["name"]["pattern"] == r"^[A-Za-z0-9_.-]+$"


def test_registered_names_are_read_when_the_schema_is_made():
    """A sampler registered at run time (as a plugin's would be) is in the next schema's enum."""
    SAMPLERS.register("plugin_sampler", SAMPLERS["heun"])
    try:
        assert "plugin_sampler" in schema("sample_complexity")["definitions"]["StudySpec"]["properties"]["sampler"][
            "items"]["enum"]
        assert errors("sample_complexity", {**GOOD, "sampler": ["plugin_sampler"]}) == []
    finally:
        SAMPLERS.unregister("plugin_sampler")
    assert errors("sample_complexity", {**GOOD, "sampler": ["plugin_sampler"]})


@pytest.mark.parametrize("name,spec,needle", [s for s in SPECS if s[0] in IN_SCHEMA],
                         ids=[s[0] for s in SPECS if s[0] in IN_SCHEMA])
def test_the_schema_refuses_what_the_cli_refuses(name, spec, needle):
    kind = spec.get("kind", "sample_complexity")
    with pytest.raises(SpecError):
        KINDS[kind].parse(spec)
    assert errors(kind, spec), f"{name}: the parameter schema accepts {spec}"


def test_the_corpus_is_classified():
    assert {s[0] for s in SPECS if s[0] in IN_SCHEMA} == IN_SCHEMA


@pytest.mark.parametrize("name,spec", [(s[0], s[1]) for s in SPECS if s[0] in NOT_IN_SCHEMA],
                         ids=[s[0] for s in SPECS if s[0] in NOT_IN_SCHEMA])
def test_the_rest_is_left_to_the_flow(name, spec):
    """Rules between fields: the schema lets them through (the flow's first step refuses them:
    tests/test_auth.py)."""
    kind = spec.get("kind", "sample_complexity")
    with pytest.raises(SpecError):
        KINDS[kind].parse(spec)
    assert errors(kind, spec) == []


def test_every_preset_passes_its_schema():
    """No false refusal: each studies/ preset and each kind's default spec."""
    for f in sorted((ROOT / "studies").glob("*.yaml")):
        spec = yaml.safe_load(f.read_text())
        kind = spec.get("kind", "sample_complexity")
        KINDS[kind].parse(spec)
        assert errors(kind, json.loads(json.dumps(spec))) == [], f.name
    for kind in KINDS:
        assert errors(kind, deployments.preset(kind)[1]) == [], kind


def test_one_store_field_and_help_texts_that_render():
    """The form: ``spec.store`` only (no top-level store); no description holds an HTML-like
    ``<word>`` placeholder, which the UI's markdown would eat."""
    for kind in KINDS:
        s = schema(kind)
        assert set(s["properties"]) == {"spec", "runner"}, kind
        texts = re.findall(r'"(?:description|title)": "((?:[^"\\]|\\.)*)"', json.dumps(s))
        assert texts
        bad = [t for t in texts if re.search(r"<[A-Za-z/!]", t)]
        assert not bad, (kind, bad)


@pytest.mark.parametrize("store,root,inside", [
    ("results/a.zarr", "results", True),
    ("results/sub/a.zarr", "results/", True),
    ("results/../elsewhere/a.zarr", "results", False),
    ("results", "results", False),
    ("resultsX/a.zarr", "results", False),
    ("/etc/a.zarr", "results", False),
    ("file:///R/x/a.zarr", "/R/x", True),
    ("s3://bucket/results/a.zarr", "s3://bucket/results", True),
    ("s3://bucket/results/../other/a.zarr", "s3://bucket/results", False),
    ("s3://bucket/resultsX/a.zarr", "s3://bucket/results", False),
    ("gs://bucket/results/a.zarr", "s3://bucket/results", False),
    ("/R/x/a.zarr", "s3://bucket/results", False),
    ("simplecache::s3://bucket/results/a.zarr", "s3://bucket/results", True),
])
def test_under_the_results_root(store, root, inside):
    assert under(store, root) is inside


def test_a_link_out_of_the_root_does_not_escape(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "out")
    assert under(str(tmp_path / "root" / "a.zarr"), str(tmp_path / "root"))
    assert not under(str(tmp_path / "root" / "link" / "a.zarr"), str(tmp_path / "root"))


def test_confine_default_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    confine("/anywhere/a.zarr")  # not a deployment's run, no root set: not confined
    confine("results/a.zarr", deployed=True)  # a deployment's run: results/ of its working directory
    with pytest.raises(StoreError, match="outside the results root") as e:
        confine("/anywhere/a.zarr", deployed=True)
    assert "\n" not in str(e.value)
    monkeypatch.setenv(ENV, str(tmp_path / "team"))
    confine(str(tmp_path / "team" / "a.zarr"))
    with pytest.raises(StoreError, match=ENV):
        confine("results/a.zarr")
