import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_test_server():
    """One Prefect test server per test process (each pytest-xdist worker): the server
    ``prefect_test_harness`` starts (``SubprocessASGIServer``, a temporary SQLite database),
    started once, by the first module that asks for :func:`harness`, instead of once per module
    (a server's start costs ~10 CPU-seconds: interpreter, imports, migrations; ~4 on a copy of
    the template database of `dsclab run`'s temporary servers, which it saves when there is none
    yet: ``flows.temporary_server``). Yields (server, database URL); stopped, its folder removed,
    at the end of the session."""
    import shutil
    import tempfile

    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings
    from prefect.testing.utilities import _find_available_port

    from flows import temporary_server as ts

    folder = Path(tempfile.mkdtemp(prefix="dsclab-test-server-"))
    database = ts.database_url(folder)
    # the migrated template database of `dsclab run`'s temporary servers, when there is one
    template = ts.template_path()
    copied = template is not None and ts.copy_template(template, folder / ts.DATABASE)
    with temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: database}), \
            pytest.MonkeyPatch.context() as mp:
        for name, value in ts.block_registration(folder, copied).items():
            mp.setenv(name, value)
        server = SubprocessASGIServer(port=_find_available_port())
        # a bound on another process's start, not a speed check: 120 s ran out at a load of 20 on 2 cores
        server.start(timeout=600)
    if template is not None and not copied:
        ts.save_template(folder / ts.DATABASE, template)  # answered, no flow run yet
    try:
        yield server, database
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def harness(prefect_test_server):
    """The flows of one test module run against the process's Prefect test server
    (:func:`prefect_test_server`), with the settings ``prefect_test_harness`` enters (prefect
    3.8.8), entered for this module only and left at its end, after draining the log and event
    workers: a module that does not ask for it sees no server. Modules share the server's
    database one after the other (flow runs, logs and artifacts accumulate); a test that reads
    them back filters by what it ran."""
    import contextlib

    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.server.database.dependencies import temporary_database_interface
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    server, database = prefect_test_server
    prior = SubprocessASGIServer._instances.get(None)
    with contextlib.ExitStack() as stack:
        stack.enter_context(temporary_database_interface())
        stack.enter_context(temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: database}))
        SubprocessASGIServer._instances[None] = server  # flows find this server, start none of their own
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
        stack.enter_context(prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()))
        try:
            yield
        finally:
            async def drain():  # as prefect_test_harness does before it stops its server
                import inspect

                try:
                    result = APILogWorker.instance().drain()
                    if inspect.isawaitable(result):
                        await result
                except RuntimeError:  # never started
                    pass
                result = EventsWorker.drain_all()  # no stale events into the next module
                if inspect.isawaitable(result):
                    await result

            run_coro_as_sync(drain())
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


SHARED_TEAM = "prefect_team"
"""The plugin (``tests/prefect_team.py``) whose session-wide team setup (a ``dsclab server``, its
deployments and a worker: ~50 CPU-seconds to start) the modules naming it in ``pytest_plugins``
share: under xdist they run on one worker, one after the other, so the setup starts once, not
once per worker that draws one of them."""


@functools.lru_cache(maxsize=None)
def _scope(path) -> str:
    """The xdist work unit of a test file: the file, or ``SHARED_TEAM`` for a module that uses it."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    return SHARED_TEAM if f'pytest_plugins = ["{SHARED_TEAM}"]' in text else Path(path).stem


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the modules of :data:`SHARED_TEAM` as one work unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    root = config.rootpath

    class LoadFileSharingTheTeam(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return _scope(root / file) if file.endswith(".py") else file

    return LoadFileSharingTheTeam(config, log)


def pytest_collection_modifyitems(config, items):
    """The longest work units first (:data:`MODULE_SECONDS`, summed over a shared team's modules),
    each unit's modules together and in their order, each module's tests in theirs."""
    scopes = {item.path: _scope(item.path) for item in items}
    seconds: dict = {}
    for path in set(scopes):
        seconds[scopes[path]] = seconds.get(scopes[path], 0) + MODULE_SECONDS.get(path.stem, 0)
    first = {}
    for k, item in enumerate(items):
        first.setdefault(item.path, k)
    items.sort(key=lambda item: (-seconds[scopes[item.path]], scopes[item.path], first[item.path]))
