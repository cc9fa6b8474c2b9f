"""What the cell tasks share: saving the networks a training task produced (marking diverged
cells failed) and loading them back; and, once a cell's values are computed, writing its region
then marking it done, or, on a numerical failure, marking it failed with its reason (stored in
the store's ``failure`` variable and logged)."""
from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping

import xarray as xr
from prefect import get_run_logger

import storage
from dsclab.nets import ScoreMLP
from storage import files

NUMERICAL_ERRORS = (ArithmeticError, RuntimeError, ValueError)
DIVERGED = "training diverged: the loss became NaN or infinite"


def failure_reason(stage: str, e: BaseException) -> str:
    """The one line stored for a failed cell: where it failed, the exception type and message."""
    msg = (str(e).strip().splitlines() or [""])[0]
    return f"{stage}: {type(e).__name__}: {msg}" if msg else f"{stage}: {type(e).__name__}"


def record_cell(store: str, index: Mapping[str, object], compute: Callable[[], xr.Dataset]) -> int:
    """Run ``compute()`` for the cell at ``index``; write its values and mark it done, or mark it
    failed if the numerics raised. Returns the cell's status."""
    try:
        values = compute()
    except NUMERICAL_ERRORS as e:  # recorded as the cell's failure; other cells go on
        get_run_logger().warning("cell %s failed: %s\n%s", dict(index), e, traceback.format_exc())
        storage.mark_cells(store, [index], storage.FAILED, reason=failure_reason("evaluation", e))
        return storage.FAILED
    storage.write_cell(store, values, index)
    storage.mark_cells(store, [index], storage.DONE)
    return storage.DONE


def save_trained(store: str, cells, results, index: Callable[[object], dict], *, width: int,
                 depth: int) -> dict[str, str | None]:
    """Checkpoint each trained cell; a ``None`` result (its loss became non-finite) marks the
    cell failed. Returns {cell key: checkpoint URL, or None}."""
    out: dict[str, str | None] = {}
    for cell, res in zip(cells, results):
        if res is None:
            get_run_logger().warning("cell %s failed: %s", index(cell), DIVERGED)
            storage.mark_cells(store, [index(cell)], storage.FAILED, reason=DIVERGED)
            out[cell.key] = None
            continue
        u = files.url(store, "checkpoints", f"{cell.key}.pt")
        files.save_checkpoint(u, {"state_dict": res.model.state_dict(), "d": cell.d, "width": width,
                                  "depth": depth, "loss": res.loss, "seconds": res.seconds})
        out[cell.key] = u
    return out


def load_model(u: str) -> tuple[ScoreMLP, dict]:
    """A checkpoint written by :func:`save_trained` as an eval-mode ``ScoreMLP`` and its record."""
    ck = files.load_checkpoint(u)
    model = ScoreMLP(ck["d"], width=ck["width"], depth=ck["depth"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck
