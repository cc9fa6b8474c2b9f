"""The one failure hierarchy of the numerics.

A cell is marked *failed* (its reason stored, the rest of the study going on) only when its
numbers cannot be computed: a loss or samples that became non-finite, or a linear-algebra
failure. Those are the exceptions in :data:`NUMERICAL`. Any other exception (a shape bug, a
missing file, CUDA out of memory, a bad argument) is a defect or an infrastructure problem: it
fails its task loudly, the cell stays pending, and the run ends saying so (``flows.study``).
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


# What marks a cell failed. FloatingPointError and ZeroDivisionError are ArithmeticErrors raised
# by numpy / Python arithmetic; LinAlgError by a factorisation that did not converge.
NUMERICAL: tuple[type[BaseException], ...] = (
    NumericalFailure, FloatingPointError, ZeroDivisionError, OverflowError,
    np.linalg.LinAlgError, torch.linalg.LinAlgError,
)


def failure_reason(stage: str, e: BaseException) -> str:
    """The one line stored for a failed cell: where it failed, the exception type and message."""
    if isinstance(e, TrainingDiverged):
        return TrainingDiverged.reason
    msg = (str(e).strip().splitlines() or [""])[0]
    return f"{stage}: {type(e).__name__}: {msg}" if msg else f"{stage}: {type(e).__name__}"
