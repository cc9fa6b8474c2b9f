"""Prefect flows, one file per study kind. ``STUDIES[kind]`` gives the spec model, a function
returning the flow (so Prefect is imported only when a flow runs), the store template builder
and the store's cell dims."""
from __future__ import annotations


def _sample_complexity_flow():
    from flows.sample_complexity import sample_complexity
    return sample_complexity


def _studies():
    from dsclab import sample_complexity as sc
    from dsclab.spec import StudySpec
    return {"sample_complexity": (StudySpec, _sample_complexity_flow, sc.template, sc.CELL_DIMS)}


STUDIES = _studies()
