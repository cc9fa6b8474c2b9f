"""Cells per hour: a plain per-cell training loop against batched ensembles (issue 9).

Trains the quick study's cells (studies/quick.yaml: d x n x seed) three ways in one run, on the
same data and seeds, and prints cells/hour for each and the ratios to the plain loop:

- textbook: the loop a researcher would write from a tutorial: one ScoreMLP per cell, a fresh
  minibatch, times and noise drawn every step, PyTorch's default Adam, float32; same model, loss,
  budget and learning-rate schedule (``common.textbook_train``);
- plain: dsclab's one-cell trainer (``train_score``: draws made 32 steps at a time, fused Adam,
  the spec's ``train.precision``), one cell after another, PyTorch using every core;
- batched: the cells sharing d as one ensemble (``train_ensemble``, the spec's precision), one
  group after another, PyTorch using every core; when that precision is not float32, also in
  float32, which separates what batching gives from what the arithmetic gives;
- batched, as the flow runs it: the same groups, ``workers`` of them at once in threads, the
  cores split between them (what ``dsclab run`` does with the spec's ``workers``).

    .venv/bin/python benchmarks/train_throughput.py [--device cpu|cuda] [--steps N] [--spec FILE]

It also prints the FLOP rate of the batched run (one group at once) and its fraction of this
machine's matrix-multiply peak in bfloat16 and in float32, both peaks measured in the same run
(:func:`matmul_peak`: a (4096 x width) by (width x width) product, the shape of a hidden layer's
batched work, as in issue 30). The FLOPs counted are the network's matrix products only
(:func:`training_flops`): element-wise work, the optimizer and the draws are not counted, so the
fraction is what reaches the matmul units, a lower bound on the machine's use.

``--steps`` shortens every cell's budget equally (the ratio is per optimiser step, so it is not
affected); default: the spec's own budget. With ``DSCLAB_BENCH_TINY=1`` the spec is cut to
4 cells x 10 steps (``common.tiny_study``); the record goes to ``$DSCLAB_BENCH_OUT`` when set.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_study, record, textbook_train, tiny, training_data  # noqa: E402

from dsclab.studies.sample_complexity import numerics as sc  # noqa: E402
from dsclab.nets import ScoreMLP  # noqa: E402
from dsclab.train import train_ensemble, train_score  # noqa: E402


def training_flops(d: int, cfg, steps: int) -> float:
    """Floating-point operations of ``steps`` training steps of one cell's ScoreMLP (``cfg``: width,
    depth, batch size): its matrix products only, as the layers declare their shapes. Per step and
    layer (in x out, batch B): 2*B*in*out forward, as many for the weight gradient, and as many for
    the input gradient except at the first layer (its input, the data and time features, needs
    none)."""
    net = ScoreMLP(d, width=cfg.width, depth=cfg.depth)
    shapes = [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    first = net.hidden[0]
    per_step = 2 * cfg.batch_size * (3 * sum(a * b for a, b in shapes) - first.in_features * first.out_features)
    return float(per_step * steps)


def synchronizer(device: str):
    """A function that waits for ``device``'s queued work (CUDA's ``synchronize``; a no-op on the
    CPU, whose work is done when a call returns), called before each clock reading."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def matmul_peak(width: int, dtype: torch.dtype, device: str, reps: int) -> float:
    """FLOP/s of ``(4096 x width) @ (width x width)`` products in ``dtype`` on ``device`` with the
    current number of threads: the best of three timings of ``reps`` products, after a warm-up."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, width, generator=g).to(device, dtype)
    b = torch.randn(width, width, generator=g).to(device, dtype)
    sync = synchronizer(device)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * 4096 * width * width * reps / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="studies/quick.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_study(args.spec, args.steps)
    cfg = sc.train_config(spec)
    cells = spec.cells()
    data = training_data(spec)
    seeds = {c.key: sc.derive_seed("train", c.key) for c in cells}

    warm = dataclasses.replace(cfg, steps=5)  # first-call costs (allocator, kernels) outside the timings
    train_score(data[(cells[0].d, cells[0].seed)], config=warm, device=args.device)
    train_ensemble([data[(cells[0].d, cells[0].seed)]] * 2, [0, 1], config=warm, device=args.device)
    sync = synchronizer(args.device)
    textbook_train(data[(cells[0].d, cells[0].seed)], warm, 0, args.device)
    sync()
    t0 = time.perf_counter()
    for c in cells:
        textbook_train(data[(c.d, c.seed)][: c.n], cfg, seeds[c.key], args.device)
    sync()
    textbook = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cells:
        train_score(data[(c.d, c.seed)][: c.n], config=cfg, seed=seeds[c.key], device=args.device)
    plain = time.perf_counter() - t0

    def group(d, config=cfg):
        grp = [c for c in cells if c.d == d]
        return train_ensemble([data[(c.d, c.seed)][: c.n] for c in grp], [seeds[c.key] for c in grp],
                              config=config, device=args.device)

    threads = torch.get_num_threads()
    by_d = {}  # seconds of each group (one per d), one after another
    for d in spec.d:
        t0 = time.perf_counter()
        group(d)
        sync()
        by_d[d] = time.perf_counter() - t0
    batched = sum(by_d.values())
    flops_by_d = {d: training_flops(d, cfg, cfg.steps) * sum(c.d == d for c in cells) for d in spec.d}
    flops = sum(flops_by_d.values())
    reps = 5 if tiny() else 200
    peaks = {p: matmul_peak(cfg.width, dt, args.device, reps) for p, dt in (("bfloat16", torch.bfloat16),
                                                                              ("float32", torch.float32))}
    batched_f32 = None
    if cfg.precision != "float32":
        t0 = time.perf_counter()
        for d in spec.d:
            group(d, dataclasses.replace(cfg, precision="float32"))
        batched_f32 = time.perf_counter() - t0

    torch.set_num_threads(max(1, threads // spec.workers))  # as flows.runners does for the threads runner
    t0 = time.perf_counter()
    with ThreadPoolExecutor(spec.workers) as pool:
        list(pool.map(group, sorted(spec.d, reverse=True)))  # largest d first, as the flow
    flow_like = time.perf_counter() - t0
    torch.set_num_threads(threads)

    n = len(cells)
    res = {"cells": n, "steps": cfg.steps, "precision": cfg.precision, "device": args.device, "threads": threads,
           "workers": spec.workers,
           "plain_seconds": plain, "batched_seconds": batched, "flow_like_seconds": flow_like,
           "plain_cells_per_hour": 3600 * n / plain, "batched_cells_per_hour": 3600 * n / batched,
           "flow_like_cells_per_hour": 3600 * n / flow_like,
           "speedup": plain / batched, "speedup_flow_like": plain / flow_like}
    print(f"{n} cells x {cfg.steps} steps on {args.device} ({threads} threads), training precision {cfg.precision}")
    if textbook is not None:
        res.update(textbook_seconds=textbook, textbook_cells_per_hour=3600 * n / textbook,
                   speedup_over_textbook=textbook / batched, speedup_flow_like_over_textbook=textbook / flow_like)
        print(f"textbook loop              : {textbook:8.1f} s  {res['textbook_cells_per_hour']:10.0f} cells/hour"
              f"  (batched: {res['speedup_over_textbook']:.2f}x, {spec.workers} groups at once: "
              f"{res['speedup_flow_like_over_textbook']:.2f}x)")
    print(f"plain loop                 : {plain:8.1f} s  {res['plain_cells_per_hour']:10.0f} cells/hour")
    print(f"batched, one group at once : {batched:8.1f} s  {res['batched_cells_per_hour']:10.0f} cells/hour"
          f"  {res['speedup']:.2f}x")
    rate, rate_by_d = flops / batched, {d: flops_by_d[d] / by_d[d] for d in spec.d}
    res.update(batched_matmul_flop_per_second=rate, matmul_peak_flop_per_second=peaks,
               fraction_of_peak={p: rate / v for p, v in peaks.items()},
               batched_seconds_by_d={str(d): t for d, t in by_d.items()},
               fraction_of_peak_by_d={str(d): {p: r / v for p, v in peaks.items()} for d, r in rate_by_d.items()})
    print(f"  its matrix products: {rate / 1e9:.1f} GFLOP/s, "
          + ", ".join(f"{100 * res['fraction_of_peak'][p]:.1f} % of the {p} matmul peak ({v / 1e9:.1f} GFLOP/s, "
                      f"4096 x {cfg.width} by {cfg.width} x {cfg.width}, measured now)" for p, v in peaks.items()))
    for d, r in rate_by_d.items():
        print(f"    d = {d}: {by_d[d]:.1f} s, {r / 1e9:.1f} GFLOP/s, "
              + ", ".join(f"{100 * res['fraction_of_peak_by_d'][str(d)][p]:.1f} % of the {p} peak" for p in peaks))
    if batched_f32 is not None:
        res.update(batched_float32_seconds=batched_f32, batched_float32_cells_per_hour=3600 * n / batched_f32,
                   precision_speedup=batched_f32 / batched)
        if textbook is not None:
            res.update(speedup_float32_over_textbook=textbook / batched_f32)
        vs_textbook = (f"; float32 batched over textbook: {res['speedup_float32_over_textbook']:.2f}x"
                       if textbook is not None else "")
        print(f"batched, float32           : {batched_f32:8.1f} s  {res['batched_float32_cells_per_hour']:10.0f} "
              f"cells/hour  ({cfg.precision} is {res['precision_speedup']:.2f}x faster{vs_textbook})")
    print(f"batched, {spec.workers} groups at once   : {flow_like:8.1f} s  {res['flow_like_cells_per_hour']:10.0f} "
          f"cells/hour  {res['speedup_flow_like']:.2f}x")
    print(f"record     : {record('train_throughput', res)}")


if __name__ == "__main__":
    main()
