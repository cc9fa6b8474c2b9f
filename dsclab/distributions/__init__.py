"""Data families, found by name through ``DISTRIBUTIONS``.

A family is a function ``(d, **params) -> distribution``; a distribution has ``d``,
``sample(m, generator, t=0.0)``, ``score(x, t)``, ``denoise(x, t)`` and ``log_prob(x, t)`` for the
exact law q_t of the OU forward process (see ``dsclab.noise``). A *data set* family (``dataset``,
``digits``: ``dsclab.distributions.dataset``) has rows and a held-out split instead (``exact`` False). Resolve a name once, at the
config boundary, with :func:`make`. ``DISTRIBUTIONS`` is a :class:`dsclab.registry.Registry`:
another installed package adds a family through the entry-point group ``dsclab.distributions``.
"""
from __future__ import annotations

from collections.abc import Callable

from dsclab.distributions.dataset import Dataset, DatasetError, dataset, digits
from dsclab.distributions.gaussian import GaussianMixture, gaussian, gaussian_mixture
from dsclab.distributions.rademacher import Rademacher, rademacher
from dsclab.distributions.sparse_pca import SparsePCA, sparse_pca
from dsclab.registry import Needs, Registry

DISTRIBUTIONS: Registry[Callable] = Registry(
    "dsclab.distributions", "distribution", check=Needs("distribution"), builtins={
        "gaussian": gaussian,
        "gaussian_mixture": gaussian_mixture,
        "rademacher": rademacher,
        "sparse_pca": sparse_pca,
        "dataset": dataset,
        "digits": digits,
    })


def make(name: str, d: int, **params):
    """Build family ``name`` in dimension d with its keyword parameters (ValueError with one line
    listing the known families for an unknown name)."""
    return DISTRIBUTIONS.resolve(name)(d, **params)


__all__ = ["DISTRIBUTIONS", "Dataset", "DatasetError", "dataset", "digits", "GaussianMixture", "Rademacher", "SparsePCA", "gaussian", "gaussian_mixture", "make", "rademacher", "sparse_pca"]
