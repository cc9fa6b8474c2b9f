"""The one place that derives seeds and makes generators: every random draw of a study is seeded
from a stable hash of what it is for (its purpose) and the identity of what it belongs to (a
cell's key, a data set's coordinates), never from ambient state.

**Every bit counts.** :func:`derive_seed` is a 128-bit integer (the first 16 bytes of a SHA-256).
``torch.Generator().manual_seed(s)`` would keep only the low 32 bits of ``s`` on the CPU (PyTorch's
Mersenne Twister is seeded by one 32-bit word: ``manual_seed(5)`` and ``manual_seed(5 + 2**32)``
draw the same numbers), so that 10⁴ seeds collide with probability ~1 %. :func:`generator`
instead fills the twister's whole 624-word state with the output of NumPy's Philox-4x64
counter-based generator keyed by the full 128-bit seed (a keyed bijection of its counter: two
keys give unrelated streams), so two different seeds give different states. A seed wider than
128 bits is first folded by ``numpy.random.SeedSequence``. On CUDA (Philox, a 64-bit key) the
generator's seed is the first 64-bit word of that stream.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from dsclab.lazy import deferred

if TYPE_CHECKING:
    import torch
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)


SEED_BITS = 128
_MT_WORDS = 624  # the Mersenne Twister's state, in 32-bit words
_STATE_OFFSET = 24  # bytes before the state words in PyTorch's CPU generator state (seed, left, seeded, next)


_RECORDS: list[list] = []


def derive_seed(*parts) -> int:
    """A stable 128-bit seed from any JSON-able parts (e.g. purpose, distribution, d, seed)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    seed = int.from_bytes(hashlib.sha256(blob).digest()[: SEED_BITS // 8], "little")
    for record in _RECORDS:
        record.append((blob.decode(), seed))
    return seed


@contextlib.contextmanager
def recording():
    """Collect every seed derived in this block (in any thread) as (parts as JSON, seed): what a
    test checks for distinctness across a study's purposes and cells."""
    record: list = []
    _RECORDS.append(record)
    try:
        yield record
    finally:
        _RECORDS.remove(record)


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` whose stream depends on every bit of ``seed`` (an int of
    any size, e.g. from :func:`derive_seed`); see the module docstring."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed {seed} is negative")
    if seed >> SEED_BITS:
        seed = int.from_bytes(np.random.SeedSequence(seed).generate_state(4, np.uint32).tobytes(), "little")
    raw = np.random.Philox(key=seed).random_raw(_MT_WORDS // 2)  # 312 x 64 bits = 624 words
    dev = torch.device(device)
    if dev.type != "cpu":
        return torch.Generator(device=dev).manual_seed(int(raw[0]))
    state = _base_state().copy()
    words = raw.view(np.uint32).astype(np.uint64)
    words[0] |= np.uint64(0x80000000)  # MT19937's rule for a non-degenerate state (as NumPy's)
    state[_STATE_OFFSET:_STATE_OFFSET + 8 * _MT_WORDS] = words.view(np.uint8)
    g = torch.Generator()
    g.set_state(torch.from_numpy(state))
    return g


@functools.cache
def _base_state() -> np.ndarray:
    """A valid CPU generator state (``left`` = 1: the next draw regenerates from the words) whose
    624 state words :func:`generator` replaces; its layout is checked by tests/test_seeds.py."""
    return torch.Generator().manual_seed(0).get_state().numpy().copy()


def rng(*parts, device: str | torch.device = "cpu") -> torch.Generator:
    """``generator(derive_seed(*parts), device)``: the generator of one purpose."""
    return generator(derive_seed(*parts), device)


def draw_seed(g: torch.Generator) -> int:
    """A 128-bit seed drawn from ``g`` (four 32-bit words), for what is seeded by a generator."""
    words = torch.randint(0, 2 ** 32, (4,), generator=g, dtype=torch.int64, device=g.device).tolist()
    return sum(int(w) << (32 * i) for i, w in enumerate(words))


DATA_BLOCK = 1000
"""Rows per independently seeded block of a data set (:func:`draw_rows`)."""


def block_rows(n: int) -> int:
    """``n`` rounded up to whole blocks of :data:`DATA_BLOCK` rows."""
    return -(-int(n) // DATA_BLOCK) * DATA_BLOCK


def draw_rows(sample, rows: int, *parts) -> torch.Tensor:
    """``rows`` rows of a data set drawn in blocks of :data:`DATA_BLOCK`, block b by
    ``sample(DATA_BLOCK, rng(*parts, b))``: the first n rows are the same whatever ``rows`` is, so
    a data set grows (a larger n added to a study) without changing the rows already used."""
    blocks = [sample(DATA_BLOCK, rng(*parts, b)) for b in range(-(-int(rows) // DATA_BLOCK))]
    return torch.cat(blocks)[: int(rows)]
