"""The results root: the one place a deployment's runs may write to.

A team server lets anyone who may start a run choose its store, a path or URL that the worker
then writes. The results root bounds that choice: a store must lie under it, or the run is
refused with one line (:class:`storage.StoreError`) before anything is written.

The root is ``DSCLAB_RESULTS_ROOT`` when set (``dsclab worker --results-root`` sets it for its
workers, or set it in a work pool's job variables), a local folder or a URL prefix
(``s3://bucket/results``). When it is not set, a deployment's run is confined to
:data:`DEFAULT_ROOT`, ``results`` in the run's working directory (a process worker runs a flow in
the checkout it was deployed from, so that is the checkout's ``results/``, where a spec's default
store ``results/NAME.zarr`` goes); any other run (``dsclab run`` on one's own machine) is not
confined unless the variable is set.

Local paths are compared after resolving ``..`` and symbolic links (a link inside the root that
points out of it does not escape); URLs by protocol and normalised path. A store "under" the root
may be the root's own subfolders at any depth, never the root itself.
"""
from __future__ import annotations

import os
import posixpath

from storage.store import StoreError

ENV = "DSCLAB_RESULTS_ROOT"
DEFAULT_ROOT = "results"


def results_root(deployed: bool) -> str | None:
    """The root a run's store must lie under: ``$DSCLAB_RESULTS_ROOT``, else :data:`DEFAULT_ROOT`
    for a deployment's run (``deployed``), else None (not confined)."""
    root = os.environ.get(ENV, "").strip()
    return root or (DEFAULT_ROOT if deployed else None)


def _split(location: str) -> tuple[str, str]:
    """(protocol, normalised path) of a local path or URL; ``file://`` URLs are local paths."""
    if "::" in location:  # a chained URL (simplecache::s3://...): its outermost target decides
        location = location.rsplit("::", 1)[1]
    protocol, sep, rest = location.partition("://")
    if not sep or protocol == "file":
        return "", os.path.realpath(os.path.expanduser(rest if sep else location))
    return protocol.lower(), posixpath.normpath("/" + rest.lstrip("/"))


def under(store: str, root: str) -> bool:
    """Whether ``store`` lies strictly inside ``root`` (both paths or URLs)."""
    (sp, spath), (rp, rpath) = _split(store), _split(root)
    if sp != rp or spath == rpath:
        return False
    sep = os.sep if not sp else "/"
    return spath.startswith(rpath.rstrip(sep) + sep)


def confine(store: str, deployed: bool = False) -> None:
    """Refuse (StoreError, one line) a ``store`` outside the results root (:func:`results_root`);
    nothing is read or written."""
    root = results_root(deployed)
    if root is not None and not under(store, root):
        where = f"{ENV}={root}" if os.environ.get(ENV, "").strip() else f"the default {root}/ of {os.getcwd()}"
        raise StoreError(f"store {store} is outside the results root ({where}); choose a store under it, "
                         f"or have the worker's administrator set {ENV}")
