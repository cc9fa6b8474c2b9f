"""Team server and GPU workers: ``dsclab server``, ``dsclab deploy``, ``dsclab worker`` (also
``python -m flows.server server|deploy|worker ...``).

They run the plain Prefect commands of the README and add what Prefect leaves to the user:

``server``  ``prefect server start`` (SQLite under PREFECT_HOME, or ``--database-url`` for
            PostgreSQL), waits until it answers, then does ``deploy``, and stays in the foreground
            (Ctrl-C stops it).
``deploy``  against a running server: creates the process work pools ``cpu`` and ``gpu`` if
            missing (``prefect work-pool create NAME --type process``), sets the task concurrency
            limit ``gpu`` to the number of GPUs (``prefect concurrency-limit create gpu N``; 1 on a
            machine without GPUs, where the gpu pool runs on the CPU), and deploys the flow of
            every registered study kind, plugins included: it writes their deployments to the
            git-ignored ``deploy/prefect.local.yaml`` (``flows.deployments``) and runs ``prefect
            deploy --all --prefect-file deploy/prefect.local.yaml`` from the repository root.
``worker``  one ``prefect worker start --pool gpu --limit 1`` per GPU, each with its own
            ``CUDA_VISIBLE_DEVICES`` (one on the CPU when there is no GPU), plus ``--cpu N``
            workers on the ``cpu`` pool; stops them all together.

Telemetry is off (``PREFECT_SERVER_ANALYTICS_ENABLED=false``) in every process started here.

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

from flows.temporary_server import TemporaryServer  # noqa: F401 - ``from flows.server import TemporaryServer``

ROOT = Path(__file__).resolve().parents[1]
POOLS = ("cpu", "gpu")
GPU_TAG = "gpu"
DEFAULT_API = "http://127.0.0.1:4200/api"


def prefect(*args: str) -> list[str]:
    """A ``prefect`` CLI command line run with this interpreter."""
    return [sys.executable, "-m", "prefect", *args]


def base_env(api_url: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


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


def health(api_url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(api_url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None,
                 poll: float = 0.3) -> None:
    """Wait until the server at ``api_url`` answers (bounded); fail early if ``proc`` exits."""
    t0 = time.monotonic()
    while not health(api_url):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode}")
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"no Prefect server answered at {api_url} within {timeout:.0f} s")
        time.sleep(poll)


def api_request(method: str, url: str, attempts: int = 20, **kw):
    """An HTTP request to the Prefect API, retried like Prefect's own client when the server
    answers 503 (SQLite busy under load) or 429; bounded (about 30 s of waiting at most)."""
    import httpx

    for attempt in range(attempts):
        r = httpx.request(method, url, timeout=30, **kw)
        if r.status_code not in (429, 503):
            return r
        time.sleep(min(0.5 * (attempt + 1), 3.0))
    return r


def existing_pools(api_url: str) -> set[str]:
    r = api_request("POST", f"{api_url.rstrip('/')}/work_pools/filter", json={})
    r.raise_for_status()
    return {p["name"] for p in r.json()}


def setup(api_url: str, gpus: int, deploy: bool = True, prefect_file: Path | None = None) -> None:
    """Pools, the ``gpu`` concurrency limit and the deployments on the server at ``api_url``: those
    of ``prefect_file``, by default every registered study kind's (deploy/prefect.local.yaml,
    written now by ``flows.deployments.write``)."""
    env = base_env(api_url)
    missing = [p for p in POOLS if p not in existing_pools(api_url)]
    cmds = [prefect("work-pool", "create", p, "--type", "process") for p in missing]
    cmds.append(prefect("concurrency-limit", "create", GPU_TAG, str(max(1, gpus))))
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


def cmd_server(args) -> int:
    api_url = f"http://{connect_host(args.host)}:{args.port}/api"
    if health(api_url):
        print(f"a Prefect server already answers at {api_url}", file=sys.stderr)
        return 2
    extra = {}
    if args.database_url:
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = args.database_url
    # The UI finds the API at PREFECT_UI_API_URL, which Prefect derives from these two settings
    # (not from the --host/--port flags): a server on another port would send the browser to 4200.
    extra["PREFECT_SERVER_API_HOST"], extra["PREFECT_SERVER_API_PORT"] = args.host, str(args.port)
    extra["PREFECT_UI_API_URL"] = args.ui_api_url or (
        f"http://{socket.getfqdn()}:{args.port}/api" if args.host in ("0.0.0.0", "::") else api_url)
    extra["PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS"] = os.environ.get(
        "PREFECT_SERVER_TASKS_TAG_CONCURRENCY_SLOT_WAIT_SECONDS", str(args.slot_wait))
    env = base_env(None, **extra)
    env.pop("PREFECT_API_URL", None)
    group = Group()
    try:
        proc = group.start("server", prefect("server", "start", "--host", args.host, "--port", str(args.port)), env)
        wait_healthy(api_url, args.timeout, proc)
        gpus = detect_gpus(args.gpus)
        setup(api_url, len(gpus), deploy=not args.no_deploy)
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
    setup(api_url, len(detect_gpus(args.gpus)), deploy=not args.no_deploy)
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
    group = Group()
    try:
        for name, pool, visible in worker_specs(detect_gpus(args.gpus), args.cpu):
            env = base_env(api_url, CUDA_VISIBLE_DEVICES=visible)
            group.start(name, prefect("worker", "start", "--pool", pool, "--name", name, "--limit", str(args.limit),
                                      "--type", "process"), env)
    except BaseException:
        group.stop()
        raise
    return _foreground(group)


def add_parsers(sub) -> None:
    """Add the server / deploy / worker subcommands to an argparse subparsers object."""
    s = sub.add_parser("server", help="start a Prefect server, create the pools and deploy the study flows")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    s.add_argument("--port", type=int, default=4200)
    s.add_argument("--database-url", help="e.g. postgresql+asyncpg://user:pw@host:5432/prefect "
                                          "(default: SQLite under PREFECT_HOME)")
    s.add_argument("--ui-api-url", help="API URL as browsers reach it (default http://HOST:PORT/api, "
                                        "the machine's name when HOST is 0.0.0.0)")
    s.add_argument("--gpus", default="auto", help="GPUs the team has, for the gpu limit: auto, none, or 0,1,...")
    s.add_argument("--slot-wait", type=float, default=5.0,
                   help="seconds a task waits before retrying a full gpu concurrency slot")
    s.add_argument("--no-deploy", action="store_true", help="create the pools and limit only")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to answer")
    s.set_defaults(fn=cmd_server)
    d = sub.add_parser("deploy", help="create the pools and gpu limit and deploy the study flows on a running server")
    d.add_argument("--api", help=f"server API URL (default: PREFECT_API_URL or {DEFAULT_API})")
    d.add_argument("--gpus", default="auto")
    d.add_argument("--no-deploy", action="store_true")
    d.add_argument("--timeout", type=float, default=60.0)
    d.set_defaults(fn=cmd_deploy)
    w = sub.add_parser("worker", help="start one gpu-pool worker per GPU (and --cpu N cpu-pool workers)")
    w.add_argument("--api", help=f"server API URL (default: PREFECT_API_URL or {DEFAULT_API})")
    w.add_argument("--gpus", default="auto", help="auto (CUDA_VISIBLE_DEVICES, else all), none, or 0,1,...")
    w.add_argument("--cpu", type=int, default=1, help="workers on the cpu pool (default 1)")
    w.add_argument("--limit", type=int, default=1, help="flow runs at once per worker")
    w.add_argument("--timeout", type=float, default=60.0)
    w.set_defaults(fn=cmd_worker)


def main(argv: list[str] | None = None, prog: str = "python -m flows.server") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_parsers(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
