"""Open a study's store for a spec: create it, reuse it, or grow it in place.

A store records the spec it covers (``attrs['spec']``). Its cells' numbers depend only on their
coordinates, the spec's *settings* and the dsclab version (``dsclab.spec``: cell identity), so a
spec whose settings agree with the store's can use it whatever its name and whatever values its
axes hold:

* **values added** to any axis (n, d, seed, estimator, sampler, nfe, t, ...): the store is grown
  to the union of the stored and the new values (:func:`grow`) and only the new cells are
  computed. A value added to an axis that is not a cell axis (``sampler``, ``nfe``, ``t``, ...)
  gives every done cell new values to compute: those cells become pending (their values cleared)
  and are evaluated again (their training is reused from their checkpoints);
* **values removed** (a spec with fewer values than the store): nothing stored is lost or
  changed; the run computes the spec's own cells, the store keeps the others;
* **a setting changed** (``train.lr``, ``distribution.params``, ...): refused with one line naming
  the setting (choose another store with ``--store``);
* **another dsclab version** (its numbers differ): refused with the one-line message of
  :func:`storage.store.check_store`.

Growth is kill-safe. The grown store is written beside the old one (``<path>.grow-new``), marked
complete, then swapped in: ``<path>`` -> ``<path>.grow-old``, ``.grow-new`` -> ``<path>``, the old
one removed. :func:`recover`, run before every open, finishes or undoes a swap that a kill
interrupted: a complete new store is moved in, an incomplete one removed, and the old store put
back, so a kill at any moment loses no stored value.

On object storage (``s3://``, any filesystem but the local disk) there is no rename: a "move" is
a copy of every object and a delete, and a kill halfway leaves both copies partial. There the
swap keeps no ``.grow-old``; the grown copy's marker is the commit point instead
(:func:`_swap_by_copy`): once ``<path>.grow-new/.dsclab-complete`` exists (one object, written
atomically, after every other object of the grown store), the grown copy holds every stored value
and is the store. The swap then deletes ``<path>``, copies ``.grow-new`` into it, deletes the
marker (from then on ``<path>`` is the store again) and deletes ``.grow-new``. :func:`recover`
restarts an interrupted swap from its first step while the marker exists (each step may be
repeated), and removes a ``.grow-new`` without it; ``tests/test_s3.py`` kills it at each step.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr
from fsspec.implementations.local import LocalFileSystem

from dsclab.study import Status, StudyKind
from storage.store import (
    StoreError, _exists, _fs, _open, check_store, check_version, create_or_open, open_results, with_failure,
    write_new,
)

NEW, OLD, COMPLETE = ".grow-new", ".grow-old", ".dsclab-complete"


def _rm(path: str) -> None:
    fs, root = _fs(path)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _mv(src: str, dst: str) -> None:
    fs, a = _fs(src)
    _, b = _fs(dst)
    fs.mv(a, b, recursive=True)


def _complete(path: str) -> bool:
    fs, root = _fs(path)
    return fs.exists(f"{root.rstrip('/')}/{COMPLETE}")


def _local(path: str) -> bool:
    """Whether ``path`` is on a filesystem with an atomic rename (the local disk)."""
    return isinstance(_fs(path)[0], LocalFileSystem)


def _copy(src: str, dst: str) -> None:
    """Copy every object under ``src`` to the same key under ``dst`` (object storage)."""
    fs, a = _fs(src)
    _, b = _fs(dst)
    a, b = a.rstrip("/"), b.rstrip("/")
    keys = fs.find(a)
    fs.copy(keys, [b + k[len(a):] for k in keys])


def _swap_by_copy(path: str) -> None:
    """Replace the store at ``path`` by the complete grown copy ``path + NEW`` where there is no
    rename (module docstring). Every step may be repeated after a kill (:func:`recover` does)."""
    _rm(path)
    _copy(path + NEW, path)
    _rm(f"{path}/{COMPLETE}")
    _rm(f"{path}{NEW}/{COMPLETE}")  # the commit: ``path`` is the store again
    _rm(path + NEW)


def recover(path: str) -> None:
    """Finish or undo a growth that a kill interrupted (see the module docstring)."""
    path = str(path).rstrip("/")
    new, old = path + NEW, path + OLD
    if not _local(path):
        if _exists(new)[0] and _complete(new):
            _swap_by_copy(path)
        elif _exists(new)[0]:  # a grown copy never completed: the store at ``path`` is whole
            _rm(new)
        return
    have_new, have_old, have_path = _exists(new)[0], _exists(old)[0], _exists(path)[0]
    if have_old:
        if have_path:  # the swap finished; only the old copy's removal was cut short
            _rm(old)
        elif have_new and _complete(new):
            _mv(new, path)
            _rm(f"{path}/{COMPLETE}")
            _rm(old)
        else:
            _mv(old, path)
    if _exists(new)[0]:  # a grown copy that was never swapped in
        _rm(new)


def stored_spec(kind: StudyKind, path: str):
    """The spec a store covers, or None when there is no store at ``path``. A store of another
    dsclab version, or one whose spec this dsclab cannot read, is refused with one line."""
    recover(path)
    exists, isdir = _exists(path)
    if not exists:
        return None
    if not isdir:
        raise StoreError(f"store path {path} is a file, not a zarr store")
    attrs = dict(open_results(path).attrs)  # a folder that is not a store: one line
    check_version(path, attrs.get("dsclab_version"))
    if attrs.get("study") != kind.name:
        raise StoreError(f"store {path} holds a {attrs.get('study')!r} study, not {kind.name!r}; "
                         "use --store to choose another path")
    try:
        return kind.spec_model.model_validate(json.loads(attrs["spec"]))
    except Exception as e:  # noqa: BLE001 - any failure means the stored spec is unreadable here
        raise StoreError(f"store {path}: its spec cannot be read by this dsclab ({type(e).__name__}); "
                         "use --store to choose another path") from None


def reconcile(kind: StudyKind, spec, path: str):
    """Check, without writing, how ``spec`` uses the store at ``path``: returns (the spec the
    store will cover, the axes that grow). Raises StoreError with one line when a setting differs
    (naming it), when the store is of another version, kind or layout."""
    old = stored_spec(kind, path)
    if old is None:
        check_store(path, kind.template(spec))
        return spec, ()
    change = old.setting_change(spec)
    if change is not None:
        raise StoreError(f"store {path} was made with another value of the setting {change}; "
                         "use --store to write this spec to another store")
    operational = {f: getattr(spec, f) for f in spec.OPERATIONAL if f in type(spec).model_fields}
    union = old.union(spec).model_copy(update=operational)
    grown = tuple(dim for dim in union.AXES if len(union.axis(dim)) != len(old.axis(dim)))
    check_store(path, kind.template(old))  # the layout: a store lacking variables is refused
    return union, grown


def open_store(kind: StudyKind, spec, path: str):
    """Create, reuse or grow the store at ``path`` for ``spec`` (see the module docstring);
    returns the spec the store covers, which the stages evaluate with (its inner axes are the
    store's)."""
    union, grown = reconcile(kind, spec, path)
    if grown:
        dims = kind.dims(union)
        reset = any(dim not in dims for dim in grown)
        grow(path, kind.template(union), dims, reset_done=reset)
    else:
        create_or_open(path, kind.template(union), kind.dims(union))
    return union


def grow(path: str, template: xr.Dataset, cell_dims, *, reset_done: bool) -> None:
    """Rewrite the store at ``path`` on the (larger) coordinates of ``template``, keeping every
    stored value; new cells are pending. With ``reset_done``, done cells become pending and their
    values are cleared (an inner axis grew: they are evaluated again). Kill-safe (module docstring)."""
    path = str(path).rstrip("/")
    old = _open(path).load()
    new = with_failure(template).copy()
    filled = []  # variables the cells fill (NaN everywhere in the template)
    for name, var in new.data_vars.items():
        if name not in old:
            continue
        prev = old[name].reindex({d: new[d].values for d in old[name].dims},
                                 fill_value=Status.PENDING if name == "status" else
                                 ("" if var.dtype.kind == "U" else np.nan))
        if var.dtype.kind == "f":
            if bool(np.isnan(var.values).all()):
                filled.append(name)
            new[name] = prev.combine_first(var).astype(var.dtype)
        else:
            new[name] = prev.astype(var.dtype)
        new[name].attrs = var.attrs
    if reset_done:
        done = new["status"] == Status.DONE
        for name in filled:
            if set(cell_dims) <= set(new[name].dims):
                new[name] = new[name].where(~done).transpose(*new[name].dims)
        new["status"] = xr.where(done, np.int8(Status.PENDING), new["status"]).astype(np.int8)
        new["status"].attrs = template["status"].attrs
    for name in new.coords:  # reindexing drops the coordinates' attributes
        new[name].attrs = dict(template[name].attrs)
    _rm(path + NEW)
    encoding = {name: {"chunks": tuple(1 if d in cell_dims else v.sizes[d] for d in v.dims)}
                for name, v in new.variables.items() if name not in new.dims}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_new(new, path + NEW, encoding)
    fs, root = _fs(path + NEW)
    fs.touch(f"{root}/{COMPLETE}")
    if not _local(path):
        _swap_by_copy(path)
        return
    _mv(path, path + OLD)
    _mv(path + NEW, path)
    _rm(path + OLD)
    _rm(f"{path}/{COMPLETE}")
