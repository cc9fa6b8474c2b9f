"""Benchmarks that cannot rot (issue 32): every script in ``benchmarks/`` runs here at its tiny
size (``DSCLAB_BENCH_TINY=1``, ``benchmarks/common.py``), in a new process as a person runs it,
its record written into the test's folder (``DSCLAB_BENCH_OUT``). Each must exit 0 and write one
record that holds the figures it prints: every ratio it prints (``1.23x``, ``+4.5%``) is a value
of the record, and its ratios are finite and positive. Nothing here bounds a wall time: at the
tiny size the figures are noise, and the machine may be shared.

``gpu_check.py`` is the exception: it needs CUDA, and ``tests/test_reliability.py`` checks that it
exits 2 in one line without it (and its record with the steps mocked).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

NOT_RUN_HERE = {"common.py": "the benchmarks' shared helpers",
                "gpu_check.py": "needs CUDA; tests/test_reliability.py checks it without"}


def _train_throughput(r: dict) -> dict:
    keys = ["speedup", "speedup_flow_like", "speedup_over_textbook", "speedup_flow_like_over_textbook"]
    if r["precision"] != "float32":
        keys += ["precision_speedup", "speedup_float32_over_textbook"]
    out = {k: r[k] for k in keys}
    assert set(r["fraction_of_peak"]) == {"bfloat16", "float32"}
    out.update({f"fraction of the {p} matmul peak": v for p, v in r["fraction_of_peak"].items()})
    out.update({f"d={d}: fraction of the {p} matmul peak": v
                for d, row in r["fraction_of_peak_by_d"].items() for p, v in row.items()})
    return out


def _train_settings(r: dict) -> dict:
    rows = r["settings"]
    assert set(rows) == {"default", "medium", "high", "compile", "bfloat16"}, "the tiny size runs every setting"
    return {f"{s} {k}": row[k] for s, row in rows.items() for k in ("speedup", "error_ratio")}


def _search_vs_grid(r: dict) -> dict:
    assert len(r["search_rounds"]) >= 2, "the tiny search bisects after its coarse grid"
    return {"cells dense / search": r["cells_ratio"], "time dense / search": r["time_ratio"]}


def _study_throughput(r: dict) -> dict:
    """Both sides did every cell of the tiny spec (counted in their stores); each rate is its cells
    over its seconds, each pair's ratio the flow's rate over the script's, and the printed figures
    the medians of the pairs'."""
    import importlib.util
    from statistics import median

    import yaml

    from dsclab.study import parse_spec

    found = importlib.util.spec_from_file_location("bench_common", BENCHMARKS / "common.py")
    common = importlib.util.module_from_spec(found)
    found.loader.exec_module(common)
    spec = parse_spec(common.tiny_study(yaml.safe_load((ROOT / r["spec"]).read_text())))
    assert r["cells"] == len(spec.cells()) and r["pairs"], "the record counts the tiny spec's cells"
    out = {}
    for i, p in enumerate(r["pairs"]):
        for way in ("per_cell", "flow"):
            side = p[way]
            assert side["cells_done"] == len(spec.cells()), f"{way}: every cell of the spec done in its store"
            assert side["cells_per_second"] == pytest.approx(side["cells_done"] / side["seconds"], rel=1e-12)
            for k in ("seconds", "cells_per_second", "train_seconds", "eval_seconds"):
                out[f"pair {i} {way} {k}"] = side[k]
        assert p["ratio"] == pytest.approx(p["flow"]["cells_per_second"] / p["per_cell"]["cells_per_second"], rel=1e-12)
        out[f"pair {i} flow / per-cell"] = p["ratio"]
    assert r["ratio"] == pytest.approx(median(p["ratio"] for p in r["pairs"]), rel=1e-12)
    for way in ("per_cell", "flow"):
        assert r[f"{way}_cells_per_second"] == pytest.approx(median(p[way]["cells_per_second"] for p in r["pairs"]),
                                                            rel=1e-12)
    out["flow / per-cell"] = r["ratio"]
    return out


# benchmark (its script's name) -> the ratios of its record, each finite and positive
RATIOS = {
    "train_throughput": _train_throughput,
    "sampler_throughput": lambda r: {f"{s} / euler_maruyama": row["relative_to_euler_maruyama"]
                                     for s, row in r["rows"].items()},
    "train_settings": _train_settings,
    "orchestration": lambda r: {f"flow / plain {way} {i}": 1 + o
                                for way in ("in_process", "end_to_end")
                                for i, o in enumerate(r[f"overheads_{way}"])},
    "dask_scaling": lambda r: {f"speedup {n} workers": s for n, s in r["speedup"].items()},
    "search_vs_grid": _search_vs_grid,
    "study_throughput": _study_throughput,
    "w2_solvers": lambda r: {f"{k} {s}": row[s] for k, row in r["rows"].items()
                             for s in ("assignment_speedup", "w2_exact_speedup")},
}


def test_every_benchmark_is_run_here():
    """A new script in benchmarks/ is either run below or named in NOT_RUN_HERE with its reason."""
    scripts = {p.name for p in BENCHMARKS.glob("*.py")}
    assert scripts == {f"{name}.py" for name in RATIOS} | set(NOT_RUN_HERE)


def _numbers(value) -> list[float]:
    """Every number in a record (nested mappings and lists)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


# printed ratios: "1.23x" (or "x1.0001", the score error's) and percentages "+4.5%"
_RATIO = re.compile(r"(?<![\w.])(\d+\.\d+)x(?!\w)|(?<![\w.])x(\d+\.\d+)")
_PERCENT = re.compile(r"([+-]\d+\.\d+)%")


def _printed_figures(stdout: str) -> list[tuple[str, float, float]]:
    """(as printed, value, half its last digit) for each ratio and percentage printed."""
    out = []
    for m in _RATIO.finditer(stdout):
        text = m.group(1) or m.group(2)
        out.append((m.group(0), float(text), 0.5 * 10.0 ** -len(text.split(".")[1])))
    for m in _PERCENT.finditer(stdout):
        text = m.group(1)
        out.append((m.group(0), float(text) / 100, 0.5 * 10.0 ** -len(text.split(".")[1]) / 100))
    return out


@pytest.fixture(scope="module")
def prefect_api(harness):
    """The URL of the module's Prefect server, which every benchmark's flows use (``PREFECT_API_URL``:
    a benchmark then starts no server of its own), so that no test pays a server's start each."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.mark.parametrize("name", sorted(RATIOS))
def test_benchmark_runs_at_its_tiny_size(name, tmp_path, prefect_api):
    out = tmp_path / "records"
    env = dict(os.environ, DSCLAB_BENCH_TINY="1", DSCLAB_BENCH_OUT=str(out), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=prefect_api)
    run = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{name} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    records = list(out.glob(f"{name}-*.json"))
    assert len(records) == 1, records
    assert "record" in run.stdout and str(records[0]) in run.stdout
    rec = json.loads(records[0].read_text())
    assert rec["benchmark"] == name and rec["tiny"] is True and rec["dsclab"]

    ratios = RATIOS[name](rec)
    assert ratios
    for what, v in ratios.items():
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{name}: {what} = {v}"

    numbers = _numbers(rec)
    printed = _printed_figures(run.stdout)
    assert printed, f"{name} printed no ratio:\n{run.stdout}"
    for text, value, half in printed:
        assert any(abs(x - value) <= half * (1 + 1e-9) for x in numbers), \
            f"{name} printed {text!r}, which is in none of its record's figures"
