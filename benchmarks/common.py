"""Shared bits of the hand-run benchmarks: the study they run, machine facts and JSON records.

Two environment variables, read here, serve every benchmark (``tests/test_benchmarks.py`` runs
each script with both, so that none stops working unseen):

- ``DSCLAB_BENCH_TINY=1``: the tiny size. The study benchmarks run their spec cut by
  :func:`tiny_study` (and each script its own small defaults, named in its docstring): the same
  code path, at a size where the figures are noise. Their records say ``"tiny": true``.
- ``DSCLAB_BENCH_OUT=DIR``: where :func:`record` writes (default ``results/benchmarks``).

The benchmarks that run flows start their Prefect server as ``dsclab run`` does
(:func:`start_prefect_server`), outside their timings.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

TINY_ENV = "DSCLAB_BENCH_TINY"
OUT_ENV = "DSCLAB_BENCH_OUT"


def tiny() -> bool:
    """Whether the benchmark runs at its tiny size (``DSCLAB_BENCH_TINY`` set, and not to 0)."""
    return os.environ.get(TINY_ENV, "").strip() not in ("", "0")


def tiny_study(data: dict) -> dict:
    """A sample-complexity study mapping cut to the tiny size: its first two d and n, first seed
    and NFE, at most 10 training steps, and at most 200 score points, 100 samples, 20 likelihood
    points and 4 log-SNR draws per evaluation. Applying it twice gives the same mapping."""
    data = dict(data)
    for axis, k in (("d", 2), ("n", 2), ("seed", 1), ("nfe", 1)):
        if isinstance(data.get(axis), list):
            data[axis] = data[axis][:k]
    data["train"] = {**data.get("train", {}), "steps": min(10, data.get("train", {}).get("steps", 10))}
    ev = dict(data.get("evaluation", {}))
    for field, size in (("n_score", 200), ("n_samples", 100), ("n_nll", 20), ("n_alpha", 4)):
        ev[field] = min(size, ev.get(field, size))
    data["evaluation"] = ev
    return data


def start_prefect_server():
    """Start the temporary Prefect server ``dsclab run`` starts (``flows.temporary_server``: a
    database of its own, never PREFECT_HOME's, stopped when the process exits), now, so that its
    start overlaps what comes before the first flow call; None where Prefect's settings name a
    server (``PREFECT_API_URL``). Wrap the flow calls in :func:`on_server`."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.temporary_server import TemporaryServer

    return TemporaryServer.prestart()


def on_server(server):
    """A context manager in which flows talk to ``server`` (from :func:`start_prefect_server`),
    once it answers; with None, to the server Prefect's settings name."""
    return server.adopt() if server is not None else contextlib.nullcontext()


def machine() -> dict:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": dev,
            "platform": platform.platform(), "torch": torch.__version__,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def record(name: str, result: dict, out_dir: str | None = None) -> Path:
    """Write ``result`` as ``OUT/NAME-DATE.json`` with the machine, the date, the dsclab version and
    whether it ran at the tiny size; ``out_dir`` defaults to ``$DSCLAB_BENCH_OUT`` or
    ``results/benchmarks``."""
    import dsclab

    out = Path(out_dir or os.environ.get(OUT_ENV) or "results/benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    head = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "dsclab": dsclab.__version__,
            "tiny": tiny(), "machine": machine()}
    p.write_text(json.dumps({**head, **result}, indent=2))
    return p


def load_study(path: str, steps: int | None = None):
    """The study spec at ``path`` (cut by :func:`tiny_study` at the tiny size); ``steps`` (if
    given) sets every cell's budget."""
    from dsclab.spec import load_yaml
    from dsclab.study import parse_spec

    data = load_yaml(path)
    if tiny():
        data = tiny_study(data)
    if steps:
        data = {**data, "train": {**data.get("train", {}), "steps": steps}}
    return parse_spec(data)


def training_data(spec) -> dict:
    """{(d, seed): that dataset as a float32 tensor}, exactly what the flow's cells train on (prefixes)."""
    import torch

    from dsclab.studies.sample_complexity import numerics as sc

    return {(d, s): torch.as_tensor(sc.generate_data(spec, d, s), dtype=torch.float32)
            for d in spec.d for s in spec.seed}


def textbook_train(x, cfg, seed: int, device: str = "cpu", losses: list | None = None):
    """The tutorial training loop for one cell (the baseline users compare against), on ``device``
    (model, data and random draws there: one small step at a time, as a tutorial does on a GPU):
    a ``ScoreMLP`` of ``cfg``'s width and depth, the DSM loss, PyTorch's default Adam at ``cfg.lr``
    with cosine annealing over ``cfg.steps``, a fresh minibatch of ``cfg.batch_size`` rows (with
    replacement), times and noise drawn every step, float32. Seeded as dsclab's trainers are
    (``dsclab.seeds``, every bit of the 128-bit cell seed): the initial weights are
    ``train_score``'s and the draws come from the same generator, drawn one step at a time.
    ``losses``, when given, receives each step's loss (a detached tensor: no sync per step), as a
    researcher's loop keeps them. Returns the trained model (train mode)."""
    import torch

    from dsclab.losses import dsm_loss, sample_times
    from dsclab.nets import ScoreMLP
    from dsclab.seeds import generator, rng

    model = ScoreMLP(x.shape[1], width=cfg.width, depth=cfg.depth, generator=generator(seed)).to(device)
    g = rng("batches", seed, device=device)
    x = x.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    for _ in range(cfg.steps):
        idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=g, device=device)
        t = sample_times(cfg.batch_size, cfg.t_min, cfg.T, g, device=device)
        z = torch.randn(cfg.batch_size, x.shape[1], generator=g, device=device)
        loss = dsm_loss(model, x[idx], t, z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if losses is not None:
            losses.append(loss.detach())
    return model
