"""Figures of the study kinds' ``plot`` and of the n* search, drawn without pyplot: a
:class:`matplotlib.figure.Figure` on an Agg canvas, the canvas pyplot gives a figure under the Agg
backend. Without pyplot no global figure manager holds a figure (nothing to close) and no backend
is switched in the caller's process (a notebook that calls a kind's ``plot`` keeps its own).

:func:`tight_layout` then :func:`save` do what ``fig.tight_layout()`` then ``fig.savefig(...)`` do,
less one pass: savefig first lays the whole figure out with rendering off when the figure has a
layout engine (``Figure.tight_layout`` leaves an inert placeholder one behind) or when
``bbox_inches="tight"``, 25-35% of a savefig that changes nothing here. The PNGs are byte for byte
those of ``fig.tight_layout(); fig.savefig(...)`` (checked on every kind's small preset, with
failed and pending cells, and on the search's figures; matplotlib 3.11).
"""
from __future__ import annotations

from typing import Any


def figure(**kw: Any):
    """A new figure (``Figure(**kw)``, e.g. ``figsize``) on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def tight_layout(fig, *, pad: float = 1.08, h_pad: float | None = None, w_pad: float | None = None,
                 rect: tuple | None = None) -> None:
    """``fig.tight_layout(...)``, the same engine with the same arguments (``rect=None`` included,
    which is not the engine's default), run without leaving it on ``fig``."""
    from matplotlib.layout_engine import TightLayoutEngine

    TightLayoutEngine(pad=pad, h_pad=h_pad, w_pad=w_pad, rect=rect).execute(fig)


def save(fig, out: str, dpi: float, tight_bbox: bool = False) -> str:
    """``fig.savefig(out, dpi=dpi)`` (with ``bbox_inches="tight"`` when ``tight_bbox``); returns
    ``out``. The tight box is the one savefig would compute (the figure's tight bounding box at
    ``dpi``, padded by ``savefig.pad_inches``), computed without savefig's layout pass before it."""
    import matplotlib

    bbox = None
    if tight_bbox:
        before = fig.dpi
        fig.dpi = dpi
        try:
            bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])
        finally:
            fig.dpi = before
    fig.savefig(out, dpi=dpi, bbox_inches=bbox)
    return out
