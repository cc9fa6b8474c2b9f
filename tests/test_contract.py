"""The study contract (``dsclab/study.py``): one suite, parametrized over every registered study
kind — the built-in ones and those of installed plugins alike (the example plugin under
``examples/`` adds ``denoiser_gap``). Each kind's test-sized ``small`` preset (and its
``small_variants``, cases ``<kind>:<variant>``, for the layout, flow and train-stage tests):

* declares its layout (template attributes, cell axes, units and long names) and plans every
  pending cell exactly once;
* runs through its Prefect flow to a complete store, which is — for the built-in kinds — the
  store the code made before the study layer was introduced, value for value
  (``tests/golden/<kind>.zarr.zip``, wall times excepted, floats within :data:`GOLDEN_RTOL` of
  another CPU's rounding: no refactoring since has changed a number);
* reruns with 0 cells computed and the store unchanged; yields a report, a plot and a table;
* is refused in one line with exit code 2 and nothing written when a value is bad;
* runs on a Dask cluster (2 worker processes) to the same numbers (a built-in kind: one group of its
  golden store computed again there);
* trains in its train stage only, on the device that stage is given (not the spec's), and its
  evaluation never trains.

Regenerate the golden stores only for a change that is meant to change numbers (and bump the
dsclab version): ``python tests/test_contract.py regenerate``.
"""
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import dsclab
import storage
from dsclab.study import KINDS, Status

NAMES = sorted(KINDS)
CASES = NAMES + [f"{name}:{v}" for name in NAMES for v in KINDS[name].small_variants]
"""Each kind's small preset, then its further test-sized presets (``StudyKind.small_variants``) as
``<kind>:<variant>``: these run the layout, flow and train-stage tests, without a golden store."""
GOLDEN = Path(__file__).resolve().parent / "golden"


def without_wall_times(ds: xr.Dataset) -> xr.Dataset:
    return ds.drop_vars([v for v in ds.data_vars if "seconds" in v]).load()


GOLDEN_RTOL = 1e-8
"""How far a float of a golden store may move on another CPU. The golden stores were written on a
Xeon; on an AMD EPYC the same code gives the same float32 training bit for bit, but some float64
reductions (BLAS kernels summing in another order) differ in the last bits: at most 5.5e-10
relative (score_learning's kl_gauss, whose log1p of near-zero terms amplifies them), 1.9e-16 in
computational_gap's mse_se. A change that means another draw or another formula moves values by
1e-3 or more; 1e-8 tells the two apart."""


def assert_same_store(ds: xr.Dataset, ref: xr.Dataset) -> None:
    """``ds`` equals the golden store ``ref``, wall times excepted: every coordinate, attribute and
    non-float value identical, floats equal within :data:`GOLDEN_RTOL` (NaN where NaN)."""
    a, b = without_wall_times(ds), without_wall_times(ref)
    floats = [v for v in b.data_vars if b[v].dtype.kind == "f"]
    xr.testing.assert_identical(a.drop_vars(floats), b.drop_vars(floats))
    for v in floats:
        assert a[v].attrs == b[v].attrs and a[v].dims == b[v].dims, v
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=GOLDEN_RTOL, atol=0, err_msg=v)


def golden(name: str, tmp_path: Path) -> xr.Dataset | None:
    """The golden store of kind ``name`` (unzipped into tmp_path), or None for a kind without one."""
    z = GOLDEN / f"{name}.zarr.zip"
    if not z.exists():
        return None
    out = tmp_path / f"golden-{name}.zarr"
    zipfile.ZipFile(z).extractall(out)
    return xr.open_zarr(out)


def small(case: str):
    """(kind, spec) of a case: a kind's name (its ``small`` preset) or ``<kind>:<variant>``."""
    name, _, variant = case.partition(":")
    kind = KINDS[name]
    return kind, kind.parse(kind.small_variants[variant] if variant else kind.small)


@pytest.mark.parametrize("case", CASES)
def test_layout_and_plan(case):
    kind, spec = small(case)
    name = kind.name
    assert spec.kind == name
    tpl = kind.template(spec)
    assert tpl.attrs["study"] == name and tpl.attrs["spec_hash"] == spec.hash
    assert tpl.attrs["dsclab_version"] == dsclab.__version__
    assert json.loads(tpl.attrs["spec"]) == spec.model_dump(mode="json", exclude={"store"})
    assert tpl.attrs["settings_hash"] == spec.settings_hash
    # cell identity (issue 19): every declared axis is a dim of the store holding the spec's values,
    # and keys depend on neither the study's name nor the other values of the grid
    dims = kind.dims(spec)
    assert dims[:len(kind.cell_dims)] == tuple(kind.cell_dims), "a spec's cell dims begin with the kind's"
    assert set(dims) <= set(spec.AXES), "every cell dim must be a declared axis"
    for dim in spec.AXES:
        values = [v["name"] if isinstance(v, dict) else v for v in spec.axis(dim)]
        assert list(tpl[dim].values) == values, dim
    renamed = kind.parse({**spec.model_dump(mode="json"), "name": "renamed"})
    assert [c.key for c in kind.cells(renamed)] == [c.key for c in kind.cells(spec)]
    first = kind.cells(spec)[0]
    fewer = kind.parse({**spec.model_dump(mode="json"), **{d: [kind.index(first)[d]] for d in dims
                                                           if "." not in spec.AXES[d] and d != "data"}})
    assert first.key in {c.key for c in kind.cells(fewer)}
    assert tpl["status"].dims == dims and (tpl["status"] == Status.PENDING).all()
    for v, da in tpl.data_vars.items():
        if da.dtype.kind == "f":
            assert "long_name" in da.attrs and "units" in da.attrs, v
    cells = kind.cells(spec)
    indices = {tuple(kind.index(c).items()) for c in cells}
    assert len(indices) == len(cells) == tpl["status"].size  # one region per cell, every region a cell
    assert len({c.key for c in cells}) == len(cells)
    for c in cells:
        assert tpl["status"].sel(kind.index(c)).size == 1
    planned, evaluated = [], []
    for g in kind.plan(spec, cells):
        planned += [c.key for c in g.cells]
        for batch in g.eval_batches():
            assert {c.key for c in batch} <= {c.key for c in g.cells}
            evaluated += [c.key for c in batch]
    assert sorted(planned) == sorted(evaluated) == sorted(c.key for c in cells)
    assert kind.plan(spec, []) == []


@pytest.mark.parametrize("case", CASES)
def test_small_preset_through_the_flow(study_run, tmp_path, case):
    from flows.study import run_flow

    kind, spec = small(case)
    run = study_run(lambda spec, store: run_flow(kind, spec, store), spec, "s.zarr")
    ds = run.complete(cells=len(kind.cells(spec)))
    assert ds.attrs["study"] == kind.name
    ref = golden(case, tmp_path) if ":" not in case else None
    if ref is not None:
        assert_same_store(ds, ref)

    text = kind.report(ds)
    assert isinstance(text, str) and text.strip()
    assert run.report == text  # the flow's (its report artifact's), which `dsclab run` prints
    table = kind.table(ds)
    assert len(table) > 0

    # the kind's plot, drawn by the flow beside the store (which `dsclab run` prints), is a PNG and
    # the run's plot artifact (not drawn again here: sampler_convergence's costs ~4 CPU-seconds)
    import base64

    from prefect.artifacts import Artifact

    from flows.artifacts import artifact_key

    art = Artifact.get(artifact_key(spec.name, "plot"))
    figure = (tmp_path / "s.files" / "plot.png").read_bytes()
    assert figure[:8] == b"\x89PNG\r\n\x1a\n"
    assert art.data == "data:image/png;base64," + base64.b64encode(figure).decode()
    # a rerun computes nothing: no checkpoint is written again (kinds with a train stage)
    ckpts = sorted((tmp_path / "s.files" / "checkpoints").glob("*.pt"))
    assert bool(ckpts) == kind.trains(spec)
    mtimes = [p.stat().st_mtime_ns for p in ckpts]
    run.rerun_computes_nothing(ds)
    assert [p.stat().st_mtime_ns for p in ckpts] == mtimes


def with_device(data, device: str):
    """``data`` (a spec's mapping) with every ``device`` field, at any depth, set to ``device``."""
    if isinstance(data, dict):
        return {k: device if k == "device" else with_device(v, device) for k, v in data.items()}
    if isinstance(data, list):
        return [with_device(v, device) for v in data]
    return data


def tensors(obj) -> list:
    """Every tensor of a checkpoint payload (nested dicts, lists and tuples)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


@pytest.mark.parametrize("case", CASES)
def test_trains_in_the_train_stage_on_its_device_and_never_in_evaluate(tmp_path, monkeypatch, request, case):
    """Every kind's training happens in its train stage, on the device the stage is given, and
    ``evaluate`` never trains (``dsclab.study``).

    The small preset with every ``device`` field of the spec set to the device the test does not
    give (CUDA where the test gives the CPU: a kind training on the spec's device fails on a
    machine without one). (a) The first planned group trains on the given device: every optimiser
    built during ``train`` holds parameters on it, and every cell gets a payload that a checkpoint
    file carries (``weights_only``). Payloads hold CPU tensors by design (a checkpoint file does not
    depend on the device that wrote it, and the group's device memory is free once it returns), so
    where the training ran is asserted on the optimisers' parameters, not on the payload. (b) The
    evaluation of one of its cells, with that checkpoint restored onto the given device, returns
    a Dataset while building an optimiser raises."""
    import torch

    from storage import files
    from tasks.stages import FileCache

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: intra-op threads only spin (tests/conftest.py, one_thread)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    given = "cuda" if torch.cuda.is_available() else "cpu"
    kind, small_spec = small(case)
    spec = kind.parse(with_device(small_spec.model_dump(mode="json"), "cpu" if given == "cuda" else "cuda"))
    # planned on the preset as it is (a plan may size groups by the memory of the spec's device);
    # the same cells of the other spec, by their coordinates
    first = kind.plan(small_spec, kind.cells(small_spec))[0]
    same = {tuple(kind.index(c).items()): c for c in kind.cells(spec)}
    cells = [same[tuple(kind.index(c).items())] for c in first.cells]
    cache = FileCache(str(tmp_path / "s.zarr"))
    prepared = {key: kind.prepare(spec, key, cache) for key in first.data}

    from dsclab.train import CosineAdam  # the score networks' optimiser (not a torch.optim.Optimizer)

    built = []  # the device types of each optimiser's parameters
    init, init_cosine = torch.optim.Optimizer.__init__, CosineAdam.__init__

    def spy(self, params, defaults):
        init(self, params, defaults)
        built.append({p.device.type for g in self.param_groups for p in g["params"]})

    def spy_cosine(self, params, *args, **kwargs):
        init_cosine(self, params, *args, **kwargs)
        built.append({p.device.type for p in self.params})

    trained = None
    if kind.trains(spec):
        with monkeypatch.context() as m:
            m.setattr(torch.optim.Optimizer, "__init__", spy)
            m.setattr(CosineAdam, "__init__", spy_cosine)
            out = kind.train(spec, cells, cache, prepared, given)
        assert set(out) == {c.key for c in cells}
        assert all(isinstance(p, dict) for p in out.values()), out  # nothing fails on the small preset
        assert all(t.device.type == "cpu" for p in out.values() for t in tensors(p))
        if any(tensors(p) for p in out.values()):
            assert built, "a payload of trained tensors, but no optimiser was built in train"
        assert all(devices == {given} for devices in built), (given, built)
        u = files.url(str(tmp_path / "s.zarr"), "checkpoints", "cell.pt")
        files.save_checkpoint(u, out[cells[0].key])
        trained = files.load_checkpoint(u)

    def refuse(self, *args, **kwargs):
        raise AssertionError("evaluate built an optimiser: it trains")

    with monkeypatch.context() as m:
        m.setattr(torch.optim.Optimizer, "__init__", refuse)
        m.setattr(CosineAdam, "__init__", refuse)
        ds = kind.evaluate(spec, cells[0], cache, prepared, trained, given)
    assert isinstance(ds, xr.Dataset)


def bad_specs(data: dict) -> list[tuple[dict, str]]:
    """(bad spec, field the message must name): values every kind refuses."""
    out = [({**data, "workers": 0}, "workers"), ({**data, "no_such_field": 1}, "no_such_field")]
    if "seed" in data:
        out.append(({**data, "seed": [0, 0]}, "seed"))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_bad_spec_refused_in_one_line_nothing_written(tmp_path, monkeypatch, capsys, name):
    from dsclab.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no temporary server; nothing may reach it
    kind = KINDS[name]
    for i, (data, field) in enumerate(bad_specs(dict(kind.small))):
        f = tmp_path / f"bad{i}.yaml"
        f.write_text(yaml.safe_dump(data))
        store = tmp_path / f"bad{i}.zarr"
        assert main(["run", str(f), "--store", str(store)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"dsclab: error: {field}"), err
        assert not store.exists()
        assert not Path(storage.files_url(str(store))).exists()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=None, local_directory=str(tmp_path_factory.mktemp("dask"))) as cluster:
        yield cluster.scheduler_address


def pending_again(kind, spec, path: Path) -> list[dict]:
    """Make the cells of the first group ``kind`` plans for ``spec`` pending again in the complete
    store at ``path``, every float of theirs NaN (so that only computing them again restores the
    store); returns their indices."""
    cells = kind.plan(spec, kind.cells(spec))[0].cells
    indices = [kind.index(c) for c in cells]
    ds = xr.open_zarr(path)
    for index in indices:
        floats = [v for v in ds.data_vars if ds[v].dtype.kind == "f" and set(index) <= set(ds[v].dims)]
        one = ds[floats].sel({dim: [value] for dim, value in index.items()})
        storage.write_cell(str(path), xr.full_like(one, np.nan).load(), index)
    storage.mark_cells(str(path), indices, storage.PENDING)
    return indices


@pytest.mark.parametrize("name", NAMES)
def test_small_preset_on_dask(harness, dask_cluster, tmp_path, name):
    """The kind's stages on a Dask cluster of two worker processes: its kind object, cells,
    payloads and checkpoints cross processes. A built-in kind resumes its golden store with the
    cells of the preset's first group pending again (:func:`pending_again`): the flow on Dask
    computes exactly those (train and evaluate) and the store equals the golden store again; the
    whole preset through the flow is ``test_small_preset_through_the_flow``'s, and resuming equals
    a fresh run (tests/test_kill.py, tests/test_growth.py). A kind without a golden store (a
    plugin's) runs its whole preset on Dask, equal to the threads run bit for bit."""
    from flows.runners import RunnerSpec
    from flows.study import run_flow

    kind, spec = small(name)
    path = tmp_path / "dask.zarr"
    ref = golden(name, tmp_path)
    pending = len(kind.cells(spec))
    if ref is not None:
        shutil.copytree(tmp_path / f"golden-{name}.zarr", path)
        pending = len(pending_again(kind, spec, path))
        assert int((storage.read_status(str(path)) == storage.DONE).sum()) == len(kind.cells(spec)) - pending
    out = run_flow(kind, spec, str(path), RunnerSpec(kind="dask", address=dask_cluster))
    assert out["done"] == out["cells"] == len(kind.cells(spec)) and out["failed"] == 0 and out["computed"] == pending
    ds = xr.open_zarr(path)
    if ref is None:  # a plugin kind: the same numbers as threads in this process, bit for bit
        run_flow(kind, spec, str(tmp_path / "threads.zarr"))
        ref = xr.open_zarr(str(tmp_path / "threads.zarr"))
        xr.testing.assert_identical(without_wall_times(ds), without_wall_times(ref))
    else:
        assert_same_store(ds, ref)


def regenerate() -> None:  # pragma: no cover - run by hand: python tests/test_contract.py regenerate
    import tempfile

    from prefect.testing.utilities import prefect_test_harness

    from dsclab.study import BUILTIN
    from flows.study import run_flow

    with prefect_test_harness(server_startup_timeout=600), tempfile.TemporaryDirectory() as tmp:
        for name in BUILTIN:
            kind, spec = small(name)
            path = Path(tmp) / f"{name}.zarr"
            run_flow(kind, spec, str(path))
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for f in sorted(path.rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(path).as_posix())
            (GOLDEN / f"{name}.zarr.zip").write_bytes(buf.getvalue())
            shutil.rmtree(path)
            print(f"wrote {GOLDEN / f'{name}.zarr.zip'}")


if __name__ == "__main__" and sys.argv[1:] == ["regenerate"]:
    regenerate()
