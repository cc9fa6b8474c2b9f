"""What every cell task does once its values are computed: write the region, then mark done;
or, on a numerical failure, mark the cell failed (with the reason logged) and carry on."""
from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping

import xarray as xr
from prefect import get_run_logger

import storage

NUMERICAL_ERRORS = (ArithmeticError, RuntimeError, ValueError)


def record_cell(store: str, index: Mapping[str, object], compute: Callable[[], xr.Dataset]) -> int:
    """Run ``compute()`` for the cell at ``index``; write its values and mark it done, or mark it
    failed if the numerics raised. Returns the cell's status."""
    try:
        values = compute()
    except NUMERICAL_ERRORS as e:  # recorded as the cell's failure; other cells go on
        get_run_logger().warning("cell %s failed: %s\n%s", dict(index), e, traceback.format_exc())
        storage.mark_cells(store, [index], storage.FAILED)
        return storage.FAILED
    storage.write_cell(store, values, index)
    storage.mark_cells(store, [index], storage.DONE)
    return storage.DONE
