"""Orchestration helpers shared by the study flows: which cells are left, progress (log lines
and a Prefect progress artifact) and the end of a run (consolidate, publish artifacts)."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prefect.futures import PrefectFuture, as_completed

import storage
from flows import artifacts


def fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def pending_cells(store: str, cells: Sequence, index: Callable[[object], dict]) -> list:
    """The cells whose stored ``status`` is not done (pending or failed: both are (re)computed)."""
    status = storage.read_status(store)
    return [c for c in cells if int(status.sel(index(c))) != storage.DONE]


def follow(log, futures: Sequence[PrefectFuture], total: int, done_before: int) -> tuple[int, int]:
    """Wait for cell futures (each returning a status), logging cells done / total, elapsed and
    ETA as each finishes and updating a progress artifact (percent of cells finished). An
    exception in a task leaves its cell pending (a rerun retries it).
    Returns (cells done in all, cells failed in this run)."""
    t0, done, failed = time.perf_counter(), done_before, 0
    progress = artifacts.Progress(total, done_before)
    for i, fut in enumerate(as_completed(futures), 1):
        status = fut.result(raise_on_failure=False)
        if isinstance(status, BaseException):
            log.error("a task failed: %s", status)
        done += status == storage.DONE
        failed += status != storage.DONE
        el = time.perf_counter() - t0
        log.info("cells %d/%d done (%d failed) | elapsed %s | ETA %s", done, total, failed,
                 fmt_seconds(el), fmt_seconds(el / i * (len(futures) - i)))
        progress.update(done + failed)
    return done, failed


def finish(log, path: str) -> str | None:
    """End of a study run: consolidate the store's metadata, then publish the summary table,
    report and plot as artifacts of the flow run. Returns the figure's file when it was written
    beside a local store (``storage.plot_path``; ``dsclab run`` prints it instead of drawing the
    figure again), else None."""
    storage.consolidate(path)
    plot_file = storage.plot_path(path) if "://" not in storage.files_url(path) else None
    ids = artifacts.publish(path, log, plot_file)
    return plot_file if "plot" in ids else None
