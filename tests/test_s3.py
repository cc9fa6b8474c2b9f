"""Stores on object storage (issue 31): ``s3://`` URLs through s3fs, against a local S3 server
(moto's, from the package index, as s3fs's own tests use) on 127.0.0.1, started and stopped by
this module. Credentials and the endpoint reach s3fs through the usual environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), never through a spec.

Each study here ends equal, value for value, to the same study on a local disk: a study into
``s3://`` and its growth in ``n``, a kill -9 at each step of the growth swap (which is a copy on
object storage, ``storage.growth``), a ``dsclab run`` killed with kill -9 and resumed, two
concurrent writers; and no credential appears in a store's attributes, an object in the bucket,
a log line or an artifact.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import xarray as xr
import yaml

import storage
from test_growth import BASE, run, spec_of, stores, values  # noqa: F401 - stores: the local references

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
pytestmark = pytest.mark.usefixtures("one_thread")

KEY_ID, SECRET = "dsclabtestkeyid3f9a1c", "dsclab-test-secret-b7e24d90"  # dummies the server accepts
BUCKET = "dsclab-test"
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def s3():
    """A local S3 server on 127.0.0.1 (a free port) with one bucket; the AWS_* variables point
    this process and its children at it. Stopped, and the variables restored, at the end.

    It serves moto's S3 application alone, in threads of this process, as ``ThreadedMotoServer``
    does but without its dispatcher, which finds the service of every request anew (a listing of
    moto's ~250 packages and a few hundred URL patterns, under one lock: most of the server's
    CPU); the server's request log (one line per request, through Prefect's console handler) is
    off, its warnings and errors kept.

    s3fs reads an object with one GET (``max_concurrency=1``, through fsspec's configuration,
    ``FSSPEC_S3`` for the children) instead of a HEAD for its size and then the GET: the size
    only matters to split objects over 50 MB (``default_block_size``) into concurrent ranges, and
    a store's objects are a few kB."""
    import logging
    import threading

    import fsspec.config
    import s3fs
    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_backend_app("s3"), threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    log, level = logging.getLogger("werkzeug"), logging.getLogger("werkzeug").level
    log.setLevel(logging.WARNING)
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "FSSPEC_S3": json.dumps({"max_concurrency": 1})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {**(saved_conf or {}), "max_concurrency": 1}
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    try:
        yield SimpleNamespace(fs=fs, url=lambda name: f"s3://{BUCKET}/{name}")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.shutdown()
        thread.join()
        log.setLevel(level)
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _upload(s3, local: Path, name: str) -> str:
    url = s3.url(name)
    s3.fs.put(str(local), url.removeprefix("s3://"), recursive=True)
    return url


def _leftovers(s3, url: str) -> list[str]:
    return [s for s in (storage.growth.NEW, storage.growth.OLD) if s3.fs.exists(url.removeprefix("s3://") + s)]


FORKS = """
import json, os, sys, traceback
import fsspec, numpy, s3fs, xarray, yaml  # noqa: F401 - what the scripts import, once for all of them
import storage.growth  # noqa: F401
from dsclab.study import parse_spec  # noqa: F401
from dsclab.studies.sample_complexity import KIND  # noqa: F401
def child(code, argv, log):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv, status = argv, 0
    try:
        exec(compile(code, argv[0], "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
for line in sys.stdin:
    pids = []
    for code, argv, log in json.loads(line):
        pid = os.fork()
        if pid == 0:
            child(code, argv, log)
        pids.append(pid)
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]), flush=True)
"""


@pytest.fixture(scope="module")
def forks(s3):
    """``forks((code, argv, log), ...)`` runs each Python script ``code`` (its ``sys.argv`` =
    ``argv``) in a process of its own, all at once, and returns their exit statuses as
    ``subprocess`` gives them (``-9``: killed by SIGKILL); each one's output goes to its ``log``.

    The processes are forked from one started for this module, which has imported what the
    scripts import (storage, the study kind, xarray, zarr, s3fs, PyTorch: ~3 s of CPU, most of
    a killer's), and nothing else: no thread, no connection, nothing of S3 yet. Each is a
    process like one started anew, with the environment of this module's server: it is killed
    with kill -9, or writes beside another one, the same way."""
    import select

    proc = subprocess.Popen([sys.executable, "-c", FORKS], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)

    def run(*scripts, timeout: float = 300) -> list[int]:
        proc.stdin.write(json.dumps([[code, [str(a) for a in argv], str(log)] for code, argv, log in scripts]) + "\n")
        proc.stdin.flush()
        assert select.select([proc.stdout], [], [], timeout)[0], f"the scripts were still running after {timeout} s"
        return json.loads(proc.stdout.readline())

    try:
        yield run
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a script that hangs: it and the forking process go
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_study_and_its_growth_on_s3_equal_the_local_disk(s3, stores, caplog):  # noqa: F811
    url = s3.url("study/grow.zarr")
    assert run(spec_of(), url)["computed"] == 2
    xr.testing.assert_identical(values(url), values(stores / "base.zarr"))
    root = storage.files_url(url).removeprefix("s3://")
    assert len(s3.fs.glob(f"{root}/checkpoints/*.pt")) == 2  # checkpoints beside the store, in the bucket
    assert not Path(storage.files_url(url)).exists() and not Path("s3:").exists()  # nothing on the local disk
    out = run(spec_of(n=[100, 300, 1000]), url)  # grown: only the new cell computed, the swap by copy
    assert out["computed"] == 1 and out["done"] == 3
    xr.testing.assert_identical(values(url), values(stores / "fresh.zarr"))
    assert _leftovers(s3, url) == []
    assert run(spec_of(n=[100, 300, 1000]), url)["computed"] == 0
    from storage.check import check_store

    assert check_store(url) == []
    # no credential in the store's attributes, this run's log records, or Prefect's logs and artifacts
    from prefect.client.orchestration import get_client

    attrs = json.dumps(dict(xr.open_zarr(url).attrs))

    def every(read) -> list:  # all of them, page by page (the server is shared by the process's modules)
        out: list = []
        while page := read(limit=200, offset=len(out)):
            out += page
        return out

    with get_client(sync_client=True) as client:
        logs = "\n".join(log.message for log in every(client.read_logs))
        artifacts = "\n".join(json.dumps(a.model_dump(mode="json")) for a in every(client.read_artifacts))
    records = "\n".join(r.getMessage() for r in caplog.records)
    assert logs and artifacts
    for text in (attrs, logs, artifacts, records):
        assert KEY_ID not in text and SECRET not in text


KILLER = """
import os, signal, sys, yaml, fsspec
import storage.growth as g
from dsclab.studies.sample_complexity import KIND
path, step, spec = sys.argv[1], int(sys.argv[2]), KIND.parse(yaml.safe_load(open(sys.argv[3])))
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def half(url):
    fs, root = fsspec.core.url_to_fs(url)
    keys = sorted(fs.find(root))
    return fs, root, keys[: len(keys) // 2]
real_rm, real_copy, real_swap, swapping = g._rm, g._copy, g._swap_by_copy, []
def swap(p):
    if step == 1:                    # the grown copy complete, nothing of the store touched yet
        die()
    swapping.append(p)
    real_swap(p)
def rm(p):
    if swapping and step == 2 and p == path:   # half the store's objects deleted
        fs, root, keys = half(p)
        fs.rm(keys)
        die()
    if step == 4 and p == path + g.NEW + "/" + g.COMPLETE:   # copied in, before the commit
        die()
    if swapping and step == 5 and p == path + g.NEW:         # committed, the grown copy not yet removed
        die()
    real_rm(p)
def copy(a, b):
    if step == 3:                    # half the grown copy's objects copied in
        fs, ra, keys = half(a)
        rb = fsspec.core.url_to_fs(b)[1]
        fs.copy(keys, [rb + k[len(ra):] for k in keys])
        die()
    real_copy(a, b)
g._rm, g._copy, g._swap_by_copy = rm, copy, swap
g.open_store(KIND, spec, path)
"""


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])
def test_kill_at_each_step_of_an_s3_growth_loses_nothing(s3, stores, forks, tmp_path, step):  # noqa: F811
    url = _upload(s3, stores / "base.zarr", f"kill-{step}/s.zarr")
    before = values(stores / "base.zarr")  # what was uploaded, read from the local disk
    f, log = tmp_path / "grown.yaml", tmp_path / "killer.log"
    f.write_text(yaml.safe_dump({**BASE, "n": [100, 300, 1000]}))
    assert forks((KILLER, ["-c", url, step, f], log)) == [-signal.SIGKILL], log.read_text()[-2000:]
    # whatever the step, the next open finds every stored value (old layout or grown) ...
    storage.recover(url)
    assert _leftovers(s3, url) == []
    xr.testing.assert_identical(values(url).sel(n=[100, 300]), before)
    # ... and a rerun completes the grown study, equal to one never killed on a local disk (run
    # once, after the kill halfway through the copy: the recovery above is what differs per step)
    if step != 3:
        return
    out = run(spec_of(n=[100, 300, 1000]), url)
    assert out["computed"] == 1 and out["done"] == 3
    xr.testing.assert_identical(values(url), values(stores / "fresh.zarr"))


def test_dsclab_run_on_s3_killed_then_resumed(s3, stores, harness, tmp_path, monkeypatch):  # noqa: F811
    """``dsclab run --store s3://...`` killed (kill -9 of its process group) at a random moment,
    then rerun: every cell done, no done cell computed again, equal to the local run; the figure
    drawn into ``s.files/`` of the working directory.

    Both runs report to this module's Prefect server (``PREFECT_API_URL``, as against a team
    server), not each to a temporary server of its own (a process, its imports and a new
    database's migrations per run): the store on object storage is what the kill and the resume
    are about; ``tests/test_kill.py`` kills runs with their temporary servers."""
    from prefect.settings import PREFECT_API_URL

    from test_kill import _env, _run

    monkeypatch.chdir(tmp_path)

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**BASE, "n": [100, 300, 1000]}))
    url, env = s3.url("killed/s.zarr"), {**_env(tmp_path), "PREFECT_API_URL": PREFECT_API_URL.value()}
    assert _run(spec_file, url, env, True, random.Random(31)) is None, "the kill did not land"
    from dsclab.study import parse_spec

    keys = {c.n: c.key for c in parse_spec({**BASE, "n": [100, 300, 1000]}).cells()}
    done = []
    if s3.fs.exists(url.removeprefix("s3://")):
        st = storage.read_status(url).isel(d=0, seed=0, estimator=0)
        done = [int(n) for n in st.n.values if int(st.sel(n=n)) == storage.DONE]
    assert len(done) < 3
    ckpt = storage.files_url(url).removeprefix("s3://") + "/checkpoints"
    stamps = {n: s3.fs.info(f"{ckpt}/{keys[n]}.pt")["LastModified"] for n in done}
    assert _run(spec_file, url, env, False, random.Random(0)) == 0
    s3.fs.invalidate_cache()
    for n, t in stamps.items():  # a done cell's checkpoint was not written again
        assert s3.fs.info(f"{ckpt}/{keys[n]}.pt")["LastModified"] == t
    assert (tmp_path / "s.files" / "plot.png").is_file()
    xr.testing.assert_identical(values(url), values(stores / "fresh.zarr"))


def test_two_concurrent_writers_on_s3(s3, forks, tmp_path, monkeypatch):
    """Two processes write disjoint cells of one s3 store at once: equal to a serial local run
    (the same writer's code, run here: the reference needs no process of its own)."""
    from dsclab.study import parse_spec
    from dsclab.studies.sample_complexity import layout as sc_layout
    from test_reliability import GRID, WRITER

    grid = {**GRID, "d": [2], "n": [10, 20]}  # 4 cells (each write is a few requests to the server)
    spec = parse_spec(grid)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(grid))
    out = {}
    for mode, path, parts in (("local", str(tmp_path / "serial.zarr"), 1), ("s3", s3.url("conc/c.zarr"), 2)):
        storage.create_or_open(path, sc_layout.template(spec), sc_layout.CELL_DIMS)
        argv = ["writer.py", str(tmp_path / "spec.yaml"), path]
        if mode == "local":
            with monkeypatch.context() as m:
                m.setattr(sys, "argv", [*argv, "0", "1"])
                exec(compile(WRITER, argv[0], "exec"), {"__name__": "__main__"})
        else:
            logs = [tmp_path / f"writer{k}.log" for k in range(parts)]
            codes = forks(*((WRITER, [*argv, k, parts], logs[k]) for k in range(parts)))
            assert codes == [0] * parts, [log.read_text()[-2000:] for log in logs]
        out[mode] = xr.open_zarr(path, consolidated=False).load()
    xr.testing.assert_identical(out["local"], out["s3"])
    assert int((out["s3"].status == storage.DONE).sum()) == len(spec.cells())


def test_no_credential_in_any_object_of_the_bucket(s3):
    """Every object the tests above wrote (stores, checkpoints, data) is free of the credentials."""
    keys = s3.fs.find(BUCKET)
    assert len(keys) > 50
    blobs = s3.fs.cat(keys)  # one GET each, sent together
    assert sorted(blobs) == sorted(keys)
    for key, blob in blobs.items():
        assert KEY_ID.encode() not in blob and SECRET.encode() not in blob, key


NO_DISK = {**BASE, "name": "no-shared-disk", "n": [100, 300], "seed": [0, 1], "group_memory_mb": 1,
           "train": {"steps": 200, "width": 16, "depth": 1}}  # 4 cells, trainings long enough to be caught


def test_dask_workers_that_share_no_disk(s3, harness, tmp_path):
    """A study on a Dask cluster of two worker processes (``dask worker``), each started in its own
    empty working directory with its own TMPDIR and Dask directory, the store on the local S3
    server; one worker is killed (SIGKILL) while it executes a task. The study completes, equal
    to the same study run in one process on a local disk, and neither worker's folder holds any
    of the study's files (the only place they share is the bucket)."""
    import signal
    import socket
    import time

    from distributed import Client

    from dsclab.studies.sample_complexity import KIND
    from flows.runners import RunnerSpec

    spec = KIND.parse(NO_DISK)
    assert run(spec, tmp_path / "ref.zarr")["done"] == 4  # one process (threads), a local disk
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    procs, dirs = [], []
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                       "--port", str(port), "--no-dashboard"], cwd=tmp_path, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in range(2):
            home = tmp_path / f"worker{i}"
            (home / "tmp").mkdir(parents=True)
            dirs.append(home)
            env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(home / "tmp"), "HOME": str(home),
                   "DASK_CONFIG": str(ROOT / "deploy" / "dask"), "OMP_NUM_THREADS": "1"}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "2",
                 "--resources", "GPU=1", "--local-directory", str(home / "dask"), "--no-dashboard"],
                cwd=home, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        url = s3.url("no-shared-disk/s.zarr")
        kill: dict = {}
        errors: list = []
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
            cwds = client.run(lambda: (os.getcwd(), os.environ["TMPDIR"]))
            assert sorted(cwds.values()) == sorted((str(d), str(d / "tmp")) for d in dirs)
            import threading

            stop = threading.Event()

            def _executing(dask_worker):  # defined here: pickled by value (the workers cannot import tests/)
                import os

                return os.getpid(), [str(k) for k, ts in dask_worker.state.tasks.items() if ts.state == "executing"]

            def killer():
                while not stop.is_set() and not kill:
                    try:
                        for addr, (pid, keys) in client.run(_executing).items():
                            if keys:  # a task of the study is executing there
                                os.kill(pid, signal.SIGKILL)
                                kill.update(addr=addr, pid=pid, keys=keys)
                                break
                    except Exception as e:  # noqa: BLE001 - a worker mid-restart; look again
                        errors.append(repr(e))
                    time.sleep(0.2)

            watcher = threading.Thread(target=killer, daemon=True)
            watcher.start()
            try:
                from flows.study import run_flow

                out = run_flow(KIND, spec, url, runner=RunnerSpec(kind="dask", address=address))
            finally:
                stop.set()
                watcher.join(30)
        assert kill, f"no worker was caught executing a task: the kill did not happen {errors[-3:]}"
        assert out["done"] == 4 and out["failed"] == 0
        xr.testing.assert_identical(values(url), values(tmp_path / "ref.zarr"))
        for home in dirs:  # nothing of the study on either worker's disk
            found = [p for p in home.rglob("*") if ".zarr" in str(p) or ".files" in str(p) or p.suffix in (".pt", ".npy")]
            assert found == [], found
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
