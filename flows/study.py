"""The one generic study flow, and a typed Prefect flow per study kind.

:func:`run_study` runs any registered kind (``dsclab.study``): it creates or reopens the store,
skips done cells, submits the kind's plan — every prepare task (once per data key), then every
train task (tagged ``gpu``), then every evaluate task, in the plan's order — through the runner
the run asks for (threads in this process, or Dask), with ``spec.workers`` tasks at once. It logs
progress as tasks finish (cells done / total, elapsed, ETA; a progress artifact), consolidates the
store and publishes the summary table, report and plot as artifacts of the flow run. A task that
fails with an exception that is not numerical leaves its cells pending and makes the run fail
with :class:`StudyTaskError` naming it, after every other task has finished.

Each kind has its own flow, ``flows.study.<kind>`` (``kind_flow``), whose ``spec`` parameter is
typed by the kind's spec model, so that its deployment renders the kind's own form in the Prefect
UI; deployments point at ``flows/study.py:<kind>``, plugin kinds included.
"""
import collections
import functools
import logging
import time
from collections.abc import Mapping, Sequence

from prefect import Flow, get_run_logger
from prefect.futures import as_completed
from prefect.context import FlowRunContext
from prefect.states import Failed
from pydantic import ValidationError

import storage
from dsclab.spec import SpecError, format_validation_error
from dsclab.study import KINDS, StudyKind
from dsclab.train import fmt_seconds
from flows import artifacts, runners
from flows.runners import RunnerSpec
from storage.confine import confine
from tasks import stages


class StudyTaskError(RuntimeError):
    """Some tasks of a study failed with errors that are not numerical (their cells stay pending)."""


def pending_cells(store: str, cells: Sequence, index) -> list:
    """The cells whose stored ``status`` is not done (pending or failed: both are (re)computed)."""
    status = storage.read_status(store)
    return [c for c in cells if int(status.sel(index(c))) != storage.DONE]


def follow(log, futures: Sequence, sizes: Sequence[int], total: int, done_before: int,
           groups: Sequence[int] | None = None) -> tuple[int, int, list]:
    """Wait for evaluate futures (each returning its cells' statuses; ``sizes[i]`` cells for
    future i, of group ``groups[i]``), logging cells done / total, elapsed and, once a whole group
    has finished, the ETA as each finishes, and updating a progress artifact. Returns (cells done
    in all, cells failed in this run, task errors).

    No ETA before a group has finished: groups train side by side, so the first cells finish only
    after a whole group's training, and a rate taken from them (one cell for the time of a
    group) overestimated the quick study's 2 m 45 s as 49 minutes."""
    t0, done, failed, finished, errors = time.perf_counter(), done_before, 0, 0, []
    progress = artifacts.Progress(total, done_before)
    size = {id(f): s for f, s in zip(futures, sizes)}
    group = {id(f): g for f, g in zip(futures, groups if groups is not None else range(len(futures)))}
    left = collections.Counter(group.values())  # unfinished futures per group
    groups_done = 0
    todo = sum(sizes)
    for fut in as_completed(futures):
        out = fut.result(raise_on_failure=False)
        if isinstance(out, BaseException) or not isinstance(out, list):
            log.error("a task failed (its %d cell(s) stay pending): %s", size[id(fut)], out)
            errors.append(out)
        else:
            done += sum(s == storage.DONE for s in out)
            failed += sum(s != storage.DONE for s in out)
        finished += size[id(fut)]
        left[group[id(fut)]] -= 1
        groups_done += left[group[id(fut)]] == 0
        el = time.perf_counter() - t0
        eta = fmt_seconds(el / max(finished, 1) * (todo - finished)) if groups_done else "after the first group"
        log.info("cells %d/%d done (%d failed) | elapsed %s | ETA %s", done, total, failed, fmt_seconds(el), eta)
        progress.update(done + failed)
    return done, failed, errors


def finish(log, path: str) -> tuple[str | None, str | None]:
    """End of a study run: consolidate the store's metadata, then publish the summary table,
    report and plot as artifacts of the flow run. Returns (the figure's file when it was written
    beside a local store (``storage.plot_path``), else None; the kind's report text, else None):
    ``dsclab run`` prints them instead of making them again."""
    storage.consolidate(path)
    plot_file = storage.plot_path(path) if "://" not in storage.files_url(path) else None
    ids, report = artifacts.publish(path, log, plot_file)
    return (plot_file if "plot" in ids else None), report


def selected(cells: Sequence, index, only: Sequence[Mapping] | None) -> list:
    """The cells matching any of the partial coordinate mappings of ``only`` (all when None)."""
    if only is None:
        return list(cells)
    return [c for c in cells if any(all(index(c).get(k) == v for k, v in sel.items()) for sel in only)]


def run_study(kind: StudyKind, spec, store: str | None = None, runner: RunnerSpec | None = None,
              only: Sequence[Mapping] | None = None) -> dict:
    """Run (or resume) a study of ``kind`` inside a flow run; returns {store, cells, done, failed,
    computed, plot, report} (plot and report: :func:`finish`'s).

    The store is created, reused or grown in place (``storage.growth``): a spec whose settings
    agree with the store's adds its new axis values and computes only the cells not yet done.
    ``only`` (partial coordinates, e.g. ``[{"d": 2, "n": 300}]``) restricts the run to the
    matching cells of ``spec``; the others stay as they are (pending when new)."""
    log = get_run_logger()
    path = spec.store_path(store)
    confine(path, deployed=deployment_run())  # a store outside the results root: refused
    covered = storage.open_store(kind, spec, path)
    cells = selected(kind.cells(spec), kind.index, only)
    todo = pending_cells(path, cells, kind.index)
    log.info("store %s: %d cells, %d to compute", path, len(cells), len(todo))
    spec = covered  # the stages evaluate every inner-axis value the store holds
    groups = kind.plan(spec, todo)
    with runners.start(runner, spec.workers, log, torch_threads=kind.torch_threads) as run:
        # Every prepare and train task is submitted before any evaluation: a thread-pool worker
        # that picks a task waits in it for the task's inputs, so an evaluation queued ahead of
        # another group's training would hold a thread idle while one group trains alone.
        prepared: dict = {}
        for g in groups:
            for key in g.data:
                if key not in prepared:
                    prepared[key] = run.submit(stages.prepare, kind.name, path, spec, key)
        staged = []
        for g in groups:
            needs = {key: prepared[key] for key in g.data}
            trained = run.submit(stages.train, kind.name, path, spec, list(g.cells), needs) if kind.trains(spec) else None
            staged.append((g, needs, trained))
        evals, sizes, of_group = [], [], []
        for i, (g, needs, trained) in enumerate(staged):
            for batch in g.eval_batches():
                evals.append(run.submit(stages.evaluate, kind.name, path, spec, list(batch), needs, trained))
                sizes.append(len(batch))
                of_group.append(i)
        done, failed, errors = follow(log, evals, sizes, len(cells), len(cells) - len(todo), of_group)
    plot, report = finish(log, path)
    if errors:
        first = errors[0]
        raise StudyTaskError(f"{len(errors)} task(s) of study {spec.name!r} raised errors that are not numerical "
                             f"(their cells stay pending; rerun to retry): {type(first).__name__}: {first}")
    return {"store": path, "cells": len(cells), "done": done, "failed": failed, "computed": len(todo), "plot": plot,
            "report": report}


def deployment_run() -> bool:
    """Whether the current flow run is a deployment's (started by a worker, from the UI, the API
    or a schedule)."""
    ctx = FlowRunContext.get()
    return ctx is not None and ctx.flow_run is not None and ctx.flow_run.deployment_id is not None


class RefusalTraceback(logging.Filter):
    """Drops the records with a traceback that Prefect's engine logs when a flow run ends Failed
    (``Engine execution exited with unexpected exception``) where the run was refused with a
    SpecError or StoreError: the flow logged its one line already, which says everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (SpecError, storage.StoreError)))


for _name in ("prefect.flow_runs", "prefect.engine"):  # the run's own logger, and the engine's
    logging.getLogger(_name).addFilter(RefusalTraceback())


def parameters(kind: StudyKind, spec, runner) -> tuple:
    """(spec, runner) of a flow call: models are kept, mappings (a deployment's parameters, as
    JSON) are validated; SpecError with one line otherwise."""
    if not isinstance(spec, kind.spec_model):
        spec = kind.parse(spec)
    if runner is not None and not isinstance(runner, RunnerSpec):
        try:
            runner = RunnerSpec.model_validate(runner)
        except ValidationError as e:
            raise SpecError(f"runner.{format_validation_error(e)}") from None
    return spec, runner


def with_store(spec, store: str):
    """``spec`` (a spec model, or a mapping) with its ``store`` field set to ``store``."""
    return spec.model_copy(update={"store": store}) if hasattr(spec, "model_copy") else {**spec, "store": store}


class StudyFlow(Flow):
    """A study kind's flow. Its parameters, the deployment's run form, are ``spec`` and ``runner``
    (one store field: ``spec.store``); a Python call may also pass ``store=``, which sets
    ``spec.store`` as ``dsclab run --store`` does."""

    def __call__(self, *args, store: str | None = None, **kwargs):
        if store is not None:
            if args:
                args = (with_store(args[0], store), *args[1:])
            else:
                kwargs["spec"] = with_store(kwargs["spec"], store)
        return super().__call__(*args, **kwargs)


@functools.cache
def kind_flow(name: str):
    """The Prefect flow of study kind ``name`` (a :class:`StudyFlow`): ``(spec: <its spec model>,
    runner) -> dict``; the store is ``spec.store`` (default results/NAME.zarr).

    Prefect does not validate its parameters (``validate_parameters=False``): its deployments
    enforce their parameter schema at a run's creation (what JSON Schema can say of the spec
    model: bounds, registered names, distinct values, patterns), and the flow's first step
    validates the rest (rules between fields, the store). A refused spec or store is logged as
    one line, without a traceback, and ends the run Failed with that line as its message, before
    anything is written."""
    kind = KINDS[name]

    def study_flow(spec, runner: RunnerSpec = RunnerSpec()) -> dict:
        try:
            spec, runner = parameters(kind, spec, runner)
            return run_study(kind, spec, runner=runner)
        except (SpecError, storage.StoreError) as e:
            get_run_logger().error("%s", e)
            return Failed(message=str(e), data=e)

    study_flow.__annotations__ = {"spec": kind.spec_model, "runner": RunnerSpec, "return": dict}
    study_flow.__name__ = study_flow.__qualname__ = name
    study_flow.__doc__ = (f"Run (or resume) a {name} study; returns {{store, cells, done, failed, computed, plot, report}}. "
                          f"{kind.description}")
    return StudyFlow(study_flow, name=kind.flow_name, description=kind.description or None, validate_parameters=False)


def run_flow(kind: StudyKind, spec, store: str | None = None, runner: RunnerSpec | None = None) -> dict:
    """Call ``kind``'s flow (a flow run on the current Prefect API) on ``spec``, its store set to
    ``store`` when given."""
    return kind_flow(kind.name)(spec=spec, store=store, **({"runner": runner} if runner else {}))


def __getattr__(name: str):
    """``flows.study.<kind>`` is that kind's flow (deployment entrypoints ``flows/study.py:<kind>``)."""
    if not name.startswith("_") and name in KINDS:
        return kind_flow(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



import flows  # noqa: E402 - at the end: a deployment's entrypoint hands out this package module's flows

flows.as_package_module(globals(), "flows.study")
