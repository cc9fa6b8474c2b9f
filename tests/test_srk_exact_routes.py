"""The sampler-convergence study decides which KL values are exact from declared facts (target,
score kind, sampler), stores NaN for the others without computing them, and lets every exception
raised inside an exact computation propagate (none becomes a stored NaN). Also: its spec axes
follow ``dsclab.axes`` (numeric and seed axes distinct and sorted), and a diverged trained score
raises ``dsclab.errors.TrainingDiverged``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsclab import errors, noise
from dsclab.gaussian_exact import gaussian_score, sampler_kl, step_map
from dsclab.samplers import SAMPLERS, steps_for_nfe
from dsclab.spec import SpecError, parse_spec
from dsclab.studies.sampler_convergence import exact, targets
from dsclab.studies.sampler_convergence import spec as spec_mod
from dsclab.studies.sampler_convergence.cell import run_cell
from dsclab.studies.sampler_convergence.spec import EXACT_KL_SAMPLERS, SamplerConvergenceSpec, kl_exact


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (tests/conftest.py)


def _spec(**over):
    base = {"kind": "sampler_convergence", "name": "routes", "target": ["gaussian", "product_mixture"],
            "d": [2], "sampler": ["exponential_integrator", "srk"], "nfe": [4, 8], "score": ["exact", "perturbed"],
            "seed": [0], "n_train": 50, "train": {"steps": 4, "batch_size": 16, "width": 8, "depth": 1, "device": "cpu"},
            "sampling": {"n_samples": 20, "n_proj": 4, "score_t": [1.0]},
            "quadrature": {"pts_per_width": 6, "pts_per_width_ode": 6, "n_sd": 6, "n_area": 2, "n_max": 16}}
    base.update(over)
    return parse_spec(base, SamplerConvergenceSpec)


def _cell(spec, target, score):
    return next(c for c in spec.cells() if c.target == target and c.score == score)


def _independent_kl(spec, name, nfe, score=None):
    dist = targets.make_target(spec, "gaussian", 2)
    ts = noise.time_grid(spec.T, spec.t_min, steps_for_nfe(name, nfe), spec.schedule)
    return sampler_kl(name, dist, ts, start=spec.start, score=score)


def test_declared_facts():
    """Which (target, score, sampler) is exact, and that the declared samplers really take affine
    steps for an affine score (``step_map``'s check raises ValueError otherwise)."""
    assert set(EXACT_KL_SAMPLERS) <= set(SAMPLERS)
    assert kl_exact("gaussian", "perturbed", "srk") and kl_exact("product_mixture", "exact", "heun")
    assert not kl_exact("mixture", "exact", "srk") and not kl_exact("gaussian", "trained", "srk")
    assert not kl_exact("gaussian", "exact", "a_new_sampler")
    dist = targets.make_target(_spec(), "gaussian", 3)
    score = targets.perturb(gaussian_score(dist), 0.01)
    for name in EXACT_KL_SAMPLERS:
        F, G, K, c = step_map(SAMPLERS[name], score, 1.0, 0.7, 3, check=True)
        assert F.shape == (3, 3) and torch.isfinite(F).all()


def test_exact_values_match_independent_propagation():
    spec = _spec()
    kl = exact.gaussian_kl_curves(spec, 2, "exact")
    for i, name in enumerate(spec.sampler):
        for j, nfe in enumerate(spec.nfe):
            assert kl[i, j] == pytest.approx(_independent_kl(spec, name, nfe), rel=1e-12)


def test_non_exact_sampler_is_nan_by_declaration(monkeypatch):
    """A sampler outside EXACT_KL_SAMPLERS gets NaN without its KL being computed; the others are
    computed as before."""
    spec = _spec()
    monkeypatch.setattr(spec_mod, "EXACT_KL_SAMPLERS", ("exponential_integrator",))
    calls = []

    def counting(name, *a, **kw):
        calls.append(name)
        return sampler_kl(name, *a, **kw)

    monkeypatch.setattr(exact, "sampler_kl", counting)
    kl = exact.gaussian_kl_curves(spec, 2, "exact")
    assert np.isnan(kl[1]).all() and set(calls) == {"exponential_integrator"}
    assert kl[0, 1] == pytest.approx(_independent_kl(spec, "exponential_integrator", 8), rel=1e-12)
    curves = exact.product_kl_1d(spec, "exact")
    assert np.isnan(curves["kl"][1]).all() and np.isfinite(curves["kl"][0]).all()


@pytest.mark.parametrize("error", [ValueError("step is not affine"), RuntimeError("a bug"), TypeError("a bug")])
def test_exception_in_gaussian_route_propagates(monkeypatch, error):
    """Before: a broad ``except`` stored NaN for a ValueError (non-affine step) or RuntimeError."""
    spec = _spec()

    def broken(*a, **kw):
        raise error

    monkeypatch.setattr(exact, "sampler_kl", broken)
    with pytest.raises(type(error), match="affine|bug"):
        exact.gaussian_kl_curves(spec, 2, "exact")
    with pytest.raises(type(error)):
        run_cell(spec, _cell(spec, "gaussian", "perturbed"))


def test_exception_in_product_route_propagates(monkeypatch):
    spec = _spec()

    def broken(*a, **kw):
        raise ValueError("cannot convert float NaN to integer")

    monkeypatch.setattr(exact, "propagate_density_1d", broken)
    with pytest.raises(ValueError, match="NaN to integer"):
        exact.product_kl_1d(spec, "exact")
    with pytest.raises(ValueError):
        run_cell(spec, _cell(spec, "product_mixture", "exact"))


def test_numerical_failure_propagates_to_the_stage(monkeypatch):
    """A numerical failure is not turned into a stored NaN either: it reaches the stage, which
    marks the cell failed (``tasks.stages``: the exception is one of ``errors.NUMERICAL``)."""
    spec = _spec()

    def overflow(*a, **kw):
        raise FloatingPointError("overflow")

    monkeypatch.setattr(exact, "sampler_kl", overflow)
    with pytest.raises(errors.NUMERICAL):
        run_cell(spec, _cell(spec, "gaussian", "exact"))


def test_exact_route_refuses_a_score_without_one():
    with pytest.raises(ValueError, match="trained"):
        exact.gaussian_kl_curves(_spec(), 2, "trained")
    with pytest.raises(ValueError, match="trained"):
        exact.product_kl_1d(_spec(), "trained")


def test_diverged_training_raises_training_diverged(monkeypatch):
    spec = _spec(target=["mixture"], score=["trained"], seed=[0, 1])
    monkeypatch.setattr(targets, "train_ensemble", lambda data, seeds, **kw: [None] * len(seeds))
    with pytest.raises(errors.TrainingDiverged, match=r"seeds \[0, 1\]"):
        run_cell(spec, spec.cells()[0])


def test_axes_are_distinct_and_sorted():
    s = _spec(d=[3, 2], nfe=[8, 4], seed=[1, 0], sampling={"n_samples": 20, "score_t": [1.0, 0.1]},
              analysis={"kl_levels": [1e-3, 1e-4]})
    assert (s.d, s.nfe, s.seed, s.sampling.score_t, s.analysis.kl_levels) == ([2, 3], [4, 8], [0, 1], [0.1, 1.0],
                                                                              [1e-4, 1e-3])
    assert s.hash == _spec(d=[2, 3], nfe=[4, 8], seed=[0, 1], sampling={"n_samples": 20, "score_t": [0.1, 1.0]},
                           analysis={"kl_levels": [1e-4, 1e-3]}).hash
    assert _spec(sampler=["srk", "exponential_integrator"]).sampler == ["srk", "exponential_integrator"]
    for field, value in [("d", [2, 2]), ("seed", [-1]), ("nfe", [0]), ("sampler", ["srk", "srk"]),
                         ("t_min", 10.0), ("analysis", {"kl_levels": [0.0]})]:
        with pytest.raises(SpecError):
            _spec(**{field: value})
    with pytest.raises(SpecError, match="max_cells"):
        _spec(max_cells=1)
