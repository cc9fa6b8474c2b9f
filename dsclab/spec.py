"""What every study spec shares: frozen pydantic models, their validation into one-line errors,
and loading from YAML.

Each study kind's spec model (``dsclab.study.StudyKind.spec_model``, in
``dsclab/studies/<kind>/``) subclasses :class:`StudyBase` and is the parameter of the kind's flow
(the Prefect UI renders it as a form). :func:`validate` validates a mapping into it (and
``dsclab.study.parse_spec`` / ``load_spec`` a mapping or a YAML file of any registered kind);
invalid input raises :class:`SpecError` with one line naming the field and the value, before
anything is created. Axes are validated by the one policy of
:mod:`dsclab.axes`.

**Cell identity.** A spec holds *axes* (the grid: the lists whose values become store
coordinates, declared by each spec model in ``AXES``, store dim -> dotted field path), *settings*
(everything else that determines numbers: :meth:`StudyBase.settings`), *reading choices* that
change no number (``READING``) and operational fields (``name``, ``store``, ``workers``,
``max_cells``, ``group_memory_mb``). A cell's ``key`` (:meth:`StudyBase.key`) hashes the kind, the
cell's own coordinates (and, for an axis of named objects such as immse's data laws, that cell's
object), the settings and the code version — never the study's name, its store, or the other
values of any axis — so the same cell in two studies has the same seeds and the same numbers, and
a store grows in place when axis values are added (``flows.study.run_study``):
:meth:`StudyBase.union` merges two specs' axes, :meth:`StudyBase.setting_change` names the first
setting in which two specs differ.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import dsclab
from dsclab import axes, distributions
from dsclab.noise import SCHEDULES
from dsclab.samplers import NFE_PER_STEP, SAMPLERS
from dsclab.precisions import PRECISIONS


class SpecError(ValueError):
    """An invalid study spec; the message is one line naming the field."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeRange(Frozen):
    """A section with a time range ``t_min < T`` (training times, or the samplers' start and
    early-stopping times): the subclass declares both fields (their defaults and meanings differ),
    this checks the order."""

    @model_validator(mode="after")
    def _t_min_below_T(self):  # noqa: N802
        axes.below(self.t_min, self.T, "t_min", "T")
        return self


# Field types of names taken from a registry (:func:`dsclab.axes.Name`, :func:`dsclab.axes.Names`).
Distribution = axes.Name(distributions.DISTRIBUTIONS, "distribution")
Precision = axes.Name(PRECISIONS, "precision")
Sampler = axes.Name(SAMPLERS, "sampler")
Samplers = axes.Names(SAMPLERS, "sampler")
Schedule = axes.Name(SCHEDULES, "schedule")


def check_nfe(samplers: str | Sequence[str], nfe: int | Sequence[int], field: str = "nfe") -> None:
    """Refuse an NFE that is not a whole number of steps of every sampler: each sampler's declared
    ``nfe_per_step`` (``dsclab.samplers.NFE_PER_STEP``) must divide every value of ``nfe`` (field
    name ``field``), else a run would take fewer evaluations than the NFE it is stored under
    (samplers are compared per NFE). Raises ValueError, one line naming the sampler and the NFE;
    every spec with samplers and NFE calls it from its validator."""
    for name in [samplers] if isinstance(samplers, str) else samplers:
        k = NFE_PER_STEP[name]
        bad = [v for v in ([nfe] if isinstance(nfe, int) else nfe) if v % k]
        if bad:
            raise ValueError(f"{field} {bad[0]} is not a multiple of {k}, the score evaluations per step of "
                             f"sampler {name!r}" + (f" (also {bad[1:]})" if len(bad) > 1 else ""))


class DistributionSpec(Frozen):
    """The data family (``dsclab.distributions.DISTRIBUTIONS``) and its parameters. ``name`` is
    required: parameters without a family (``distribution: {params: {k: 2}}``) are refused, never
    read as those of a default family; a spec that omits the whole section gets its kind's default
    law (e.g. ``DistributionSpec(name="gaussian_mixture")``)."""

    name: Distribution = Field(..., description="data family")
    # bool and str (a data set's lattice flag and path) come after the numbers: pydantic's smart union
    # keeps an exact-type match, so existing specs validate (and hash) as before
    params: dict[str, float | int | list[float] | bool | str] = Field(default_factory=dict, description="family parameters")

    @model_validator(mode="after")
    def _params(self) -> "DistributionSpec":
        try:
            inspect.signature(distributions.DISTRIBUTIONS[self.name]).bind(2, **self.params)
        except TypeError as e:
            raise ValueError(f"bad parameters {self.params} for {self.name}: {e}") from None
        return self

    def check_dims(self, dims) -> None:
        """Build the family at each d, so that values invalid for a dimension (k > d, say) are
        refused before any work."""
        for d in dims:
            try:
                distributions.make(self.name, d, **self.params)
            except (TypeError, ValueError) as e:
                raise ValueError(f"distribution {self.name} at d={d}: {e}") from None


class TrainSpec(TimeRange):
    """Training of one score network per cell (Adam, a budget of optimiser steps)."""

    steps: int = Field(1500, gt=0, description="optimiser steps per cell")
    batch_size: int = Field(256, gt=0)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(128, gt=0, description="hidden width of the MLP")
    depth: int = Field(3, gt=0, description="hidden layers of the MLP")
    t_min: float = Field(1e-3, gt=0, description="smallest training time")
    T: float = Field(5.0, gt=0, description="largest training time")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:i]'")
    precision: Precision = Field(
        "float32", description="arithmetic of the training step, a key of dsclab.precisions.PRECISIONS: 'bfloat16' "
        "runs its matrix products under autocast (weights, Adam and evaluation stay float32)")


class StudyBase(Frozen):
    """What every study spec has: a name, where its store goes and how many tasks run at once.

    A study kind subclasses this with a ``kind: Literal[...]`` field and its own axes; ``hash``
    covers everything but ``store``, ``workers``, ``max_cells`` and ``group_memory_mb`` (which do
    not change numbers).
    """

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="study name; the store defaults to results/NAME.zarr")
    store: str | None = Field(None, description="store path or fsspec URL (default: results/NAME.zarr, NAME the study name)")
    workers: int = Field(2, gt=0, description="tasks run at once")
    max_cells: int = Field(10_000, gt=0, description="refuse grids with more cells than this")

    AXES: ClassVar[dict[str, str]] = {}
    """The spec's axes: store dim -> dotted path of the list field giving its coordinates
    (declared by each kind's spec model)."""
    READING: ClassVar[tuple[str, ...]] = ()
    """Dotted paths of fields that change how results are read (report tables, fits), no number."""
    OPERATIONAL: ClassVar[tuple[str, ...]] = ("store", "workers", "max_cells", "group_memory_mb")

    def numerics(self) -> dict:
        """What determines the numbers (not where they are stored or how many tasks run)."""
        return self.model_dump(mode="json", exclude=set(self.OPERATIONAL))

    @property
    def hash(self) -> str:
        blob = json.dumps({"spec": self.numerics(), "version": dsclab.__version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def settings(self) -> dict:
        """The settings that determine a cell's numbers: the spec's numerics without its name, its
        axes (``AXES``) and its reading choices (``READING``), as nested JSON-able dicts."""
        out = self.numerics()
        out.pop("name", None)
        for path in (*self.AXES.values(), *self.READING):
            _pop(out, path)
        return out

    @property
    def settings_hash(self) -> str:
        blob = json.dumps({"settings": self.settings(), "version": dsclab.__version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def axis(self, dim: str) -> list:
        """The values of axis ``dim`` (JSON-able; named objects as dicts)."""
        return list(_get(self.model_dump(mode="json"), self.AXES[dim]))

    def setting_change(self, other: "StudyBase") -> str | None:
        """The first setting (dotted path) whose value differs between ``self`` and ``other``, or
        None when every setting agrees; an axis of named objects whose shared names carry other
        parameters counts as a setting change too."""
        path = _first_difference(self.settings(), other.settings())
        if path is not None:
            return path
        for dim in self.AXES:
            mine, theirs = _named(self.axis(dim)), _named(other.axis(dim))
            for name in mine.keys() & theirs.keys():
                if mine[name] != theirs[name]:
                    return f"{self.AXES[dim]}[{name}]"
        return None

    def union(self, other: "StudyBase") -> "StudyBase":
        """This spec with every axis holding its own values and those of ``other`` (numeric axes
        sorted, names in this spec's order then ``other``'s new ones), validated again."""
        data = self.model_dump(mode="json")
        for dim, path in self.AXES.items():
            mine = self.axis(dim)
            seen = {json.dumps(_name_of(v), sort_keys=True) for v in mine}
            extra = [v for v in other.axis(dim) if json.dumps(_name_of(v), sort_keys=True) not in seen]
            _set(data, path, mine + extra)
        return type(self).model_validate(data)

    def store_path(self, override: str | None = None) -> str:
        return override or self.store or f"results/{self.name}.zarr"

    def key(self, **cell) -> str:
        """Stable key of one cell: the kind, its coordinates (with its own object for an axis of
        named objects), the settings and the code version."""
        own = {}
        for dim, value in cell.items():
            if dim in self.AXES:
                obj = _named(self.axis(dim)).get(value)
                if obj is not None:
                    own[dim] = obj
        blob = json.dumps({"kind": getattr(self, "kind", None), "cell": cell, "objects": own,
                           "settings": self.settings(), "version": dsclab.__version__},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def grid(self, cell: type, **cell_axes: Sequence) -> list:
        """The cells of a grid: one ``cell`` (a frozen model of the cell coordinates and ``key``) per
        point of the product of ``cell_axes`` (name -> values; the first is the outermost loop), keyed
        by :meth:`key` of its coordinates."""
        points = (dict(zip(cell_axes, values)) for values in itertools.product(*cell_axes.values()))
        return [cell(**idx, key=self.key(**idx)) for idx in points]


def _get(data: dict, path: str):
    for part in path.split("."):
        data = data[part]
    return data


def _set(data: dict, path: str, value) -> None:
    *head, last = path.split(".")
    for part in head:
        data = data[part]
    data[last] = value


def _pop(data: dict, path: str) -> None:
    *head, last = path.split(".")
    for part in head:
        data = data.get(part, {})
    data.pop(last, None)


def _name_of(value):
    """An axis value's identity: a named object's name, else the value."""
    return value["name"] if isinstance(value, dict) and "name" in value else value


def _named(values: list) -> dict:
    """The named objects of an axis, by name (empty for plain values)."""
    return {v["name"]: v for v in values if isinstance(v, dict) and "name" in v}


def _first_difference(a, b, prefix: str = "") -> str | None:
    """The first dotted path (keys sorted) where two nested JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys()):
            if k not in a or k not in b:
                return f"{prefix}{k}"
            found = _first_difference(a[k], b[k], f"{prefix}{k}.")
            if found is not None:
                return found
        return None
    return None if a == b else prefix.rstrip(".") or "spec"


def format_validation_error(err: ValidationError) -> str:
    """One line: the first error's field path and message."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
    idx = [p for p in e["loc"] if isinstance(p, int)]
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "missing":
        return f"{loc}: missing (required)"
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown field"
    where = f"{loc}[{idx[0]}]" if idx else loc
    if "input" in e and e["type"] not in ("value_error", "assertion_error") and not isinstance(e["input"], dict):
        return f"{where}: {e['input']!r}: {msg}"
    return f"{where or 'spec'}: {msg}"


def validate(data: Any, model: type[BaseModel]):
    """Validate a mapping into ``model``; raise :class:`SpecError` with one line on failure."""
    if not isinstance(data, dict):
        raise SpecError(f"spec: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e)) from None


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec: no such file {str(p)!r}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"spec: malformed YAML in {str(p)!r}{where}: {getattr(e, 'problem', e)}") from None
    return data
