"""The search flow: n*(eps, d) by geometric bisection in n (``dsclab search``; the numerics and
their conventions are :mod:`dsclab.search`'s), one study store grown round by round.

Its parameter, :class:`SearchRequest`, is a study spec of a kind whose cells have an n and a seed
axis (``sample_complexity``, ``score_learning``, ...: :func:`searchable`) plus the search settings
(:class:`dsclab.search.SearchSettings`); the Prefect UI renders it as a form. The spec's n values
give only the range searched. Each round is one call of the generic study flow's
:func:`flows.study.run_study` on the spec grown by the round's n values (the union of every n so far),
restricted (``only``) to the round's (curve, n) cells, all seeds: round 1 the coarse grid at every
curve, each later round one n per curve still searching. Every round appends to the same store
(the spec's ``store``, default results/NAME.zarr), and every round reads every done cell of the
spec's curves there, so a rerun of a search (or a search at another eps on the same store) computes
only cells no earlier search has, and stops as soon as each bracket is resolved. The search's report and figure (``<store>.files/search.png``) are published as
artifacts of the flow run (keys ``<name>-search-report``, ``<name>-search-plot``).
"""
from __future__ import annotations

import base64
import itertools
import os
import time
from typing import Annotated, Any, Union

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import Field, ValidationError

import storage
from dsclab import search as sr
from dsclab.spec import SpecError, format_validation_error
from dsclab.study import parse_spec
from dsclab.study import KINDS, StudyKind, kind_of
from flows import artifacts
from flows.runners import RunnerSpec
from flows.study import parameters, run_study
from storage.confine import confine

SETTINGS = tuple(sr.SearchSettings.model_fields)


def searchable() -> list[str]:
    """The registered study kinds whose cells have an n and a seed axis."""
    return [name for name, k in KINDS.items() if {"n", "seed"} <= set(k.cell_dims)]


def _spec_type() -> Any:
    models = tuple(KINDS[name].spec_model for name in searchable())
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007 - a runtime tuple


class SearchRequest(sr.SearchSettings):
    """A search: the study spec (its n values give the range searched) and the search settings."""

    spec: _spec_type() = Field(..., description="the study spec (a kind with n and seed axes)")  # type: ignore[valid-type]

    def settings(self) -> sr.SearchSettings:
        return sr.SearchSettings(**self.model_dump(include=set(SETTINGS)))


def validate(kind: StudyKind, spec, settings: sr.SearchSettings) -> None:
    """SpecError with one line when this search cannot run (:func:`dsclab.search.check`)."""
    extra = [d for d in kind.dims(spec) if d not in kind.cell_dims]
    if extra:
        raise SpecError(f"search: this spec adds the cell axis {', '.join(extra)}, which a search of n does not cover")
    try:
        sr.check(settings.metric, kind.template(spec), kind)
    except ValueError as e:
        raise SpecError(f"search: {e}") from None


def prepare(data: dict, *, store: str | None = None, seeds: list[int] | None = None,
            workers: int | None = None, **settings) -> SearchRequest:
    """Everything ``dsclab search`` checks before any work: the spec mapping (``store``, ``seeds``
    and ``workers`` override its own), the settings, the metric and the store (its results root,
    its version and settings: ``storage.reconcile``). Returns the request; SpecError or
    StoreError with one line otherwise."""
    try:
        kind = kind_of(data)
    except ValueError as e:
        raise SpecError(str(e)) from None
    if not {"n", "seed"} <= set(kind.cell_dims):
        raise SpecError(f"search: study kind {kind.name!r} has no n axis to search "
                        f"(its cells are over {', '.join(kind.cell_dims)})")
    over = {k: v for k, v in (("store", store), ("seed", seeds), ("workers", workers)) if v is not None}
    spec = kind.parse({**data, **over})
    s = parse_spec({k: v for k, v in settings.items() if v is not None}, sr.SearchSettings)
    validate(kind, spec, s)
    request = SearchRequest(spec=spec, **s.model_dump())
    path = spec.store_path()
    confine(path)  # a store outside $DSCLAB_RESULTS_ROOT (when set): refused
    storage.reconcile(kind, coarse_spec(spec, s), path)  # another version's store, a changed setting
    return request


def coarse_spec(spec, settings: sr.SearchSettings):
    """The spec with the coarse geometric n grid over its n range (round 1)."""
    return spec.model_copy(update={"n": sr.geometric_grid(min(spec.n), max(spec.n), settings.factor)})


def read_values(path: str, kind: StudyKind, spec, metric: str):
    """The metric per cell of the store at ``path`` (:func:`dsclab.search.metric_values`), on the
    spec's values of every cell axis but n (the store may hold more: other searches' cells)."""
    v = sr.metric_values(storage.open_results(path), metric, kind)
    return v.sel({dim: list(getattr(spec, dim)) for dim in kind.cell_dims if dim != "n"})


def expand(kind: StudyKind, spec, points: list[dict]) -> list[dict]:
    """Each point (a mapping of some cell dims: ``{"n": 30}``, ``{"d": 8, "n": 477}``) as full cell
    coordinates over the spec's values of the dims it leaves out, so that a round computes the
    spec's cells only, never those of other values a store shared with other searches holds."""
    out = []
    for p in points:
        rest = [dim for dim in kind.cell_dims if dim not in p]
        for values in itertools.product(*(list(getattr(spec, dim)) for dim in rest)):
            out.append({**p, **dict(zip(rest, values))})
    return out


def search_plot_path(path: str) -> str | None:
    """``<store>.files/search.png`` for a local store (its folder created), else None."""
    if "://" in storage.files_url(path):
        return None
    return os.path.join(os.path.dirname(storage.plot_path(path)), "search.png")


def _publish(name: str, path: str, text: str, plot: str | None, log) -> None:
    """The search's report and figure as artifacts of the flow run (presentation only: a failure
    is logged)."""
    if not artifacts.in_run():
        return
    try:
        from prefect.artifacts import create_image_artifact, create_markdown_artifact

        create_markdown_artifact(f"### search of {name}\n\nstore: `{path}`\n\n```\n{text}\n```",
                                 key=artifacts.artifact_key(name, "search-report"), description=f"{name}: n* search")
        if plot:
            with open(plot, "rb") as f:
                url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
            create_image_artifact(url, key=artifacts.artifact_key(name, "search-plot"), description=f"{name}: n* search")
    except Exception as e:  # noqa: BLE001 - the results are in the store and the return value
        log.warning("could not publish the search's artifacts: %r", e)


def run_search(request: SearchRequest, runner: RunnerSpec | None = None) -> dict:
    """Run (or resume) a search inside a flow run; the store is ``request.spec.store`` (default
    results/NAME.zarr). Returns {store, rounds, computed (cells per round), cells_computed, curves
    (per curve: n_star, censored, bracket, bracket_ratio, seed_interval, n), exponents, report,
    plot, seconds}."""
    log = get_run_logger()
    t0 = time.perf_counter()
    spec, settings = request.spec, request.settings()
    kind = KINDS[spec.kind]
    validate(kind, spec, settings)
    path = spec.store_path()
    n_bounds = sr.bounds(spec.n, settings.factor)
    grid = set(coarse_spec(spec, settings).n)
    only = [{"n": n} for n in sorted(grid)]
    computed: list[int] = []
    while only and len(computed) < settings.max_rounds:
        grid |= {o["n"] for o in only}
        log.info("search round %d: %s", len(computed) + 1,
                 "coarse grid n = " + ", ".join(str(o["n"]) for o in only) if not computed else
                 "; ".join(", ".join(f"{k}={v}" for k, v in o.items()) for o in only))
        out = run_study(kind, spec.model_copy(update={"n": sorted(grid)}), runner=runner,
                        only=expand(kind, spec, only))
        computed.append(out["computed"])
        values = read_values(path, kind, spec, settings.metric)
        only = sr.plan(values, settings, n_bounds)
    results = sr.summarize(values, settings.eps)
    text = sr.report(results, settings, computed)
    if only:
        text += f"\nstopped after max_rounds={settings.max_rounds} rounds with {len(only)} curve(s) still searching"
    plot_file = search_plot_path(path)
    plot = sr.plot(values, results, settings, plot_file) if plot_file else None
    _publish(spec.name, path, text, plot, log)
    # the report once: ``dsclab search`` prints it, a deployment run has it as an artifact (above)
    log.info("search done: %d cells computed in %d round(s)", sum(computed), len(computed))
    return {"store": path, "rounds": len(computed), "computed": computed, "cells_computed": sum(computed),
            "curves": [r.as_dict() for r in results],
            "exponents": [{**c, "exponent": b, "per_seed": list(band)} for c, b, band in sr.exponents(results)],
            "report": text, "plot": plot, "seconds": time.perf_counter() - t0}


@flow(name="search-n-star", validate_parameters=False,
      description="n*(eps, d) by geometric bisection in n: per curve, the smallest n at which the seed mean of "
                  "an error reaches eps (dsclab search).")
def search(request: SearchRequest, runner: RunnerSpec = RunnerSpec()) -> dict:
    """Run (or resume) an n* search; returns :func:`run_search`'s dict. As the study flows
    (``flows.study.kind_flow``): a mapping (a deployment's parameters) is validated here, and a
    refused request or store ends the run Failed with its one line, before anything is written."""
    try:
        if not isinstance(request, SearchRequest):
            try:
                request = SearchRequest.model_validate(request)
            except ValidationError as e:
                raise SpecError(format_validation_error(e)) from None
        _, runner = parameters(KINDS[request.spec.kind], request.spec, runner)
        return run_search(request, runner)
    except (SpecError, storage.StoreError) as e:
        get_run_logger().error("%s", e)
        return Failed(message=str(e), data=e)



import flows  # noqa: E402 - at the end: a deployment's entrypoint hands out this package module's flow

flows.as_package_module(globals(), "flows.search")
