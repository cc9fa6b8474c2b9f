"""The sparse-PCA study: does a trained score reach the information-theoretic sample size?
(project issue 10; builds on the sample-complexity study, science.md §2, and shares the
thresholds of science.md §5). The package: ``spec`` (the spec and its cells), ``layout`` (the
store), ``numerics`` (data, training and evaluation of one cell), ``report`` (analysis and text),
``plot`` (the figure), all plain numerics; ``KIND`` below adapts them to the study contract
(``dsclab.study``), which the generic flow ``flows.study`` runs.

Data. ``x ~ N(0, I_d + beta u u^T)``, u k-sparse with entries +-1/sqrt(k)
(:mod:`dsclab.distributions.sparse_pca`). u is drawn once per (d, k, seed) from the support seed
``derive_seed("sparse-pca-spike", d, k, seed)``, so every beta (and n) of a (d, k, seed) shares it
and beta = 0 is the detection null for the same u. The training data of (d, k, beta, seed) are
max(n) draws in independently seeded blocks; a cell with sample size n uses the first n (nested
design), the same whatever the grid's largest n.

Cells. One cell per (d, k, beta, n, seed) (``CELL_DIMS``). Each evaluates every estimator of the
``estimator`` axis on the same n points:

* baselines (``dsclab.studies.sparse_pca.estimators.BASELINES``: pca, diagonal_thresholding,
  covariance_thresholding, exhaustive) give u_hat, and through the Gaussian formula
  ``N(0, I + beta_hat u_hat u_hat^T)`` a score. ``exhaustive`` runs only where C(d, k) <=
  ``evaluation.exhaustive_max_supports`` (default 1e6: (32, 4) and (64, 4) of the default grid);
  elsewhere its values stay NaN and ``exhaustive_supports`` (d, k) tells why;
* ``network``: a ``ScoreMLP`` trained by DSM (``dsclab.train.train_group``: all network cells of a
  (d, k) train as one batched ensemble) on the n points; its direction is the top eigenvector of
  the covariance of samples drawn with it;
* ``oracle`` (optional): the exact law (u, beta), run through the same sampler. The per-cell
  floors below give the metric floors without it.

Metrics (per cell and estimator): ``overlap`` |<u_hat, u>| of the direction the score carries
(baselines: u_hat itself; network: its samples' top eigenvector; oracle: 1), ``overlap_samples``
(the samples' top eigenvector, for every estimator: the same measurement as the network's),
``support_recovery`` |top-k(|u_hat|) ∩ supp u| / k of the ``overlap`` direction, ``beta_hat``,
``score_l2``/``score_l2_rel (t)`` against the exact score on fresh x ~ q_t, and ``sliced_w2``,
``kl_gauss`` of ``evaluation.n_samples`` samples (one sampler, one nfe, the same start and
Brownian path for every estimator) against fresh draws of q_{t_min}. Per cell, the floors from a
second exact q_{t_min} draw: ``sliced_w2_floor``, ``kl_gauss_floor`` and ``overlap_samples_floor``
(the overlap of an exact sample's top eigenvector: sampling noise caps a sample-based overlap,
which matters for the network when d / n_samples is not small). ``u`` and ``u_hat`` are stored
over a coordinate axis ``i`` of length max(d) (NaN beyond d). Closed forms per (d, k, beta), filled
when the store is created: ``n_it``, ``n_poly``, ``n_spectral`` and ``n_half_pca_bbp`` (PCA's n_half
in the proportional limit, d (1/beta + 4/beta^2) / 3); per (d, k): ``exhaustive_supports``.

Analysis. ``n_half``: the smallest n from which the overlap stays above 1/2, interpolated
linearly in log n between the last grid point below and the first above (:func:`report.crossing`);
computed on the seed-mean curve, with a band = the n_half of the pointwise maximum and minimum
over seeds (the band of the figure; it always contains the mean curve's n_half). Beside it the
classical sizes (``n_it``, ``n_poly``, ``n_spectral``; :func:`dsclab.studies.sparse_pca.estimators.sample_sizes`).
"""
from __future__ import annotations

from collections import defaultdict

from dsclab.analysis import WEIGHTED_L2
from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.studies.sparse_pca import layout, plot, report
from dsclab.studies.sparse_pca.spec import CELL_DIMS, SparsePCASpec
from dsclab.study import Group, StudyKind

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
errors = deferred("dsclab.errors", globals())
_numerics = deferred("dsclab.studies.sparse_pca.numerics", globals(), "_numerics")
training = deferred("dsclab.train", globals(), "training")


def data_name(spec, d: int, k: int, beta: float, seed: int) -> str:
    return f"data/sparse_pca-d{d}-k{k}-beta{beta:g}-seed{seed}-rows{_numerics.data_rows(spec)}.npy"


class SparsePCA(StudyKind):
    name = "sparse_pca"
    spec_model = SparsePCASpec
    cell_dims = CELL_DIMS
    train_axes = ("estimator",)  # the trained networks are those of this axis
    description = ("Overlap of trained scores and classical estimators with a sparse spike against n, beside "
                   "the IT, polynomial-time and spectral sample sizes.")
    small = small_preset(__file__)
    preset = "sparse_pca.yaml"
    derived = WEIGHTED_L2
    template = staticmethod(layout.template)
    report = staticmethod(report.report)
    plot = staticmethod(plot.plot)

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
                    cache.save_array(name, _numerics.generate_data(spec, d, k, beta, seed))

    def _data(self, spec, cells, cache) -> dict:
        keys = dict.fromkeys((c.d, c.k, c.beta, c.seed) for c in cells)
        return {(k, b, s): cache.load_array(data_name(spec, d, k, b, s)) for d, k, b, s in keys}

    def train(self, spec, cells, cache, prepared, device):
        results = _numerics.train_cells(spec, cells, self._data(spec, cells, cache), device)
        return {c.key: errors.TrainingDiverged() if r is None else r.payload() for c, r in zip(cells, results)}

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        x = cache.load_array(data_name(spec, cell.d, cell.k, cell.beta, cell.seed))
        res = training.TrainResult.restore(trained, device) if trained is not None else None
        return _numerics.evaluate(spec, cell, x, res.model if res else None, res)


KIND = SparsePCA()
