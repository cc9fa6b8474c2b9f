"""The three generic tasks that run any study kind's stages (``dsclab.study``): prepare, train
(tagged ``gpu``) and evaluate. They pass the kind's name, the store's path, the spec and cells,
never tensors: data sets and checkpoints go through the files beside the store.

A stage that raises one of ``dsclab.errors.NUMERICAL`` marks its cells failed, with the reason
stored in the store's ``failure`` variable and logged; the task returns normally so that every
other cell completes. Out of device memory (``dsclab.errors.OUT_OF_MEMORY``) in training splits
the group in halves and retries (:func:`train_splitting`), down to one cell; a cell that runs out
of memory alone, in training or in its evaluation, is marked failed with the reason
``out of memory: ...`` (``dsclab.errors.OutOfMemory``). Any other exception propagates: the task
fails, its cells stay pending, and the flow reports it.
"""
from __future__ import annotations

import gc
import os
import traceback
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import storage
from dsclab.errors import FAILURES, NUMERICAL, OUT_OF_MEMORY, OutOfMemory, failure_reason, first_line
from dsclab.study import KINDS, Status
from storage import files
from tasks import progress


class FileCache:
    """The files beside a store, by name (``data/x.npy`` is ``<store>.files/data/x.npy``)."""

    def __init__(self, store: str):
        self.store = store

    def url(self, name: str) -> str:
        return files.url(self.store, *name.split("/"))

    def exists(self, name: str) -> bool:
        return files.exists(self.url(name))

    def save_array(self, name: str, array) -> None:
        files.save_array(self.url(name), array)

    def load_array(self, name: str):
        return files.load_array(self.url(name))


def task_device(requested: str = "auto") -> str:
    """The device a task computes on: ``requested`` unless it is 'auto'; then ``DSCLAB_DEVICE``
    from the environment when set (and not 'auto'; a work pool's job variables set it), else
    CUDA when the process sees a GPU (its worker's ``CUDA_VISIBLE_DEVICES``), else the CPU."""
    if requested == "auto":
        requested = os.environ.get("DSCLAB_DEVICE", "").strip() or "auto"
    from dsclab.train import resolve_device

    return str(resolve_device(requested))


def _device(spec) -> str:
    return task_device(getattr(getattr(spec, "train", None), "device", "auto"))


def _fail(store: str, kind, cells: Sequence, stage: str, e: BaseException) -> None:
    reason = failure_reason(stage, e)
    get_run_logger().warning("%d cell(s) failed in %s: %s (%s)\n%s", len(cells), stage, reason,
                             [kind.index(c) for c in cells], "".join(traceback.format_exception(e)))
    storage.mark_cells(store, [kind.index(c) for c in cells], Status.FAILED, reason=reason)


def release_memory(device: str) -> None:
    """Hand the memory of a failed attempt back to the device: collect the cycles that may still
    hold its tensors, then empty PyTorch's CUDA cache (nothing to do on the CPU)."""
    if torch.device(device).type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def train_splitting(kind, spec, cells: Sequence, cache, prepared: dict, device: str, log) -> dict:
    """``kind.train`` on ``cells``, splitting on out of memory: {cell key: checkpoint payload, or
    the exception that failed that cell}.

    A numerical failure of the whole call fails each of its cells with it. Out of device memory
    (``OUT_OF_MEMORY``) retries the two halves of ``cells`` separately (first ceil(M/2), then the
    rest), each splitting again if needed, logging each split on ``log``; a single cell that runs
    out of memory gets :class:`dsclab.errors.OutOfMemory` with the allocator's message. Each
    retry starts after the failed attempt's memory is released (:func:`release_memory`)."""
    try:
        return kind.train(spec, cells, cache, prepared, device)
    except NUMERICAL as e:  # the whole group failed numerically
        return {c.key: e for c in cells}
    except OUT_OF_MEMORY as e:
        message = first_line(e)
    release_memory(device)  # outside the handler: the attempt's frames and tensors are gone
    if len(cells) == 1:
        return {cells[0].key: OutOfMemory(message)}
    half = (len(cells) + 1) // 2
    log.warning("out of memory training %d cells together on %s (%s); retrying as %d + %d cells",
                len(cells), device, message, half, len(cells) - half)
    return {**train_splitting(kind, spec, cells[:half], cache, prepared, device, log),
            **train_splitting(kind, spec, cells[half:], cache, prepared, device, log)}


@task(name="prepare", cache_policy=NO_CACHE)
def prepare(kind: str, store: str, spec, key: Hashable) -> Any:
    """The kind's prepare stage for one data key (draws and caches a data set, or computes a
    small shared value, which it returns)."""
    return KINDS[kind].prepare(spec, key, FileCache(store))


@task(name="train", cache_policy=NO_CACHE, tags=["gpu"])
def train(kind: str, store: str, spec, cells: list, prepared: dict) -> dict[str, str | None]:
    """Train a group of cells (one batched ensemble) on this worker's device and checkpoint each
    beside the store; a group that runs out of memory is split (:func:`train_splitting`). Returns
    {cell key: checkpoint URL, or None for a cell that failed}.

    Tagged ``gpu``: the runner guards it to one training task per GPU, with the Dask resource
    GPU=1 or its device's lock on the machine (``flows.runners``, ``flows.gpu_lock``), never a
    Prefect concurrency slot."""
    k = KINDS[kind]
    # a checkpoint that exists was written, atomically, by an earlier run of the same training
    # (``StudyKind.checkpoint``): reused (a store whose inner axis grew evaluates its cells again)
    saved = {c.key: files.url(store, "checkpoints", k.checkpoint(spec, c)) for c in cells}
    saved = {key: u for key, u in saved.items() if files.exists(u)}
    todo = [c for c in cells if c.key not in saved]
    with progress.training_group(k, todo):
        results = train_splitting(k, spec, todo, FileCache(store), prepared, _device(spec), get_run_logger()) if todo else {}
    out: dict[str, str | None] = dict(saved)
    failed: dict[int, tuple[BaseException, list]] = {}  # one entry per exception: the cells it failed
    for c in todo:
        res = results[c.key]
        if isinstance(res, BaseException):
            if not isinstance(res, FAILURES):
                raise res  # not a cell's failure: the task fails, its cells stay pending
            failed.setdefault(id(res), (res, []))[1].append(c)
            out[c.key] = None
            continue
        u = files.url(store, "checkpoints", k.checkpoint(spec, c))
        files.save_checkpoint(u, res)
        out[c.key] = u
    for e, group in failed.values():
        _fail(store, k, group, "training", e)
    return out


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(kind: str, store: str, spec, cells: list, prepared: dict,
             checkpoints: dict[str, str | None] | None = None) -> list[int]:
    """Evaluate a batch of cells; each is written to its region then marked done (or marked
    failed on a numerical failure, or when it runs out of memory). Returns their statuses, in
    order."""
    k, cache, device = KINDS[kind], FileCache(store), _device(spec)
    out = []
    for c in cells:
        trained = None
        if k.trains(spec):
            u = (checkpoints or {}).get(c.key)
            if u is None:  # marked failed by the train task
                out.append(Status.FAILED)
                continue
            trained = files.load_checkpoint(u)
        oom = None
        try:
            values = k.evaluate(spec, c, cache, prepared, trained, device)
        except NUMERICAL as e:
            _fail(store, k, [c], "evaluation", e)
            out.append(Status.FAILED)
            continue
        except OUT_OF_MEMORY as e:  # one cell alone: nothing left to split
            oom = OutOfMemory(first_line(e))
        if oom is not None:
            release_memory(device)
            _fail(store, k, [c], "evaluation", oom)
            out.append(Status.FAILED)
            continue
        storage.write_cell(store, values, k.index(c))
        storage.mark_cells(store, [k.index(c)], Status.DONE)
        out.append(Status.DONE)
    return out
