"""The ``dsclab`` command line.

    dsclab run SPEC [--store PATH] [--workers N]   run (or resume) a study through its Prefect flow
    dsclab search SPEC --metric M --eps E [--ratio R] [--seeds S ...]   n*(eps, d) by bisection in n
    dsclab status STORE                            done / pending / failed cells per axis
    dsclab query STORE --var NAME [--sel d=8 ...] [--mean t ...]   a table of stored values
    dsclab plot STORE [--out FILE] [--tau T1,T2]   the study's figure
    dsclab report STORE [--tau T1,T2]              the study's text report (tables, fits; --tau: levels of P[error > tau])
    dsclab check STORE                             status/value disagreements, missing or corrupt chunks
    dsclab doctor [--spec SPEC]                    torch build, CUDA, devices, each stage's device, Prefect API, results root
    dsclab server | deploy | worker                team Prefect server, work pools, GPU workers (flows/server.py)

Exit codes: 0 success; 2 bad input (nothing created or changed); 3 finished with failed cells;
1 anything else. Prefect is imported only by ``run`` and ``search``, so the rest works without a server.
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
    """Everything ``run`` checks before any work and before any server starts: the spec, the
    store, the runner options (a refusal costs the imports only, never a server's start)."""
    from dsclab.spec import load_yaml

    data = load_yaml(args.spec)
    kind = _kind(data)
    if isinstance(data, dict):  # --workers and --store set the spec's fields (validated with it)
        data = {**data, **{k: v for k, v in (("workers", args.workers), ("store", args.store)) if v is not None}}
    spec = kind.parse(data)
    path = spec.store_path()
    import storage
    from storage.confine import confine

    confine(path)  # a store outside $DSCLAB_RESULTS_ROOT (when set): refused
    storage.reconcile(kind, spec, path)  # refuse another version's store or a changed setting before any work
    from flows.runners import runner_from_args

    try:
        runner = runner_from_args(args)  # --runner / --dask-address / --dask-workers
    except ValueError as e:
        raise UsageError(str(e)) from None
    return kind, spec, path, ({"runner": runner} if runner else {})


def _heartbeats() -> None:
    """A run reporting to a team server sends a heartbeat every 30 s, so that the server's
    automation marks it Crashed 90 s after its process dies (``flows.server.crash_automation``)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")


def cmd_run(args) -> int:
    _heartbeats()
    kind, spec, path, runner_kw = _prepare_run(args)  # bad input: refused before any server starts
    from flows.server import TemporaryServer, TemporaryServerError

    server = TemporaryServer.prestart()  # its start overlaps the Prefect imports below
    try:
        from flows.study import kind_flow

        flow = kind_flow(kind.name)
    except BaseException:
        if server is not None:
            server.stop()
        raise
    if server is None and os.environ.get("PREFECT_API_URL"):  # a team server: are we let in?
        from flows.access import access_problem

        if problem := access_problem(os.environ["PREFECT_API_URL"]):
            raise UsageError(problem)
    from contextlib import nullcontext

    import storage
    from flows.study import StudyTaskError

    t0 = time.perf_counter()
    try:
        with server.adopt() if server is not None else nullcontext():
            out = flow(spec=spec, **runner_kw)
    except (StudyTaskError, TemporaryServerError) as e:
        return _err(str(e), 1)
    ds = storage.open_results(path)
    print()
    print(f"store: {path}  ({out['done']}/{out['cells']} cells done, {out['failed']} failed, "
          f"{out['computed']} computed in this run, {time.perf_counter() - t0:.0f} s)")
    report = out.get("report")  # the flow's (its report artifact's), when it made it
    print(kind.report(ds) if report is None else report)
    plot = out.get("plot") or kind.plot(ds, storage.plot_path(path))  # the flow's, when it drew it
    print(f"plot: {plot}")
    print(f"open with: python -c \"import xarray as xr; print(xr.open_zarr('{path}'))\"")
    return 3 if out["failed"] else 0


def cmd_search(args) -> int:
    """``dsclab search``: every input is checked (one line, exit 2) before the temporary server
    starts and before anything is computed; then the rounds run through the search flow
    (``flows/search.py``) and the report is printed."""
    _heartbeats()
    from dsclab.spec import load_yaml
    from flows.search import prepare, search

    request = prepare(load_yaml(args.spec), store=args.store, seeds=args.seeds, workers=args.workers,
                      metric=args.metric, eps=args.eps, ratio=args.ratio)
    from contextlib import nullcontext

    from flows.server import TemporaryServer, TemporaryServerError
    from flows.study import StudyTaskError

    server = TemporaryServer.prestart()
    t0 = time.perf_counter()
    try:
        with server.adopt() if server is not None else nullcontext():
            out = search(request=request)
    except (StudyTaskError, TemporaryServerError) as e:
        return _err(str(e), 1)
    print()
    print(f"store: {out['store']}  ({out['cells_computed']} cells computed in {out['rounds']} round(s), "
          f"{time.perf_counter() - t0:.0f} s)")
    print(out["report"])
    if out["plot"]:
        print(f"plot: {out['plot']}")
    return 0


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


def _with_tau(ds, tau: str | None):
    """``ds`` with the reader's exceedance levels ``--tau 0.1,0.3`` (positive numbers) in
    ``attrs`` (``dsclab.exceedance.TAU_ATTR``: the dataset read, never the store)."""
    if tau is None:
        return ds
    from dsclab.exceedance import TAU_ATTR

    try:
        levels = [float(v) for v in tau.split(",")]
    except ValueError:
        raise UsageError(f"--tau {tau!r}: expected positive numbers separated by commas, e.g. 0.1,0.3") from None
    if not levels or not all(v > 0 and v < float("inf") for v in levels):
        raise UsageError(f"--tau {tau!r}: expected positive numbers separated by commas, e.g. 0.1,0.3")
    ds.attrs[TAU_ATTR] = sorted(set(levels))
    return ds


def cmd_plot(args) -> int:
    import storage

    ds = _with_tau(storage.open_results(args.store), args.tau)
    out = args.out or storage.plot_path(args.store)
    print(_kind(ds).plot(ds, out))
    return 0


def cmd_report(args) -> int:
    import storage

    ds = _with_tau(storage.open_results(args.store), args.tau)
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


def cmd_doctor(args) -> int:
    """``dsclab doctor``: what this machine gives the lab (``flows/doctor.py``); always exit 0."""
    spec_device = None
    if args.spec:
        from dsclab.spec import load_yaml

        data = load_yaml(args.spec)
        spec_device = getattr(getattr(_kind(data).parse(data), "train", None), "device", None)
    from flows.doctor import report

    print(report(spec_device))
    return 0


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``dsclab run: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="dsclab", description="Diffusion Sample-Complexity Lab")
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
    sr = sub.add_parser("search", help="search n*(eps, d), the smallest n at which an error reaches eps, "
                                       "by geometric bisection in n")
    sr.add_argument("spec", help="a study spec whose n values give the range searched")
    sr.add_argument("--metric", required=True, help="a float variable of the store (averaged over its non-cell "
                                                    "dims, e.g. score_l2) or score_l2_weighted")
    sr.add_argument("--eps", type=float, required=True, help="the error level")
    sr.add_argument("--ratio", type=float, help="the bracket ratio n_hi/n_lo to reach (default 1.25)")
    sr.add_argument("--seeds", type=int, nargs="+", help="seeds (override the spec's)")
    sr.add_argument("--store", help="store path or fsspec URL (default: results/<name>.zarr)")
    sr.add_argument("--workers", type=int, help="tasks run at once (overrides the spec)")
    sr.set_defaults(fn=cmd_search)

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
    pl = on_store("plot", cmd_plot, "draw the study's figure")
    pl.add_argument("--out")
    rp = on_store("report", cmd_report, "the study's text report")
    for c in (pl, rp):
        c.add_argument("--tau", metavar="T1,T2", help="error levels of P[error > tau] (default: derived from the errors)")
    on_store("check", cmd_check, "cells whose status and values disagree; missing or corrupt chunks")
    dr = sub.add_parser("doctor", help="torch build, CUDA, devices, each stage's device, Prefect API, results root")
    dr.add_argument("--spec", help="a study spec: its train.device decides the stages' device")
    dr.set_defaults(fn=cmd_doctor)
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
