"""The one failure hierarchy of the numerics.

A cell is marked *failed* (its reason stored, the rest of the study going on) only when its
numbers cannot be computed: a loss or samples that became non-finite, or a linear-algebra
failure (the exceptions in :data:`NUMERICAL`), or the cell does not fit in its device's memory
even alone (:class:`OutOfMemory`). :data:`FAILURES` is both. Any other exception (a shape bug, a
missing file, a bad argument) is a defect or an infrastructure problem: it fails its task
loudly, the cell stays pending, and the run ends saying so (``flows.study``).

Out of memory (``torch.OutOfMemoryError``, :data:`OUT_OF_MEMORY`) depends on how many cells run
together, so it is not a cell's failure at first: the train task (``tasks.stages``) splits the
group in halves and retries, down to one cell. Only a cell that runs out of memory alone, in
training or in its evaluation (one cell per call), is marked failed, with the reason
``out of memory: <stage>: <the allocator's message>``; it is never turned into NaN values. A
rerun computes it again (failed cells are pending to the flow), e.g. on a larger device.
"""
from __future__ import annotations

import numpy as np
import torch


class NumericalFailure(ArithmeticError):
    """A cell's numbers could not be computed (non-finite values, a singular matrix)."""


class TrainingDiverged(NumericalFailure):
    """The training loss became NaN or infinite."""

    reason = "training diverged: the loss became NaN or infinite"


class NonFiniteSamples(NumericalFailure, FloatingPointError):
    """A sampler or an estimate produced NaN or infinite values."""


class OutOfMemory(MemoryError):
    """One cell alone ran out of device memory (its ``torch.OutOfMemoryError``'s message)."""


# What marks a cell failed. FloatingPointError and ZeroDivisionError are ArithmeticErrors raised
# by numpy / Python arithmetic; LinAlgError by a factorisation that did not converge.
NUMERICAL: tuple[type[BaseException], ...] = (
    NumericalFailure, FloatingPointError, ZeroDivisionError, OverflowError,
    np.linalg.LinAlgError, torch.linalg.LinAlgError,
)

# The allocator's out-of-memory (CUDA and other accelerators): split the group, then OutOfMemory.
OUT_OF_MEMORY: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)

FAILURES: tuple[type[BaseException], ...] = NUMERICAL + (OutOfMemory,)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message ('' when it has none)."""
    return (str(e).strip().splitlines() or [""])[0]


def failure_reason(stage: str, e: BaseException) -> str:
    """The one line stored for a failed cell: where it failed, the exception type and message
    (``out of memory: <stage>: <message>`` for :class:`OutOfMemory`)."""
    if isinstance(e, TrainingDiverged):
        return TrainingDiverged.reason
    msg = first_line(e)
    if isinstance(e, OutOfMemory):
        return f"out of memory: {stage}: {msg}" if msg else f"out of memory: {stage}"
    return f"{stage}: {type(e).__name__}: {msg}" if msg else f"{stage}: {type(e).__name__}"
