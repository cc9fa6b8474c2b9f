"""The store template of a study kind (``dsclab.study.StudyKind.template``), built one way for
every kind.

A template is an ``xr.Dataset`` holding, in this order:

* its **coordinates**, one 1-D array per dimension (``coords``), with their attributes
  (``long_name``, ``units``: ``coord_attrs``, from :func:`coord_attrs`: the shared meaning of an
  axis several kinds have, :data:`AXES`, or the kind's own);
* ``status`` over the cell dims: int8, every cell :attr:`dsclab.study.Status.PENDING`, with the
  CF flag attributes ``flag_values`` / ``flag_meanings`` of :class:`dsclab.study.Status`;
* the **variables** the cells fill, NaN, from a table ``name -> (dims, long name, units)``
  (:data:`Variable`; :func:`over` gives one set of dims to a table of (long name, units); the
  score errors and sample metrics every kind shares take their long names and units from
  ``dsclab.metrics``: :func:`score_error_variables`, :func:`sample_metric_variables`);
* the **closed forms** filled when the store is created (``closed``: a Dataset or a mapping of
  ``name -> (dims, values, attrs)``), if the kind has any;
* the dataset attributes ``study`` (the kind's name, ``spec.kind``), ``name``, ``spec`` (the
  spec as JSON, keys sorted, without ``store``: a store is not told where it lies), ``spec_hash``, ``settings_hash`` (what a store reused or grown by
  another spec must share: ``dsclab.spec``) and ``dsclab_version``, then the kind's own
  (``conventions``, ...: ``attrs``).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

import dsclab
from dsclab.metrics import SAMPLE_METRICS, SCORE_ERRORS
from dsclab.study import Status

Variable = tuple[tuple[str, ...], str, str]
"""A variable of the template: (dims, long name, units)."""


AXES: dict[str, dict] = {
    "data": {"long_name": "data law"},
    "d": {"long_name": "dimension"},
    "n": {"long_name": "training sample size"},
    "seed": {"long_name": "seed"},
    "estimator": {"long_name": "score estimator"},
    "sampler": {"long_name": "sampler"},
    "nfe": {"long_name": "score evaluations per sample"},
    "t": {"long_name": "OU time", "units": "1"},
    "delta": {"long_name": "quantile level delta"},
    "logsnr": {"long_name": "log-SNR alpha = log(e^-2t / sigma_t^2)", "units": "1"},
}
"""Attributes of the axes that mean the same in several kinds: the data law, the dimension d,
the training sample size n, seeds, score estimators, samplers and their NFE, the time t of the OU
process X_t = e^-t X_0 + sigma_t Z (``dsclab.noise``), quantile levels delta of the quantile score
error and the log-SNR alpha of the I-MMSE curves."""


def coord_attrs(*shared: str, **own: str | Mapping) -> dict[str, dict]:
    """Attributes of a template's coordinates: :data:`AXES` for the ``shared`` axes, and each of the
    kind's ``own`` (its long name, or a mapping of attributes)."""
    out = {name: dict(AXES[name]) for name in shared}
    out.update({name: {"long_name": a} if isinstance(a, str) else dict(a) for name, a in own.items()})
    return out


def over(dims: Sequence[str], table: Mapping[str, tuple[str, str]]) -> dict[str, Variable]:
    """The variables of a table ``name -> (long name, units)``, all over ``dims``."""
    return {name: (tuple(dims), long_name, units) for name, (long_name, units) in table.items()}


def score_error_variables(dims: Sequence[str], names: Sequence[str] = tuple(SCORE_ERRORS)) -> dict[str, Variable]:
    """Score errors (``dsclab.metrics.SCORE_ERRORS``) over ``dims`` + ``t`` (``score_quantile`` also
    over ``delta``)."""
    extra = {"score_quantile": ("t", "delta")}
    return {name: (tuple(dims) + extra.get(name, ("t",)), *SCORE_ERRORS[name]) for name in names}


def sample_metric_variables(names: Sequence[str], dims: Sequence[str], floor_dims: Sequence[str] | None = None,
                            of: str = "samples to q_t_min",
                            floor: str = "two independent q_t_min draws of the same size") -> dict[str, Variable]:
    """Sample metrics (``dsclab.metrics.SAMPLE_METRICS``: their long names and units) of generated
    samples, over ``dims`` (long name "<metric> of <of>"), and, with ``floor_dims``, each one's floor
    ``<name>_floor`` (the same metric between ``floor``)."""
    out = {}
    for name in names:
        metric = SAMPLE_METRICS[name]
        out[name] = (tuple(dims), f"{metric.long_name} of {of}", metric.units)
    if floor_dims is not None:
        for name in names:
            metric = SAMPLE_METRICS[name]
            out[f"{name}_floor"] = (tuple(floor_dims), f"{metric.long_name} between {floor} (floor)", metric.units)
    return out


def status_variable(cell_dims: Sequence[str], sizes: Mapping[str, int]) -> tuple:
    """``status`` over the cell dims: every cell pending, flag attributes from :class:`Status`."""
    return (tuple(cell_dims), np.full([sizes[k] for k in cell_dims], Status.PENDING, dtype=np.int8),
            {"long_name": "cell status", "flag_values": [int(s) for s in Status],
             "flag_meanings": " ".join(s.name.lower() for s in Status)})


def template(spec, coords: Mapping[str, np.ndarray], cell_dims: Sequence[str], variables: Mapping[str, Variable],
             coord_attrs: Mapping[str, Mapping] | None = None, attrs: Mapping | None = None,
             closed: xr.Dataset | Mapping | None = None) -> xr.Dataset:
    """The empty store of ``spec``: see the module docstring for what it holds."""
    sizes = {k: len(v) for k, v in coords.items()}
    data = {"status": status_variable(cell_dims, sizes)}
    for name, (dims, long_name, units) in variables.items():
        data[name] = (dims, np.full([sizes[k] for k in dims], np.nan), {"long_name": long_name, "units": units})
    if isinstance(closed, xr.Dataset):
        closed = {name: (da.dims, da.values, da.attrs) for name, da in closed.data_vars.items()}
    data.update(closed or {})
    ds = xr.Dataset(data, coords=coords)
    for k, a in (coord_attrs or {}).items():
        ds[k].attrs.update(a)
    ds.attrs.update({
        "study": spec.kind, "name": spec.name,
        "spec": json.dumps(spec.model_dump(mode="json", exclude={"store"}), sort_keys=True),  # not its own path
        "spec_hash": spec.hash, "settings_hash": spec.settings_hash, "dsclab_version": dsclab.__version__,
        **(attrs or {}),
    })
    return ds
