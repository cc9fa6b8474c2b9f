"""Prefect artifacts of a study run, shown on the flow run's Artifacts tab in the UI:

- a progress artifact (percent of the study's cells finished), updated as each cell finishes;
- at the end, a table artifact of the study's summary table (``StudyKind.table``), a markdown
  artifact with the text report (``StudyKind.report``) and an image artifact of the plot
  (``StudyKind.plot``) embedded as a PNG ``data:`` URL, so the UI shows it without a file server.

Keyed artifacts (``<study name>-summary``, ``-report``, ``-plot``) also appear, versioned across
runs, on the UI's Artifacts page. Outside a flow run (plain function calls) nothing is created.
"""
from __future__ import annotations

import base64
import math
import os
import re
import tempfile

import pandas as pd
import xarray as xr

def in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(name: str, suffix: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) from a study name."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "study"
    return f"{slug}-{suffix}"


class Progress:
    """A progress artifact: percent of ``total`` cells finished (done or failed)."""

    def __init__(self, total: int, finished_before: int = 0, description: str = "cells finished"):
        self.total, self.id = max(total, 1), None
        if in_run():
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(self.percent(finished_before), description=description)

    def percent(self, finished: int) -> float:
        return round(100.0 * min(finished, self.total) / self.total, 2)

    def update(self, finished: int) -> None:
        if self.id is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self.id, self.percent(finished))


def table_records(df: pd.DataFrame) -> list[dict]:
    """JSON-able rows of a table (index as the first column, NaN as None)."""
    out = df.reset_index()
    # Name value columns 'd=8' rather than '8': the UI orders integer-like keys first.
    prefix = f"{df.columns.name}=" if df.columns.name else ""
    names = [str(c) if i < df.index.nlevels else f"{prefix}{c}" for i, c in enumerate(out.columns)]
    out.columns = [n if n != "index" else (df.index.name or "") for n in names]

    def clean(v):
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float):
            return None if math.isnan(v) else float(f"{v:.6g}")
        return v if isinstance(v, (int, str, bool)) or v is None else str(v)

    return [{k: clean(v) for k, v in row.items()} for row in out.to_dict(orient="records")]


def plot_png(ds: xr.Dataset, out: str | None = None) -> bytes | None:
    """The study's figure (``StudyKind.plot``) as PNG bytes, also left at ``out`` when given."""
    from dsclab.study import kind_of

    with tempfile.TemporaryDirectory() as d:
        with open(kind_of(ds).plot(ds, out or os.path.join(d, "plot.png")), "rb") as f:
            return f.read()


def publish(path: str, log=None, plot_file: str | None = None) -> tuple[dict, str | None]:
    """Create the summary table, report and plot artifacts of the store at ``path`` (the figure is
    also written to ``plot_file`` when given); returns ({kind: artifact id}, the kind's report text
    or None where none was made). Skipped outside a flow run; a failure is logged, not raised (the
    results are already in the store)."""
    if not in_run():
        return {}, None
    from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

    import storage
    from dsclab.report import failure_lines
    from dsclab.study import kind_of

    ids: dict = {}
    text = None
    try:
        ds = storage.open_results(path).load()  # once: the report reads many small selections
        study, name = ds.attrs.get("study", ""), ds.attrs.get("name", "study")
        st = ds["status"].load()
        counts = f"{int((st == 1).sum())} done, {int((st == 0).sum())} pending, {int((st == 2).sum())} failed"
        kind = kind_of(ds)
        table = kind.table(ds)
        caption = table.attrs.get("caption", "summary over done cells")
        ids["table"] = create_table_artifact(
            table_records(table), key=artifact_key(name, "summary"),
            description=f"{name} ({study}): {caption}; cells {counts}; store {path}")
        report = text = kind.report(ds)
        failed = failure_lines(ds)
        if failed:
            report = "\n".join(["failed cells:", *failed, "", report])
        ids["report"] = create_markdown_artifact(
            f"### {name} ({study})\n\nstore: `{path}` ({counts})\n\n```\n{report}\n```\n\n"
            f"Open with `xarray.open_zarr({path!r})`.", key=artifact_key(name, "report"),
            description=f"{name}: text report")
        png = plot_png(ds, plot_file)
        if png is not None:
            url = "data:image/png;base64," + base64.b64encode(png).decode()
            ids["plot"] = create_image_artifact(url, key=artifact_key(name, "plot"), description=f"{name}: plot")
    except Exception as e:  # noqa: BLE001 - presentation only; the store holds the results
        if log is not None:
            log.warning("could not publish artifacts for %s: %r", path, e, exc_info=True)
    return ids, text
