"""The far-component study kind (Gupta et al. 2023, Figure 1's two laws learned by a network;
science.md §2, project issue 28 item 2): score networks trained by DSM on n samples of
p_2 = (1 - eta) N(0, I) + eta N(R e_1, I) and, as the control, of p_1 = N(0, I) with the same draws
and training, so that the report states the part of each error the far component causes and
computes the verdict on Figure 1's statement on that part. Modules: ``spec``, ``layout``,
``numerics`` (the laws, the coupled draws, training and evaluation of one cell), ``report`` (with
the computed verdicts), ``plot``."""
from __future__ import annotations

from collections import defaultdict

from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind

from . import layout
from . import plot as _plot
from . import report as _report
from .spec import CELL_DIMS, FarComponentSpec

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
errors = deferred("dsclab.errors", globals())
_numerics = deferred("dsclab.studies.far_component.numerics", globals(), "_numerics")


class FarComponent(StudyKind):
    name = "far_component"
    spec_model = FarComponentSpec
    cell_dims = CELL_DIMS
    description = ("DSM networks on N(0, I) and (1 - eta) N(0, I) + eta N(R e_1, I), paired: the far component's "
                   "part of the L2 and quantile errors, P[part > tau] against n (Gupta et al. 2023, Figure 1).")
    small = small_preset(__file__)
    preset = "far_component.yaml"
    torch_threads = 1  # small networks: parallelism comes from the workers
    template = staticmethod(layout.template)
    report = staticmethod(_report.report)
    plot = staticmethod(_plot.plot)

    def plan(self, spec, cells):
        """One group per (d, n, seed chunk of 10): its cells (both truths) trained in one task, each
        truth's evaluated in one task; largest n first."""
        by = defaultdict(list)
        for c in cells:
            by[(c.d, c.n, spec.seed.index(c.seed) // 10)].append(c)
        groups = []
        for _, g in sorted(by.items(), key=lambda kv: (-kv[0][1], -kv[0][0], kv[0][2])):
            truths = sorted({c.truth for c in g})
            groups.append(Group(cells=tuple(g), batches=tuple(tuple(c for c in g if c.truth == tr) for tr in truths)))
        return groups

    def train(self, spec, cells, cache, prepared, device):
        """Each cell's network, trained on ``device``: {cell key: ``TrainResult.payload()``}, or the
        numerical failure of its training."""
        out = {}
        for c in cells:
            try:
                out[c.key] = _numerics.train_cell(spec, c, device).payload()
            except errors.NUMERICAL as e:
                out[c.key] = e
        return out

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return _numerics.evaluate(spec, cell, trained, device)


KIND = FarComponent()
