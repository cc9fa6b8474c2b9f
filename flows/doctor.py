"""``dsclab doctor``: one screen of what this machine gives the lab.

The torch build and version, whether CUDA is available, each device with its free memory, the
device each stage will use and why (``DSCLAB_DEVICE``, a spec's ``train.device``, the work pool's
job variables), the Prefect API in use, the results root, and the optional parts found (chromium,
PostgreSQL, s3fs). It only reads: it starts no server, creates nothing, and never fails for a
missing GPU or part (exit 0). Credentials are never printed: a URL's user and password are cut.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from urllib.parse import urlsplit, urlunsplit

# What the work pools of flows/deployments.py set in their job variables (env.DSCLAB_DEVICE).
POOLS = {"gpu": "auto", "cpu": "cpu"}


def _no_secret(url: str) -> str:
    """``url`` without a user or password (``http://u:p@host/api`` -> ``http://host/api``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable)"
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def torch_facts() -> list[str]:
    import torch

    cuda = torch.version.cuda
    build = f"CUDA {cuda}" if cuda else ("ROCm " + torch.version.hip if getattr(torch.version, "hip", None)
                                         else "CPU only")
    lines = [f"torch         {torch.__version__} ({build} build)"]
    if not cuda and not getattr(torch.version, "hip", None):
        lines.append("              a CPU build: for a GPU install the CUDA build (README, Environment: make venv GPU=1)")
    available = torch.cuda.is_available()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    lines.append(f"CUDA          {'available' if available else 'not available'}"
                 + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""))
    if available:
        for i in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(i)
            try:
                free, total = torch.cuda.mem_get_info(i)
                mem = f"{_mib(free)} free of {_mib(total)}"
            except Exception as e:  # noqa: BLE001 - a device that cannot be queried is shown, not fatal
                mem = f"memory unknown ({type(e).__name__})"
            lines.append(f"  cuda:{i}      {name}, {mem}")
    try:
        import psutil

        vm = psutil.virtual_memory()
        cpu = f"{os.cpu_count()} cores, {_mib(vm.available)} free of {_mib(vm.total)}"
    except ImportError:
        cpu = f"{os.cpu_count()} cores"
    lines.append(f"  cpu         {cpu}; torch threads {torch.get_num_threads()}")
    return lines


def device_facts(spec_device: str | None = None) -> list[str]:
    """The device of the train and evaluate stages (prepare generates data on the CPU), and why."""
    import torch

    from dsclab.train import resolve_device

    gpu = torch.cuda.is_available()
    auto = f"auto: {'CUDA is available' if gpu else 'no CUDA device'}"
    env = os.environ.get("DSCLAB_DEVICE", "").strip()
    requested = spec_device or "auto"
    if requested != "auto":
        why = f"the spec's train.device={requested}"
    elif env and env != "auto":
        requested, why = env, f"DSCLAB_DEVICE={env}"
    else:
        why = (f"DSCLAB_DEVICE=auto, {auto}" if env else f"DSCLAB_DEVICE unset, {auto}") + \
              ("" if spec_device else "; a spec's train.device other than auto wins")
    try:
        device = str(resolve_device(requested))
    except RuntimeError as e:
        device = f"invalid ({e})"
    lines = ["stages        prepare: cpu (data generation)",
             f"              train, evaluate: {device} ({why})"]
    pools = ", ".join(f"{pool} pool sets DSCLAB_DEVICE={v} -> {resolve_device(v)}" for pool, v in POOLS.items())
    lines.append(f"              in a deployment's run on this machine: {pools}")
    return lines


def prefect_facts() -> list[str]:
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        try:  # the profile's setting, read without importing Prefect's client
            from prefect.settings import PREFECT_API_URL

            url = (PREFECT_API_URL.value() or "").strip()
        except Exception:  # noqa: BLE001 - Prefect missing or its profile unreadable: say so below
            url = ""
    where = _no_secret(url) if url else "none set: `dsclab run` starts a temporary server for each run"
    from storage.confine import ENV, results_root

    root = results_root(deployed=False)
    return [f"Prefect API   {where}",
            f"results root  {f'{ENV}={root}' if root else f'{ENV} unset: dsclab run writes anywhere; a deployment run under results/ of its checkout'}"]


def optional_facts() -> list[str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    postgres = next((p for p in map(shutil.which, ("postgres", "pg_ctl")) if p), None)
    if postgres is None:  # Debian keeps the server binaries out of PATH
        import glob

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        postgres = found[-1] if found else None
    s3 = importlib.util.find_spec("s3fs")
    if s3 is not None:
        from importlib.metadata import version

        s3fs = f"s3fs {version('s3fs')} (s3:// stores; credentials and endpoint from AWS_* variables)"
    else:
        s3fs = "not installed (s3:// stores need it)"
    dask = importlib.util.find_spec("distributed") is not None
    return ["optional",
            f"  chromium    {chromium or 'not found (tests/test_browser.py is skipped)'}",
            f"  PostgreSQL  {postgres or 'not found (tests/test_postgres.py is skipped)'}",
            f"  s3fs        {s3fs}",
            f"  dask        {'distributed installed' if dask else 'not installed'}"]


def report(spec_device: str | None = None) -> str:
    import dsclab

    lines = [f"dsclab        {dsclab.__version__}"]
    for part in (torch_facts, lambda: device_facts(spec_device), prefect_facts, optional_facts):
        try:
            lines += part()
        except Exception as e:  # noqa: BLE001 - doctor reports, it never fails
            lines.append(f"(could not read: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    return "\n".join(lines)
