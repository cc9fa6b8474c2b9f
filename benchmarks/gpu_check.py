"""The device check (issue 20): what a person with one GPU runs, in at most 8 minutes.

    .venv/bin/python benchmarks/gpu_check.py OUT_DIR        (or: make gpu-check OUT=OUT_DIR)

It prints the device (name, memory, torch / CUDA / cuDNN versions, driver), then runs, each step
in its own process group with a timeout (a step that runs out of time is killed, recorded as
``timeout``, and the check goes on), its output in ``OUT_DIR/<step>.log``:

1. ``pytest``: ``pytest -m gpu -rs`` (``tests/test_gpu.py``; JUnit XML beside the log);
2. ``throughput``: ``benchmarks/train_throughput.py --device cuda --steps 300``: batched ensembles
   against the textbook per-cell loop on the same GPU, in cells per hour, the GPU's utilisation
   sampled meanwhile (target: batched at least 20x the textbook loop);
3. ``quick``: the quick study (``studies/quick.yaml``) through ``dsclab run`` with training on
   CUDA: its wall time against the README's 65 s on 2 CPU cores, and its training stage in cells
   per hour against the CPU's 7,956 (the README's batched figure; target: at least 10x);
4. ``spike``: ``studies/spike_gpu.yaml`` at the small GPU budget (:data:`SPIKE_SMALL`), in the
   time left.

and writes one JSON record, ``OUT_DIR/gpu_check.json``: the device and versions, each step's
status, wall time and figures, and the measured ratios. Exit status 0 when every step passed,
1 otherwise; 2 (one line, nothing run) on a machine without CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480  # the whole check: 8 minutes
GRACE_S = 15    # kept from the steps' timeouts: killing a step that ran out of time takes up to 15 s

# The CPU figures of the README's Performance table (2 CPU cores, dsclab 0.3.0).
CPU_QUICK_STUDY_S = 65.0                # the quick study, end to end
CPU_QUICK_TRAIN_CELLS_PER_HOUR = 7956   # its 45 cells trained as batched ensembles, one group at once
TARGET_BATCHED_OVER_TEXTBOOK = 20.0     # issue 20's targets on one GPU
TARGET_TRAINING_SPEEDUP = 10.0

# spike_gpu.yaml cut to a device check's size: one seed, 500 Adam steps on 2,000 training draws,
# an SL step of 14 (100 steps to T = 1400) and few samples; the drifts, n, k and the network are
# the study's. The CPU drifts (eigendecompositions of 350 x 350 matrices) dominate what is left.
SPIKE_SMALL = {"name": "spike_gpu_small", "seed": [0], "train": {"steps": 500, "n_train": 2000, "device": "cuda"},
               "evaluation": {"t": [100, 200, 300, 500, 1000], "n_mse": 32, "n_int": 8, "int_steps": 10,
                              "n_samples": 8, "delta": 14.0}}


def device_info() -> dict:
    """The GPU and the software that drives it (CUDA initialised in this process)."""
    import torch

    p = torch.cuda.get_device_properties(0)
    smi = _smi("driver_version")
    return {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}",
            "count": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "driver": smi, "cpu_count": os.cpu_count(),
            "platform": platform.platform()}


def _smi(field: str) -> str | None:
    """One ``nvidia-smi --query-gpu`` field of the first visible GPU (None without nvidia-smi)."""
    gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", gpu],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def utilisation_now() -> tuple[float | None, str]:
    """The GPU's utilisation (percent of the last sample period a kernel ran) and where it came
    from: ``torch.cuda.utilization`` (needs pynvml), else nvidia-smi, else (None, 'none')."""
    try:
        import torch

        return float(torch.cuda.utilization()), "torch.cuda.utilization"
    except Exception:  # pynvml missing, or no NVML
        pass
    v = _smi("utilization.gpu")
    try:
        return float(v), "nvidia-smi"
    except (TypeError, ValueError):
        return None, "none"


class Utilisation:
    """Samples the GPU's utilisation every ``period`` seconds in a thread while the block runs;
    :meth:`summary` gives mean, max and the number of samples."""

    def __init__(self, period: float = 0.5, read: Callable[[], tuple[float | None, str]] = utilisation_now):
        self.period, self.read, self.values, self.source = period, read, [], "none"
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            v, self.source = self.read()
            if v is not None:
                self.values.append(v)
            self._stop.wait(self.period)

    def __enter__(self) -> "Utilisation":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict | None:
        if not self.values:
            return None
        return {"mean_percent": round(sum(self.values) / len(self.values), 1), "max_percent": max(self.values),
                "samples": len(self.values), "period_s": self.period, "source": self.source}


def run_command(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` in the repository root in a new process group, stdout and stderr into ``log``;
    past ``timeout`` seconds the group is terminated (killed 5 s later). Returns status
    ('passed' for exit 0, 'failed', 'timeout'), wall time, exit code and timeout."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        try:
            rc = proc.wait(timeout=timeout)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
            rc, status = proc.returncode, "timeout"
    return {"status": status, "wall_s": round(time.perf_counter() - t0, 1), "returncode": rc,
            "timeout_s": round(timeout, 1), "log": log.name}


def _store_figures(store: Path) -> dict:
    """Cells done / failed of a study's store and the sum of its cells' ``train_seconds``."""
    import xarray as xr

    if not store.exists():
        return {"cells_done": 0}
    ds = xr.open_zarr(store, consolidated=False)
    done = ds["status"] == 1
    out = {"cells": int(ds["status"].size), "cells_done": int(done.sum()), "cells_failed": int((ds["status"] == 2).sum())}
    if "train_seconds" in ds:
        out["train_seconds_sum"] = round(float(ds["train_seconds"].where(done).sum()), 2)
    return out


# ------------------------------------------------------------------------------------------
# The steps: (out_dir, timeout) -> their record
# ------------------------------------------------------------------------------------------

def step_pytest(out: Path, timeout: float) -> dict:
    xml = out / "pytest_gpu.xml"
    res = run_command([sys.executable, "-m", "pytest", "-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider",
                       f"--junitxml={xml}"], out / "pytest.log", timeout)
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        res["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return res


def step_throughput(out: Path, timeout: float) -> dict:
    with Utilisation() as util:
        res = run_command([sys.executable, "benchmarks/train_throughput.py", "--device", "cuda", "--steps", "300"],
                          out / "throughput.log", timeout)
    res["utilisation"] = util.summary()
    records = [line.split(":", 1)[1].strip() for line in (out / "throughput.log").read_text().splitlines()
               if line.startswith("record")]
    if records and (ROOT / records[-1]).exists():
        rec = json.loads((ROOT / records[-1]).read_text())
        shutil.copy(ROOT / records[-1], out / "train_throughput.json")
        res["record"] = {k: rec.get(k) for k in (
            "cells", "steps", "precision", "textbook_cells_per_hour", "plain_cells_per_hour", "batched_cells_per_hour",
            "flow_like_cells_per_hour", "speedup_over_textbook", "speedup_flow_like_over_textbook", "speedup")}
        if rec.get("textbook_cells_per_hour") is None:
            res["note"] = "train_throughput.py ran no textbook loop on cuda: no batched / textbook ratio"
    return res


def step_quick(out: Path, timeout: float) -> dict:
    store = out / "quick.zarr"
    with Utilisation() as util:
        res = run_command([sys.executable, "-m", "dsclab.cli", "run", "studies/quick.yaml", "--store", str(store)],
                          out / "quick.log", timeout, env={"DSCLAB_DEVICE": "cuda"})
    res["utilisation"] = util.summary()
    res.update(_store_figures(store))
    return res


def step_spike(out: Path, timeout: float) -> dict:
    import yaml

    spec = yaml.safe_load((ROOT / "studies/spike_gpu.yaml").read_text())
    for key, value in SPIKE_SMALL.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    (out / "spike_gpu_small.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    store = out / "spike.zarr"
    res = run_command([sys.executable, "-m", "dsclab.cli", "run", str(out / "spike_gpu_small.yaml"), "--store",
                       str(store)], out / "spike.log", timeout)
    res["overrides"] = SPIKE_SMALL
    res.update(_store_figures(store))
    return res


# (name, step, most seconds it may take, fewest seconds worth starting it with)
STEPS: list[tuple[str, Callable[[Path, float], dict], float | None, float]] = [
    ("pytest", step_pytest, 170, 60),
    ("throughput", step_throughput, 110, 45),
    ("quick", step_quick, 90, 45),
    ("spike", step_spike, None, 30),
]


def ratios(steps: dict) -> dict:
    """The measured ratios of issue 20 from the steps' records (None where a step gave none)."""
    rec = (steps.get("throughput") or {}).get("record") or {}
    quick = steps.get("quick") or {}
    batched = rec.get("speedup_over_textbook")
    out = {"batched_over_textbook": batched, "batched_over_textbook_target": TARGET_BATCHED_OVER_TEXTBOOK,
           "flow_like_over_textbook": rec.get("speedup_flow_like_over_textbook"),
           "batched_over_plain": rec.get("speedup"),
           "quick_study_speedup": None, "quick_training_speedup": None,
           "quick_training_speedup_target": TARGET_TRAINING_SPEEDUP}
    if quick.get("status") == "passed" and quick.get("wall_s"):
        out["quick_study_speedup"] = round(CPU_QUICK_STUDY_S / quick["wall_s"], 2)
    if quick.get("status") == "passed" and quick.get("train_seconds_sum"):
        cph = 3600 * quick["cells_done"] / quick["train_seconds_sum"]
        out["quick_training_cells_per_hour"] = round(cph)
        out["quick_training_speedup"] = round(cph / CPU_QUICK_TRAIN_CELLS_PER_HOUR, 2)
    for name, target in (("batched_over_textbook", TARGET_BATCHED_OVER_TEXTBOOK),
                         ("quick_training_speedup", TARGET_TRAINING_SPEEDUP)):
        out[f"{name}_target_met"] = None if out[name] is None else out[name] >= target
    return out


def write_record(out: Path, record: dict) -> Path:
    p = out / "gpu_check.json"
    p.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return p


def check(out: Path, steps=STEPS, budget: float = BUDGET_S, info: Callable[[], dict] = device_info,
          echo: Callable[[str], None] = print, margin: float = GRACE_S) -> dict:
    """Run the check into ``out`` within ``budget`` seconds and write its record (returned).
    Each step gets min(its cap, the time left less ``margin`` and the fewest seconds of the steps
    after it); a step with less than its own fewest seconds left is ``skipped``."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    dev = info()
    echo(f"device: {dev.get('name')} ({dev.get('memory_gib')} GiB), torch {dev.get('torch')}, CUDA {dev.get('cuda')}, "
         f"cuDNN {dev.get('cudnn')}, driver {dev.get('driver')}")
    record = {"check": "gpu_check", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "budget_s": budget,
              "device": dev, "steps": {}}
    for i, (name, fn, cap, fewest) in enumerate(steps):
        left = budget - margin - (time.perf_counter() - t0) - sum(s[3] for s in steps[i + 1:])
        timeout = left if cap is None else min(cap, left)
        if timeout < fewest:
            record["steps"][name] = {"status": "skipped", "reason": f"{max(timeout, 0):.0f} s left, needs {fewest:g} s"}
        else:
            echo(f"{name}: running (timeout {timeout:.0f} s, log {out / (name + '.log')})")
            try:
                record["steps"][name] = fn(out, timeout)
            except Exception as e:  # a step that breaks is recorded; the check goes on
                record["steps"][name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        res = record["steps"][name]
        echo(f"{name}: {res['status']}" + (f" in {res['wall_s']} s" if "wall_s" in res else ""))
        write_record(out, {**record, "ratios": ratios(record["steps"]), "total_s": round(time.perf_counter() - t0, 1)})
    record["ratios"] = ratios(record["steps"])
    record["total_s"] = round(time.perf_counter() - t0, 1)
    p = write_record(out, record)
    echo("ratios: " + ", ".join(f"{k} {v}" for k, v in record["ratios"].items() if not k.endswith("target")))
    echo(f"record: {p}")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for the JSON record and the logs")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole check (default {BUDGET_S})")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible to torch {torch.__version__} "
              f"(CUDA build: {torch.version.cuda or 'none'}); nothing run", file=sys.stderr)
        return 2
    record = check(args.out, budget=args.budget)
    return 0 if all(s.get("status") == "passed" for s in record["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
