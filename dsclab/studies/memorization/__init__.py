"""The memorization study kind (science.md §7): on a data set a researcher brings (``digits`` by
default), how the held-out likelihood falls with n, when samples stop copying the training rows
(Gu et al. 2023) and when two networks trained on disjoint subsets start to agree (Kadkhodaie et
al. 2024), per d (the resolution of image rows).

The package: ``spec`` (the spec and its cells), ``layout`` (the store), ``numerics`` (rows, the two
networks of a cell, its metrics), ``report``, ``plot``; this module is the contract adapter
(``dsclab.study``)."""
from __future__ import annotations

from collections import defaultdict

from dsclab.lazy import deferred
from dsclab.seeds import derive_seed
from dsclab.studies import small_preset
from dsclab.studies.memorization import layout
from dsclab.studies.memorization import plot as _plot
from dsclab.studies.memorization import report as _report
from dsclab.studies.memorization.spec import CELL_DIMS, StudySpec
from dsclab.study import Group, StudyKind

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
errors = deferred("dsclab.errors", globals())
mz = deferred("dsclab.studies.memorization.numerics", globals(), "mz")


def data_name(spec: StudySpec, d: int, seed: int) -> str:
    """The data file of (d, seed): every row at d in the split's order (``numerics.rows``)."""
    tag = derive_seed("data", mz.data_tag(spec)) & (2 ** 64 - 1)
    return f"data/{spec.distribution.name}-{tag:016x}-d{d}-seed{seed}.npy"


class Memorization(StudyKind):
    name = "memorization"
    spec_model = StudySpec
    cell_dims = CELL_DIMS
    description = ("Real data against n: held-out DSM and I-MMSE likelihood, sample distances to the test part, "
                   "memorization (Gu et al. 2023) and two networks on disjoint subsets (Kadkhodaie et al. 2024).")
    small = small_preset(__file__)
    preset = "digits.yaml"
    template = staticmethod(layout.template)
    report = staticmethod(_report.report)
    plot = staticmethod(_plot.plot)
    table = staticmethod(_report.table)

    def plan(self, spec, cells):
        """Per d (largest first), the cells in batched-ensemble groups within the memory bound (two
        networks each); each group needs the rows of its seeds at that d."""
        by_d = defaultdict(list)
        for c in cells:
            by_d[c.d].append(c)
        return [Group(cells=tuple(g), data=tuple((d, s) for s in sorted({c.seed for c in g})))
                for d in sorted(by_d, reverse=True) for g in mz.split_groups(spec, by_d[d])]

    def prepare(self, spec, key, cache):
        d, seed = key
        name = data_name(spec, d, seed)
        if not cache.exists(name):
            cache.save_array(name, mz.rows(spec, d, seed))
        return name

    def train(self, spec, cells, cache, prepared, device):
        data = {c.seed: cache.load_array(prepared[(c.d, c.seed)]) for c in cells}
        results = mz.train_cells(spec, cells, data, device)
        return {c.key: errors.TrainingDiverged() if r is None else r for c, r in zip(cells, results)}

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return mz.evaluate(spec, cell, cache.load_array(prepared[(cell.d, cell.seed)]), trained, device)


KIND = Memorization()
