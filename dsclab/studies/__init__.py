"""The built-in study kinds, one package each (``dsclab.study`` is the contract they implement).
Each package's ``KIND`` is registered in ``dsclab.study.KINDS``; its ``small.yaml`` is a
test-sized preset."""
from __future__ import annotations

from pathlib import Path

import yaml


def small_preset(package_file: str, name: str = "small.yaml") -> dict:
    """The ``small.yaml`` (or another test-sized preset, ``name``) beside a study package's ``__init__``."""
    return yaml.safe_load((Path(package_file).parent / name).read_text())
