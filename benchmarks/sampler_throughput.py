"""Sampler throughput: samples x NFE per second for each sampler, with a trained-size MLP score.

    .venv/bin/python benchmarks/sampler_throughput.py [--d 32] [--m 4096] [--nfe 128] [--device cpu]

With ``DSCLAB_BENCH_TINY=1`` the defaults are d = 4, 64 samples, NFE 12; the record goes to
``$DSCLAB_BENCH_OUT`` when set.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, tiny  # noqa: E402

from dsclab import noise  # noqa: E402
from dsclab.nets import ScoreMLP  # noqa: E402
from dsclab.noise_sources import GaussianNoise  # noqa: E402
from dsclab.samplers import NFE_PER_STEP, SAMPLERS, steps_for_nfe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    small = tiny()
    ap.add_argument("--d", type=int, default=4 if small else 32)
    ap.add_argument("--m", type=int, default=64 if small else 4096)
    ap.add_argument("--nfe", type=int, default=12 if small else 128)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    net = ScoreMLP(args.d, generator=torch.Generator().manual_seed(0)).to(args.device).eval()
    rows = {}
    for name, fn in SAMPLERS.items():
        steps = steps_for_nfe(name, args.nfe)
        ts = noise.time_grid(5.0, 1e-3, steps, "exp")
        g = torch.Generator(device=args.device).manual_seed(0)
        x = torch.randn(args.m, args.d, generator=g, device=args.device)
        nz = GaussianNoise(x.shape, torch.Generator().manual_seed(1), device=args.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(net.score, x, ts, noise=nz)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        sec = time.perf_counter() - t0
        nfe = steps * NFE_PER_STEP[name]
        rows[name] = {"seconds": sec, "nfe": nfe, "sample_nfe_per_second": args.m * nfe / sec}
        print(f"{name:24s} {nfe:5d} NFE  {sec:7.3f} s  {args.m * nfe / sec:12.0f} samples*NFE/s")
    base = rows.get("euler_maruyama", next(iter(rows.values())))["sample_nfe_per_second"]
    for name, r in rows.items():
        r["relative_to_euler_maruyama"] = r["sample_nfe_per_second"] / base
        print(f"{name:24s} relative to euler_maruyama: {r['relative_to_euler_maruyama']:.2f}x")
    print(f"record: {record('sampler_throughput', {'d': args.d, 'm': args.m, 'device': args.device, 'rows': rows})}")


if __name__ == "__main__":
    main()
