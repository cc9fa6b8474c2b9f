"""Shared bits of the hand-run benchmarks: machine facts and JSON records."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def machine() -> dict:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": dev,
            "platform": platform.platform(), "torch": torch.__version__}


def record(name: str, result: dict, out_dir: str = "results/benchmarks") -> Path:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    p = Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    p.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2))
    return p
