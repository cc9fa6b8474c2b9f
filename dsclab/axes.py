"""Axis types of study specs and their validators, one policy for every study kind.

* A **numeric axis** (dimensions, sample sizes, NFE, times, levels) is a non-empty list of
  distinct values, kept **sorted ascending**: the order it is written in does not matter, so two
  specs listing the same values are the same study (same hash, same store).
* A **seed axis**: distinct non-negative integers, sorted ascending.
* A **name axis** (estimators, samplers, drifts, ...) is a non-empty list of distinct registered
  names, kept in the order given (the order of a report's columns).

Every violation raises ``ValueError`` with one line naming the value; ``dsclab.spec.parse_spec``
prefixes the field. Use the ``Annotated`` types as field types; :func:`Name` and :func:`Names`
make the types of one registered name and of a name axis of a registry::

    Estimators = Names(ESTIMATORS, "estimator")

    d: PositiveInts = Field(..., description="dimensions")
    estimator: Estimators = Field(["dsm"], description="score estimators")
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, StrictInt


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


PositiveInts = Annotated[list[StrictInt], AfterValidator(positive_ints)]
Seeds = Annotated[list[StrictInt], AfterValidator(seeds)]
FiniteFloats = Annotated[list[float], AfterValidator(finite)]
PositiveTimes = Annotated[list[float], AfterValidator(positive_times)]
NonNegativeFloats = Annotated[list[float], AfterValidator(non_negative)]
UnitLevels = Annotated[list[float], AfterValidator(unit_interval)]


def Name(registry: Mapping, what: str) -> Any:  # noqa: N802 - it makes a type
    """The field type of one name registered in ``registry`` (a key; ``what`` names it in errors)."""
    return Annotated[str, AfterValidator(lambda v: name(v, registry, what))]


def Names(registry: Mapping, what: str) -> Any:  # noqa: N802 - it makes a type
    """The field type of a name axis of ``registry``: distinct registered names, in the order given."""
    return Annotated[list[str], AfterValidator(lambda v: names(v, registry, what))]
