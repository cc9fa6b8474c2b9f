"""The one place that derives seeds: every random draw of a study is seeded from a stable hash of
what it is for (its purpose) and the identity of what it belongs to (a cell's key, a data set's
coordinates), never from ambient state."""
from __future__ import annotations

import hashlib
import json


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any JSON-able parts (e.g. purpose, distribution, d, seed)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1
