"""Create, check, write and read a study store.

Layout: ``<path>`` is a zarr group (xarray dataset) whose variables are chunked 1 along every cell
axis and whole along the others, so each cell's values live in their own chunks and concurrent
writers never share one. ``status`` (int8, cell axes only) is 0 pending, 1 done, 2 failed; a
cell is marked done only after all its values are written. ``failure`` (fixed-width text, cell
axes only; added to every study's template here) holds a failed cell's reason, empty otherwise. Beside the store, ``files_url(path)``
(``<name>.files``) holds the data cache, checkpoints and plots.

Metadata is consolidated (``.zmetadata``) when the store is created: cell writes change chunks
only, never metadata, so every later open, read or region write reads that one object instead of
every variable's ``.zarray`` and ``.zattrs`` (on object storage a request each, and a listing).
:func:`consolidate` runs again when a study finishes (stores made before kept their metadata
unconsolidated until then; they are read unconsolidated meanwhile).
"""
from __future__ import annotations

import errno
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
import xarray as xr
import zarr

import dsclab
from dsclab.study import Status  # noqa: E402

PENDING, DONE, FAILED = Status.PENDING, Status.DONE, Status.FAILED
REASON_CHARS = 200  # a failure reason is cut to this many characters (one fixed-width chunk per cell)


class StoreError(ValueError):
    """The store cannot be used for this study (one-line message)."""


def files_url(path: str) -> str:
    """The folder beside the store for caches, checkpoints and plots: x.zarr -> x.files."""
    p = str(path).rstrip("/")
    return (p[: -len(".zarr")] if p.endswith(".zarr") else p) + ".files"


def plot_path(path: str) -> str:
    """Where a store's figure goes by default: ``x.files/plot.png`` (the folder is created).
    matplotlib writes local files: a ``file://`` store's figure goes beside it, any other URL
    store's (``s3://b/x.zarr``) into ``x.files/`` of the working directory."""
    root = files_url(path)
    if "://" in root:
        protocol, _, rest = root.partition("://")
        root = rest if protocol == "file" else os.path.basename(rest.rstrip("/"))
    os.makedirs(root, exist_ok=True)
    return f"{root}/plot.png"


def _fs(path: str):
    try:
        fs, root = fsspec.core.url_to_fs(str(path))
    except (ImportError, ValueError) as e:  # unknown protocol, or its backend is not installed
        raise StoreError(f"store {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(fs, LocalFileSystem):
        # fsspec keeps one instance per protocol and options, with a cache of listings: another
        # process (a Dask worker, a killed run) may have written since; look again.
        fs.invalidate_cache()
    return fs, root


def zarr_target(path: str) -> str:
    """What to hand zarr for ``path``: a ``file://`` URL becomes its local path (zarr's fsspec store
    would not create the folders it writes into); other URLs and paths are unchanged."""
    fs, root = _fs(path)
    return root if isinstance(fs, LocalFileSystem) and "://" in str(path) else str(path)


def _exists(path: str) -> tuple[bool, bool]:
    """(exists, is a directory) for a local path or fsspec URL."""
    fs, root = _fs(path)
    if not fs.exists(root):
        return False, False
    return True, fs.isdir(root)


def _open(path: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 'no consolidated metadata' is expected
        try:
            return xr.open_zarr(zarr_target(path), consolidated=True)
        except (KeyError, FileNotFoundError, ValueError, zarr.errors.BaseZarrError if hasattr(zarr.errors, "BaseZarrError") else ValueError):
            return xr.open_zarr(zarr_target(path), consolidated=False)


def open_results(path: str) -> xr.Dataset:
    """Open a study store as an xarray Dataset (lazily, with dask)."""
    exists, isdir = _exists(path)
    if not exists:
        raise StoreError(f"no store at {path}")
    try:
        return _open(path)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a store"
        raise StoreError(f"{path} is not a dsclab store ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _writable_local(path: str) -> None:
    """For a local path: the nearest existing ancestor must be a folder we can create files in
    (probed with a temporary file, which also catches read-only filesystems for root)."""
    fs, root = _fs(path)
    if not isinstance(fs, LocalFileSystem):
        return
    parent = os.path.dirname(os.path.abspath(root))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StoreError(f"cannot create store {path}: {parent} is a file")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise StoreError(f"cannot create store {path}: {parent} is not writable ({e.strerror})") from None


def check_version(path: str, made_by: str | None, this: str | None = None) -> None:
    """Refuse (one line) a store made by another dsclab version (``this``: the running one's by
    default): its numbers differ from this one's."""
    this = this or dsclab.__version__
    if made_by != this:
        raise StoreError(
            f"store {path} was made by dsclab {made_by or 'unknown'}, whose numbers differ from this dsclab {this}'s; "
            "use --store to choose another path")


def check_store(path: str, template: xr.Dataset) -> bool:
    """Check, without writing anything, that ``template`` can be created at ``path`` or matches
    the store there (same dsclab version, same settings: ``attrs['settings_hash']``, and every
    variable of the template). Returns True if a store exists. Raises StoreError with one line
    otherwise. (Axis values may differ: ``storage.growth`` reconciles them.)"""
    exists, isdir = _exists(path)
    if exists and not isdir:
        raise StoreError(f"store path {path} is a file, not a zarr store")
    if not exists:
        _writable_local(path)
        return False
    ds = open_results(path)
    check_version(path, ds.attrs.get("dsclab_version"), template.attrs.get("dsclab_version"))
    have, want = ds.attrs.get("settings_hash"), template.attrs.get("settings_hash")
    if have != want:
        raise StoreError(
            f"store {path} was made from another spec (settings hash {have}, this spec {want}); "
            "use --store to choose another path")
    for dim in template.dims:
        if dim in ds.dims and not np.array_equal(ds[dim].values, template[dim].values):
            raise StoreError(f"store {path} holds other values of the axis {dim} than this spec's "
                             "(storage.growth.open_store grows a store); use --store to choose another path")
    missing = sorted(set(template.data_vars) - set(ds.data_vars))
    if missing:
        raise StoreError(
            f"store {path} lacks the variable(s) {', '.join(missing)} that this dsclab writes (a store of an "
            "earlier layout); use --store to choose another path")
    return True


def with_failure(template: xr.Dataset) -> xr.Dataset:
    """``template`` plus the ``failure`` variable (cell axes, empty text): what a new store holds."""
    if "status" not in template or "failure" in template:
        return template
    st = template["status"]
    return template.assign(failure=(st.dims, np.full(st.shape, "", dtype=f"<U{REASON_CHARS}"),
                                    {"long_name": "why the cell failed (empty unless status is failed)"}))


def create_or_open(path: str, template: xr.Dataset, cell_dims: Sequence[str]) -> bool:
    """Write ``template`` as a new store at ``path``, or check that the store there matches it.

    Returns True when the store was created. Refuses (StoreError) a path that is a file, a folder
    that is not a store, or a store of other settings or another version (:func:`check_store`);
    nothing is changed then.
    """
    if check_store(path, template):
        return False
    template = with_failure(template)
    encoding = {}
    for name, var in template.variables.items():
        if name in template.dims:
            continue
        encoding[name] = {"chunks": tuple(1 if dim in cell_dims else var.sizes[dim] for dim in var.dims)}
    try:
        write_new(template, path, encoding)
    except (PermissionError, OSError) as e:
        raise StoreError(f"cannot create store {path}: {e.strerror or e}") from None
    return True


def write_new(ds: xr.Dataset, path: str, encoding: Mapping) -> None:
    """Write ``ds`` as a new store at ``path``: zarr format 2 (fixed-width string coordinates,
    ``estimator`` and ``sampler``, have a specification there, and every zarr reader opens it),
    metadata consolidated, refused where something is there already (``mode="w-"``).

    On object storage zarr, writing there itself, sends 550-630 requests for a store of 28
    variables (``tests/test_s3.py``): for every key it creates, a HEAD and a listing to check that
    nothing is there, a DELETE for every chunk that holds only the fill value, and a GET of every
    variable's metadata to consolidate it. The store is written to a local temporary folder
    instead and its objects put, one request each (~80 requests in all), the same objects; the
    group's own (``.zgroup``, ``.zattrs``, ``.zmetadata``) last, so that nothing opens as a store
    before every object is there."""
    fs, root = _fs(path)
    if isinstance(fs, LocalFileSystem):
        ds.to_zarr(zarr_target(path), mode="w-", encoding=encoding, consolidated=True, compute=True, zarr_format=2)
        return
    root = root.rstrip("/")
    if fs.exists(root):
        raise FileExistsError(errno.EEXIST, "something is there already", path)
    objects = {}
    with tempfile.TemporaryDirectory(prefix="dsclab-store-") as tmp:
        local = os.path.join(tmp, "s.zarr")
        ds.to_zarr(local, mode="w-", encoding=encoding, consolidated=True, compute=True, zarr_format=2)
        for folder, _, names in os.walk(local):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    key = os.path.relpath(os.path.join(folder, name), local).replace(os.sep, "/")
                    objects[f"{root}/{key}"] = f.read()
    group = {k: objects.pop(k) for k in (f"{root}/{m}" for m in (".zattrs", ".zgroup", ".zmetadata")) if k in objects}
    fs.pipe(objects)
    fs.pipe(group)


def _region(ds: xr.Dataset, index: Mapping[str, object]) -> dict[str, slice]:
    region = {}
    for dim, value in index.items():
        i = ds.indexes[dim].get_loc(value)
        region[dim] = slice(i, i + 1)
    return region


def write_cell(path: str, values: xr.Dataset, index: Mapping[str, object]) -> None:
    """Write one cell's variables into its region. ``values`` holds variables with the cell
    dims of length 1 (or without them; they are added) and the other dims whole."""
    _write(_open(path), path, values, index)


def _write(ds: xr.Dataset, path: str, values: xr.Dataset, index: Mapping[str, object]) -> None:
    """:func:`write_cell` given the store already opened as ``ds``."""
    region = _region(ds, index)
    vals = values
    for dim in index:
        if dim not in vals.dims:
            vals = vals.expand_dims(dim)
    vals = vals.drop_vars([c for c in vals.coords], errors="ignore")
    for name in vals.data_vars:
        vals[name] = vals[name].transpose(*ds[name].dims).astype(ds[name].dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a store without consolidated metadata: read without
        vals.to_zarr(zarr_target(path), region={k: region[k] for k in index}, mode="r+", consolidated=None)


def mark_cells(path: str, indices: Sequence[Mapping[str, object]], status: int, reason: str = "") -> None:
    """Set the ``status`` of cells (after their values are written) and their ``failure`` reason
    (its first line, cut to ``REASON_CHARS``; a done cell's is cleared). Stores made before
    ``failure`` existed get the status only."""
    ds = _open(path)
    line = (reason.strip().splitlines() or [""])[0][:REASON_CHARS] if status == FAILED else ""
    st = xr.Dataset({"status": ((), np.int8(status))})
    if "failure" in ds.variables:
        st["failure"] = ((), np.array(line, dtype=f"<U{REASON_CHARS}"))
    for index in indices:
        _write(ds, path, st, index)


def failures(path_or_ds) -> list[tuple[dict, str]]:
    """The failed cells of a store (path or opened dataset) as (cell index, reason), in store order."""
    from dsclab.report import failed_cells

    return failed_cells(_open(path_or_ds) if isinstance(path_or_ds, str) else path_or_ds)


def read_status(path: str) -> xr.DataArray:
    return _open(path)["status"].load()


def consolidate(path: str) -> None:
    """Consolidate the store's metadata (once, when a study finishes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(zarr_target(path))
