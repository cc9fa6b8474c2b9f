"""``dsclab check STORE``: find cells whose status and stored values disagree, and missing or
unreadable chunks. Reads the zarr arrays chunk by chunk (chunks are one cell each along the cell
axes), so a corrupted chunk is reported with its variable and cell instead of failing the read.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import zarr

from storage.store import DONE, FAILED, PENDING, open_results, zarr_target

_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}


def check_store(path: str) -> list[str]:
    """Problems found, one line each (empty when the store is consistent)."""
    ds = open_results(path)
    cell_dims = list(ds["status"].dims)
    coords = {d: ds[d].values for d in cell_dims}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(zarr_target(path), mode="r")
    status = np.asarray(group["status"][...])
    problems: list[str] = []
    float_vars = [v for v in ds.data_vars if v != "status" and ds[v].dtype.kind == "f"
                  and tuple(ds[v].dims[: len(cell_dims)]) == tuple(cell_dims)]
    store = group.store
    for idx in itertools.product(*(range(len(coords[d])) for d in cell_dims)):
        label = ", ".join(f"{d}={coords[d][i]}" for d, i in zip(cell_dims, idx))
        st = int(status[idx])
        written, unwritten = [], []
        for v in float_vars:
            arr = group[v]
            try:
                block = np.asarray(arr[idx])
            except Exception as e:  # noqa: BLE001 - a chunk that does not decode
                problems.append(f"{label}: {v}: unreadable chunk ({type(e).__name__})")
                continue
            if st == DONE and arr.metadata.zarr_format == 2:
                key = f"{v}/" + ".".join([str(i) for i in idx] + ["0"] * (arr.ndim - len(idx)))
                if not _has(store, key):
                    problems.append(f"{label}: {v}: chunk {key} missing")
                    continue
            (written if np.isfinite(block).any() else unwritten).append(v)
        if st == DONE and unwritten:
            problems.append(f"{label}: status done but no values in {', '.join(unwritten)}")
        if st != DONE and written:
            problems.append(f"{label}: status {_NAMES.get(st, st)} but values in {', '.join(written)}")
    return problems


def _has(store, key: str) -> bool:
    """On zarr's own event loop: an fsspec store (s3://) is bound to the loop zarr opened it on."""
    from zarr.core.sync import sync

    return sync(store.exists(key))
