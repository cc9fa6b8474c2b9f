"""Who may use a team server and where its runs may write.

Credentials: Prefect's API auth string, HTTP basic credentials ``USER:PASSWORD`` that the server
(``PREFECT_SERVER_API_AUTH_STRING``) requires of every request but its health check, and that
clients (``PREFECT_API_AUTH_STRING``: workers, the flow runs they start, ``prefect`` commands,
``dsclab run``) send. ``dsclab server`` refuses to listen beyond loopback without them
(:func:`loopback`) and takes either variable for both sides; :func:`access_problem` checks a
client's before it starts anything.

Results root: ``DSCLAB_RESULTS_ROOT`` (:mod:`storage.confine`), which ``dsclab worker
--results-root`` sets for its workers (:func:`results_root`).

Talking to a server: the environment of the processes started for it (:func:`base_env`), a
``prefect`` command line (:func:`prefect`), its health (:func:`wait_healthy`) and requests retried
as Prefect's client retries them (:func:`api_request`); ``flows.server`` (the team-server commands),
``flows.temporary_server`` and ``flows.deployments`` use these.

Only the standard library at the top (``flows.server`` imports this before anything heavy).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

AUTH = "PREFECT_API_AUTH_STRING"                # the clients' credentials (Prefect's setting)
SERVER_AUTH = "PREFECT_SERVER_API_AUTH_STRING"  # the server's
RESULTS_ROOT = "DSCLAB_RESULTS_ROOT"            # storage.confine.ENV
HOW_TO_AUTH = (f"set the credentials first, e.g. export {AUTH}=\"admin:$(openssl rand -hex 16)\" "
               "(the same value for every worker and dsclab run; the UI asks for it once)")


def auth_string() -> str | None:
    """The API credentials of this environment: ``PREFECT_API_AUTH_STRING``, else
    ``PREFECT_SERVER_API_AUTH_STRING``; None when neither is set."""
    return os.environ.get(AUTH) or os.environ.get(SERVER_AUTH) or None


def auth_headers() -> dict[str, str]:
    """The HTTP basic ``Authorization`` header Prefect's client sends for :func:`auth_string`."""
    import base64

    auth = auth_string()
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine reaches."""
    return host == "localhost" or host == "::1" or host.startswith("127.")


def results_root(root: str) -> str:
    """``--results-root``: a URL as given, a local folder made absolute (the flow runs' working
    directory is the checkout, not the worker's)."""
    return root if "://" in root else os.path.abspath(os.path.expanduser(root))


def access_problem(api_url: str) -> str | None:
    """None when the server at ``api_url`` accepts this environment's credentials, else one line
    saying what to set."""
    import httpx

    try:
        r = api_request("POST", f"{api_url.rstrip('/')}/work_pools/filter", json={"limit": 1})
    except httpx.HTTPError as e:
        return f"no Prefect server answers at {api_url} ({type(e).__name__})"
    if r.status_code != 401:
        return None
    if auth_string():
        return f"the Prefect server at {api_url} refuses the credentials in {AUTH} (401): use the server's"
    return f"the Prefect server at {api_url} requires credentials (401): set {AUTH} to the server's"


def prefect(*args: str) -> list[str]:
    """A ``prefect`` CLI command line run with this interpreter."""
    return [sys.executable, "-m", "prefect", *args]


def base_env(api_url: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if auth_string():
        env[AUTH] = auth_string()
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


def health(api_url: str, timeout: float = 2.0, client=None) -> bool:
    """Whether the server at ``api_url`` answers its health probe (through ``client``, an
    ``httpx.Client``, when given)."""
    import httpx

    try:
        return (client or httpx).get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(api_url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None,
                 poll: float = 0.3) -> None:
    """Wait until the server at ``api_url`` answers (bounded); fail early if ``proc`` exits.

    One HTTP client for every probe: each new one loads the CA bundle (~35 ms of CPU), which at
    ``dsclab run``'s 20 probes a second while its temporary server starts cost more CPU than the
    server's own start (7 s of a 30 s run)."""
    import httpx

    t0 = time.monotonic()
    with httpx.Client() as client:
        while not health(api_url, client=client):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with code {proc.returncode}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"no Prefect server answered at {api_url} within {timeout:.0f} s")
            time.sleep(poll)


def api_request(method: str, url: str, attempts: int = 20, **kw):
    """An HTTP request to the Prefect API, retried like Prefect's own client when the server
    answers 503 (SQLite busy under load) or 429; bounded (about 30 s of waiting at most)."""
    import httpx

    kw["headers"] = {**auth_headers(), **kw.get("headers", {})}
    for attempt in range(attempts):
        r = httpx.request(method, url, timeout=30, **kw)
        if r.status_code not in (429, 503):
            return r
        time.sleep(min(0.5 * (attempt + 1), 3.0))
    return r
