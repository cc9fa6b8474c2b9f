"""The ``dsclab`` command line.

    dsclab run SPEC [--store PATH] [--workers N]   run (or resume) a study through its Prefect flow
    dsclab status STORE                            done / pending / failed cells per axis
    dsclab query STORE --var NAME [--sel d=8 ...] [--mean t ...]   a table of stored values
    dsclab plot STORE [--out FILE]                 the study's figure
    dsclab report STORE                            the study's text report (tables, fits)
    dsclab check STORE                             status/value disagreements, missing or corrupt chunks
    dsclab server | deploy | worker                team Prefect server, work pools, GPU workers (flows/server.py)

Exit codes: 0 success; 2 bad input (nothing created or changed); 3 finished with failed cells;
1 anything else. Prefect is imported only by ``run``, so the rest works without a server.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


class UsageError(ValueError):
    pass


def _err(msg: str, code: int) -> int:
    print(f"dsclab: error: {msg}", file=sys.stderr)
    return code


def _kind(data_or_ds):
    from dsclab.study import kind_of

    try:
        return kind_of(data_or_ds)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _prepare_run(args):
    """Everything ``run`` checks before any work: the spec, the store, the runner options."""
    from dsclab.spec import load_yaml

    data = load_yaml(args.spec)
    kind = _kind(data)
    spec = kind.parse(data)
    if args.workers is not None:
        spec = spec.model_copy(update={"workers": args.workers})
    path = spec.store_path(args.store)
    import storage

    storage.check_store(path, kind.template(spec))  # refuse a mismatched store before any work
    from flows.runners import runner_from_args
    from flows.study import kind_flow

    try:
        runner = runner_from_args(args)  # --runner / --dask-address / --dask-workers
    except ValueError as e:
        raise UsageError(str(e)) from None
    return kind, spec, path, kind_flow(kind.name), ({"runner": runner} if runner else {})


def cmd_run(args) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.server import TemporaryServer

    server = TemporaryServer.prestart()  # its start overlaps the imports and checks below
    try:
        kind, spec, path, flow, runner_kw = _prepare_run(args)
    except BaseException:
        if server is not None:
            server.stop()
        raise
    from contextlib import nullcontext

    import storage
    from flows.study import StudyTaskError

    t0 = time.perf_counter()
    try:
        with server.adopt() if server is not None else nullcontext():
            out = flow(spec=spec, store=path, **runner_kw)
    except StudyTaskError as e:
        return _err(str(e), 1)
    ds = storage.open_results(path)
    print()
    print(f"store: {path}  ({out['done']}/{out['cells']} cells done, {out['failed']} failed, "
          f"{out['computed']} computed in this run, {time.perf_counter() - t0:.0f} s)")
    print(kind.report(ds))
    plot = out.get("plot") or kind.plot(ds, storage.plot_path(path))  # the flow's, when it drew it
    print(f"plot: {plot}")
    print(f"open with: python -c \"import xarray as xr; print(xr.open_zarr('{path}'))\"")
    return 3 if out["failed"] else 0


def cmd_status(args) -> int:
    import storage
    from dsclab.report import status_table

    print(status_table(storage.open_results(args.store)))
    return 0


def _parse_sel(items: list[str]) -> dict:
    sel = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--sel {item!r}: expected DIM=VALUE")
        k, v = item.split("=", 1)
        sel[k] = v
    return sel


def cmd_query(args) -> int:
    import storage
    from dsclab.report import query_table

    ds = storage.open_results(args.store)
    try:
        print(query_table(ds, args.var, _parse_sel(args.sel), args.mean or []))
    except KeyError as e:
        raise UsageError(str(e.args[0] if e.args else e)) from None
    return 0


def cmd_plot(args) -> int:
    import storage

    ds = storage.open_results(args.store)
    out = args.out or storage.plot_path(args.store)
    print(_kind(ds).plot(ds, out))
    return 0


def cmd_report(args) -> int:
    import storage

    ds = storage.open_results(args.store)
    kind = _kind(ds)
    print(kind.report(ds))
    print(f"plot: {kind.plot(ds, storage.plot_path(args.store))}")
    return 0


def cmd_check(args) -> int:
    import storage
    from storage.check import check_store

    problems = check_store(args.store)
    cells = int(storage.read_status(args.store).size)
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s) in {cells} cells" if problems else f"ok: {cells} cells, status and values agree")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsclab", description="Diffusion Sample-Complexity Lab")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run or resume a study from a YAML spec")
    r.add_argument("spec")
    r.add_argument("--store", help="store path or fsspec URL (default: results/<name>.zarr)")
    r.add_argument("--workers", type=int, help="tasks run at once (overrides the spec)")
    r.add_argument("--runner", choices=["threads", "dask"],
                   help="where tasks run: threads in this process (default) or a Dask cluster")
    r.add_argument("--dask-address", help="Dask scheduler address tcp://HOST:8786 (implies --runner dask)")
    r.add_argument("--dask-workers", type=int, help="worker processes of a local Dask cluster (implies --runner dask)")
    r.set_defaults(fn=cmd_run)

    def on_store(name: str, fn, text: str) -> argparse.ArgumentParser:
        """A command that reads one store (its first argument)."""
        c = sub.add_parser(name, help=text)
        c.add_argument("store")
        c.set_defaults(fn=fn)
        return c

    on_store("status", cmd_status, "done / pending / failed cells per axis")
    q = on_store("query", cmd_query, "a table of a stored variable")
    q.add_argument("--var", required=True)
    q.add_argument("--sel", nargs="*", metavar="DIM=VALUE")
    q.add_argument("--mean", nargs="*", metavar="DIM", help="average over these dims")
    on_store("plot", cmd_plot, "draw the study's figure").add_argument("--out")
    on_store("report", cmd_report, "the study's text report")
    on_store("check", cmd_check, "cells whose status and values disagree; missing or corrupt chunks")
    for name, text in [("server", "start a Prefect server, create the work pools and deploy the study flows"),
                       ("deploy", "create the work pools and gpu limit and deploy the study flows on a running server"),
                       ("worker", "start one gpu-pool worker per GPU (and cpu-pool workers)")]:
        sub.add_parser(name, help=text, add_help=False)  # options parsed by flows.server (see main)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("server", "deploy", "worker"):  # team server commands: flows/server.py
        from flows.server import main as server_main

        return server_main(argv, prog="dsclab")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)  # imports nothing heavy before it starts (see cmd_run)
    except Exception as e:
        from dsclab.spec import SpecError
        from storage import StoreError

        if isinstance(e, (SpecError, StoreError, UsageError)):
            return _err(str(e), 2)
        raise


if __name__ == "__main__":
    sys.exit(main())
