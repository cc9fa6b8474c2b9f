"""Where a flow's tasks run: threads in the flow's process (default), a local Dask cluster, or an
existing Dask scheduler; and which device a training task uses.

A study flow takes a :class:`RunnerSpec` parameter (the Prefect UI renders it as a form next to
the spec) and submits its tasks through :func:`start`::

    with runners.start(runner, workers=spec.workers, log=log) as run:
        data = run.submit(generate_data, path, spec, d, seed)
        trained = run.submit(train_group, path, spec, cells, wait_for=[data])
        ...                      # wait for the futures inside the ``with``

Routing: a task tagged ``gpu`` (training) holds a guard that keeps one such task per GPU, and is
submitted without that tag, indeed without any Prefect tag, so that Prefect never asks a server
for a concurrency slot for it. A slot is a lease that outlives a holder killed mid-task by ~75 s
(the API's 60 s minimum plus the server's 15 s reclaim period), and forever when it was taken
through a server that then died; and a process asks for slots through a client it keeps for the
first server it reported to (Prefect 3.8's slot service is one per tag set, whatever the API
URL), so a Dask worker that served one run reporting to a temporary server failed every tagged
task of the next run (``ConcurrencySlotAcquisitionError``). Under Dask with workers declaring the
resource ``GPU`` the task carries the resource annotation ``{"GPU": 1}``, so a Dask worker
declaring ``--resources GPU=1`` runs at most one such task at a time, whatever its thread count.
Otherwise (threads, or Dask without the resource) it holds the lock of its device on the machine
it runs on (:mod:`flows.gpu_lock`, released by the kernel when its process dies; none on the
CPU), logging when it has to wait. A Dask worker that leaves the cluster while it runs tasks is
logged in the flow run, with the tasks Dask reruns elsewhere. Tasks without the tag (data
generation, evaluation) run on any worker thread. A GPU task picks its device with
:func:`task_device`: the ``DSCLAB_DEVICE`` variable of the process it runs in (the work pool's
job variables set it), else CUDA when the process sees a GPU (``CUDA_VISIBLE_DEVICES`` of its
worker), else the CPU.

Threads: the workers of a local Dask cluster set PyTorch's intra-op threads to the cores divided
by their total thread count (:func:`local_torch_threads`); on an existing cluster, start each
``dask worker`` with ``OMP_NUM_THREADS`` set to its share of the machine's cores.

Memory: local Dask workers are spawned without Dask's ``MALLOC_TRIM_THRESHOLD_`` (see
:func:`_keep_malloc_defaults`: it made training 1.8x slower); start the workers of an existing
cluster with ``DASK_CONFIG=deploy/dask`` (``deploy/dask/dsclab.yaml``) for the same.

Robustness (for a worker lost mid-task): Dask reschedules the tasks of a worker that dies on the
remaining workers (up to ``distributed.scheduler.allowed-failures`` times, default 3); tasks only
write their own cell's chunks and mark a cell done last, so a rerun of a half-finished task is
safe.

``RunnerSpec`` imports neither Prefect nor Dask, so it could move into ``dsclab.spec`` as a field
of ``StudyBase`` (excluded from the hash, like ``workers``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GPU_TAG = "gpu"  # the marker of a task that needs a GPU guard (``tasks.stages.train``); never sent to Prefect
GPU_RESOURCE = "GPU"


class RunnerSpec(BaseModel):
    """How the flow runs its tasks. ``kind='threads'``: a thread pool of ``spec.workers`` threads in
    the flow's process. ``kind='dask'``: a Dask cluster, either the scheduler at ``address`` or a
    temporary local cluster of ``n_workers`` processes (each declaring ``resources``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["threads", "dask"] = Field("threads", description="'threads' (in the flow's process) or 'dask'")
    address: str | None = Field(None, description="Dask scheduler address, e.g. tcp://host:8786 (kind dask); "
                                                  "empty: start a local cluster")
    n_workers: int = Field(2, gt=0, description="worker processes of a local Dask cluster")
    threads_per_worker: int = Field(1, gt=0, description="threads per local Dask worker")
    torch_threads: int | None = Field(None, gt=0, description="PyTorch threads of each local Dask worker; "
                                                            "empty: the cores divided by all workers' threads")
    resources: dict[str, float] = Field({GPU_RESOURCE: 1.0},
                                        description="resources each local Dask worker declares")
    cluster_class: str = Field("distributed.LocalCluster",
                               description="class of the local cluster, e.g. dask_cuda.LocalCUDACluster")
    gpu_annotation: Literal["auto", "always", "never"] = Field(
        "auto", description="annotate gpu-tagged tasks with the Dask resource GPU=1: 'auto' when "
                            "some worker declares GPU")

    @field_validator("address", mode="before")
    @classmethod
    def _blank(cls, v):
        return None if isinstance(v, str) and not v.strip() else v  # an empty UI field means none

    @model_validator(mode="after")
    def _address(self) -> "RunnerSpec":
        if self.kind == "threads" and self.address:
            raise ValueError("address is for kind 'dask'")
        return self


def task_device(requested: str = "auto") -> str:
    """Where a task computes (``tasks.stages.task_device``)."""
    from tasks.stages import task_device as device

    return device(requested)


def make_task_runner(spec: RunnerSpec, workers: int):
    """The Prefect task runner ``spec`` describes (not started)."""
    if spec.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if spec.address:
        return DaskTaskRunner(address=spec.address)
    kwargs: dict[str, Any] = {"n_workers": spec.n_workers, "threads_per_worker": spec.threads_per_worker,
                              "resources": dict(spec.resources)}
    if spec.cluster_class == "distributed.LocalCluster":
        kwargs["processes"] = True
    return DaskTaskRunner(cluster_class=spec.cluster_class, cluster_kwargs=kwargs)


PACKAGES = ("dsclab", "storage", "tasks", "flows")


def preimport_packages() -> None:
    """Import this project's packages, ignoring sys.path folders that would shadow them.

    A Dask worker puts its scratch folder first on ``sys.path``, and that folder holds a
    ``storage`` directory (its spill space); with an editable install (an import hook placed after
    the path search) ``import storage`` would then find that empty directory as a namespace
    package. Importing once with such folders left out puts the real packages in ``sys.modules``.
    """
    import importlib
    import sys

    def shadows(entry: str, name: str) -> bool:
        d = os.path.join(entry or ".", name)
        return os.path.isdir(d) and not os.path.exists(os.path.join(d, "__init__.py"))

    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in saved if not any(shadows(p, n) for n in PACKAGES)]
        for name in PACKAGES:
            mod = sys.modules.get(name)
            if mod is not None and getattr(mod, "__file__", None) is None:  # a namespace package
                for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
                    del sys.modules[k]
            importlib.import_module(name)
    finally:
        sys.path[:] = saved


def _register_preimport(client, torch_threads: int | None = None) -> None:
    """On every worker (present and future): import this project's packages, and with
    ``torch_threads`` set PyTorch's intra-op threads (a local cluster's workers split the cores)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class PreImport(WorkerPlugin):
        name = "dsclab-preimport"

        def __init__(self, threads):
            self.threads = threads

        def setup(self, worker):
            preimport_packages()
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)

    client.register_plugin(PreImport(torch_threads))


def machine_cores() -> int:
    """The cores this process's work may use: ``DSCLAB_CORES`` where set (its share of a machine
    that runs other work beside it: the test suite's parallel workers set it), else every core."""
    given = os.environ.get("DSCLAB_CORES", "").strip()
    return max(1, int(given)) if given.isdigit() else (os.cpu_count() or 1)


def cores_per_thread(threads: int) -> int:
    """This process's cores (:func:`machine_cores`) split between ``threads`` threads that compute
    at once (at least 1)."""
    return max(1, machine_cores() // threads)


def share_cores(threads: int) -> None:
    """Set PyTorch's intra-op threads (process-wide) to this process's share of the cores when
    ``threads`` task threads compute at once in it, instead of each using every core."""
    import torch

    torch.set_num_threads(cores_per_thread(threads))


def local_torch_threads(spec: RunnerSpec) -> int:
    """PyTorch threads per worker of a local Dask cluster: ``spec.torch_threads`` when given, else
    the cores split between its workers' threads, so that 1 worker uses every core and n workers
    do not oversubscribe them."""
    return spec.torch_threads or cores_per_thread(spec.n_workers * spec.threads_per_worker)


def _workers_declare_gpu(client) -> tuple[int, int]:
    """(workers, workers declaring a GPU resource) currently connected to the scheduler."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return len(workers), sum(1 for w in workers.values() if w.get("resources", {}).get(GPU_RESOURCE, 0) >= 1)


def guarded(task, annotate_gpu: bool):
    """``task`` as submitted: a gpu-tagged task without its tags, guarded by the Dask resource
    (``annotate_gpu``: :meth:`Runner.submit` annotates it) or with its function run under its
    device's lock."""
    if GPU_TAG not in task.tags:
        return task
    bare = task.with_options()
    bare.tags = set()  # with_options keeps the tags when given none
    if not annotate_gpu:
        from flows.gpu_lock import DeviceLocked

        bare.fn = DeviceLocked(task.fn)
    return bare


class Runner:
    """A started task runner; :meth:`submit` is ``task.submit`` on it, a gpu-tagged task guarded
    (:func:`guarded`) and, under Dask with ``annotate_gpu``, annotated with the resource GPU=1."""

    def __init__(self, spec: RunnerSpec, task_runner, annotate_gpu: bool):
        self.spec, self.task_runner, self.annotate_gpu = spec, task_runner, annotate_gpu
        self._guarded: dict[int, Any] = {}

    def submit(self, task, *args, wait_for=None, **kwargs):
        from prefect.utilities.callables import get_call_parameters

        parameters = get_call_parameters(task.fn, args, kwargs)
        ctx = contextlib.nullcontext()
        if GPU_TAG in task.tags:
            if self.annotate_gpu:
                import dask

                ctx = dask.annotate(resources={GPU_RESOURCE: 1})
            if id(task) not in self._guarded:
                self._guarded[id(task)] = (task, guarded(task, self.annotate_gpu))  # keeps task alive
            task = self._guarded[id(task)][1]
        with ctx:
            return self.task_runner.submit(task, parameters, wait_for)

    @property
    def client(self):
        """The Dask client (kind 'dask' only)."""
        return self.task_runner.client


@contextlib.contextmanager
def _report_lost_workers(client, log) -> Iterator[None]:
    """Log in the flow run each Dask worker that leaves the cluster (killed, lost) while it runs
    tasks or holds their results: Dask reruns those on the remaining workers, and the study waits
    for them (a training task, for a worker with a free GPU resource)."""
    def on_event(event) -> None:
        _, msg = event
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        running = sorted(str(k) for k in msg.get("processing-tasks") or ())
        held = sorted(str(k) for k in msg.get("lost-computed-tasks") or ())
        if running or held:
            log.warning("Dask worker %s left the cluster while running %d task(s) %s and holding the results "
                        "of %d %s: Dask reruns them on the remaining workers and the study waits for them",
                        msg.get("worker"), len(running), running, len(held), held)

    client.subscribe_topic("all", on_event)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the client may be closing already
            client.unsubscribe_topic("all")


@contextlib.contextmanager
def _share_ephemeral_api(spec: RunnerSpec, log=None) -> Iterator[None]:
    """Without PREFECT_API_URL the flow talks to a temporary server in a subprocess; hand its URL
    to the tasks (through the settings Prefect serialises with each Dask task) so that Dask
    workers report to it instead of each starting a temporary server of their own."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ctx = FlowRunContext.get()
    url = None if PREFECT_API_URL.value() or ctx is None else getattr(ctx.client, "api_url", None)
    if not url:
        yield
        return
    if spec.address and log is not None:
        log.warning("no PREFECT_API_URL: Dask workers at %s report to this machine's temporary server "
                    "%s; start a Prefect server and set PREFECT_API_URL for remote workers", spec.address, url)
    with temporary_settings({PREFECT_API_URL: str(url)}):
        yield


MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def _keep_malloc_defaults() -> Iterator[None]:
    """Local Dask workers keep glibc's default malloc tuning.

    A Dask nanny spawns its worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (the config
    ``distributed.nanny.pre-spawn-environ``), to hand freed memory back to the system. Setting
    it also turns off glibc's adaptive mmap threshold, so every tensor over 128 KiB is mapped and
    unmapped afresh, page faults included: a training step took 1.8x as long (0.86 against 0.47 ms
    per cell and step, 1 thread) and a whole study on 2 workers 96 s instead of about 65 s.
    Unsetting the entry (``None``, which Dask reads as "do not set") keeps the defaults. A nanny
    also copies its variables into its own process's environment, which later workers inherit,
    so the variable is out of this process's environment too while the cluster lives (it is read
    by glibc only when a process starts, so this process is not affected)."""
    import dask

    saved = os.environ.pop(MALLOC_TRIM, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM}": None}):
            yield
    finally:
        if saved is not None:
            os.environ[MALLOC_TRIM] = saved


@contextlib.contextmanager
def start(spec: RunnerSpec | None, workers: int, log=None, torch_threads: int | None = None) -> Iterator[Runner]:
    """Start the runner ``spec`` describes for the duration of the ``with`` block (a local Dask
    cluster is torn down at its end). Futures must be waited for inside the block.

    PyTorch's intra-op threads: ``torch_threads`` per task when given (a study kind of many small
    tensor operations declares 1), else the cores split between the tasks that compute at once
    (threads: ``workers`` threads share this process; a local Dask cluster: its workers' threads).
    Workers of an existing Dask cluster keep their own setting (``OMP_NUM_THREADS``)."""
    spec = spec or RunnerSpec()
    if spec.kind == "threads":
        import torch

        torch.set_num_threads(torch_threads or cores_per_thread(workers))
    tr = make_task_runner(spec, workers)
    with contextlib.ExitStack() as stack:
        if spec.kind == "dask":
            stack.enter_context(_share_ephemeral_api(spec, log))
            if not spec.address:
                stack.enter_context(_keep_malloc_defaults())
        stack.enter_context(tr)
        annotate = False
        if spec.kind == "dask":
            client = tr.client  # connects (or starts the local cluster) now
            _register_preimport(client, None if spec.address else (torch_threads or local_torch_threads(spec)))
            n, with_gpu = _workers_declare_gpu(client)
            if spec.gpu_annotation == "always":
                annotate = True
            elif spec.gpu_annotation == "auto":
                annotate = with_gpu > 0 or (not spec.address and spec.resources.get(GPU_RESOURCE, 0) >= 1)
                if not annotate and log is not None:
                    log.warning("no Dask worker declares the resource %s (%d workers): gpu tasks run "
                                "unconstrained; start workers with --resources %s=1 or set gpu_annotation "
                                "'always'", GPU_RESOURCE, n, GPU_RESOURCE)
            if log is not None:
                log.info("Dask cluster %s: %d workers (%d declare %s), gpu annotation %s",
                         spec.address or "local", n, with_gpu, GPU_RESOURCE, "on" if annotate else "off")
                stack.enter_context(_report_lost_workers(client, log))
        yield Runner(spec, tr, annotate)


# Command-line flags (``dsclab run``) ------------------------------------------------------------

def add_runner_args(parser) -> None:
    """Add --runner, --dask-address, --dask-workers to an argparse parser."""
    parser.add_argument("--runner", choices=["threads", "dask"], default=None,
                        help="where tasks run: threads in this process (default) or a Dask cluster")
    parser.add_argument("--dask-address", default=None,
                        help="Dask scheduler address (tcp://host:8786); implies --runner dask")
    parser.add_argument("--dask-workers", type=int, default=None,
                        help="worker processes of a local Dask cluster (default 2); implies --runner dask")


def runner_from_args(args) -> RunnerSpec | None:
    """The RunnerSpec the flags ask for, or None when none was given (the flow's default)."""
    address, n = getattr(args, "dask_address", None), getattr(args, "dask_workers", None)
    kind = getattr(args, "runner", None) or ("dask" if address or n else None)
    if kind is None:
        return None
    if kind == "threads" and (address or n):
        raise ValueError("--dask-address / --dask-workers need --runner dask")
    if n is not None and n <= 0:
        raise ValueError(f"--dask-workers {n}: must be a positive integer")
    return RunnerSpec(kind=kind, address=address, **({"n_workers": n} if n else {}))
