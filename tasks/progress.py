"""Training progress in a flow run: ``dsclab.train.fit`` logs a line on the standard logger
``dsclab.train`` at most every ``PROGRESS_SECONDS`` per thread (``dsclab`` knows no Prefect);
:class:`TrainingProgress` sends those lines to the Prefect logger of the task run whose thread
trains (the run's logs in the UI, the console of ``dsclab run``), after the label of the group
that the train task sets (:func:`training_group`). Outside a task run a line is dropped.

Kept apart from ``tasks.stages``: the train task's function is pickled by value when it runs on
Dask, with the globals it reads, and a ``ContextVar`` cannot be pickled; this module is pickled by
reference.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Sequence

_GROUP = contextvars.ContextVar("dsclab_train_group", default="")


class TrainingProgress(logging.Handler):
    """Forwards a ``dsclab.train`` record to the current task run's logger, after the group's label."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect import get_run_logger
        from prefect.context import TaskRunContext

        try:
            if TaskRunContext.get() is None:
                return
            get_run_logger().info("%s%s", _GROUP.get(), record.getMessage())
        except Exception:  # a progress line must never fail the training
            self.handleError(record)


def forward() -> None:
    """Route ``dsclab.train``'s INFO lines to :class:`TrainingProgress` (once per process) and not
    further up: Prefect's own console handler already prints what the run logger gets."""
    logger = logging.getLogger("dsclab.train")
    if not any(isinstance(h, TrainingProgress) for h in logger.handlers):
        logger.addHandler(TrainingProgress())
        logger.setLevel(logging.INFO)
        logger.propagate = False


def group_label(kind, cells: Sequence) -> str:
    """'d=64 (8 cells): ': the coordinates the cells of a training group share, and their count."""
    index = [kind.index(c) for c in cells]
    shared = [f"{dim}={value}" for dim, value in index[0].items() if all(i[dim] == value for i in index)]
    return f"{', '.join(shared) or 'group'} ({len(cells)} cell{'s' if len(cells) != 1 else ''}): "


@contextlib.contextmanager
def training_group(kind, cells: Sequence) -> Iterator[None]:
    """The progress lines emitted inside reach the task run's logger (:func:`forward`, wherever the
    task runs: a thread, a Dask worker, a worker's flow-run process) with the label of ``cells``
    (:func:`group_label`)."""
    forward()
    token = _GROUP.set(group_label(kind, cells)) if cells else None
    try:
        yield
    finally:
        if token is not None:
            _GROUP.reset(token)
