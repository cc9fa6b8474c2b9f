"""Cell identity and growing a store in place (issue 19 items 1-2), through the real flow.

A cell's numbers depend on its coordinates and the spec's settings only: a grown store equals a
fresh run of the grown spec value for value, renaming a study changes no number, a changed
setting is refused in one line (exit 2), and a kill -9 at any step of a growth loses nothing.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml

import storage
from dsclab import cli
from dsclab.studies.sample_complexity import KIND

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"kind": "sample_complexity", "name": "grow", "d": [2], "n": [100, 300], "seed": [0], "nfe": [4],
        "sampler": ["euler_maruyama"], "train": {"steps": 30, "width": 16, "depth": 1},
        "evaluation": {"t": [0.1, 1.0], "n_score": 60, "n_samples": 60, "logsnr": [0.0], "n_nll": 20, "n_alpha": 4},
        "workers": 1}


def spec_of(**changes):
    return KIND.parse({**BASE, **changes})


def run(spec, path: str) -> dict:
    from flows.study import run_flow

    return run_flow(KIND, spec, str(path))


def values(path) -> xr.Dataset:
    """The store without wall times (they differ between runs) and without the study's name."""
    ds = xr.open_zarr(str(path)).load()
    ds = ds.drop_vars([v for v in ds.data_vars if "seconds" in v])
    for a in ("name", "spec", "spec_hash"):
        ds.attrs.pop(a)
    return ds


def test_cell_keys_do_not_depend_on_name_or_grid():
    a = {c.n: c.key for c in spec_of().cells()}
    b = {c.n: c.key for c in spec_of(name="renamed", n=[30, 100, 300, 3000], nfe=[4, 8]).cells()}
    assert a[100] == b[100] and a[300] == b[300]
    assert spec_of(train={**BASE["train"], "lr": 1e-3}).cells()[0].key != spec_of().cells()[0].key


@pytest.fixture(scope="module")
def stores(harness, tmp_path_factory):
    """The base store (n = [100, 300]) and a fresh run of the grown spec (n = [100, 300, 1000])
    under another name, computed once for the module."""
    root = tmp_path_factory.mktemp("stores")
    assert run(spec_of(), root / "base.zarr")["computed"] == 2
    assert run(spec_of(name="another_name", n=[100, 300, 1000]), root / "fresh.zarr")["computed"] == 3
    return root


def test_grow_rename_remove_and_refuse(stores, tmp_path, capsys):
    grown = tmp_path / "grown.zarr"
    shutil.copytree(stores / "base.zarr", grown)
    # values added to n: only the new cells are computed, in place
    out = run(spec_of(n=[100, 300, 1000]), grown)
    assert out["cells"] == 3 and out["computed"] == 1 and out["done"] == 3
    # a fresh run of the grown spec, under another name, gives the same store value for value
    xr.testing.assert_identical(values(grown), values(stores / "fresh.zarr"))
    # values removed from the spec: nothing computed, nothing stored lost or changed
    before = values(grown)
    out = run(spec_of(n=[300]), grown)
    assert out["cells"] == 1 and out["computed"] == 0
    xr.testing.assert_identical(values(grown), before)
    # a value added to an inner axis (nfe): done cells are evaluated again, training reused, and the
    # store equals a fresh run of that spec; the values at the old nfe are unchanged
    out = run(spec_of(n=[100, 300, 1000], nfe=[4, 8]), grown)
    assert out["computed"] == 3
    fresh2 = tmp_path / "fresh2.zarr"
    run(spec_of(n=[100, 300, 1000], nfe=[4, 8]), fresh2)
    xr.testing.assert_identical(values(grown), values(fresh2))
    xr.testing.assert_identical(values(grown).sel(nfe=[4]).drop_vars("status").sliced_w2,
                                before.sliced_w2.sel(n=values(grown).n))
    # a changed setting: one line naming it, exit 2, the store untouched
    f = tmp_path / "changed.yaml"
    f.write_text(yaml.safe_dump({**BASE, "train": {**BASE["train"], "steps": 31}}))
    digest = _digest(grown)
    assert cli.main(["run", str(f), "--store", str(grown)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "another value of the setting train.steps" in err, err
    assert _digest(grown) == digest


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


KILLER = """
import os, signal, sys, yaml
import storage.growth as growth
from dsclab.studies.sample_complexity import KIND
path, step, spec = sys.argv[1], int(sys.argv[2]), KIND.parse(yaml.safe_load(open(sys.argv[3])))
calls = {"mv": 0}
real_mv, real_to_zarr = growth._mv, None
def mv(a, b):
    calls["mv"] += 1
    if calls["mv"] == step:          # step 1: before the old store moves; 2: between the two moves
        os.kill(os.getpid(), signal.SIGKILL)
    real_mv(a, b)
growth._mv = mv
if step == 3:                       # after the two moves, before the old copy is removed
    real_rm = growth._rm
    def rm(p):
        if p.endswith(growth.OLD):
            os.kill(os.getpid(), signal.SIGKILL)
        real_rm(p)
    growth._rm = rm
growth.open_store(KIND, spec, path)
"""


@pytest.mark.parametrize("step", [1, 2, 3])
def test_kill_during_growth_loses_nothing(stores, tmp_path, step):
    path = tmp_path / "s.zarr"
    shutil.copytree(stores / "base.zarr", path)
    before = values(path)
    f = tmp_path / "grown.yaml"
    f.write_text(yaml.safe_dump({**BASE, "n": [100, 300, 1000]}))
    p = subprocess.run([sys.executable, "-c", KILLER, str(path), str(step), str(f)], cwd=Path(__file__).parents[1],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    # whatever the moment, the next open finds the stored values (old layout or grown) ...
    storage.recover(str(path))
    now = values(path)
    xr.testing.assert_identical(now.sel(n=[100, 300]), before)
    # ... and a rerun completes the grown study, equal to a run that was never killed
    out = run(spec_of(n=[100, 300, 1000]), path)
    assert out["computed"] == 1 and out["done"] == 3
    assert not any(Path(str(path) + s).exists() for s in (".grow-new", ".grow-old"))
    xr.testing.assert_identical(values(path), values(stores / "fresh.zarr"))


MEMO = {"kind": "memorization", "name": "grow_digits", "d": [4], "n": [4, 8], "seed": [0],
        "train": {"steps": 20, "width": 16, "depth": 1, "batch_size": 32},
        "evaluation": {"t": [0.1, 1.0], "n_alpha": 4, "nfe": 4, "n_samples": 16, "keep": 2}, "workers": 1}


def test_memorization_grows_n_in_place(harness, tmp_path):
    """The real-data kind grows like the synthetic ones: n added computes only the new cells, and the
    store equals a fresh run of the grown spec (the split and the paired draws do not depend on n)."""
    from dsclab.studies.memorization import KIND as MEMO_KIND
    from flows.study import run_flow

    base, grown_spec = MEMO_KIND.parse(MEMO), MEMO_KIND.parse({**MEMO, "n": [4, 8, 16]})
    grown, fresh = tmp_path / "grown.zarr", tmp_path / "fresh.zarr"
    assert run_flow(MEMO_KIND, base, str(grown))["computed"] == 2
    out = run_flow(MEMO_KIND, grown_spec, str(grown))
    assert out["cells"] == 3 and out["computed"] == 1 and out["done"] == 3
    assert run_flow(MEMO_KIND, MEMO_KIND.parse({**MEMO, "name": "other", "n": [4, 8, 16]}), str(fresh))["computed"] == 3
    xr.testing.assert_identical(values(grown), values(fresh))
