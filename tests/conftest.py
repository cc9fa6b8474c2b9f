import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def test_server():
    """One Prefect API server (a subprocess, on a temporary SQLite database) for the session,
    started by the first module that needs it: starting one costs ~7 s, so each module gets the
    shared server through :func:`harness` instead of a server of its own."""
    import shutil
    import tempfile
    from pathlib import Path

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings
    from prefect.testing.utilities import _find_available_port

    tmp = tempfile.mkdtemp()
    with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{Path(tmp) / 'test.db'}"}):
        server = SubprocessASGIServer(port=_find_available_port())
        server.start(timeout=120)
    yield server
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def harness(test_server):
    """The flows of one test module run against the session's test server: what
    ``prefect_test_harness`` does around its own server (the API URL in this process's settings,
    also as the global settings context, and the server registered as Prefect's default one),
    undone after the module, with the log and event workers drained."""
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    prior = SubprocessASGIServer._instances.get(None)
    SubprocessASGIServer._instances[None] = test_server
    try:
        with temporary_settings({PREFECT_API_URL: test_server.api_url}), \
                prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
            yield

            async def drain():  # as prefect_test_harness does before it stops its server
                try:
                    result = APILogWorker.instance().drain()
                    if hasattr(result, "__await__"):
                        await result
                except RuntimeError:
                    pass
                result = EventsWorker.drain_all()
                if hasattr(result, "__await__"):
                    await result

            run_coro_as_sync(drain())
    finally:
        if prior is not None:
            SubprocessASGIServer._instances[None] = prior
        else:
            SubprocessASGIServer._instances.pop(None, None)


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
