"""The two install paths (issue 31): requirements.lock (CPU, ``make venv``) and
requirements-gpu.lock (``make venv GPU=1``) pin the same version of every package, torch included
(its CPU build ``+cpu`` against the CUDA build of the same version); the GPU lock adds only
torch's CUDA companions (cuda-*, nvidia-*, triton)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
COMPANION = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pkg, sep, version = line.strip().partition("==")
            assert sep and version, f"{name}: {line!r} is not an exact pin"
            key = re.sub(r"[-_.]+", "-", pkg).lower()
            assert key not in out, f"{name}: {pkg} pinned twice"
            out[key] = version
    return out


def test_the_cpu_and_gpu_locks_pin_the_same_versions():
    cpu, gpu = pins("requirements.lock"), pins("requirements-gpu.lock")
    assert cpu["torch"].endswith("+cpu") and gpu["torch"] == cpu["torch"].removesuffix("+cpu")
    assert {k: v for k, v in gpu.items() if k in cpu and k != "torch"} == {k: v for k, v in cpu.items() if k != "torch"}
    extra = sorted(set(gpu) - set(cpu))
    assert extra and all(COMPANION.match(k) for k in extra), extra
    assert any(k.startswith("nvidia-cudnn") for k in extra) and "triton" in extra
