"""The team server on PostgreSQL, for real (issue 21): a PostgreSQL server (Debian's package) in a
temporary data folder on a free loopback port, ``dsclab server --database-url
postgresql+asyncpg://...`` on it, ``dsclab worker`` with four workers (one on the gpu pool, three
on the cpu pool, two flow runs at once each), and eight small flow runs created at once: all
complete, every cell of every store is done, no concurrency slot stays held, and the server's log
has no ``database is locked`` line. Prints the wall time.

Skips, saying why, when no PostgreSQL server binaries are found; fails instead when CI is set
(``.ci/run`` installs them). CI runs as root, and PostgreSQL refuses to: as root the server runs
as the ``postgres`` user (``runuser``). ``team_on`` is the whole setup for any database URL (None:
SQLite under PREFECT_HOME), so that the same runs can be measured on SQLite."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import xarray as xr

import storage
from flows import deployments
from flows import server as srv
from prefect_team import free_port
from team_api import deployment_run, held_slots, wait_flow_run

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"d": [2], "n": [40], "seed": [0], "nfe": [2], "sampler": ["euler_maruyama"],
         "train": {"steps": 20, "width": 8, "depth": 1},
         "evaluation": {"t": [0.5], "n_score": 50, "n_samples": 50}, "workers": 1}  # trains: a few seconds
RUNS = 8
LOCKED = "database is locked"


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (Debian: /usr/lib/postgresql/<version>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).resolve().parent if on_path else None


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server(bindir: Path):
    """A PostgreSQL server in a temporary data folder on a free port of 127.0.0.1 (trust
    authentication, loopback only); yields its asyncpg URL for the database ``prefect``."""
    tmp = Path(tempfile.mkdtemp(prefix="dsclab-pg-"))  # not under pytest's 0700 folder: postgres reads it
    data, port = tmp / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
    proc = None
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust",
                                     "-E", "UTF8", "--no-sync"]), check=True, capture_output=True, timeout=120)
        log = tmp / "postgres.log"
        proc = subprocess.Popen(_as_postgres([str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                                              "-p", str(port), "-k", str(tmp), "-c", "fsync=off",
                                              "-c", "max_connections=200"]),
                                stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.monotonic() + 60
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def team_on(database_url: str | None, tmp: Path, workers_cpu: int = 3, limit: int = 2):
    """``dsclab server`` on ``database_url`` with the sample-complexity deployments only, and
    ``dsclab worker`` with a gpu-pool worker and ``workers_cpu`` cpu-pool workers of ``limit`` flow
    runs each; runs write under ``tmp/results``. Yields {api, logs, results}."""
    port, results = free_port(), tmp / "results"
    results.mkdir()
    api = f"http://127.0.0.1:{port}/api"
    env = srv.base_env(None, PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_WORKER_QUERY_SECONDS="1",
                       DSCLAB_RESULTS_ROOT=str(results))
    env.pop("PREFECT_API_URL", None)
    prefect_file = tmp / "prefect.yaml"
    prefect_file.write_text(deployments.render(["sample_complexity"], builtin_only=True))
    logs = {"server": tmp / "server.log", "worker": tmp / "worker.log"}
    group = srv.Group()
    try:
        server = group.start("dsclab server", [sys.executable, "-m", "flows.server", "server", "--host", "127.0.0.1",
                                               "--port", str(port), "--no-deploy",
                                               *(["--database-url", database_url] if database_url else [])],
                             env, stdout=logs["server"].open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 240
        while "Prefect server ready" not in logs["server"].read_text():
            assert server.poll() is None and time.monotonic() < deadline, logs["server"].read_text()[-3000:]
            time.sleep(0.3)
        deployments.deploy(prefect_file, srv.base_env(api))
        worker = group.start("dsclab worker", [sys.executable, "-m", "flows.server", "worker", "--api", api,
                                               "--gpus", "none", "--cpu", str(workers_cpu), "--limit", str(limit)],
                             env, stdout=logs["worker"].open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        yield {"api": api, "logs": logs, "results": results, "group": group, "worker": worker, "env": env}
    finally:
        group.stop(grace=10)


def run_at_once(team: dict, runs: int = RUNS) -> tuple[float, list[dict], list[str]]:
    """``runs`` small flow runs created at once, half on each deployment (gpu, cpu pools), waited
    for; (wall seconds from the first creation to the last end, flow runs, stores)."""
    api = team["api"]
    t0 = time.perf_counter()
    ids, stores = [], []
    for k in range(runs):
        store = str(team["results"] / f"pg{k}.zarr")
        ids.append(deployment_run(api, {"spec": {**SMALL, "name": f"pg{k}", "store": store}},
                                  deployment="sample-complexity/" + ("gpu" if k % 2 == 0 else "cpu")))
        stores.append(store)
    frs = [wait_flow_run(api, i, 300) for i in ids]
    return time.perf_counter() - t0, frs, stores


@pytest.fixture(scope="module")
def pg_team(tmp_path_factory):
    bindir = postgres_bin()
    if bindir is None:
        reason = "no PostgreSQL server binaries (Debian's postgresql package; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason + " and CI is set")
        pytest.skip(reason)
    t0 = time.perf_counter()
    with postgres_server(bindir) as url, team_on(url, tmp_path_factory.mktemp("pg-team")) as team:
        print(f"\nPostgreSQL and the team server on it ready in {time.perf_counter() - t0:.1f} s")
        yield team


def test_eight_runs_at_once_with_four_workers_on_postgresql(pg_team):
    wall, frs, stores = run_at_once(pg_team)
    server_log = pg_team["logs"]["server"].read_text()
    print(f"\n{RUNS} flow runs at once on PostgreSQL with 4 workers: {wall:.1f} s wall; "
          f"{server_log.count(LOCKED)} '{LOCKED}' lines in the server log")
    bad = [(fr["name"], fr["state_type"], fr["state"]["message"]) for fr in frs if fr["state_type"] != "COMPLETED"]
    assert not bad, (bad, pg_team["logs"]["worker"].read_text()[-4000:])
    for store in stores:
        assert (xr.open_zarr(store).status == storage.DONE).all(), store
    assert held_slots(pg_team["api"]) == {}
    assert LOCKED not in server_log


FAILED_CALLS = ("503 Service Unavailable", "Service Unavailable", "status code 503", "OperationalError")


def test_eight_runs_on_the_default_server_and_worker(tmp_path):
    """The default team set-up, as the README starts it: ``dsclab server`` (no database option)
    and ``dsclab worker`` (one gpu-pool and one cpu-pool worker, one flow run at once each), eight
    small runs queued at once: all complete, and neither log has a ``database is locked`` line or
    a failed API call (a 503, which Prefect answers when its database is busy)."""
    with team_on(None, tmp_path, workers_cpu=1, limit=1) as team:
        wall, frs, stores = run_at_once(team)
        logs = {k: f.read_text() for k, f in team["logs"].items()}
    locked = sum(text.count(LOCKED) for text in logs.values())
    failed = {k: [line for line in text.splitlines() if any(f in line for f in FAILED_CALLS)] for k, text in logs.items()}
    print(f"\n{RUNS} flow runs queued on the default server and worker: {wall:.1f} s wall; {locked} "
          f"'{LOCKED}' lines, {sum(map(len, failed.values()))} failed API calls in the logs")
    bad = [(fr["name"], fr["state_type"], fr["state"]["message"]) for fr in frs if fr["state_type"] != "COMPLETED"]
    assert not bad, (bad, logs["worker"][-4000:])
    for store in stores:
        assert (xr.open_zarr(store).status == storage.DONE).all(), store
    assert locked == 0 and not any(failed.values()), (locked, failed, logs["server"][-6000:])


def test_sqlite_server_begins_every_transaction_immediate():
    """``flows/sqlite_server.py`` patches prefect 3.8.8's SQLite configuration: a transaction that
    Prefect begins DEFERRED (with_for_update False) begins IMMEDIATE, and the mode is reset after.
    Fails when a Prefect upgrade moves what it patches."""
    import asyncio

    from prefect.server.database import configurations as c

    from flows import sqlite_server

    original = c.AioSqliteConfiguration.begin_transaction
    seen = []

    class Session:
        @contextlib.asynccontextmanager
        async def begin(self):
            seen.append(c.SQLITE_BEGIN_MODE.get())
            yield "transaction"

    async def go(with_for_update: bool):
        async with c.AioSqliteConfiguration.begin_transaction(object(), Session(), with_for_update) as tx:
            assert tx == "transaction"

    try:
        sqlite_server.patch()
        asyncio.run(go(False))
        asyncio.run(go(True))
    finally:
        c.AioSqliteConfiguration.begin_transaction = original
    assert seen == ["IMMEDIATE", "IMMEDIATE"] and c.SQLITE_BEGIN_MODE.get() is None
