"""The study contract, and the registry of study kinds.

A *study kind* (``sample_complexity``, ``immse``, ...) is one object, an instance of a
:class:`StudyKind` subclass, registered by name in :data:`KINDS`: built-in kinds live in
``dsclab/studies/<kind>/`` and another installed package adds one through the entry-point group
``dsclab.studies`` (``dsclab.registry``). One generic Prefect flow (``flows.study``) runs any kind
with any task runner, and one test suite (``tests/test_contract.py``) holds every registered kind
to this contract. A kind declares:

**Its spec** — ``spec_model``, a frozen pydantic model subclassing ``dsclab.spec.StudyBase`` with
a ``kind: Literal[<name>]`` field. It is the flow's parameter (the Prefect UI renders it as a
form) and is validated before any work: an invalid value raises ``SpecError`` with one line
naming the field. ``small`` is a test-sized preset (a mapping), used by the contract tests
(``small_variants``: more of them, for layouts ``small`` does not reach).

**Its cells** — :meth:`StudyKind.cells` expands a spec into cells: frozen models carrying their
coordinates along the cell dims (``cell_dims``, the dims every store of the kind has, and those
a spec adds: :meth:`StudyKind.dims`) and a stable ``key`` (a hash of the settings that determine the
cell's numbers). :meth:`StudyKind.plan` groups pending cells into tasks: a list of
:class:`Group`, each naming the data it needs (``data``: keys of *prepare* units, run once per
key), the cells trained together (one *train* task), and the batches of cells evaluated together
(one *evaluate* task each). The order of the list is the order of submission.

**Its store layout** — :meth:`StudyKind.template`: an ``xr.Dataset`` with every dimension,
coordinate and variable of the store (floats NaN, ``status`` pending; units and long names in
the attributes; the spec, its hash and the dsclab version in ``attrs``; ``attrs['study']`` is
the kind's name). Cell axes are ``cell_dims``: each cell is one region of the store.

**Its stages**, all plain numerics (no Prefect, no store):

* ``prepare(spec, key, cache)`` — draw and cache a data set, or compute a small shared value;
  its return value (JSON-able, small) is handed to the later stages of the groups naming ``key``.
* ``train(spec, cells, cache, prepared, device)`` — the GPU part, and all of a kind's training:
  fit the cells of one group (a batched ensemble, or one cell after another) on ``device`` (the
  train task's, never a device the spec names), returning ``{cell.key: checkpoint payload}`` (a
  dict of tensors and plain values that ``torch.save`` / ``torch.load(weights_only=True)``
  handle; a cell that needs no network gets a small one, e.g. ``{}``), or a
  :class:`dsclab.errors.NumericalFailure` for a member that failed. Every cell of the group gets
  one or the other: a cell without a checkpoint is marked failed. ``trains(spec)`` says whether
  runs of ``spec`` have this stage (default: whether the kind defines it); a kind that trains
  nothing leaves it undefined.
* ``evaluate(spec, cell, cache, prepared, trained, device)`` — the cell's values as an
  ``xr.Dataset`` over the store's non-cell dims; ``trained`` is the cell's checkpoint payload
  (None for runs without a train stage), which it restores onto ``device``. It never trains
  (``tests/test_contract.py`` checks both: training on the device given, no optimiser in
  ``evaluate``).

A stage raising one of :data:`dsclab.errors.FAILURES` — a numerical failure
(:data:`dsclab.errors.NUMERICAL`) or running out of memory on a single cell (a group that runs
out of memory is first split and retried) — marks its cells failed (the reason is stored; the
study goes on); any other exception fails the task loudly, leaves the cells pending and makes
the run fail with that message.

**How it reads** — :meth:`StudyKind.report` (text), :meth:`StudyKind.plot` (a figure file) and
:meth:`StudyKind.table` (the summary table shown in the Prefect UI).

Facts about a kind are class attributes, declared once: ``cell_dims``, ``flow_name`` (the
Prefect flow's name; deployments are ``<flow_name>/<pool>``), ``torch_threads`` (PyTorch's
intra-op threads per task; None shares the cores between the workers), ``description``, and
everything the rest of the lab reads about it: its presets (``preset``, the full one, a file of
the repository's ``studies/``; ``small``, the test-sized one beside its package), the work
``pools`` of its deployments (``scheduled``: those carrying the example weekly schedule), and the
``derived`` metrics an n* search may use (:class:`Derived`). Nothing outside the kind keeps a table
of kinds: ``flows.deployments``, ``dsclab.search`` and the tests read these.

This module is cheap to import (no PyTorch, no Prefect): ``dsclab run`` starts its temporary
server before the kinds are loaded on the first lookup in :data:`KINDS`.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dsclab.registry import Registry, RegistryError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    import xarray as xr


class Status(enum.IntEnum):
    """A cell's ``status`` in the store."""

    PENDING = 0
    DONE = 1
    FAILED = 2


@dataclass(frozen=True)
class Derived:
    """A metric computed from a store rather than stored (an n* search may use it, ``dsclab.search``):
    ``compute(ds)`` gives it over the store's dims (NaN at cells not done), from the variable
    ``needs``."""

    compute: Callable[["xr.Dataset"], "xr.DataArray"]
    needs: str


@dataclass(frozen=True)
class Group:
    """Pending cells that run together: ``data`` names the prepare units they need, ``cells``
    train together (one train task), and each of ``batches`` (default: one per cell) is evaluated
    in one task. Batches only hold cells of ``cells``."""

    cells: tuple
    data: tuple[Hashable, ...] = ()
    batches: tuple[tuple, ...] | None = None

    def eval_batches(self) -> tuple[tuple, ...]:
        return self.batches if self.batches is not None else tuple((c,) for c in self.cells)


class Cache(Protocol):
    """Files beside the store (``<name>.files/``) that the stages read and write by name; the task
    layer hands one over (``tasks.stages``), tests can use a folder or a dict."""

    def exists(self, name: str) -> bool: ...
    def save_array(self, name: str, array: "np.ndarray") -> None: ...
    def load_array(self, name: str) -> "np.ndarray": ...


class StudyKind:
    """Base class of a study kind; see the module docstring for the contract."""

    name: ClassVar[str]
    spec_model: ClassVar[type]
    cell_dims: ClassVar[tuple[str, ...]]
    description: ClassVar[str] = ""
    small: ClassVar[dict] = {}
    """The test-sized preset (a mapping; ``dsclab.studies.small_preset`` reads a package's ``small.yaml``)."""
    small_variants: ClassVar[Mapping[str, dict]] = {}
    """Further test-sized presets, by name, for layouts the ``small`` one does not reach (a spec that
    adds a cell dim, :meth:`dims`): the contract test holds them to the layout, flow and train-stage
    parts of the contract (``tests/test_contract.py``, cases ``<kind>:<variant>``; no golden store)."""
    preset: ClassVar[str | None] = None
    """The full preset: a file name in the repository's ``studies/``, the default spec of the kind's
    deployments; None for a kind without one there (a plugin kind), which deploys ``small``."""
    pools: ClassVar[tuple[str, ...]] = ("gpu",)
    """Work pools of the kind's deployments, one deployment per pool, named after it."""
    scheduled: ClassVar[tuple[str, ...]] = ()
    """Pools whose deployment carries the example weekly schedule (inactive)."""
    derived: ClassVar[Mapping[str, Derived]] = {}
    """Metrics an n* search of this kind may use besides its stored float variables, by name."""
    torch_threads: ClassVar[int | None] = None
    train_axes: ClassVar[tuple[str, ...]] = ()
    """Axes inside a cell (not ``cell_dims``) whose values a cell's training depends on (the
    drifts or estimators it trains): its checkpoint is reused by a later run only while they are
    unchanged (:meth:`checkpoint`)."""

    @property
    def flow_name(self) -> str:
        return self.name.replace("_", "-")

    def trains(self, spec) -> bool:
        """Whether runs of ``spec`` have a separate (GPU-tagged) train stage (default: whether the
        kind defines one)."""
        return type(self).train is not StudyKind.train

    # -- the spec and its cells ------------------------------------------------------------
    def parse(self, data: Any):
        """Validate a mapping (a YAML file's content, a UI form) into the spec model."""
        from dsclab.spec import validate

        return validate(data, self.spec_model)

    def cells(self, spec) -> list:
        return spec.cells()

    def dims(self, spec) -> tuple[str, ...]:
        """The cell dims of ``spec``'s store: ``cell_dims``, then any that this spec adds (a kind
        whose spec can make a setting an axis overrides this and :meth:`index`; computational_gap's
        ``budget`` when ``mpnn.budget`` is a list). Stores of specs that add none are unchanged."""
        return self.cell_dims

    def index(self, cell) -> dict:
        """The cell's coordinates along its store's cell dims (its region of the store)."""
        return {dim: getattr(cell, dim) for dim in self.cell_dims}

    def template(self, spec) -> "xr.Dataset":
        raise NotImplementedError

    def plan(self, spec, cells: Sequence) -> list[Group]:
        """Group pending cells into tasks; default: one group (and one evaluate task) per cell."""
        return [Group(cells=(c,)) for c in cells]

    # -- stages --------------------------------------------------------------------------------
    def prepare(self, spec, key: Hashable, cache: Cache) -> Any:
        raise NotImplementedError(f"study kind {self.name!r} names data {key!r} but has no prepare stage")

    def train(self, spec, cells: Sequence, cache: Cache, prepared: dict, device: str) -> dict:
        raise NotImplementedError

    def evaluate(self, spec, cell, cache: Cache, prepared: dict, trained: dict | None, device: str) -> "xr.Dataset":
        raise NotImplementedError

    # -- reading the results -----------------------------------------------------------------
    def report(self, ds: "xr.Dataset") -> str:
        raise NotImplementedError

    def plot(self, ds: "xr.Dataset", out: str) -> str:
        raise NotImplementedError

    def table(self, ds: "xr.Dataset") -> "pd.DataFrame":
        """The summary table of the Prefect UI: per float variable, mean, min and max over done cells."""
        import pandas as pd

        done = ds["status"] == Status.DONE
        rows = []
        for name, da in ds.data_vars.items():
            if name == "status" or da.dtype.kind != "f":
                continue
            v = da.where(done).load()
            rows.append({"variable": name, "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                         "units": da.attrs.get("units", "")})
        return pd.DataFrame(rows).set_index("variable")

    def checkpoint(self, spec, cell) -> str:
        """The name of ``cell``'s checkpoint beside the store: its key (its coordinates and the
        settings), tagged with the values of :attr:`train_axes` when the kind declares some. A
        checkpoint that exists was written, atomically, by an earlier run of the same training,
        so the train stage reuses it (a store whose inner axis grew evaluates its cells again)."""
        if not self.train_axes:
            return f"{cell.key}.pt"
        import hashlib
        import json

        tag = json.dumps([spec.axis(a) for a in self.train_axes], sort_keys=True, default=str)
        return f"{cell.key}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}.pt"

    def __repr__(self) -> str:
        return f"<study kind {self.name}>"


def _check_kind(name: str, obj: object) -> None:
    if not isinstance(obj, StudyKind):
        raise RegistryError(f"study kind {name!r} is a {type(obj).__name__}, not a dsclab.study.StudyKind instance")
    if obj.name != name:
        raise RegistryError(f"study kind registered as {name!r} calls itself {obj.name!r}")


BUILTIN = ("sample_complexity", "immse", "score_learning", "sampler_convergence", "computational_gap", "sparse_pca",
           "two_scores", "memorization")

KINDS: Registry[StudyKind] = Registry(
    "dsclab.studies", "study kind", check=_check_kind,
    lazy={k: f"dsclab.studies.{k}:KIND" for k in BUILTIN})


def kind_of(data_or_ds) -> StudyKind:
    """The kind of a spec mapping (``kind``, default sample_complexity) or of a store
    (``attrs['study']``); ValueError with one line when it is not registered."""
    if hasattr(data_or_ds, "attrs"):
        name = data_or_ds.attrs.get("study", "")
    elif isinstance(data_or_ds, dict):
        name = data_or_ds.get("kind", "sample_complexity")
    else:
        name = "sample_complexity"
    if not isinstance(name, str) or name not in KINDS:
        raise ValueError(f"kind: unknown study kind {name!r} (known: {KINDS.known()})")
    return KINDS[name]


def parse_spec(data: Any, model: type | None = None):
    """Validate a mapping into ``model``, or, with no ``model``, into the spec model of the kind its
    ``kind`` field names (default sample_complexity); an invalid value or an unknown kind raises
    ``dsclab.spec.SpecError`` with one line."""
    from dsclab.spec import SpecError, validate

    if model is None and isinstance(data, dict):
        try:
            model = kind_of(data).spec_model
        except ValueError as e:
            raise SpecError(str(e)) from None
    return validate(data, model)


def load_spec(path, model: type | None = None):
    """Load and validate a YAML spec file (``yaml.safe_load``; :func:`parse_spec`)."""
    from dsclab.spec import load_yaml

    return parse_spec(load_yaml(path), model)
