"""The results store: template, round trip, region writes and refusals."""
import numpy as np
import pytest
import xarray as xr
from xarray.testing import assert_identical

import storage
from dsclab.study import parse_spec
from dsclab.studies.sample_complexity import layout as sc

BASE = {"name": "s", "d": [2, 4], "n": [10, 20], "seed": [0, 1], "nfe": [5], "sampler": ["euler_maruyama"],
        "evaluation": {"t": [0.1, 1.0], "delta": [0.1]}}


def spec(**kw):
    return parse_spec({**BASE, **kw})


def test_template_round_trip(tmp_path):
    sp = spec()
    path = str(tmp_path / "s.zarr")
    tpl = sc.template(sp)
    assert storage.create_or_open(path, tpl, sc.CELL_DIMS) is True
    back = storage.open_results(path).load()
    assert_identical(back, storage.store.with_failure(tpl))  # the template plus an empty `failure`
    assert (back.failure == "").all() and back.failure.dims == back.status.dims
    assert {"d", "n", "seed", "estimator", "sampler", "nfe", "t", "delta"} <= set(back.dims)
    assert np.isnan(back.score_l2).all() and (back.status == storage.PENDING).all()
    assert back.score_quantile.dims == ("d", "n", "seed", "estimator", "t", "delta")
    # chunk 1 along every cell axis, whole along the others
    enc = back.score_quantile.encoding["chunks"]
    assert enc == (1, 1, 1, 1, 2, 1)


def test_region_write_round_trip_and_status(tmp_path):
    sp = spec()
    path = str(tmp_path / "s.zarr")
    storage.create_or_open(path, sc.template(sp), sc.CELL_DIMS)
    vals = xr.Dataset({"score_l2": (("t",), [1.5, 2.5]), "train_seconds": ((), 3.0)}, coords={"t": [0.1, 1.0]})
    idx = {"d": 4, "n": 10, "seed": 1, "estimator": "dsm"}
    storage.write_cell(path, vals, idx)
    storage.mark_cells(path, [idx], storage.DONE)
    ds = storage.open_results(path).load()
    cell = ds.sel(idx)
    np.testing.assert_array_equal(cell.score_l2.values, [1.5, 2.5])
    assert float(cell.train_seconds) == 3.0 and int(cell.status) == storage.DONE
    others = ds.where(~((ds.d == 4) & (ds.n == 10) & (ds.seed == 1)))
    assert np.isnan(others.score_l2).all()
    assert int((ds.status == storage.DONE).sum()) == 1
    # consolidation keeps the content identical
    storage.consolidate(path)
    assert_identical(xr.open_zarr(path).load(), ds)


def test_reopen_same_spec_keeps_values_and_refuses_other_spec(tmp_path):
    path = str(tmp_path / "s.zarr")
    storage.create_or_open(path, sc.template(spec()), sc.CELL_DIMS)
    idx = {"d": 2, "n": 20, "seed": 0, "estimator": "dsm"}
    storage.mark_cells(path, [idx], storage.DONE)
    assert storage.create_or_open(path, sc.template(spec()), sc.CELL_DIMS) is False
    before = storage.open_results(path).load()
    with pytest.raises(storage.StoreError, match="other values of the axis n"):
        storage.create_or_open(path, sc.template(spec(n=[10, 30])), sc.CELL_DIMS)
    with pytest.raises(storage.StoreError, match="another spec"):
        storage.create_or_open(path, sc.template(spec(train={"steps": 7})), sc.CELL_DIMS)
    assert_identical(storage.open_results(path).load(), before)
    # the same spec under another dsclab version (its hash includes the version): named as such
    newer = sc.template(spec())
    newer.attrs.update(spec_hash="0" * 16, dsclab_version="99.0")
    with pytest.raises(storage.StoreError, match=r"made by dsclab .* differ from this dsclab 99\.0's"):
        storage.create_or_open(path, newer, sc.CELL_DIMS)
    assert_identical(storage.open_results(path).load(), before)
    # the same spec whose layout gained a variable (a store of an earlier layout): refused, unchanged
    grown = sc.template(spec())
    grown["new_metric"] = grown["train_loss"].copy()
    with pytest.raises(storage.StoreError, match="lacks the variable.s. new_metric"):
        storage.create_or_open(path, grown, sc.CELL_DIMS)
    assert_identical(storage.open_results(path).load(), before)


def test_store_path_that_is_a_file_is_refused(tmp_path):
    p = tmp_path / "f.zarr"
    p.write_text("x")
    with pytest.raises(storage.StoreError, match="is a file"):
        storage.create_or_open(str(p), sc.template(spec()), sc.CELL_DIMS)
    assert p.read_text() == "x"


def test_memory_url_store():
    url = "memory://dsclab-test/s.zarr"
    tpl = sc.template(spec())
    storage.create_or_open(url, tpl, sc.CELL_DIMS)
    storage.mark_cells(url, [{"d": 2, "n": 10, "seed": 0, "estimator": "dsm"}], storage.DONE)
    assert int(storage.read_status(url).sum()) == 1


def _store_with_done_cell(tmp_path):
    path = str(tmp_path / "s.zarr")
    storage.create_or_open(path, sc.template(spec()), sc.CELL_DIMS)
    idx = {"d": 4, "n": 10, "seed": 1, "estimator": "dsm"}
    values = sc.template(spec()).sel({k: [v] for k, v in idx.items()}).drop_vars("status")
    values = values.squeeze([k for k in idx]).map(lambda a: a.fillna(1.0))
    storage.write_cell(path, values.drop_vars(list(idx), errors="ignore"), idx)
    storage.mark_cells(path, [idx], storage.DONE)
    return path, idx


def test_check_consistent_store_reports_nothing(tmp_path):
    from storage.check import check_store

    path, _ = _store_with_done_cell(tmp_path)
    assert check_store(path) == []


def test_check_reports_corrupted_and_missing_chunks_and_disagreeing_status(tmp_path):
    from storage.check import check_store

    path, idx = _store_with_done_cell(tmp_path)
    # d=4 is index 1, n=10 index 0, seed=1 index 1, estimator index 0
    chunk = tmp_path / "s.zarr" / "score_l2" / "1.0.1.0.0"
    assert chunk.exists()
    chunk.write_bytes(b"garbage" * 10)
    (tmp_path / "s.zarr" / "w2" / "1.0.1.0.0.0").unlink()
    other = {"d": 2, "n": 20, "seed": 0, "estimator": "dsm"}
    storage.write_cell(path, xr.Dataset({"train_seconds": ((), 5.0)}), other)  # values, status pending
    problems = check_store(path)
    text = "\n".join(problems)
    assert "d=4, n=10, seed=1, estimator=dsm: score_l2: unreadable chunk" in text
    assert "w2: chunk w2/1.0.1.0.0.0 missing" in text
    assert "d=2, n=20, seed=0, estimator=dsm: status pending but values in train_seconds" in text
    assert len(problems) == 3


def test_query_prints_stored_values_and_refuses_bad_selections_in_one_line(tmp_path, capsys):
    """``dsclab query``: a selection picks the value written into that cell; a value that is not on
    the axis (``d=3``), one of the wrong type (``d=two``), an unknown variable, dim or ``--mean`` dim
    is refused with one line and exit code 2."""
    from dsclab.cli import main

    path = str(tmp_path / "s.zarr")
    storage.create_or_open(path, sc.template(spec()), sc.CELL_DIMS)
    idx = {"d": 4, "n": 20, "seed": 1, "estimator": "dsm"}
    storage.write_cell(path, xr.Dataset({"score_l2": (("t",), [0.125, 0.5])}, coords={"t": [0.1, 1.0]}), idx)
    storage.mark_cells(path, [idx], storage.DONE)
    capsys.readouterr()
    assert main(["query", path, "--var", "score_l2", "--sel", "d=4", "n=20", "seed=1", "--mean", "t"]) == 0
    out = capsys.readouterr().out
    assert "0.3125" in out  # (0.125 + 0.5) / 2
    for argv, start in [(["--sel", "d=3"], "d=3 is not a value of d (values: 2, 4)"),
                        (["--sel", "d=two"], "d=two is not a value of d (values: 2, 4)"),
                        (["--sel", "estimator=bsm"], "estimator=bsm is not a value of estimator (values: dsm)"),
                        (["--sel", "x=1"], "score_l2 has no dim 'x'"),
                        (["--mean", "x"], "--mean x: score_l2 has no dim 'x'")]:
        assert main(["query", path, "--var", "score_l2", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"dsclab: error: {start}"), err
    assert main(["query", path, "--var", "nope"]) == 2
    assert capsys.readouterr().err.startswith("dsclab: error: no variable 'nope'")
