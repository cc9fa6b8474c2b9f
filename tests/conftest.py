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

    def complete(self, cells: int):
        """Run it: every one of ``cells`` computed and done, none failed, the figure beside the
        store. Returns the store, loaded."""
        import xarray as xr

        import storage

        out = self.flow(spec=self.spec, store=self.path)
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
