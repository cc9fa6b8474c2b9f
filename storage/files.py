"""Arrays and checkpoints beside a store (``<name>.files/``), through fsspec."""
from __future__ import annotations

import io

import fsspec
import numpy as np
import torch

from storage.store import files_url


def url(store: str, *parts: str) -> str:
    return "/".join([files_url(store), *parts])


def exists(u: str) -> bool:
    fs, root = fsspec.core.url_to_fs(u)
    return fs.exists(root)


def _write_atomic(u: str, write) -> None:
    """Write atomically enough for a cache: ``write(buffer)`` fills a buffer, which goes to a
    temporary name beside ``u`` and is then moved into place (a reader never sees half a file)."""
    fs, root = fsspec.core.url_to_fs(u)
    fs.makedirs(root.rsplit("/", 1)[0], exist_ok=True)
    buf = io.BytesIO()
    write(buf)
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
