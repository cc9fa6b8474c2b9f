"""``dsclab run``'s temporary Prefect server (flows.server.TemporaryServer): started before the
command's heavy imports, used only when no API is configured, gone when the command is."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from flows.server import TemporaryServer

ROOT = Path(__file__).resolve().parents[1]
TINY = {"name": "tmpserver", "d": [2], "n": [40], "seed": [0], "nfe": [4], "sampler": ["euler_maruyama"],
        "train": {"steps": 10, "width": 16, "depth": 2},
        "evaluation": {"t": [0.1], "n_score": 100, "n_samples": 100}, "workers": 1}


def _env(home: Path) -> dict:
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(home))
    env.pop("PREFECT_API_URL", None)
    return env


def _servers_of(home: Path) -> list[psutil.Process]:
    """Live uvicorn processes whose PREFECT_HOME is ``home``."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "uvicorn" in " ".join(p.info["cmdline"] or []) and p.environ().get("PREFECT_HOME") == str(home):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def test_prestart_imports_neither_torch_nor_prefect(tmp_path):
    """The point of starting early: the server's start overlaps the command's imports."""
    code = ("import sys; from flows.server import TemporaryServer; s = TemporaryServer.prestart(); "
            "print(s is not None, 'torch' in sys.modules, 'prefect' in sys.modules); s.stop()")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path / "home"),
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "False", "False"], out.stderr


def _own_folders(pid: int) -> list[Path]:
    import tempfile

    return sorted(Path(tempfile.gettempdir()).glob(f"dsclab-prefect-{pid}-*"))


def test_run_uses_the_early_server_and_stops_it(tmp_path):
    """A study through ``dsclab run`` without an API: the flow run is recorded by the early server
    (Prefect did not start its own: no 'Starting temporary server' line) in a database of its own,
    neither PREFECT_HOME's prefect.db nor PREFECT_API_DATABASE_CONNECTION_URL (a team server's,
    here a file that must stay untouched), and no server of that home, nor its database folder,
    outlives the command."""
    home = tmp_path / "home"
    team_db = tmp_path / "team.db"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    env = _env(home) | {"PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{team_db}"}
    p = subprocess.Popen([sys.executable, "-m", "dsclab.cli", "run", str(spec), "--store", str(tmp_path / "s.zarr")],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, lines, had_db = [], [], False
    for line in p.stdout:  # while it runs, its server's database lives in a folder named after it
        lines.append(line)
        seen = seen or _own_folders(p.pid)
        had_db = had_db or bool(seen and (seen[0] / "prefect.db").exists())
    out = "".join(lines)
    assert p.wait(timeout=300) == 0, out[-3000:]
    assert "Starting temporary server" not in out
    assert len(seen) == 1 and had_db, seen
    time.sleep(0.5)
    assert not (home / "prefect.db").exists() and not team_db.exists()
    assert _own_folders(p.pid) == [], "the temporary server's database folder outlived the command"
    assert _servers_of(home) == []


def test_own_database_per_server(tmp_path):
    """Each temporary server has its own database folder, named after its process; the folders of
    processes that are gone (a killed command) are removed by the next one."""
    from flows import temporary_server as ts

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(ts.tempfile.gettempdir()) / f"{ts.FOLDER_PREFIX}{dead.pid}-x"
    stale.mkdir(exist_ok=True)
    (stale / "prefect.db").write_bytes(b"")
    mine = ts.own_database_folder()
    try:
        assert mine.name.startswith(f"{ts.FOLDER_PREFIX}{os.getpid()}-") and mine.is_dir()
        assert not stale.exists()
        assert ts.database_url(mine) == f"sqlite+aiosqlite:///{mine}/prefect.db"
    finally:
        import shutil

        shutil.rmtree(mine, ignore_errors=True)


def _alembic_head() -> str:
    """Prefect's newest SQLite migration."""
    import importlib.util

    from alembic.script import ScriptDirectory

    migrations = Path(importlib.util.find_spec("prefect").origin).parent / "server" / "database" / "_migrations"
    scripts = ScriptDirectory(str(migrations), version_locations=[str(migrations / "versions" / "sqlite")])
    return scripts.get_current_head()


def test_the_first_server_saves_a_template_the_next_starts_from(tmp_path, monkeypatch):
    """With no template in the cache, the server starts on an empty database and, once it answers,
    its database (migrated to Prefect's head, block types registered, no run) becomes the template
    (``$XDG_CACHE_HOME/dsclab/prefect-<version>-<collections>.db``); the next server's database is
    a copy of it (a mark set in the template is in its copy), and it answers. Neither writes
    Prefect's block-registration memo in PREFECT_HOME (where it is the user's own server's)."""
    import contextlib
    import sqlite3

    from flows import temporary_server as ts
    from flows.access import health

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    template = ts.template_path()
    assert template.parent == tmp_path / "cache" / "dsclab" and template.name.startswith("prefect-")
    first = TemporaryServer.prestart()
    try:
        assert not first.from_template and not template.exists()
        with first.adopt():
            pass
    finally:
        first.stop()
    with contextlib.closing(sqlite3.connect(template)) as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        filled = {t for t in tables if db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]}
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [(_alembic_head(),)]
        assert "flow_run" in tables and filled == ts.TEMPLATE_TABLES, filled  # runs, logs, artifacts: none
        db.execute("PRAGMA user_version = 4242")
    second = TemporaryServer.prestart()
    try:
        assert second.from_template
        with second.adopt():
            assert health(second.api_url)
            with contextlib.closing(sqlite3.connect(second.home / ts.DATABASE)) as db:
                assert db.execute("PRAGMA user_version").fetchone() == (4242,)
    finally:
        second.stop()
    assert not (tmp_path / "home" / "memo_store.toml").exists()


def test_server_dies_with_a_killed_command(tmp_path):
    """kill -9 of the command leaves no server behind (Linux parent-death signal)."""
    home = tmp_path / "home"
    code = ("import sys, time; from flows.server import TemporaryServer; s = TemporaryServer.prestart(); "
            "print(s.proc.pid, flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, text=True)
    server = psutil.Process(int(p.stdout.readline()))
    assert server.is_running()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    gone, alive = psutil.wait_procs([server], timeout=20)
    for orphan in alive:  # leave nothing behind when the check fails
        orphan.kill()
    assert alive == [], "the server outlived its killed parent"


def test_a_configured_api_is_left_alone(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert TemporaryServer.prestart() is None
    monkeypatch.delenv("PREFECT_API_URL")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # as a profile would set it
        assert TemporaryServer.prestart() is None


def test_a_server_that_fails_to_start_falls_back_to_prefect():
    """adopt() of a server process that exited gives no settings change (Prefect then starts its own)."""
    from prefect.settings import get_current_settings

    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    server = TemporaryServer(9, proc)
    with server.adopt():
        assert get_current_settings().api.url is None
    assert proc.poll() == 3


def test_a_server_too_slow_to_answer_is_one_line(tmp_path):
    """A temporary server that does not answer within the start-up wait (here 0.01 s, set by
    DSCLAB_SERVER_STARTUP_TIMEOUT; by default 600 s, for a loaded machine) ends the command with one
    line saying what to do, exit code 1, no traceback, and no server left behind."""
    home = tmp_path / "home"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    out = subprocess.run([sys.executable, "-m", "dsclab.cli", "run", str(spec), "--store", str(tmp_path / "s.zarr")],
                         cwd=ROOT, env=_env(home) | {"DSCLAB_SERVER_STARTUP_TIMEOUT": "0.01"},
                         capture_output=True, text=True, timeout=300)
    err = out.stderr.strip()
    assert out.returncode == 1 and err.count("\n") == 0, out.stderr[-3000:]
    assert err.startswith("dsclab: error: the temporary Prefect server did not answer within 0.01 s"), err
    assert "DSCLAB_SERVER_STARTUP_TIMEOUT" in err and "Traceback" not in out.stdout + out.stderr
    assert _servers_of(home) == []


def test_a_bad_spec_starts_no_server(tmp_path):
    """A spec is refused (exit 2, one line) before the temporary server starts: no server process
    nor database folder of the command ever exists."""
    home = tmp_path / "home"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**TINY, "distribution": {"params": {"k": 2}}}))
    p = subprocess.Popen([sys.executable, "-m", "dsclab.cli", "run", str(spec), "--store", str(tmp_path / "s.zarr")],
                         cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    while p.poll() is None:
        seen += _servers_of(home) + _own_folders(p.pid)
        time.sleep(0.05)
    err = p.stderr.read().strip()
    assert p.returncode == 2 and err == "dsclab: error: distribution.name: missing (required)", err
    assert seen == [] and not (tmp_path / "s.zarr").exists()


def test_a_team_server_on_a_new_default_database_starts_from_the_template(tmp_path, monkeypatch):
    """``dsclab server`` on Prefect's default SQLite database: when ``$PREFECT_HOME/prefect.db``
    does not exist yet it is a copy of the template (no block registration on it); an existing
    database, or a database setting, is left alone."""
    from flows import temporary_server as ts
    from flows.server import new_database_from_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = ts.template_path()
    template.parent.mkdir(parents=True)
    template.write_bytes(ts.SQLITE_HEADER + b"a migrated database")
    home = tmp_path / "home"
    settings = new_database_from_template({"PREFECT_HOME": str(home)})
    assert settings == {"PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
                        "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}
    assert (home / "prefect.db").read_bytes() == template.read_bytes()
    (home / "prefect.db").write_bytes(b"the team's runs")
    assert new_database_from_template({"PREFECT_HOME": str(home)}) == {}  # never replaced
    assert (home / "prefect.db").read_bytes() == b"the team's runs"
    other = tmp_path / "other"
    assert new_database_from_template({"PREFECT_HOME": str(other),
                                       "PREFECT_API_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///x.db"}) == {}
    assert not other.exists()
