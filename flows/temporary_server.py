"""The temporary Prefect server of ``dsclab run`` (:class:`TemporaryServer`), started before the
command's heavy imports when no API is configured (DEVELOPERS.md: keep that order). Importing this
module imports only the standard library: neither PyTorch nor Prefect
(``tests/test_temporary_server.py`` checks); ``flows.server`` re-exports the class.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


STARTUP_TIMEOUT = 600.0
"""Seconds the temporary server may take to answer (``DSCLAB_SERVER_STARTUP_TIMEOUT`` when set, else
this or Prefect's ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, whichever is longer).
Prefect's default, 20 s, is not enough on a loaded machine: with two other studies running on 2
cores the server's start (an interpreter, its imports, the database migrations) took over 20 s and
``make demo`` ended in Prefect's traceback ``Timed out while attempting to connect to ephemeral
Prefect API server``; at a load of 20 it took about 3 minutes. A server that cannot start at all
exits, which ends the wait at once; only one that hangs waits this long."""


class TemporaryServerError(RuntimeError):
    """The temporary server did not answer in time; the message is one line."""


def startup_timeout() -> float:
    """The start-up wait in seconds (:data:`STARTUP_TIMEOUT`)."""
    own = os.environ.get("DSCLAB_SERVER_STARTUP_TIMEOUT")
    if own:
        try:
            return float(own)
        except ValueError:
            pass
    from prefect.settings import get_current_settings

    return max(STARTUP_TIMEOUT, float(get_current_settings().server.ephemeral.startup_timeout_seconds))


def _too_slow(timeout: float) -> str:
    return (f"the temporary Prefect server did not answer within {timeout:g} s (a busy machine?): retry, "
            f"allow longer with DSCLAB_SERVER_STARTUP_TIMEOUT=SECONDS, or set PREFECT_API_URL to a running server")


class TemporaryServer:
    """Prefect's temporary server for ``dsclab run``, started before the command's imports.

    A flow called without ``PREFECT_API_URL`` makes Prefect start a temporary server at the flow
    call and wait ~3-5 s for it (interpreter, imports, database check, block registration), after
    the command has spent ~3 s importing PyTorch, xarray and Prefect. ``prestart`` starts the same
    server process at the top of the command, so the two overlap on separate cores; ``adopt`` is
    called once Prefect's settings can be read and the store has been checked.

    The process is the one ``prefect.server.api.server.SubprocessASGIServer`` runs (prefect 3.8.8:
    uvicorn on the server's app factory, ``PREFECT__SERVER_EPHEMERAL=1``, UI off) on a free local
    port, with a database of its own: a SQLite file in a temporary folder
    (``<tmp>/dsclab-prefect-<pid>-*``) removed when it stops, never PREFECT_HOME's ``prefect.db``
    nor ``PREFECT_API_DATABASE_CONNECTION_URL``, which a team server may be using. A temporary
    server that shared a team's database and then died left the team's concurrency slots it had
    handed out held for good (their leases lived in its memory), and commands sharing one SQLite
    file lock each other out. The next ``prestart`` removes the folders of killed commands. It is
    used only when Prefect's settings name no API (environment, profile, ``prefect.toml``) and
    allow the temporary server; otherwise it is stopped and Prefect goes its own way; if it fails
    to start in time, it is stopped and Prefect starts its own, which ``adopt`` points at a
    database of its own too. It stops when the process exits, after Prefect has sent its
    remaining logs and events, and, on Linux, also when the process is
    killed (parent-death signal), which Prefect's own temporary server does not do.

    A new database is not made empty: ``prestart`` copies the template (:func:`template_path`, in
    the user's cache, never in a checkout) into the folder, a database already migrated with the
    block types registered, and the server skips the registration. Until the server answers it
    spent ~9.7 CPU-seconds on an empty database (Alembic's migrations and the block types), ~3.9
    on the copy (3 starts each, load average 5 on 2 cores). With no template yet (the first run
    of a Prefect version), the server starts on an empty database and ``adopt``, once it
    answers and before any flow run exists, saves the database as the template
    (:func:`save_template`). Each step is an optimisation: a failure falls back to an empty
    database, and Prefect's migrations on start would bring a template of another schema up to
    date.
    """

    _running: "TemporaryServer | None" = None  # one per process, reused by later runs in it

    def __init__(self, port: int, proc: subprocess.Popen, home: Path | None = None,
                 template: Path | None = None, from_template: bool = False):
        self.port, self.proc, self.home = port, proc, home
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.template = template            # the template database of this Prefect (template_path)
        self.from_template = from_template  # whether this server's database is a copy of it

    @classmethod
    def prestart(cls) -> "TemporaryServer | None":
        """Start the server process now unless an API is configured; never raises."""
        if cls._running is not None and cls._running.proc.poll() is None:
            return cls._running
        if os.environ.get("PREFECT_API_URL") or ("prefect.settings" in sys.modules and not _wants_temporary()):
            return None
        try:
            import importlib.util

            with socket.socket() as s:  # a free port; a clash is caught by adopt (the process exits)
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
            cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "error", "--lifespan", "on"]
            from flows.access import base_env

            home = own_database_folder()
            template = template_path()
            copied = template is not None and copy_template(template, home / DATABASE)
            env = base_env(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1",
                           PREFECT_API_DATABASE_CONNECTION_URL=database_url(home), **block_registration(home, copied))
            proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except Exception:  # noqa: BLE001 - an optimisation: Prefect starts its own server instead
            return None
        cls._running = server = cls(port, proc, home, template, copied)
        import atexit

        atexit.register(server.stop)  # after Prefect's log and event workers drain (threading exit hooks)
        return server

    def adopt(self):
        """A context manager for the flow call: Prefect's settings pointed at this server when they
        name no API and it answers within :func:`startup_timeout`; else nothing, and the server is
        stopped. A server that does not answer in time is a :class:`TemporaryServerError` (one
        line); one whose process exited (a port taken meanwhile) gives way to Prefect's own, with
        the same start-up wait and a database of its own."""
        from prefect.settings import (PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_API_URL,
                                      PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
                                      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings)

        from flows.access import wait_healthy

        if not _wants_temporary():
            self.stop()
            return contextlib.nullcontext()
        timeout = startup_timeout()
        try:
            wait_healthy(self.api_url, timeout=timeout, proc=self.proc, poll=0.05)
        except TimeoutError:
            self.stop()
            raise TemporaryServerError(_too_slow(timeout)) from None
        except RuntimeError:
            self.stop()
            if self.from_template and self.template is not None:  # in case the copy is what it could
                # not start on: the next run makes a new one
                with contextlib.suppress(OSError):
                    self.template.unlink()
            # Prefect's own temporary server (a subprocess given these settings) on a database of its own
            home = own_database_folder()
            import atexit

            atexit.register(shutil.rmtree, home, ignore_errors=True)
            return _one_line_timeout(temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: database_url(home),
                                                         PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: max(1, int(timeout))}),
                                     timeout)
        if self.template is not None and not self.from_template and self.home is not None:
            save_template(self.home / DATABASE, self.template)  # before any flow run exists
            self.template = None  # once (a later run in this process reuses the server)
        # No flow-run heartbeats: they let a long-lived server mark a run crashed when its process
        # dies, but this server dies with the process; and the engine's wait for the heartbeat
        # thread adds up to 1 s (0.5 s on average) to the end of every run.
        return temporary_settings({PREFECT_API_URL: self.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
        if TemporaryServer._running is self:
            TemporaryServer._running = None


FOLDER_PREFIX = "dsclab-prefect-"


def own_database_folder() -> Path:
    """A new temporary folder for a temporary server's database, named after this process; first
    removes those of processes that no longer exist (commands that were killed)."""
    tmp = Path(tempfile.gettempdir())
    for old in tmp.glob(f"{FOLDER_PREFIX}*-*"):
        try:
            os.kill(int(old.name[len(FOLDER_PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, PermissionError):  # not ours, or another user's live process
            pass
    return Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))


DATABASE = "prefect.db"


def database_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / DATABASE}"


SQLITE_HEADER = b"SQLite format 3\x00"
TEMPLATE_TABLES = frozenset({"alembic_version", "block_type", "block_schema", "block_schema_reference"})
"""The only tables with rows in a template: the schema's version and the block catalogue (what a
new server writes at its start, measured with prefect 3.8.8); a snapshot with any other rows is
not saved, so that nothing of a run (flow and task runs, logs, artifacts, events, variables,
concurrency limits) can reach the next command's server."""


def template_path() -> Path | None:
    """Where the migrated template database of this Prefect lives: ``$XDG_CACHE_HOME`` (else
    ``~/.cache``) ``/dsclab/prefect-<version>-<collections>.db``, the second part a hash of the
    installed Prefect collections (the ``prefect.collections`` entry points and their versions),
    whose block types a server registers with Prefect's own; None when it cannot be told. Standard
    library only (``importlib.metadata``, which the command has imported by then)."""
    try:
        import hashlib
        import importlib.metadata as metadata

        base = os.environ.get("XDG_CACHE_HOME") or ""
        if not os.path.isabs(base):  # unset, or relative (the XDG spec says: ignore it)
            base = os.path.join(os.path.expanduser("~"), ".cache")
        if not os.path.isabs(base):  # no home
            return None
        collections = sorted(f"{ep.name}={ep.value} {ep.dist and ep.dist.name} {ep.dist and ep.dist.version}"
                             for ep in metadata.entry_points(group="prefect.collections"))
        digest = hashlib.sha256("\n".join(collections).encode()).hexdigest()[:12]
        return Path(base) / "dsclab" / f"prefect-{metadata.version('prefect')}-{digest}.db"
    except Exception:  # noqa: BLE001 - no template: the server starts on an empty database
        return None


def copy_template(template: Path, db: Path) -> bool:
    """Copy the template database to ``db`` (a new server's); False, and no ``db``, when there is
    none or it is not an SQLite file. The template is only ever replaced whole (``os.replace``),
    so the file opened here is complete."""
    try:
        with open(template, "rb") as src:
            if src.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return False
            src.seek(0)
            with open(db, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        return True
    except Exception:  # noqa: BLE001 - no template (the first run), or unreadable: start on an empty one
        with contextlib.suppress(OSError):
            db.unlink()
        return False


def save_template(db: Path, template: Path) -> bool:
    """Snapshot the live database ``db`` of a server that has just answered (migrated, block
    types registered, no run yet) as ``template``: SQLite's backup API (a consistent copy of a
    database in use) into a temporary file beside it, left in rollback-journal mode (one file),
    then renamed over it (atomic: concurrent first runs each write a whole one). Not saved when a
    table outside :data:`TEMPLATE_TABLES` has rows; Prefect's telemetry session, if any, is left
    out. Never raises: False when nothing was saved."""
    tmp = None
    try:
        import sqlite3

        template.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=template.parent, prefix=f".{template.name}.", suffix=".tmp")
        os.close(fd)
        with contextlib.closing(sqlite3.connect(tmp)) as out:
            with contextlib.closing(sqlite3.connect(db, timeout=30)) as src:
                src.backup(out)
            tables = [t for (t,) in out.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if "configuration" in tables:  # written when analytics are on: each server a session of its own
                out.execute("DELETE FROM configuration WHERE key = 'TELEMETRY_SESSION'")
                out.commit()
            if any(out.execute(f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone()[0]
                   for t in tables if t not in TEMPLATE_TABLES and not t.startswith("sqlite_")):
                return False
            out.execute("PRAGMA journal_mode = DELETE")
        os.replace(tmp, template)
        tmp = None
        return True
    except Exception:  # noqa: BLE001 - an optimisation: the next run starts on an empty database again
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def block_registration(home: Path, copied: bool) -> dict[str, str]:
    """The server's block-type registration settings. On a copy of the template, none: its block
    types are those of this Prefect and these collections (the template's name says which).
    Otherwise Prefect's, with its memo (``memo_store.toml``, a hash that includes the database
    URL, so never a match for a new folder) kept in the folder rather than PREFECT_HOME, where it
    would overwrite the memo of the user's own server."""
    if copied:
        return {"PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
                "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}
    return {"PREFECT_SERVER_MEMO_STORE_PATH": str(home / "memo_store.toml")}


@contextlib.contextmanager
def _one_line_timeout(settings, timeout: float):
    """``settings`` entered; Prefect's start-up timeout of its own temporary server turned into a
    :class:`TemporaryServerError` (one line) instead of its traceback."""
    with settings:
        try:
            yield
        except RuntimeError as e:
            if "Timed out while attempting to connect to ephemeral" in str(e):
                raise TemporaryServerError(_too_slow(timeout)) from None
            raise


def _wants_temporary() -> bool:
    """Prefect's settings name no API and allow its temporary server."""
    from prefect.settings import get_current_settings

    s = get_current_settings()
    return not s.api.url and bool(s.server.ephemeral.enabled)


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, even by SIGKILL."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
