"""The sparse-PCA study kind: overlap of trained scores and classical estimators with a sparse spike."""
from __future__ import annotations

from collections import defaultdict

from dsclab import sparse_pca_study as sps
from dsclab.errors import TrainingDiverged
from dsclab.seeds import derive_seed
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind
from dsclab.train import TrainResult


def data_name(spec, d: int, k: int, beta: float, seed: int) -> str:
    tag = derive_seed("sparse-pca-data-file", max(spec.n))
    return f"data/sparse_pca-{tag:016x}-d{d}-k{k}-beta{beta:g}-seed{seed}.npy"


class SparsePCA(StudyKind):
    name = "sparse_pca"
    spec_model = sps.SparsePCASpec
    cell_dims = sps.CELL_DIMS
    description = ("Overlap of trained scores and classical estimators with a sparse spike against n, beside "
                   "the IT, polynomial-time and spectral sample sizes.")
    small = small_preset(__file__)

    def template(self, spec):
        return sps.template(spec)

    def trains(self, spec) -> bool:
        return spec.trains

    def plan(self, spec, cells):
        """Per (d, k), largest first: one data unit (every beta and seed), one batched ensemble of
        the networks, and one evaluate task per (beta, seed) (they share a data set)."""
        by_dk = defaultdict(list)
        for c in cells:
            by_dk[(c.d, c.k)].append(c)
        groups = []
        for dk in sorted(by_dk, key=lambda g: (-g[0], -g[1])):
            by_seed = defaultdict(list)
            for c in by_dk[dk]:
                by_seed[(c.beta, c.seed)].append(c)
            groups.append(Group(cells=tuple(by_dk[dk]), data=(dk,),
                                batches=tuple(tuple(by_seed[b]) for b in sorted(by_seed))))
        return groups

    def prepare(self, spec, key, cache):
        d, k = key
        for beta in spec.beta:
            for seed in spec.seed:
                name = data_name(spec, d, k, beta, seed)
                if not cache.exists(name):
                    cache.save_array(name, sps.generate_data(spec, d, k, beta, seed))

    def _data(self, spec, cells, cache) -> dict:
        keys = dict.fromkeys((c.d, c.k, c.beta, c.seed) for c in cells)
        return {(k, b, s): cache.load_array(data_name(spec, d, k, b, s)) for d, k, b, s in keys}

    def train(self, spec, cells, cache, prepared, device):
        results = sps.train_cells(spec, cells, self._data(spec, cells, cache), device)
        return {c.key: TrainingDiverged() if r is None else r.payload() for c, r in zip(cells, results)}

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        x = cache.load_array(data_name(spec, cell.d, cell.k, cell.beta, cell.seed))
        res = TrainResult.restore(trained) if trained is not None else None
        return sps.evaluate(spec, cell, x, res.model if res else None, res)

    def report(self, ds):
        return sps.report(ds)

    def plot(self, ds, out):
        return sps.plot(ds, out)


KIND = SparsePCA()
