"""The memorization study's store layout (the template of ``StudyKind.template``).

* dims ``d, n, seed`` (the cell axes), ``t`` (held-out DSM grid), ``network`` (``a``: trained on the
  cell's first n training rows; ``b``: on n rows of the other half of the training part), ``sample``
  (the generated samples kept) and ``pixel`` (a row at the data's full resolution: samples at a
  coarser d are stored upsampled, each pooled pixel repeated over its block);
* ``status (d, n, seed)``, a :class:`dsclab.study.Status`; ``failure`` its reason;
* the metrics of real data (``dsclab.metrics.HELD_OUT``): ``dsm_heldout (..., t)``; ``nll_bpd``,
  ``nll_bpd_se``, ``nll_gauss_bpd``, ``nll_gauss_bpd_se``; ``memorized (..., network)``,
  ``memorized_test``; ``similarity_ab``; ``train_similarity (..., network)``;
* ``sliced_w2``, ``mmd`` of network A's samples to the test part, and their floors (the same metric
  between as many rows of the training part and the test part, same projections);
* ``samples (..., network, sample, pixel)`` and ``samples_nearest (..., sample, pixel)`` (the nearest
  training row of each of A's kept samples); ``train_loss (..., network)``, ``train_seconds``,
  ``eval_seconds``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from dsclab import layout
from dsclab.metrics import HELD_OUT
from dsclab.lazy import deferred
from dsclab.studies.memorization.spec import CELL_DIMS, StudySpec

numerics = deferred("dsclab.studies.memorization.numerics", globals())  # torch: when a store is made (dsclab.lazy)

VARIABLES = {
    # name: (extra dims, long name, units)
    "samples": (("network", "sample", "pixel"), "generated samples kept (full resolution; value range of the "
                                                "preprocessed data)", "1"),
    "samples_nearest": (("sample", "pixel"), "nearest training row of each kept sample of network a", "1"),
    "train_loss": (("network",), "final training loss (mean per sample, last 10% of steps)", "1"),
    "train_seconds": ((), "training wall time of both networks", "s"),
    "eval_seconds": ((), "evaluation wall time", "s"),
}
EXTRA = {"dsm_heldout": ("t",), "memorized": ("network",), "train_similarity": ("network",)}

COORD_ATTRS = layout.coord_attrs(
    "d", "n", "seed", "t",
    network="network: a on the first n training rows, b on n rows of the other half",
    sample="kept generated sample", pixel="pixel of a row at the data's full resolution")


def template(spec: StudySpec) -> xr.Dataset:
    """The empty store: every dim, coordinate and attribute; floats NaN, status pending."""
    ds = numerics.data_set(spec, spec.d[0])
    coords = {
        "d": np.array(spec.d, dtype=np.int64), "n": np.array(spec.n, dtype=np.int64),
        "seed": np.array(spec.seed, dtype=np.int64), "t": np.array(spec.evaluation.t, dtype=np.float64),
        "network": np.array(numerics.NETWORKS, dtype=str), "sample": np.arange(spec.evaluation.keep, dtype=np.int64),
        "pixel": np.arange(ds.native, dtype=np.int64),
    }
    variables = {name: (CELL_DIMS + EXTRA.get(name, ()), long_name, units)
                 for name, (long_name, units) in HELD_OUT.items()}
    variables.update(layout.sample_metric_variables(
        numerics.DISTANCES, CELL_DIMS, CELL_DIMS, of="network a's samples to the test part",
        floor="as many training rows and the test part"))
    variables.update({name: (CELL_DIMS + extra, long_name, units) for name, (extra, long_name, units) in VARIABLES.items()})
    return layout.template(spec, coords, CELL_DIMS, variables, COORD_ATTRS, attrs={
        "conventions": "OU forward process X_t = e^-t X_0 + sigma_t Z (dsclab.noise)",
        "data": f"{ds.path} ({ds.rows} rows: {ds.n_train} training, {ds.n_test} held out; values scaled to "
                f"[{ds.low}, {ds.high}]{', on a lattice' if ds.lattice else ''})",
        "image_shape": list(ds.image_shape or ()), "n_train": ds.n_train, "n_test": ds.n_test})
