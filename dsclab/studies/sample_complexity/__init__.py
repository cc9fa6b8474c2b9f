"""The sample-complexity study kind (Gupta et al. 2023): score and sampling errors against n, per d.

The package: ``spec`` (the spec models and cells), ``layout`` (the store), ``numerics`` (data,
training and evaluation of a cell), ``report`` (text report and summary table), ``plot`` (the figure); this
module is the contract adapter (``dsclab.study``) composing them."""
from __future__ import annotations

from collections import defaultdict

from dsclab.analysis import WEIGHTED_L2
from dsclab.lazy import deferred
from dsclab.seeds import derive_seed
from dsclab.studies import small_preset
from dsclab.studies.sample_complexity import layout
from dsclab.studies.sample_complexity import plot as _plot
from dsclab.studies.sample_complexity import report as _report
from dsclab.studies.sample_complexity.spec import CELL_DIMS, StudySpec
from dsclab.study import Group, StudyKind

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
sc = deferred("dsclab.studies.sample_complexity.numerics", globals(), "sc")
errors = deferred("dsclab.errors", globals())
training = deferred("dsclab.train", globals(), "training")


def data_name(spec: StudySpec, d: int, seed: int) -> str:
    """The data file of (d, seed): named by the law, d, seed and its rows (files of one (d, seed)
    with other row counts agree on their common rows: ``numerics.generate_data``)."""
    tag = derive_seed("data", spec.distribution.model_dump(mode="json")) & (2 ** 64 - 1)
    return f"data/{spec.distribution.name}-{tag:016x}-d{d}-seed{seed}-rows{sc.data_rows(spec)}.npy"


class SampleComplexity(StudyKind):
    name = "sample_complexity"
    spec_model = StudySpec
    cell_dims = CELL_DIMS
    description = ("Score error (L2, quantile), sampling error and the I-MMSE likelihood gap against n, "
                   "per d (Gupta et al. 2023).")
    small = small_preset(__file__)
    preset = "quick.yaml"
    pools = ("gpu", "cpu")
    scheduled = ("gpu",)
    derived = WEIGHTED_L2
    template = staticmethod(layout.template)
    report = staticmethod(_report.report)
    plot = staticmethod(_plot.plot)
    table = staticmethod(_report.table)

    def plan(self, spec, cells):
        """Per d (largest first), the cells in batched-ensemble groups within the memory bound; each
        group needs the data of its seeds at that d."""
        by_d = defaultdict(list)
        for c in cells:
            by_d[c.d].append(c)
        return [Group(cells=tuple(g), data=tuple((d, s) for s in sorted({c.seed for c in g})))
                for d in sorted(by_d, reverse=True) for g in sc.split_groups(spec, by_d[d])]

    def prepare(self, spec, key, cache):
        d, seed = key
        name = data_name(spec, d, seed)
        if not cache.exists(name):
            cache.save_array(name, sc.generate_data(spec, d, seed))
        return name

    def train(self, spec, cells, cache, prepared, device):
        data = {c.seed: cache.load_array(prepared[(c.d, c.seed)]) for c in cells}
        results = sc.train_cells(spec, cells, data, device)  # one batched ensemble per estimator
        return {c.key: errors.TrainingDiverged() if r is None else r.payload() for c, r in zip(cells, results)}

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        res = training.TrainResult.restore(trained, device)
        return sc.evaluate(spec, cell, training.device_score(res.model), res)


KIND = SampleComplexity()
