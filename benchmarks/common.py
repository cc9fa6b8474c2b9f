"""Shared bits of the hand-run benchmarks: the study they run, machine facts and JSON records."""
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


def load_study(path: str, steps: int | None = None):
    """The sample-complexity spec at ``path``; ``steps`` (if given) shortens every cell's budget."""
    from dsclab.study import load_spec

    spec = load_spec(path)
    if steps:
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"steps": steps})})
    return spec


def training_data(spec) -> dict[tuple[int, int], torch.Tensor]:
    """{(d, seed): that dataset as float32}, exactly what the flow's cells train on (prefixes)."""
    from dsclab.studies.sample_complexity import numerics as sc

    return {(d, s): torch.as_tensor(sc.generate_data(spec, d, s), dtype=torch.float32)
            for d in spec.d for s in spec.seed}
