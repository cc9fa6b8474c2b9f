"""Axis types of study specs and their validators, one policy for every study kind.

* A **numeric axis** (dimensions, sample sizes, NFE, times, levels) is a non-empty list of
  distinct values, kept **sorted ascending**: the order it is written in does not matter, so two
  specs listing the same values are the same study (same hash, same store).
* A **seed axis**: distinct non-negative integers, sorted ascending.
* A **name axis** (estimators, samplers, drifts, ...) is a non-empty list of distinct registered
  names, kept in the order given (the order of a report's columns).

Every violation raises ``ValueError`` with one line naming the value; ``dsclab.spec.validate``
prefixes the field. Each type also states, in its JSON Schema (:class:`Schema`), what of its
validator JSON Schema can express: bounds (``minimum`` / ``exclusiveMinimum``), ``minItems: 1``,
``uniqueItems``, and the ``enum`` of a registry's names (read from the registry when the schema is
generated, so plugin names are in it). A deployment's parameter schema is the spec model's JSON
Schema, so the Prefect UI's form and ``prefect deployment run`` refuse such values at creation;
the sort order and the rules between fields are left to the validators. Use the ``Annotated`` types as field types; :func:`Name` and :func:`Names`
make the types of one registered name and of a name axis of a registry::

    Estimators = Names(SCORE_LOSSES, "estimator")

    d: PositiveInts = Field(..., description="dimensions")
    estimator: Estimators = Field(["dsm"], description="score estimators")
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, GetJsonSchemaHandler, StrictInt
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


def distinct(values: Sequence[Any]) -> list:
    """``values`` as a list; ValueError on an empty list or a repeated value."""
    if len(values) == 0:
        raise ValueError("needs at least one value")
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate value {v!r}")
        seen.add(v)
    return list(values)


def _ints(values: Sequence[int], lowest: int, what: str) -> list[int]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
            raise ValueError(f"{v!r} is not a {what}")
    return sorted(distinct(values))


def positive_ints(values: Sequence[int]) -> list[int]:
    """A numeric axis of positive integers (sorted, distinct)."""
    return _ints(values, 1, "positive integer")


def seeds(values: Sequence[int]) -> list[int]:
    """A seed axis: non-negative integers (sorted, distinct)."""
    return _ints(values, 0, "non-negative integer")


def finite(values: Sequence[float]) -> list[float]:
    """A numeric axis of finite reals (sorted, distinct)."""
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{v!r} is not finite")
    return sorted(float(v) for v in distinct(values))


def positive_times(values: Sequence[float]) -> list[float]:
    """A numeric axis of positive finite times (sorted, distinct)."""
    for v in values:
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{v!r} is not a positive time")
    return finite(values)


def non_negative(values: Sequence[float]) -> list[float]:
    """A numeric axis of non-negative finite reals (sorted, distinct)."""
    for v in values:
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{v!r} is not a non-negative number")
    return finite(values)


def unit_interval(values: Sequence[float]) -> list[float]:
    """A numeric axis of levels in the open interval (0, 1) (sorted, distinct)."""
    for v in values:
        if not 0 < v < 1:
            raise ValueError(f"{v!r} is not in (0, 1)")
    return finite(values)


def name(value: str, registry: Mapping, what: str) -> str:
    """One name that must be registered in ``registry``."""
    if value not in registry:
        raise ValueError(f"unknown {what} {value!r} (known: {', '.join(registry)})")
    return value


def names(values: Sequence[str], registry: Mapping, what: str) -> list[str]:
    """A name axis: distinct registered names, in the order given."""
    for v in distinct(values):
        name(v, registry, what)
    return list(values)


def below(lo: float, hi: float, lo_name: str, hi_name: str) -> None:
    """ValueError unless ``lo < hi`` (e.g. t_min below T)."""
    if not lo < hi:
        raise ValueError(f"{lo_name} {lo} must be below {hi_name} {hi}")


def grid_size(cells: int, max_cells: int) -> None:
    """ValueError when a grid has more cells than the spec's ``max_cells``."""
    if cells > max_cells:
        raise ValueError(f"the grid has {cells} cells, over max_cells={max_cells}")


class Schema:
    """``Annotated`` metadata adding JSON Schema keywords to a type's schema; ``items`` go to the
    schema of its items. A keyword's value may be a callable, called each time a schema is
    generated (the ``enum`` of a registry that plugins extend). Validation is unchanged."""

    def __init__(self, items: Mapping[str, Any] | None = None, **keywords: Any):
        self.items, self.keywords = dict(items or {}), keywords

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        now = lambda kw: {k: v() if callable(v) else v for k, v in kw.items()}  # noqa: E731
        schema.update(now(self.keywords))
        if self.items:
            schema["items"] = {**schema.get("items", {}), **now(self.items)}
        return schema


def axis_schema(**items: Any) -> Schema:
    """The JSON Schema facts of a numeric or seed axis: one value at least, distinct, each within
    the bounds ``items`` (JSON Schema keywords)."""
    return Schema(items, minItems=1, uniqueItems=True)


PositiveInts = Annotated[list[StrictInt], AfterValidator(positive_ints), axis_schema(minimum=1)]
Seeds = Annotated[list[StrictInt], AfterValidator(seeds), axis_schema(minimum=0)]
FiniteFloats = Annotated[list[float], AfterValidator(finite), axis_schema()]
PositiveTimes = Annotated[list[float], AfterValidator(positive_times), axis_schema(exclusiveMinimum=0)]
NonNegativeFloats = Annotated[list[float], AfterValidator(non_negative), axis_schema(minimum=0)]
UnitLevels = Annotated[list[float], AfterValidator(unit_interval), axis_schema(exclusiveMinimum=0, exclusiveMaximum=1)]


def Name(registry: Mapping, what: str) -> Any:  # noqa: N802 - it makes a type
    """The field type of one name registered in ``registry`` (a key; ``what`` names it in errors);
    its JSON Schema is the ``enum`` of the registry's names."""
    return Annotated[str, AfterValidator(lambda v: name(v, registry, what)), Schema(enum=lambda: list(registry))]


def Names(registry: Mapping, what: str) -> Any:  # noqa: N802 - it makes a type
    """The field type of a name axis of ``registry``: distinct registered names, in the order given
    (JSON Schema: an array of distinct names of the registry's ``enum``, one at least)."""
    return Annotated[list[str], AfterValidator(lambda v: names(v, registry, what)),
                     Schema({"enum": lambda: list(registry)}, minItems=1, uniqueItems=True)]
