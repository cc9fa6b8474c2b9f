"""Specs: validation into one-line errors, stable cell keys, and the CLI refusing bad input."""
import json
import subprocess
import sys

import pytest
import yaml

from dsclab import cli
from dsclab.spec import SpecError, TrainSpec
from dsclab.study import load_spec, parse_spec
from dsclab.studies.sample_complexity.spec import StudySpec

GOOD = {"name": "t", "d": [2], "n": [10, 20], "seed": [0], "nfe": [5]}


def test_quick_spec_loads():
    sp = load_spec("studies/quick.yaml")
    assert isinstance(sp, StudySpec) and sp.d == [2, 8, 32] and len(sp.cells()) == 45
    with pytest.raises(Exception, match="frozen"):
        sp.name = "x"


@pytest.mark.parametrize("patch,msg", [
    ({"n": [-5]}, "n: -5 is not a positive integer"),
    ({"n": [0]}, "n: 0 is not a positive integer"),
    ({"sampler": ["foo"]}, "sampler: unknown sampler 'foo' (known: euler_maruyama, exponential_integrator"),
    ({"estimator": ["bsmx"]}, "estimator: unknown estimator 'bsmx'"),
    ({"d": [2, 2]}, "d: duplicate value 2"),
    ({"d": []}, "d: needs at least one value"),
    ({"n": ["ten"]}, "n[0]: 'ten'"),
    ({"distribution": {"name": "nope"}}, "distribution.name: unknown distribution 'nope'"),
    ({"distribution": {"name": "gaussian", "params": {"foo": 1}}}, "distribution: bad parameters"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"precision": "float16"}}, "train.precision"),
    ({"evaluation": {"delta": [1.5]}}, "evaluation.delta"),
    ({"nfe": [10], "max_cells": 1}, "the grid has 2 cells, over max_cells=1"),
    ({"colour": "red"}, "colour: unknown field"),
])
def test_invalid_specs_one_line(patch, msg):
    with pytest.raises(SpecError) as e:
        parse_spec({**GOOD, **patch})
    text = str(e.value)
    assert msg in text and "\n" not in text


def test_missing_name():
    with pytest.raises(SpecError, match="name: missing"):
        parse_spec({k: v for k, v in GOOD.items() if k != "name"})


def test_cell_keys_stable_and_distinct():
    a, b = parse_spec(GOOD).cells(), parse_spec(dict(GOOD)).cells()
    assert [c.key for c in a] == [c.key for c in b]
    assert len({c.key for c in a}) == len(a)
    c = parse_spec({**GOOD, "train": {"steps": 10}}).cells()
    assert a[0].key != c[0].key  # numerics change the key
    assert parse_spec({**GOOD, "train": {"precision": "bfloat16"}}).cells()[0].key != a[0].key
    assert parse_spec({**GOOD, "workers": 1}).hash == parse_spec(GOOD).hash  # execution does not


def _run_cli(tmp_path, data, capsys, raw=None):
    f = tmp_path / "spec.yaml"
    f.write_text(raw if raw is not None else yaml.safe_dump(data))
    store = tmp_path / "out.zarr"
    code = cli.main(["run", str(f), "--store", str(store)])
    err = capsys.readouterr().err.strip()
    return code, err, store


def test_cli_refuses_n_zero_and_creates_nothing(tmp_path, capsys):
    code, err, store = _run_cli(tmp_path, {**GOOD, "n": [0]}, capsys)
    assert code == 2
    assert err == "dsclab: error: n: 0 is not a positive integer"
    assert not store.exists() and not (tmp_path / "out.files").exists()


def test_cli_refuses_malformed_yaml(tmp_path, capsys):
    code, err, store = _run_cli(tmp_path, None, capsys, raw="name: [unclosed\n")
    assert code == 2 and "malformed YAML" in err and len(err.splitlines()) == 1
    assert not store.exists()


def test_cli_refuses_unknown_kind(tmp_path, capsys):
    code, err, _ = _run_cli(tmp_path, {**GOOD, "kind": "astrology"}, capsys)
    assert code == 2 and "kind: unknown study kind 'astrology'" in err


def test_nfe_check_reads_the_declared_nfe_per_step():
    """check_nfe uses each sampler's declared nfe_per_step (dsclab.samplers.NFE_PER_STEP), so a
    plugin sampler taking 3 evaluations per step is held to multiples of 3 in every spec."""
    from dsclab.registry import declare
    from dsclab.samplers import SAMPLERS, sample_euler_maruyama
    from dsclab.spec import check_nfe

    SAMPLERS.register("triple_em", declare(nfe_per_step=3, order=(1.0, 1.0))(
        lambda score, x, ts, *, noise: sample_euler_maruyama(score, x, ts, noise=noise)))
    try:
        check_nfe(["euler_maruyama", "triple_em"], [3, 30])  # accepted: returns without raising
        with pytest.raises(ValueError) as e:
            check_nfe("triple_em", [3, 10, 20])
        assert str(e.value) == ("nfe 10 is not a multiple of 3, the score evaluations per step of sampler "
                                "'triple_em' (also [20])")
        with pytest.raises(SpecError, match=r"^spec: nfe 10 is not a multiple of 3, .* sampler 'triple_em'$"):
            parse_spec({**GOOD, "sampler": ["triple_em"], "nfe": [3, 10]})
        assert parse_spec({**GOOD, "sampler": ["triple_em"], "nfe": [3, 9]}).nfe == [3, 9]
    finally:
        SAMPLERS.unregister("triple_em")


def test_a_partial_train_section_keeps_the_kinds_other_training_defaults():
    """sparse_pca's default training is its own (width 64, depth 2, batch 128, 600 steps): a ``train``
    section given in part takes the fields it leaves out from that, not from TrainSpec's defaults
    (width 128, depth 3), and a full section or none at all is read as before."""
    from dsclab.studies.sparse_pca.spec import SparsePCASpec, _default_train

    base = {"kind": "sparse_pca", "name": "p", "d": [16], "k": [2], "beta": [1.0], "n": [8]}
    part = parse_spec({**base, "train": {"steps": 100}})
    assert part.train == _default_train().model_copy(update={"steps": 100})
    assert parse_spec(base).train == _default_train()
    full = TrainSpec(steps=50, batch_size=8, lr=1e-3, width=8, depth=1)
    assert parse_spec({**base, "train": full.model_dump()}).train == full
    assert isinstance(part, SparsePCASpec)


REFUSE_WITHOUT_TORCH = r"""
import json, sys
from dsclab import cli

out = []
for path in sys.argv[1:]:
    rc = cli.main(["run", path])
    out.append([path, rc, "torch" in sys.modules])
print(json.dumps(out))
"""


def test_a_refused_spec_never_imports_torch(tmp_path):
    """Refusing a spec costs only the spec's own imports (issue 29: a refusal in under ~2 s; torch
    alone took ~1.2 s of a 2.7 s refusal): the missing-``name`` spec and every registered kind's
    small preset with a negative seed exit 2 in one process that never imports torch
    (``dsclab.lazy``: the registries, data families, samplers and the kinds' modules bind torch on
    first use; ``dsclab.registry``: looking up a kind imports that kind only)."""
    from dsclab.study import KINDS

    specs = [tmp_path / "no_family.yaml"]
    specs[0].write_text(yaml.safe_dump({"name": "demo", "distribution": {"params": {"k": 2}},
                                        "store": str(tmp_path / "no_family.zarr")}))
    for name in KINDS:
        spec = {**KINDS[name].small, "kind": name, "seed": [-1], "store": str(tmp_path / f"{name}.zarr")}
        specs.append(tmp_path / f"{name}.yaml")
        specs[-1].write_text(yaml.safe_dump(spec))
    r = subprocess.run([sys.executable, "-c", REFUSE_WITHOUT_TORCH, *map(str, specs)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert [rc for _, rc, _ in results] == [2] * len(specs), r.stderr[-2000:]
    assert [p for p, _, torch_in in results if torch_in] == [], "torch imported while refusing these specs"
    errors = [line for line in r.stderr.splitlines() if line.startswith("dsclab: error:")]
    assert len(errors) == len(specs) and "distribution.name: missing" in errors[0]
    assert all("seed" in e for e in errors[1:]), errors
    assert not list(tmp_path.glob("*.zarr"))


def test_a_deferred_module_is_imported_on_first_use_and_rebound(tmp_path, monkeypatch):
    from dsclab.lazy import deferred

    (tmp_path / "probe_deferred_module.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_deferred_module", raising=False)
    namespace: dict = {}
    namespace["probe"] = deferred("probe_deferred_module", namespace, "probe")
    assert "probe_deferred_module" not in sys.modules
    assert namespace["probe"].VALUE == 7
    assert namespace["probe"] is sys.modules["probe_deferred_module"]  # the name now holds the module itself
