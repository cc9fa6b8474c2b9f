"""The denoisers of the I-MMSE study (the ``denoiser`` axis), each evaluated on the same held-out
points and draws:

* ``exact``: the Bayes denoiser of the data law (its estimate is -log p up to truncation);
* ``gaussian``: the moment-matched Gaussian N(mean, cov) of the law (linear, Wiener). For
  Gaussian data it *is* the exact denoiser, and the two rows agree to rounding;
* ``mismatched``: Bayes for a nearby wrong law (:data:`MISMATCHED`): the mixture with the
  weights' odds tilted by ``mismatch`` ([1/2, 1/2] -> [0.8, 0.2] at 4), +-1 data with the odds
  of +1 multiplied by ``mismatch``, Gaussian data -> the isotropic Gaussian of the same trace;
* ``trained``: ``dsclab.train.train_score`` (``ScoreMLP``, DSM) on the cell's n training points,
  turned into a denoiser by Tweedie (the network runs in float32, Tweedie in float64);
* ``ensemble``: for each log-SNR draw, the member (``gaussian``, ``mismatched``, ``trained``:
  everything but ``exact``) with the smallest data-averaged MSE (:data:`ENSEMBLE_MEMBERS`).

This module holds the n-independent ones (:func:`denoisers_for`); ``numerics`` adds the
trained network and the ensemble.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dsclab.distributions.gaussian import GaussianMixture
from dsclab.distributions.rademacher import Rademacher
from dsclab.lazy import deferred
from dsclab.registry import Needs, Registry

if TYPE_CHECKING:
    import torch

    from dsclab import immse
else:
    torch = deferred("torch", globals())  # imported on first use (dsclab.lazy)
    immse = deferred("dsclab.immse", globals())


DENOISERS = ("exact", "gaussian", "mismatched", "trained", "ensemble")
ENSEMBLE_MEMBERS = ("gaussian", "mismatched", "trained")


def _mismatched_gaussian(law: GaussianMixture, r: float) -> GaussianMixture:
    """The isotropic Gaussian with the law's mean and trace (wrong shape, right scale)."""
    d = law.d
    return immse.moment_matched_gaussian(law.mean(), torch.eye(d, dtype=torch.float64) * torch.trace(law.cov()) / d)


def _mismatched_mixture(law: GaussianMixture, r: float) -> GaussianMixture:
    """Same components, weights w'_j ∝ w_j r^(-j/(K-1)): the odds of the first component to the
    last multiplied by r (k = 2, uniform, r = 4 -> [0.8, 0.2])."""
    K = law.n_components
    tilt = torch.tensor([r ** (-j / max(K - 1, 1)) for j in range(K)], dtype=torch.float64)
    return GaussianMixture(law.weights * tilt, law.means, law.covs)


def _mismatched_rademacher(law: Rademacher, r: float) -> Rademacher:
    """+-1 coordinates with the odds of +1 multiplied by r (p = 0.3, r = 4 -> p' = 0.63)."""
    odds = r * law.p / (1 - law.p)
    return Rademacher(law.d, odds / (1 + odds))


MISMATCHED: Registry = Registry(
    "dsclab.mismatched_laws", "mismatched law", check=Needs("mismatched law"),
    builtins={"gaussian": _mismatched_gaussian, "gaussian_mixture": _mismatched_mixture,
              "rademacher": _mismatched_rademacher})
"""The mismatched counterpart of each data law the study accepts, ``(law, r) -> law``, by the name of
the law's family in ``dsclab.distributions`` (entry-point group ``dsclab.mismatched_laws``: a
plugin family becomes a data law of the study by registering its counterpart here)."""


def denoisers_for(name: str, law, mismatch: float) -> dict[str, immse.Denoiser]:
    """The n-independent denoisers of the law of family ``name``: exact, moment-matched Gaussian,
    mismatched (:data:`MISMATCHED` with the odds factor ``mismatch``)."""
    gauss = immse.moment_matched_gaussian(law.mean(), law.cov())
    return {"exact": law.denoise, "gaussian": gauss.denoise,
            "mismatched": MISMATCHED[name](law, mismatch).denoise}
