"""dsclab.figures: a figure drawn with ``figure``, ``tight_layout`` and ``save`` is the PNG, byte for
byte, that pyplot's ``subplots``, ``fig.tight_layout()`` and ``fig.savefig()`` make of it (the
helpers skip a layout pass of savefig; a matplotlib upgrade that made it matter fails here)."""
from __future__ import annotations

import numpy as np
import pytest

from dsclab.figures import figure, save, tight_layout


def draw(fig) -> None:
    """Two log panels with mathtext ticks, a legend outside the axes, a suptitle."""
    axes = fig.subplots(1, 2, squeeze=False)[0]
    n = np.array([8, 32, 128, 512])
    for i, ax in enumerate(axes):
        ax.plot(n, 3.0 / n ** (0.5 + i), marker="o", label=f"curve {i}")
        ax.fill_between(n, 1.0 / n, 5.0 / n, alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel="n", ylabel="error", title=f"panel {i}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("a figure")


@pytest.mark.parametrize("tight_bbox", [False, True])
@pytest.mark.parametrize("rect", [None, (0, 0.05, 1, 0.97)])
def test_same_png_as_pyplot(tmp_path, tight_bbox, rect):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    old = plt.figure(figsize=(8, 3.5))
    draw(old)
    old.tight_layout(**({"rect": rect} if rect else {}))
    old.savefig(tmp_path / "old.png", dpi=110, **({"bbox_inches": "tight"} if tight_bbox else {}))
    plt.close(old)

    new = figure(figsize=(8, 3.5))
    draw(new)
    tight_layout(new, **({"rect": rect} if rect else {}))
    assert new.get_layout_engine() is None  # nothing left for savefig to lay out again
    assert save(new, str(tmp_path / "new.png"), dpi=110, tight_bbox=tight_bbox) == str(tmp_path / "new.png")
    assert (tmp_path / "new.png").read_bytes() == (tmp_path / "old.png").read_bytes()
