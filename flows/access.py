"""Who may use a team server and where its runs may write.

Credentials: Prefect's API auth string, HTTP basic credentials ``USER:PASSWORD`` that the server
(``PREFECT_SERVER_API_AUTH_STRING``) requires of every request but its health check, and that
clients (``PREFECT_API_AUTH_STRING``: workers, the flow runs they start, ``prefect`` commands,
``dsclab run``) send. ``dsclab server`` refuses to listen beyond loopback without them
(:func:`loopback`) and takes either variable for both sides; :func:`access_problem` checks a
client's before it starts anything.

Results root: ``DSCLAB_RESULTS_ROOT`` (:mod:`storage.confine`), which ``dsclab worker
--results-root`` sets for its workers (:func:`results_root`).

Only the standard library at the top (``flows.server`` imports this before anything heavy).
"""
from __future__ import annotations

import os

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

    from flows.server import api_request

    try:
        r = api_request("POST", f"{api_url.rstrip('/')}/work_pools/filter", json={"limit": 1})
    except httpx.HTTPError as e:
        return f"no Prefect server answers at {api_url} ({type(e).__name__})"
    if r.status_code != 401:
        return None
    if auth_string():
        return f"the Prefect server at {api_url} refuses the credentials in {AUTH} (401): use the server's"
    return f"the Prefect server at {api_url} requires credentials (401): set {AUTH} to the server's"
