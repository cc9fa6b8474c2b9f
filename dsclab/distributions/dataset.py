"""Arrays a researcher brings (science.md §7): the rows of an array file, a declared
preprocessing, and a deterministic held-out split. ``digits`` is the built-in one.

A *data set family* is not a law with an exact score: it has rows. ``dataset(d, path=..., ...)``
reads the array's shape only (a ``.npy`` file, an ``.npz`` key, or a zarr array; a local path or
any fsspec URL), so a spec is validated without loading the data; :meth:`Dataset.load` reads the
rows when a prepare stage needs them.

* **Rows and d.** An array ``(N, D)`` gives rows of dimension D (d must be D). An array
  ``(N, H, W)`` holds images: d is the resolution, ``(H/f) (W/f)`` for a whole factor f dividing
  H and W, by average pooling over f x f blocks (8 x 8 digits: d = 4, 16, 64 at f = 4, 2, 1).
* **Preprocessing.** The values are scaled affinely from ``[vmin, vmax]`` (default: the array's
  own minimum and maximum) to ``[low, high]`` (default [-1, 1]). ``lattice=True`` declares that
  the raw values lie on the integer lattice (the digits' 0..16): pooled values then lie on a finer
  lattice, and likelihoods use the discrete I-MMSE estimator, with denoisers clamped to the box
  ``[low, high]^d`` (``dsclab.immse``).
* **Split.** A permutation of the N rows, seeded by the data's identity (path, key, N, test
  fraction) and the seed only: the first ``round(N test_fraction)`` rows of the permutation are the
  held-out test part, the rest (in permuted order) the training part, the same at every d and
  whatever the grid's n. A cell of size n uses the first n training rows.

A ragged or non-numeric array (object, string, structured dtype; an ``.npy`` that needs pickle)
is refused with one line (:class:`DatasetError`, a ValueError), as is an n above the training part
(:meth:`Dataset.check_n`, naming the largest possible n).

``digits``: scikit-learn's 8 x 8 handwritten digits (1,797 images, integers 0..16; the UCI optdigits
test set, as distributed by scikit-learn, BSD-3-Clause), shipped in ``data/digits.npz``
(``images`` uint8 (1797, 8, 8), ``labels`` uint8): no download, ever.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsclab.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


BUILTIN_DATA = {"digits": (Path(__file__).parent / "data" / "digits.npz", "images")}
"""Data sets shipped inside the package: name -> (file, key)."""

BUILTIN_PREFIX = "dsclab:"


class DatasetError(ValueError):
    """A data file that cannot serve as rows; the message is one line."""


def _resolve(path: str, key: str) -> tuple[str, str]:
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_DATA:
            raise DatasetError(f"no built-in data set {name!r} (known: {', '.join(BUILTIN_DATA)})")
        f, k = BUILTIN_DATA[name]
        return str(f), key or k
    return path, key


def _check(arr, where: str):
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "biuf":
        what = "ragged or non-numeric (object)" if dtype.kind == "O" else f"non-numeric ({dtype})"
        raise DatasetError(f"{where}: a {what} array; need a numeric array of equal-length rows")
    if len(arr.shape) not in (2, 3) or arr.shape[0] < 2:
        raise DatasetError(f"{where}: shape {tuple(arr.shape)}; need rows (N, D) or images (N, H, W) with N >= 2")
    return arr


def _open(path: str, key: str):
    """The array at ``path`` (``key`` of an .npz or a zarr group), lazily where the format allows:
    a numpy memory map or a zarr array."""
    import fsspec

    where = f"{path}" + (f"[{key}]" if key else "")
    low = path.lower()
    try:
        if low.endswith(".npy") or low.endswith(".npz"):
            if "://" not in path and not Path(path).is_file():
                raise DatasetError(f"{where}: no such file")
            f = fsspec.open(path, "rb").open()
            if low.endswith(".npy"):
                return _check(np.load(f, allow_pickle=False), where)
            z = np.load(f, allow_pickle=False)
            keys = list(z.files)
            if not key:
                if len(keys) != 1:
                    raise DatasetError(f"{path}: an .npz with arrays {keys}; name one with the parameter key")
                key = keys[0]
            if key not in keys:
                raise DatasetError(f"{path}: no array {key!r} (has {keys})")
            return _check(z[key], where)
        import zarr

        node = zarr.open(path, mode="r")
        if key:
            node = node[key]
        if not hasattr(node, "dtype"):
            raise DatasetError(f"{where}: a zarr group; name its array with the parameter key")
        return _check(node, where)
    except DatasetError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise DatasetError(f"{where}: a ragged or non-numeric (object) array; need a numeric array of "
                               f"equal-length rows") from None
        raise DatasetError(f"{where}: cannot read it as an array: {str(e).splitlines()[0]}") from None
    except (OSError, KeyError, TypeError) as e:
        raise DatasetError(f"{where}: cannot read it as an array: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


@functools.lru_cache(maxsize=16)
def _shape(path: str, key: str) -> tuple[tuple[int, ...], str]:
    arr = _open(path, key)
    return tuple(int(s) for s in arr.shape), str(arr.dtype)


@functools.lru_cache(maxsize=4)
def _raw(path: str, key: str) -> np.ndarray:
    out = np.asarray(_open(path, key)[...], dtype=np.float64)
    if not np.isfinite(out).all():
        raise DatasetError(f"{path}: the array holds NaN or infinite values")
    out.setflags(write=False)
    return out


def pool_factor(shape: tuple[int, ...], d: int) -> int:
    """The average-pooling factor f giving dimension d from rows of ``shape`` (without N)."""
    if len(shape) == 1:
        if d != shape[0]:
            raise ValueError(f"d={d}: rows of this array have dimension {shape[0]}")
        return 1
    H, W = shape
    ok = [f for f in range(1, min(H, W) + 1) if H % f == 0 and W % f == 0]
    for f in ok:
        if (H // f) * (W // f) == d:
            return f
    raise ValueError(f"d={d} is not a resolution of these {H}x{W} images (average pooling gives d in "
                     f"{sorted({(H // f) * (W // f) for f in ok})})")


def pool(x: np.ndarray, f: int) -> np.ndarray:
    """Average pooling of images ``(N, H, W)`` over f x f blocks, flattened to ``(N, H W / f^2)``;
    rows ``(N, D)`` pass through."""
    if x.ndim == 2:
        return x
    N, H, W = x.shape
    return x.reshape(N, H // f, f, W // f, f).mean(axis=(2, 4)).reshape(N, -1)


class Dataset:
    """The rows of an array at dimension d with their preprocessing and split (module docstring)."""

    exact = False  # no exact law: no score, no log-density

    def __init__(self, d: int, path: str, key: str = "", low: float = -1.0, high: float = 1.0,
                 vmin: float | None = None, vmax: float | None = None, lattice: bool = False,
                 test_fraction: float = 0.2):
        if not isinstance(path, str) or not path:
            raise ValueError("path: need the path or URL of an array file")
        if not low < high:
            raise ValueError(f"low {low} is not below high {high}")
        if vmin is not None and vmax is not None and not vmin < vmax:
            raise ValueError(f"vmin {vmin} is not below vmax {vmax}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction {test_fraction} is not in (0, 1)")
        self.path, self.key = path, key
        file, k = _resolve(path, key)
        shape, _ = _shape(file, k)
        self._file, self._key = file, k
        self.rows, self.row_shape = shape[0], shape[1:]
        self.factor = pool_factor(self.row_shape, int(d))
        self.d = int(d)
        self.low, self.high, self.vmin, self.vmax = float(low), float(high), vmin, vmax
        self.lattice = bool(lattice)
        self.test_fraction = float(test_fraction)
        self.n_test = min(self.rows - 2, max(1, int(round(self.rows * self.test_fraction))))
        self.n_train = self.rows - self.n_test

    # -- facts -------------------------------------------------------------------------------
    @property
    def native(self) -> int:
        """The dimension of a row at full resolution."""
        return int(np.prod(self.row_shape))

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(H, W) for image rows, else None."""
        return tuple(self.row_shape) if len(self.row_shape) == 2 else None

    @property
    def box(self) -> tuple[float, float] | None:
        """The box hull of the lattice, (low, high), for lattice data; None otherwise."""
        return (self.low, self.high) if self.lattice else None

    def lattice_points(self) -> tuple[float, float] | None:
        """(origin, step) of the lattice the rows at d lie on, origin + step Z (lattice data; else
        None): integers scaled by s = (high - low) / (vmax - vmin) and shifted to low, then averaged
        over f x f blocks, lie on low - vmin s + (s / f^2) Z. Reads the array's minimum when
        ``vmin`` is not given."""
        if not self.lattice:
            return None
        raw = _raw(self._file, self._key)
        lo = float(raw.min()) if self.vmin is None else float(self.vmin)
        hi = float(raw.max()) if self.vmax is None else float(self.vmax)
        s = (self.high - self.low) / (hi - lo)
        step = s / self.factor ** 2
        return self.low - lo * s, step

    def identity(self) -> dict:
        """What the split is keyed by: the data (path, key, rows) and the test fraction."""
        return {"path": self.path, "key": self.key, "rows": self.rows, "test_fraction": self.test_fraction}

    def check_n(self, n: int, available: int | None = None, why: str = "") -> None:
        """Refuse a cell size above ``available`` (default: the training part), naming the largest n."""
        top = self.n_train if available is None else available
        if n > top:
            raise ValueError(f"n {n} is above {top}, the largest possible n{why} ({self.rows} rows of {self.path}: "
                             f"{self.n_train} for training, {self.n_test} held out)")

    # -- rows --------------------------------------------------------------------------------
    def load(self) -> np.ndarray:
        """Every row, preprocessed and pooled to d: ``(N, d)`` float64, in the file's order."""
        raw = _raw(self._file, self._key)
        lo = float(raw.min()) if self.vmin is None else float(self.vmin)
        hi = float(raw.max()) if self.vmax is None else float(self.vmax)
        if not hi > lo:
            raise DatasetError(f"{self.path}: every value is {lo}; nothing to scale")
        x = self.low + (raw - lo) * ((self.high - self.low) / (hi - lo))
        return pool(x, self.factor)

    def permutation(self, seed: int) -> np.ndarray:
        """The split's permutation of the rows (test part first), keyed by :meth:`identity` and seed."""
        from dsclab.seeds import rng

        return torch.randperm(self.rows, generator=rng("split", self.identity(), int(seed))).numpy()

    def split(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (train, test): disjoint, the same at every d, whatever n is."""
        perm = self.permutation(seed)
        return perm[self.n_test:], perm[:self.n_test]

    def parts(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The preprocessed rows (train ``(n_train, d)``, test ``(n_test, d)``) of ``seed``."""
        x = self.load()
        tr, te = self.split(seed)
        return x[tr], x[te]

    def upsample(self, x: np.ndarray) -> np.ndarray:
        """Rows at d as rows at full resolution (each pooled pixel repeated over its block), for figures."""
        x = np.asarray(x)
        if self.image_shape is None or self.factor == 1:
            return x
        H, W = self.image_shape
        f = self.factor
        img = x.reshape(-1, H // f, W // f)
        return np.repeat(np.repeat(img, f, axis=1), f, axis=2).reshape(x.shape[0], H * W)

    # -- what a law has and rows do not --------------------------------------------------------
    def _no_law(self, *args, **kwargs):
        raise DatasetError(f"data set {self.path} has rows, not an exact law (no sampling, score or density): "
                           f"use it with a study kind for data sets (memorization)")

    sample = score = denoise = log_prob = cov = _no_law


def dataset(d: int, path: str = "", key: str = "", low: float = -1.0, high: float = 1.0,
            vmin: float | None = None, vmax: float | None = None, lattice: bool = False,
            test_fraction: float = 0.2) -> Dataset:
    """Rows of an array file (module docstring): ``path`` a local path or fsspec URL of an ``.npy``,
    ``.npz`` (``key``) or zarr array (``key`` within a group), or ``dsclab:<name>`` for a built-in one."""
    return Dataset(d, path, key, low, high, vmin, vmax, lattice, test_fraction)


def digits(d: int, low: float = -1.0, high: float = 1.0, test_fraction: float = 0.2) -> Dataset:
    """The built-in 8 x 8 digits (values 0..16 on the integer lattice), scaled to [low, high];
    d = 4, 16 or 64 (average pooling to 2x2, 4x4, 8x8)."""
    return Dataset(d, f"{BUILTIN_PREFIX}digits", "images", low, high, 0.0, 16.0, True, test_fraction)


def is_dataset(obj) -> bool:
    return isinstance(obj, Dataset)


__all__ = ["BUILTIN_DATA", "Dataset", "DatasetError", "dataset", "digits", "is_dataset", "pool", "pool_factor"]

