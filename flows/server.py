"""Team server and GPU workers: ``dsclab server``, ``dsclab deploy``, ``dsclab worker`` (also
``python -m flows.server server|deploy|worker ...``).

They run the plain Prefect commands of the README and add what Prefect leaves to the user:

``server``  ``prefect server start`` (SQLite under PREFECT_HOME, or ``--database-url`` for
            PostgreSQL), waits until it answers, then does ``deploy``, and stays in the foreground
            (Ctrl-C stops it).
``deploy``  against a running server: creates the process work pools ``cpu`` and ``gpu`` if
            missing (``prefect work-pool create NAME --type process``) and deploys the flow of
            every registered study kind, plugins included: it writes their deployments to the
            git-ignored ``deploy/prefect.local.yaml`` (``flows.deployments``) and runs ``prefect
            deploy --all --prefect-file deploy/prefect.local.yaml`` from the repository root.
``worker``  one ``prefect worker start --pool gpu --limit 1`` per GPU, each with its own
            ``CUDA_VISIBLE_DEVICES`` (one on the CPU when there is no GPU), plus ``--cpu N``
            workers on the ``cpu`` pool; stops them all together.

Telemetry is off (``PREFECT_SERVER_ANALYTICS_ENABLED=false``) in every process started here.

Credentials: a server that listens beyond loopback (``--host 0.0.0.0``) requires Prefect's API
auth string, HTTP basic credentials ``USER:PASSWORD`` that every request must carry (Prefect's
UI asks for it once): ``server`` refuses to start without ``PREFECT_API_AUTH_STRING`` (or the
server-side ``PREFECT_SERVER_API_AUTH_STRING``) in its environment, with one line saying how to
set it. Whichever is set is given to the server and to every client started here (work pools,
``prefect deploy``, workers and the flow runs they start), and ``worker`` / ``deploy`` /
``dsclab run`` check it against the server first (:mod:`flows.access`).

Results root: ``worker --results-root DIR`` sets ``DSCLAB_RESULTS_ROOT`` for its workers; a
deployment's run then refuses a store outside it (:mod:`storage.confine`; default: ``results/``
of the checkout).

``TemporaryServer``, the temporary server ``dsclab run`` starts before its imports when no API
is configured, lives in :mod:`flows.temporary_server` and is importable from here. This module
imports only the standard library at the top.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flows.access import (
    AUTH, HOW_TO_AUTH, RESULTS_ROOT, SERVER_AUTH, access_problem, api_request, auth_string, base_env, health, loopback,
    prefect, results_root, wait_healthy,
)
from flows.temporary_server import TemporaryServer, TemporaryServerError  # noqa: F401 - re-exported

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_API = "http://127.0.0.1:4200/api"


def detect_gpus(which: str = "auto") -> list[str]:
    """GPU ids to start workers for: 'auto' (CUDA_VISIBLE_DEVICES when set, else every device
    torch sees), 'none', or a comma-separated list such as '0,1'."""
    which = (which or "auto").strip()
    if which == "none":
        return []
    if which != "auto":
        return [g.strip() for g in which.split(",") if g.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / no driver: no GPU
        return []


def existing_pools(api_url: str) -> set[str]:
    r = api_request("POST", f"{api_url.rstrip('/')}/work_pools/filter", json={})
    r.raise_for_status()
    return {p["name"] for p in r.json()}


HEARTBEAT_SECONDS = 30
"""Seconds between a flow run's heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, Prefect's
smallest: its default is 180): the deployments' job variables and ``dsclab run`` against a team
server set it."""
CRASH_AFTER_SECONDS = 90
"""A flow run whose last heartbeat is older than this (three beats missed), and which did not end,
is marked Crashed by the team server's automation :data:`CRASH_AUTOMATION`."""
CRASH_AUTOMATION = "dsclab: crash flow runs without heartbeats"


def crash_automation() -> dict:
    """Prefect's own mechanism for runs whose process died (kill -9, a lost machine): a proactive
    event trigger per flow run, armed by each ``prefect.flow-run.heartbeat`` event, that fires when
    neither another heartbeat nor the end of the run (Completed, Failed, Cancelled, Crashed) follows
    within :data:`CRASH_AFTER_SECONDS`, and moves the run to Crashed with the reason."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=CRASH_AUTOMATION,
        description=(f"Flow runs send a heartbeat every {HEARTBEAT_SECONDS} s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY); "
                     f"one silent for {CRASH_AFTER_SECONDS} s without ending has lost its process: Crashed. "
                     "Created by `dsclab server` / `dsclab deploy` (flows/server.py)."),
        trigger=EventTrigger(
            posture=Posture.Proactive, threshold=1, within=CRASH_AFTER_SECONDS,
            match={"prefect.resource.id": "prefect.flow-run.*"}, for_each={"prefect.resource.id"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Cancelling", "prefect.flow-run.Crashed"}),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=(f"no heartbeat for {CRASH_AFTER_SECONDS} s: the flow run's process died (killed, or its "
                     "machine lost); rerun the same spec to resume from its store"))],
    ).model_dump(mode="json")


def ensure_crash_automation(api_url: str) -> str:
    """Create :func:`crash_automation` on the server at ``api_url``, or bring the one of that name
    up to date; returns its id."""
    body = crash_automation()
    base = api_url.rstrip("/")
    r = api_request("POST", f"{base}/automations/filter", json={"limit": 200})
    r.raise_for_status()
    mine = [a for a in r.json() if a.get("name") == CRASH_AUTOMATION]
    if mine:
        r = api_request("PUT", f"{base}/automations/{mine[0]['id']}", json=body)
        r.raise_for_status()
        return mine[0]["id"]
    r = api_request("POST", f"{base}/automations/", json=body)
    r.raise_for_status()
    return r.json()["id"]


def setup(api_url: str, deploy: bool = True, prefect_file: Path | None = None) -> None:
    """Pools and the deployments on the server at ``api_url`` (no concurrency limit: a GPU is
    guarded on the machine that trains, ``flows.gpu_lock``, or by Dask's resource): those
    of ``prefect_file``, by default every registered study kind's (deploy/prefect.local.yaml,
    written now by ``flows.deployments.write``)."""
    env = base_env(api_url)
    from flows.deployments import POOLS

    missing = [p for p in POOLS if p not in existing_pools(api_url)]
    cmds = [prefect("work-pool", "create", p, "--type", "process") for p in missing]
    procs = []
    for c in cmds:  # independent: run them side by side
        print("+", " ".join(["prefect", *c[3:]]), flush=True)
        procs.append((c, subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    if deploy:  # the file is written while the pools are created
        from flows import deployments

        prefect_file = prefect_file or deployments.write()
    for c, p in procs:
        out, _ = p.communicate(timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(c)} failed ({p.returncode}):\n{out[-3000:]}")
    ensure_crash_automation(api_url)
    print(f"automation: a flow run silent for {CRASH_AFTER_SECONDS} s is marked Crashed ({CRASH_AUTOMATION!r})",
          flush=True)
    if deploy:
        names = deployments.deploy(prefect_file, env)
        print("deployed:", ", ".join(names) or "(see prefect deployment ls)", flush=True)


class Group:
    """Child processes started together, each in its own session, stopped together (SIGTERM to
    each process group and to every descendant, then SIGKILL after ``grace`` seconds)."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict, **kw) -> subprocess.Popen:
        print(f"starting {name}: {' '.join(cmd)}", flush=True)
        p = subprocess.Popen(cmd, env=env, start_new_session=True, **kw)
        self.procs.append((name, p))
        return p

    def _descendants(self) -> list:
        import psutil

        out = []
        for _, p in self.procs:
            try:
                out += psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self, grace: float = 10.0) -> None:
        import psutil

        kids = self._descendants()
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for k in kids:
            try:
                k.terminate()
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + grace
        for _, p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
        _, alive = psutil.wait_procs(kids, timeout=max(0.1, deadline - time.monotonic()))
        for k in alive:
            try:
                k.kill()
            except psutil.NoSuchProcess:
                pass

    def wait_any(self) -> tuple[str, int]:
        """Block until one child exits; returns (its name, its exit code)."""
        while True:
            for name, p in self.procs:
                if p.poll() is not None:
                    return name, p.returncode
            time.sleep(0.5)


def _foreground(group: Group) -> int:
    """Stay in the foreground until a child exits or we are told to stop; stop every child."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        name, code = group.wait_any()
        print(f"{name} exited with code {code}; stopping the others", file=sys.stderr, flush=True)
        return code or 1
    except KeyboardInterrupt:
        return 0
    finally:
        group.stop()


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _err(msg: str) -> int:
    print(f"dsclab: error: {msg}", file=sys.stderr)
    return 2


DATABASE_SETTINGS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def new_database_from_template(env: dict) -> dict[str, str]:
    """A server on Prefect's default SQLite database (``$PREFECT_HOME/prefect.db``; no database
    setting in ``env``) whose file does not exist yet starts on a copy of the template database of
    the temporary servers (:func:`flows.temporary_server.template_path`: migrated, block types
    registered), not an empty one: ~6 CPU-seconds of migrations fewer, once. Returns the settings
    that start it (no block registration on the copy), else nothing; never raises."""
    from flows import temporary_server as ts

    if any(env.get(k) for k in DATABASE_SETTINGS):
        return {}
    try:
        home = Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser()
        db = home / ts.DATABASE
        template = ts.template_path()
        if db.exists() or template is None:
            return {}
        home.mkdir(parents=True, exist_ok=True)
        return ts.block_registration(home, True) if ts.copy_template(template, db) else {}
    except OSError:
        return {}


def cmd_server(args) -> int:
    api_url = f"http://{connect_host(args.host)}:{args.port}/api"
    auth = auth_string()
    if not loopback(args.host) and not auth:
        return _err(f"--host {args.host} listens beyond this machine and needs credentials: {HOW_TO_AUTH}")
    if health(api_url):
        return _err(f"a Prefect server already answers at {api_url}")
    extra = {SERVER_AUTH: auth, AUTH: auth} if auth else {}
    if args.database_url:
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = args.database_url
    # The UI finds the API at PREFECT_UI_API_URL, which Prefect derives from these two settings
    # (not from the --host/--port flags): a server on another port would send the browser to 4200.
    extra["PREFECT_SERVER_API_HOST"], extra["PREFECT_SERVER_API_PORT"] = args.host, str(args.port)
    extra["PREFECT_UI_API_URL"] = args.ui_api_url or (
        f"http://{socket.getfqdn()}:{args.port}/api" if args.host in ("0.0.0.0", "::") else api_url)
    env = base_env(None, **extra)
    env.pop("PREFECT_API_URL", None)
    group = Group()
    try:
        start = ["server", "start", "--host", args.host, "--port", str(args.port)]
        # SQLite: Prefect's server with every transaction begun IMMEDIATE (flows/sqlite_server.py), so that
        # two workers' runs queue for the write lock instead of failing with "database is locked"
        cmd = prefect(*start) if args.database_url else [sys.executable, "-m", "flows.sqlite_server", *start]
        env.update(new_database_from_template(env))
        proc = group.start("server", cmd, env, cwd=ROOT)
        wait_healthy(api_url, args.timeout, proc)
        setup(api_url, deploy=not args.no_deploy)
    except BaseException:
        group.stop()
        raise
    ui = extra["PREFECT_UI_API_URL"][: -len("/api")]
    print(f"\nPrefect server ready: UI {ui}  API {api_url}\n"
          f"workers (on each GPU machine): PREFECT_API_URL={extra['PREFECT_UI_API_URL']} dsclab worker\n", flush=True)
    return _foreground(group)


def cmd_deploy(args) -> int:
    api_url = args.api or os.environ.get("PREFECT_API_URL") or DEFAULT_API
    wait_healthy(api_url, args.timeout)
    if problem := access_problem(api_url):
        return _err(problem)
    setup(api_url, deploy=not args.no_deploy)
    return 0


def worker_specs(gpus: list[str], cpu: int, host: str | None = None) -> list[tuple[str, str, str]]:
    """(worker name, pool, CUDA_VISIBLE_DEVICES) of each worker to start."""
    host = host or socket.gethostname()
    out = [(f"gpu{g}-{host}", "gpu", g) for g in gpus] or [(f"gpu-cpu-{host}", "gpu", "")]
    out += [(f"cpu{k}-{host}", "cpu", "") for k in range(cpu)]
    return out


def cmd_worker(args) -> int:
    api_url = args.api or os.environ.get("PREFECT_API_URL") or DEFAULT_API
    wait_healthy(api_url, args.timeout)
    if problem := access_problem(api_url):
        return _err(problem)
    root = {RESULTS_ROOT: results_root(args.results_root)} if args.results_root else {}
    group = Group()
    try:
        for name, pool, visible in worker_specs(detect_gpus(args.gpus), args.cpu):
            env = base_env(api_url, CUDA_VISIBLE_DEVICES=visible, **root)
            env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))  # the runs it starts
            group.start(name, prefect("worker", "start", "--pool", pool, "--name", name, "--limit", str(args.limit),
                                      "--type", "process"), env)
    except BaseException:
        group.stop()
        raise
    return _foreground(group)


def count(lowest: int):
    """An argparse type: an integer no smaller than ``lowest``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lowest:
            raise argparse.ArgumentTypeError(f"{v} is below {lowest}")
        return v
    return parse


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return v


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_parsers(sub) -> None:
    """Add the server / deploy / worker subcommands to an argparse subparsers object."""
    s = sub.add_parser("server", help="start a Prefect server, create the pools and deploy the study flows")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    s.add_argument("--port", type=count(1), default=4200)
    s.add_argument("--database-url", help="e.g. postgresql+asyncpg://user:pw@host:5432/prefect "
                                          "(default: SQLite under PREFECT_HOME)")
    s.add_argument("--ui-api-url", help="API URL as browsers reach it (default http://HOST:PORT/api, "
                                        "the machine's name when HOST is 0.0.0.0)")
    s.add_argument("--no-deploy", action="store_true", help="create the pools only")
    s.add_argument("--timeout", type=seconds, default=120.0, help="seconds to wait for the server to answer")
    s.set_defaults(fn=cmd_server)
    d = sub.add_parser("deploy", help="create the pools and deploy the study flows on a running server")
    d.add_argument("--api", help=f"server API URL (default: PREFECT_API_URL or {DEFAULT_API})")
    d.add_argument("--no-deploy", action="store_true")
    d.add_argument("--timeout", type=seconds, default=60.0)
    d.set_defaults(fn=cmd_deploy)
    w = sub.add_parser("worker", help="start one gpu-pool worker per GPU (and --cpu N cpu-pool workers)")
    w.add_argument("--api", help=f"server API URL (default: PREFECT_API_URL or {DEFAULT_API})")
    w.add_argument("--gpus", default="auto", help="auto (CUDA_VISIBLE_DEVICES, else all), none, or 0,1,...")
    w.add_argument("--cpu", type=count(0), default=1, help="workers on the cpu pool (default 1)")
    w.add_argument("--limit", type=count(1), default=1, help="flow runs at once per worker")
    w.add_argument("--results-root", default=os.environ.get(RESULTS_ROOT),
                   help=f"folder or URL prefix the deployments' runs may write under (sets {RESULTS_ROOT}; "
                        "default: its value, else results/ of the checkout)")
    w.add_argument("--timeout", type=seconds, default=60.0)
    w.set_defaults(fn=cmd_worker)


def main(argv: list[str] | None = None, prog: str = "python -m flows.server") -> int:
    p = Parser(prog=prog, description=__doc__.splitlines()[0])
    add_parsers(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
