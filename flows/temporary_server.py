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
    """

    _running: "TemporaryServer | None" = None  # one per process, reused by later runs in it

    def __init__(self, port: int, proc: subprocess.Popen, home: Path | None = None):
        self.port, self.proc, self.home = port, proc, home
        self.api_url = f"http://127.0.0.1:{port}/api"

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
            env = base_env(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1",
                           PREFECT_API_DATABASE_CONNECTION_URL=database_url(home))
            proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except Exception:  # noqa: BLE001 - an optimisation: Prefect starts its own server instead
            return None
        cls._running = server = cls(port, proc, home)
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
            # Prefect's own temporary server (a subprocess given these settings) on a database of its own
            home = own_database_folder()
            import atexit

            atexit.register(shutil.rmtree, home, ignore_errors=True)
            return _one_line_timeout(temporary_settings({PREFECT_API_DATABASE_CONNECTION_URL: database_url(home),
                                                         PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: max(1, int(timeout))}),
                                     timeout)
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


def database_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'prefect.db'}"


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
