"""One training task per accelerator at a time on a machine: an advisory file lock per device,
which the kernel releases the moment its holder's process dies (``fcntl.flock``).

It replaces Prefect's tag concurrency limit ``gpu`` as the guard of training tasks that run on
threads (``flows.runners``). A Prefect slot is a lease the server keeps: the API takes no lease
shorter than 60 s, the holder's process renews it, and the server reclaims an expired one only on
its repossessor's next pass (every 15 s); a flow run killed while training thus held the slot for
~75 s, and a slot taken through a server that then died (a temporary server sharing the team's
database, or the team server restarted while its leases lived in its memory) was never given back.
A lock file on the machine whose device it guards has neither failure: it belongs to an open file
of the training process, so it lasts exactly as long as that process holds it, and it is keyed by
the physical device, so one GPU is one lock whatever ``CUDA_VISIBLE_DEVICES`` the processes that
share it see. The CPU is not guarded: training tasks there share the cores like every other task.

The lock files live in ``DSCLAB_GPU_LOCK_DIR`` when set, else ``<tmp>/dsclab-gpu-locks`` (a folder
every user of the machine may create files in, like ``/tmp``); each holds a line naming its
current holder, which a task that has to wait logs. Standard library only at import.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def lock_dir() -> Path:
    d = Path(os.environ.get("DSCLAB_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "dsclab-gpu-locks")
    if not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # shared by the machine's users (sticky, like /tmp)
            d.chmod(0o1777)
    return d


def device_key(device: str) -> str | None:
    """The name of the physical device ``device`` (a torch device string) denotes on this machine,
    or None for the CPU: ``cuda-<uuid>`` for a CUDA device (the same GPU under any
    ``CUDA_VISIBLE_DEVICES``), else the device type (``mps``)."""
    import torch

    d = torch.device(device)
    if d.type == "cpu":
        return None
    if d.type != "cuda":
        return d.type
    index = d.index if d.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        return f"cuda-{uuid}"
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return f"cuda-{visible[index] if index < len(visible) else index}"


NAMING_SECONDS = 2.0
"""How long a task that finds the lock held gives its holder to write its name: a holder writes it
just after taking the lock, and a thread of a loaded process may be paused between the two."""


def _holder(fd: int) -> str:
    """The first line of the lock file (its holder's name), "" while no holder has written one."""
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace").partition("\n")[0].strip()
    except OSError:
        return "an unreadable holder"


def _take(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _name_or_take(fd: int) -> str | None:
    """The held lock's holder, once it has named itself (at most ``NAMING_SECONDS``), or None if
    the lock came free and was taken meanwhile."""
    deadline = time.monotonic() + NAMING_SECONDS
    while not (name := _holder(fd)) and time.monotonic() < deadline:
        time.sleep(0.01)
        if _take(fd):
            return None
    return name or "an unnamed holder"


@contextlib.contextmanager
def hold(key: str, holder: str, log=None) -> Iterator[float]:
    """Hold the lock ``key`` for the ``with`` block; yields the seconds spent waiting for it.

    Free: taken at once, silently. Held: ``log`` gets one line naming the holder (``holder`` of
    the process that holds it, its pid and host, since when) before the wait, and one with the
    wait's length after it. The lock is released when the block ends or its process dies.

    A holder writes its line just after taking the lock and empties the file as it releases it, so
    a waiter that reads an empty file has caught a holder between the two steps and reads again
    (``NAMING_SECONDS``). A holder killed with its lock leaves its line, which the next holder
    overwrites once it has the lock; only a waiter in that instant reads the dead holder's name."""
    path = lock_dir() / f"{key}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # another user's tasks lock it too
    except PermissionError:  # created by another user with a stricter umask: a lock needs no write
        fd = os.open(path, os.O_RDONLY)
    named = False
    try:
        t0 = time.monotonic()
        if log is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif not _take(fd) and (name := _name_or_take(fd)) is not None:
            log.info("waiting for %s (lock %s): held by %s", key, path, name)
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("got %s after waiting %.1f s", key, time.monotonic() - t0)
        waited = time.monotonic() - t0
        with contextlib.suppress(OSError):
            line = (f"{holder} (pid {os.getpid()} on {socket.gethostname()}, "
                    f"since {time.strftime('%Y-%m-%d %H:%M:%S')})\n").encode()
            os.pwrite(fd, line, 0)  # over a killed holder's line, then cut to ours
            os.ftruncate(fd, len(line))
            named = True
        yield waited
    finally:
        if named:  # a clean release names nobody (a killed holder's name stays until the next holder's)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing the file releases the lock


class DeviceLocked:
    """A task function run while holding the lock of the device it trains on (:mod:`flows.gpu_lock`):
    the device of its ``spec`` argument as ``tasks.stages.task_device`` resolves it in the task's process;
    no lock on the CPU. Its signature is the wrapped function's (Prefect binds the parameters)."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        from tasks.stages import task_device

        spec = inspect.signature(self.fn).bind_partial(*args, **kwargs).arguments.get("spec")
        key = device_key(task_device(getattr(getattr(spec, "train", None), "device", "auto")))
        if key is None:
            return self.fn(*args, **kwargs)
        from prefect import get_run_logger
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        holder = (f"task run {ctx.task_run.name} of flow run {ctx.task_run.flow_run_id}" if ctx is not None
                  else "a task outside Prefect")
        with hold(key, holder, get_run_logger() if ctx is not None else None):
            return self.fn(*args, **kwargs)
