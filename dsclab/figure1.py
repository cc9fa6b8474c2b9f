"""What the two kinds built on Figure 1 of Gupta et al. 2023 share (``two_scores``: the ERM over two
exact scores; ``far_component``: networks trained on the same two laws): the evaluation settings
of their specs and their stores' coordinates. A kind imports no other kind (tests/test_layers.py),
so the shared parts live here; the verdict both compute is :func:`dsclab.exceedance.figure1_verdict`."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from dsclab import axes
from dsclab.spec import Frozen


class EvalSpec(Frozen):
    t: axes.PositiveTimes = Field([0.02, 0.1, 0.3], description="times of the score errors")
    delta: axes.UnitLevels = Field([0.001, 0.05], description="quantile levels (below and above eta)")
    n_score: int = Field(20000, gt=0, description="fresh points x ~ q_t of the true law per t")


def axis_coords(spec) -> dict[str, np.ndarray]:
    """The store's coordinates truth, d, n, seed, t and delta of a spec with those axes."""
    ev = spec.evaluation
    return {"truth": np.array(spec.truth, dtype=str), "d": np.array(spec.d, dtype=np.int64),
            "n": np.array(spec.n, dtype=np.int64), "seed": np.array(spec.seed, dtype=np.int64),
            "t": np.array(ev.t, dtype=np.float64), "delta": np.array(ev.delta, dtype=np.float64)}
