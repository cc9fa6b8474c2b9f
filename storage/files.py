"""Arrays and checkpoints beside a store (``<name>.files/``), through fsspec."""
from __future__ import annotations

import io

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
import torch

from storage.store import _fs, files_url


def url(store: str, *parts: str) -> str:
    return "/".join([files_url(store), *parts])


def exists(u: str) -> bool:
    fs, root = _fs(u)  # on object storage: without a stale listing of another process's writes
    return fs.exists(root)


def _write_atomic(u: str, write) -> None:
    """Write atomically enough for a cache: ``write(buffer)`` fills a buffer, which goes to a
    temporary name beside ``u`` and is then moved into place (a reader never sees half a file).
    On object storage (no rename: a move is a copy) the buffer is one PUT of the object, which a
    reader sees whole or not at all."""
    fs, root = _fs(u)
    buf = io.BytesIO()
    write(buf)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(root, buf.getvalue())
        return
    fs.makedirs(root.rsplit("/", 1)[0], exist_ok=True)
    tmp = root + ".tmp"
    with fs.open(tmp, "wb") as f:
        f.write(buf.getvalue())
    fs.mv(tmp, root)


def save_array(u: str, arr: np.ndarray) -> None:
    """Save an array (``.npy``) at ``u``, atomically."""
    _write_atomic(u, lambda buf: np.save(buf, arr))


def load_array(u: str) -> np.ndarray:
    with fsspec.open(u, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def save_checkpoint(u: str, obj: dict) -> None:
    """Save a checkpoint (``torch.save`` of tensors and plain containers) at ``u``, atomically."""
    _write_atomic(u, lambda buf: torch.save(obj, buf))


def load_checkpoint(u: str) -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    with fsspec.open(u, "rb") as f:
        return torch.load(io.BytesIO(f.read()), weights_only=True, map_location="cpu")
