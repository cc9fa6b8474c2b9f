"""The registry of drifts of the computational-gap study, :data:`DRIFTS` (entry-point group
``dsclab.drifts``): a name -> :class:`DriftEntry` (its factory ``(dist, **params) -> drift`` and its
declared facts), and :func:`make_drift`. The drifts themselves live in ``.drifts`` (Bayes and
polynomial-time), ``.paper`` (the paper's hard-test baselines), ``.network`` and ``.mpnn``
(trained networks); an installed package adds one by an entry point whose object is a
:class:`DriftEntry`."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsclab.registry import Registry, RegistryError, origin
from dsclab.studies.computational_gap.spike.drifts import (
    Drift,
    bayes_drift,
    constant_drift,
    fixed_sample,
    gated,
    power_iteration_drift,
    spectral_drift,
    spike_test,
    threshold_drift,
)
from dsclab.studies.computational_gap.spike.model import THRESHOLDS, SparseSpike
from dsclab.studies.computational_gap.spike.mpnn import mpnn_drift
from dsclab.studies.computational_gap.spike.network import network_drift
from dsclab.studies.computational_gap.spike.paper import power_iteration_paper_drift, spectral_paper_drift


def _gated_factory(dist: SparseSpike, inner: str = "spectral", t_alg: float | None = None,
                   test: str | None = "spectral", lo: float = 0.9, hi: float = 1.1, **inner_params) -> Drift:
    """``gated(make_drift(inner), t_alg, spike_test(test))``; t_alg defaults to THRESHOLDS[inner]."""
    if t_alg is None:
        t_alg = THRESHOLDS[inner](dist.n, dist.k)
    tst = None if test is None else spike_test(dist, test)
    return gated(make_drift(inner, dist, **inner_params), t_alg, tst, lo=lo, hi=hi)


def _fixed_factory(dist: SparseSpike, x_star: torch.Tensor, t0: float, below: str | None = None, **below_params) -> Drift:
    return fixed_sample(x_star, t0, None if below is None else make_drift(below, dist, **below_params))


def _network_factory(dist: SparseSpike, net, device="cpu", batch: int = 1024) -> Drift:
    return network_drift(net, device=device, batch=batch)


def _mpnn_factory(dist: SparseSpike, net, generator: torch.Generator, device="cpu", batch: int = 512) -> Drift:
    return mpnn_drift(net, generator, device=device, batch=batch)


def _spectral_paper_factory(dist: SparseSpike, threshold: float = 0.8) -> Drift:
    return spectral_paper_drift(dist, threshold)


def _power_paper_factory(dist: SparseSpike, generator: torch.Generator, n_iter: int = 25,
                         threshold: float = 0.7) -> Drift:
    return power_iteration_paper_drift(dist, generator, n_iter, threshold)


@dataclass(frozen=True)
class DriftEntry:
    """A registered drift: ``build(dist, **params) -> drift`` and its declared facts.

    ``needs``: the parameters the caller must supply beyond the law (``net``: a trained network;
    ``generator``: a ``torch.Generator`` the drift draws from at each call; ``x_star``, ``t0``);
    ``trained``: the drift is a trained network (``net``); ``random``: its value at (y, t) is
    random (drawn from ``generator``); ``exact``: it is the Bayes drift (exponential cost).
    Calling the entry builds the drift."""

    build: Callable[..., Drift]
    needs: tuple[str, ...] = ()
    trained: bool = False
    random: bool = False
    exact: bool = False

    def __call__(self, dist: SparseSpike, **params) -> Drift:
        return self.build(dist, **params)


def _check_drift(name: str, obj: object) -> None:
    if not isinstance(obj, DriftEntry):
        raise RegistryError(f"drift {name!r} ({origin(obj)}) is a {type(obj).__name__}, not a DriftEntry")


DRIFTS: Registry[DriftEntry] = Registry("dsclab.drifts", "drift", check=_check_drift, builtins={
    "bayes": DriftEntry(bayes_drift, exact=True),
    "spectral": DriftEntry(spectral_drift),
    "power_iteration": DriftEntry(power_iteration_drift),
    "threshold": DriftEntry(threshold_drift),
    "constant": DriftEntry(constant_drift),
    "gated": DriftEntry(_gated_factory),
    "fixed_sample": DriftEntry(_fixed_factory, needs=("x_star", "t0")),
    "network": DriftEntry(_network_factory, needs=("net",), trained=True),
    "spectral_paper": DriftEntry(_spectral_paper_factory),
    "power_iteration_paper": DriftEntry(_power_paper_factory, needs=("generator",), random=True),
    "mpnn": DriftEntry(_mpnn_factory, needs=("net", "generator"), trained=True, random=True),
})


def make_drift(name: str, dist: SparseSpike, **params) -> Drift:
    """Build drift ``name`` for the law ``dist`` with its keyword parameters."""
    entry = DRIFTS.resolve(name)
    missing = [p for p in entry.needs if p not in params]
    if missing:
        raise ValueError(f"drift {name!r} needs {', '.join(missing)}")
    return entry(dist, **params)
