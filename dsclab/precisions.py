"""Training-step arithmetic by name: ``PRECISIONS[name]`` is the name of the autocast dtype in
torch, or None for plain float32 (:func:`dsclab.train.autocast_dtype` resolves it). A module of
its own so that a spec names a precision without importing torch (``dsclab.lazy``)."""
from __future__ import annotations

PRECISIONS: dict[str, str | None] = {"float32": None, "bfloat16": "bfloat16"}
