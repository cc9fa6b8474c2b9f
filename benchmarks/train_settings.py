"""Measure, then decide: ``torch.compile``, the float32 matmul precision and bfloat16 autocast for
batched training (issue 9).

Trains the quick study's cells (one batched ensemble per d, as the pipeline does) under each
setting in one run and prints, per setting: wall time (compilation included), time per cell and
optimiser step, and the trained networks' score error against the exact score (mean over cells
and the spec's evaluation times; relative change against the default), so that speed is weighed
against accuracy.

Settings: ``default`` (float32 matmuls at 'highest' precision, eager); ``medium`` (float32
matmuls may use bfloat16 internally: oneDNN/AMX on CPUs that have it, TF32/bf16 on GPUs);
``high`` (TF32 on GPUs; on the CPU, as 'highest'); ``compile`` (the loss, forward and backward,
through ``torch.compile``; one compilation per group shape); ``bfloat16`` (the spec option
``train.precision: bfloat16``: the step under ``torch.autocast``, thread-local, float32 weights
and Adam). Whatever the setting, the trained networks are evaluated in float32 at 'highest'.

    .venv/bin/python benchmarks/train_settings.py [--spec studies/quick.yaml] [--steps N] [--device cpu|cuda]

With ``DSCLAB_BENCH_TINY=1`` the spec is cut to 4 cells x 10 steps and a small evaluation
(``common.tiny_study``) and every setting still runs, ``compile`` with ``--compile-backend``
``aot_eager`` by default (TorchDynamo's capture and AOTAutograd's forward and backward graphs,
run eagerly: inductor's code generation alone would take minutes of the test suite's time).
The record goes to ``$DSCLAB_BENCH_OUT`` when set.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_study, record, tiny, training_data  # noqa: E402

from dsclab import distributions, losses, metrics  # noqa: E402
from dsclab.studies.sample_complexity import numerics as sc  # noqa: E402
from dsclab.train import train_ensemble  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="studies/quick.yaml")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", nargs="+", default=["default", "medium", "high", "compile", "bfloat16"])
    ap.add_argument("--compile-backend", default="aot_eager" if tiny() else "inductor",
                    help="torch.compile's backend for the compile setting")
    args = ap.parse_args()
    spec = load_study(args.spec, args.steps)
    cfg = dataclasses.replace(sc.train_config(spec), precision="float32")
    cells = spec.cells()
    groups = {d: [c for c in cells if c.d == d] for d in spec.d}
    data = training_data(spec)
    # this script's registry entry
    losses.SCORE_LOSSES.register("dsm+compile", torch.compile(losses.dsm_loss, backend=args.compile_backend))
    ev = spec.evaluation

    def score_errors(d, models) -> list[float]:
        """Per cell: relative L2 score error, mean over the evaluation times (same points for all)."""
        dist = distributions.make(spec.distribution.name, d, **spec.distribution.params)
        return [float(metrics.score_errors(m.score, dist, ev.t, ev.n_score, [0.1],
                                           torch.Generator().manual_seed(12345 + d))["l2_rel"].mean())
                for m in models]

    rows = {}
    for setting in args.settings:
        torch.set_float32_matmul_precision(setting if setting in ("medium", "high") else "highest")
        config = dataclasses.replace(cfg, precision="bfloat16" if setting == "bfloat16" else "float32")
        estimator = "dsm+compile" if setting == "compile" else "dsm"
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trained = {d: train_ensemble([data[(d, c.seed)][: c.n] for c in grp], [sc.derive_seed("train", c.key) for c in grp],
                                     estimator=estimator, config=config, device=args.device)
                   for d, grp in groups.items()}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        torch.set_float32_matmul_precision("highest")
        errs = np.concatenate([score_errors(d, [r.model for r in res]) for d, res in trained.items()])
        rows[setting] = {"seconds": wall, "ms_per_cell_step": 1e3 * wall / (len(cells) * cfg.steps),
                         "score_l2_rel": errs.tolist(), "score_l2_rel_mean": float(errs.mean())}
        print(f"{setting:8s}: {wall:7.1f} s  {rows[setting]['ms_per_cell_step']:.3f} ms per cell-step  "
              f"relative score error (mean over cells) {errs.mean():.5f}", flush=True)
    base = rows.get("default")
    if base:
        b = np.array(base["score_l2_rel"])
        for s, r in rows.items():
            ratio = np.log(np.array(r["score_l2_rel"]) / b)  # paired, cell by cell
            r["speedup"] = base["seconds"] / r["seconds"]
            r["error_log_ratio"] = [float(ratio.mean()), float(ratio.std(ddof=1) / np.sqrt(ratio.size)) if ratio.size > 1 else 0.0]
            r["error_ratio"] = float(np.exp(ratio.mean()))
            print(f"{s:8s}: {r['speedup']:.2f}x the default's speed; score error x{r['error_ratio']:.4f} "
                  f"(geometric mean over cells, +- {r['error_log_ratio'][1]:.4f} in log)")
    res = {"cells": len(cells), "steps": cfg.steps, "device": args.device, "compile_backend": args.compile_backend,
           "settings": rows}
    print(f"record: {record('train_settings', res)}")


if __name__ == "__main__":
    main()
