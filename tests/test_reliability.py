"""Reliability (issue 8): concurrent writers, and cells that fail while the rest complete."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
import yaml

import storage
from dsclab import cli
from dsclab.spec import parse_spec
from dsclab.studies.sample_complexity import numerics as sc

GRID = {"name": "conc", "d": [2, 3], "n": [10, 20, 30, 40], "seed": [0, 1], "nfe": [5],
        "evaluation": {"t": [0.1, 1.0], "delta": [0.1]}}

WRITER = textwrap.dedent("""
    import sys, numpy as np, xarray as xr
    import storage
    from dsclab.spec import parse_spec
    import yaml
    spec = parse_spec(yaml.safe_load(open(sys.argv[1])))
    path, part, parts = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for i, c in enumerate(spec.cells()):
        if i % parts != part:
            continue
        v = float(c.d * 1000 + c.n * 10 + c.seed)
        vals = xr.Dataset({"score_l2": (("t",), [v, v + 0.5]), "train_seconds": ((), v)}, coords={"t": [0.1, 1.0]})
        idx = {"d": c.d, "n": c.n, "seed": c.seed, "estimator": c.estimator}
        storage.write_cell(path, vals, idx)
        storage.mark_cells(path, [idx], storage.DONE)
""")


def test_four_concurrent_writers_lose_nothing(tmp_path):
    """4 processes write disjoint cells of one store at once; the result equals a serial run."""
    spec = parse_spec(GRID)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(GRID))
    (tmp_path / "writer.py").write_text(WRITER)
    stores = {}
    for mode in ("serial", "concurrent"):
        path = str(tmp_path / f"{mode}.zarr")
        storage.create_or_open(path, sc.template(spec), sc.CELL_DIMS)
        args = lambda part, parts: [sys.executable, str(tmp_path / "writer.py"), str(tmp_path / "spec.yaml"),
                                    path, str(part), str(parts)]
        if mode == "serial":
            subprocess.run(args(0, 1), check=True)
        else:
            procs = [subprocess.Popen(args(k, 4)) for k in range(4)]
            assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
        stores[mode] = xr.open_zarr(path, consolidated=False).load()
    xr.testing.assert_identical(stores["serial"], stores["concurrent"])
    ds = stores["concurrent"]
    assert int((ds.status == storage.DONE).sum()) == len(spec.cells()) == 16
    want = ds.d * 1000 + ds.n * 10 + ds.seed
    np.testing.assert_array_equal(ds.train_seconds.isel(estimator=0).values, want.transpose("d", "n", "seed").values)


TINY = {"name": "fail", "d": [2], "n": [40, 80, 160], "seed": [0], "nfe": [4],
        "sampler": ["euler_maruyama"], "train": {"steps": 60, "width": 16, "depth": 2},
        "evaluation": {"t": [0.1, 1.0], "n_score": 100, "n_samples": 100}}


def test_failed_cells_marked_others_complete_rerun_retries_only_them(harness, tmp_path, monkeypatch, capsys):
    """Training of n=80 diverges and sampling of n=160 blows up: both are marked failed, n=40
    completes, `dsclab run` exits 3 and `dsclab status` shows them; a rerun computes exactly the
    two failed cells."""
    import dsclab.train as train_mod

    real_ensemble, real_evaluate = train_mod.train_ensemble, sc.evaluate

    def diverging(datasets, seeds, **kw):
        out = real_ensemble(datasets, seeds, **kw)
        return [None if x.shape[0] == 80 else r for x, r in zip(datasets, out)]  # as a NaN loss would

    def exploding(spec, cell, score_hat, result=None):
        if cell.n == 160:
            raise FloatingPointError("sampler euler_maruyama at nfe=4 produced non-finite samples")
        return real_evaluate(spec, cell, score_hat, result)

    monkeypatch.setattr(train_mod, "train_ensemble", diverging)
    monkeypatch.setattr(sc, "evaluate", exploding)
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(TINY))
    store = str(tmp_path / "fail.zarr")
    assert cli.main(["run", str(f), "--store", store]) == 3
    st = storage.read_status(store).sel(d=2, seed=0, estimator="dsm")
    assert [int(v) for v in st.values] == [storage.DONE, storage.FAILED, storage.FAILED]
    capsys.readouterr()
    assert cli.main(["status", store]) == 0
    out = capsys.readouterr().out
    assert "failed 2" in out
    reasons = dict((idx["n"], r) for idx, r in storage.failures(store))
    assert reasons == {80: "training diverged: the loss became NaN or infinite",
                       160: "evaluation: FloatingPointError: sampler euler_maruyama at nfe=4 produced non-finite samples"}
    ds = xr.open_zarr(store)
    assert ds.failure.sel(d=2, seed=0, estimator="dsm", n=40).values.item() == ""
    for n, r in reasons.items():
        assert f"d=2 n={n} seed=0 estimator=dsm: {r}" in out

    monkeypatch.setattr(train_mod, "train_ensemble", real_ensemble)
    monkeypatch.setattr(sc, "evaluate", real_evaluate)
    from flows.study import sample_complexity

    out = sample_complexity(spec=parse_spec(TINY), store=store)
    assert out["computed"] == 2 and out["done"] == 3 and out["failed"] == 0
    assert (storage.read_status(store) == storage.DONE).all()
    assert storage.failures(store) == [] and (xr.open_zarr(store).failure == "").all()  # reasons cleared


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_study_on_a_url_store(harness, tmp_path, scheme):
    """The whole flow on an fsspec URL store: ``file://`` (an absolute local path as a URL) and
    ``memory://`` (fsspec's in-process filesystem; the flow's tasks run in threads of this process).
    Every cell is done, checkpoints lie in ``<name>.files`` under the same URL scheme, and a rerun
    computes nothing."""
    import fsspec

    from flows.study import sample_complexity

    spec = parse_spec({**TINY, "name": f"url-{scheme}", "n": [40, 80]})
    url = f"file://{tmp_path}/s.zarr" if scheme == "file" else f"memory://dsclab-{tmp_path.name}/s.zarr"
    out = sample_complexity(spec=spec, store=url)
    assert out == {"store": url, "cells": 2, "done": 2, "failed": 0, "computed": 2,
                   "plot": None}  # a URL store: the figure is drawn only for local stores
    ds = xr.open_zarr(url)
    assert (ds.status == storage.DONE).all() and np.isfinite(ds.score_l2.values).all()
    fs, root = fsspec.core.url_to_fs(storage.files_url(url))
    assert len(fs.glob(f"{root}/checkpoints/*.pt")) == 2
    if scheme == "file":
        assert (tmp_path / "s.zarr" / "status").is_dir()  # really on the local disk
    assert sample_complexity(spec=spec, store=url)["computed"] == 0
    from storage.check import check_store

    assert check_store(url) == []  # `dsclab check` reads URL stores too


def test_a_non_numerical_error_fails_the_run_and_leaves_its_cell_pending(harness, tmp_path, monkeypatch, capsys):
    """A bug-like exception (here a KeyError) in one cell's evaluation is not a numerical failure:
    the cell is neither marked failed nor given NaN values, it stays pending; the other cell
    completes; `dsclab run` ends with exit 1 and a last line naming the error; once the bug is
    gone a rerun computes exactly that cell."""
    real = sc.evaluate

    def buggy(spec, cell, score_hat, result=None):
        if cell.n == 80:
            raise KeyError("no variable 'x' (a shape bug)")
        return real(spec, cell, score_hat, result)

    monkeypatch.setattr(sc, "evaluate", buggy)
    grid = {**TINY, "name": "bug", "n": [40, 80]}
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(grid))
    store = str(tmp_path / "bug.zarr")
    capsys.readouterr()
    assert cli.main(["run", str(f), "--store", store]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dsclab: error: 1 task(s) of study 'bug' raised errors that are not numerical") and \
        "KeyError" in last, last
    st = storage.read_status(store).sel(d=2, seed=0, estimator="dsm")
    assert [int(v) for v in st.values] == [storage.DONE, storage.PENDING]
    assert storage.failures(store) == []
    assert np.isnan(xr.open_zarr(store).score_l2.sel(n=80).values).all()

    monkeypatch.setattr(sc, "evaluate", real)
    from flows.study import sample_complexity

    out = sample_complexity(spec=parse_spec(grid), store=store)
    assert out["computed"] == 1 and out["done"] == 2 and out["failed"] == 0
