import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect server and database for the flows of one test module
    (``prefect_test_harness``)."""
    from prefect.testing.utilities import prefect_test_harness

    # a bound on another process's start, not a speed check: 120 s ran out at a load of 20 on 2 cores
    with prefect_test_harness(server_startup_timeout=600):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """PyTorch on one intra-op thread for a test module, restored after (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): on small tensors (tiny matmuls, exact propagations)
    intra-op threads only add synchronisation, and spin badly on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class StudyRun:
    """A study run through its real Prefect flow on a new store: ``flow(spec=spec, store=path)``."""

    def __init__(self, flow, spec, path: str):
        self.flow, self.spec, self.path = flow, spec, path
        self.report = None  # the flow's report text, once complete

    def complete(self, cells: int):
        """Run it: every one of ``cells`` computed and done, none failed, the figure beside the
        store. Returns the store, loaded."""
        import xarray as xr

        import storage

        out = self.flow(spec=self.spec, store=self.path)
        self.report = out.pop("report")  # the report artifact's text, which `dsclab run` prints
        assert isinstance(self.report, str) and self.report.strip()
        assert out == {"store": self.path, "cells": cells, "done": cells, "failed": 0, "computed": cells,
                       "plot": storage.plot_path(self.path)}
        ds = xr.open_zarr(self.path).load()  # plain xarray, consolidated metadata
        assert (ds.status == storage.DONE).all()
        return ds

    def rerun_computes_nothing(self, before) -> None:
        """Run it again: no cell computed, all done, the store unchanged (``before``, loaded)."""
        import xarray as xr

        out = self.flow(spec=self.spec, store=self.path)
        assert out["computed"] == 0 and out["done"] == out["cells"]
        xr.testing.assert_identical(xr.open_zarr(self.path).load(), before)


@pytest.fixture
def study_run(harness, tmp_path):
    """``study_run(flow, spec, name="tiny.zarr")``: a :class:`StudyRun` on the store ``tmp_path / name``,
    on the module's Prefect test server."""
    return lambda flow, spec, name="tiny.zarr": StudyRun(flow, spec, str(tmp_path / name))


def _share_cores_between_xdist_workers() -> None:
    """Under ``pytest -n N`` (pytest-xdist) each worker process, and every process it starts,
    computes on its share of the cores (``DSCLAB_CORES``, ``OMP_NUM_THREADS``): N workers each
    using every core would only make PyTorch's intra-op threads spin against each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["DSCLAB_CORES"] = share
        os.environ["OMP_NUM_THREADS"] = share
        os.environ["MKL_NUM_THREADS"] = share


_share_cores_between_xdist_workers()


# Seconds each test module took on its own (one process, 2-core AMD EPYC, load ~1, 2026-12-07:
# `pytest -p` timing of every test). Under ``make test`` (``-n 4 --dist loadfile
# --no-loadscope-reorder``) each module runs whole on one worker, in the order below, the longest
# first, so that no long module starts last and runs alone at the end (xdist's default order, by
# number of tests, started the one-test crash and kill modules last). A module not listed runs
# after these; the numbers only order the work, nothing asserts them.
MODULE_SECONDS = {
    "test_s3": 263, "test_contract": 201, "test_postgres": 195, "test_crash": 168, "test_benchmarks": 127,
    "test_kill": 98, "test_reliability": 68, "test_slots": 67, "test_growth": 57, "test_browser": 56,
    "test_dask": 55, "test_auth": 48, "test_search": 39, "test_bootstrap": 36, "test_srk_study": 34,
    "test_temporary_server": 29, "test_computational_gap": 22, "test_immse_study": 21, "test_sparse_pca": 21,
    "test_plugin": 19, "test_samplers": 17, "test_sampler_orders_mixture": 12, "test_new_kind": 12,
}


def pytest_collection_modifyitems(config, items):
    """The longest modules first (:data:`MODULE_SECONDS`); the order within a module is kept."""
    rank = {name: -s for name, s in MODULE_SECONDS.items()}
    items.sort(key=lambda item: rank.get(item.path.stem, 0))  # stable: a module's tests keep their order
