"""The results store (zarr + xarray), the dataset cache and checkpoints.

One study = one zarr group, written once as a template with every dimension, coordinate and
attribute; tasks then write their cell's region. Local paths and fsspec URLs both work.
"""
from storage.store import (
    DONE, FAILED, PENDING, StoreError, check_store, consolidate, create_or_open, failures, files_url,
    mark_cells, open_results, plot_path, read_status, write_cell,
)
from storage.growth import open_store, reconcile, recover

__all__ = ["DONE", "FAILED", "PENDING", "StoreError", "check_store", "consolidate", "create_or_open",
           "failures", "files_url", "mark_cells", "open_results", "open_store", "plot_path", "read_status",
           "reconcile", "recover", "write_cell"]
