"""The sampler-convergence study decides which KL values are exact from declared facts (target,
score kind, sampler), stores NaN for the others without computing them, and lets every exception
raised inside an exact computation propagate (none becomes a stored NaN). Also: its spec axes
follow ``dsclab.axes`` (numeric and seed axes distinct and sorted), and a diverged trained score
raises ``dsclab.errors.TrainingDiverged`` in the train stage."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsclab import errors, noise
from dsclab.studies.sampler_convergence.gaussian_exact import gaussian_score, sampler_kl, sampler_law, step_map
from dsclab.samplers import SAMPLERS, steps_for_nfe
from dsclab.spec import SpecError
from dsclab.study import parse_spec
from dsclab.studies.sampler_convergence import exact, targets
from dsclab.studies.sampler_convergence import spec as spec_mod
from dsclab.studies.sampler_convergence.numerics import run_cell
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


def _kl_1d(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)), textbook, with r - 1 - log r written r - 1 - log1p(r - 1)."""
    x = v1 / v2 - 1.0
    return 0.5 * (x - math.log1p(x) + (m1 - m2) ** 2 / v2)


def _hand_recursion(name, ts, mu, s2, m, v, eta):
    """Mean and variance of Euler–Maruyama or the exponential integrator on the 1-D Gaussian
    q_0 = N(mu, s2), written out by hand: q_t = N(e^-t mu, v_t), v_t = e^-2t s2 + 1 - e^-2t, score
    s_t(x) = -(x - e^-t mu) / v_t (+ eta, perturbed). A step from t to t - h is x' = a x + b + c xi:

    EM: a = 1 + h (1 - 2 / v_t),          b = 2 h (e^-t mu / v_t + eta),          c^2 = 2 h;
    EI: a = e^h - 2 (e^h - 1) / v_t,      b = 2 (e^h - 1) (e^-t mu / v_t + eta),  c^2 = e^2h - 1;
    so m' = a m + b, v' = a^2 v + c^2."""
    for t, t1 in zip(ts[:-1], ts[1:]):
        h, vt = t - t1, math.exp(-2 * t) * s2 + 1 - math.exp(-2 * t)
        pull = math.exp(-t) * mu / vt + eta
        if name == "euler_maruyama":
            a, b, c2 = 1 + h * (1 - 2 / vt), 2 * h * pull, 2 * h
        else:
            a, b, c2 = math.exp(h) - 2 * math.expm1(h) / vt, 2 * math.expm1(h) * pull, math.expm1(2 * h)
        m, v = a * m + b, a * a * v + c2
    return m, v


@pytest.mark.parametrize("start", ["exact", "prior"])
def test_exact_values_match_a_hand_written_recursion(start):
    """The study's Gaussian route (``exact.gaussian_kl_pair``: propagation of the sampler's own step
    maps) against the recursion written out by hand for a 1-D Gaussian N(0.7, 2), exact and
    perturbed scores, both KL directions: equal to float64 rounding accumulated over <= 16 steps
    (rel 1e-9; the values span 1e-6 to 1)."""
    spec = _spec(d=[1], target=["gaussian"], sampler=["euler_maruyama", "exponential_integrator"], nfe=[4, 8, 16],
                 gaussian={"mean": 0.7, "scale": 2.0}, start=start, eta=0.05)
    mu, s2 = 0.7, 2.0
    for score_kind, eta in (("exact", 0.0), ("perturbed", spec.eta)):
        fwd, rev = exact.gaussian_kl_pair(spec, 1, score_kind)
        assert np.array_equal(fwd, exact.gaussian_kl_curves(spec, 1, score_kind))
        for i, name in enumerate(spec.sampler):
            for j, nfe in enumerate(spec.nfe):
                ts = [float(t) for t in noise.time_grid(spec.T, spec.t_min, nfe, spec.schedule)]
                m0, v0 = (math.exp(-ts[0]) * mu, math.exp(-2 * ts[0]) * s2 + 1 - math.exp(-2 * ts[0])) \
                    if start == "exact" else (0.0, 1.0)
                m, v = _hand_recursion(name, ts, mu, s2, m0, v0, eta)
                mt, vt = math.exp(-ts[-1]) * mu, math.exp(-2 * ts[-1]) * s2 + 1 - math.exp(-2 * ts[-1])
                assert fwd[i, j] == pytest.approx(_kl_1d(m, v, mt, vt), rel=1e-9), (score_kind, name, nfe)
                assert rev[i, j] == pytest.approx(_kl_1d(mt, vt, m, v), rel=1e-9), (score_kind, name, nfe)
        assert not np.allclose(fwd, rev, rtol=1e-3)  # the directions differ at these NFE


def test_kl_variables_state_their_direction():
    """Each KL variable of the store says which direction it is; the reverse is exact where the
    target is Gaussian and NaN (never computed) on the quadrature route."""
    from dsclab.studies.sampler_convergence.layout import template

    ds = template(_spec())
    assert ds.kl.attrs["direction"].startswith("KL(p_out || q_t_min)")
    assert ds.kl_reverse.attrs["direction"].startswith("KL(q_t_min || p_out)")
    assert ds.kl_reverse.attrs["units"] == "nats"


def test_non_exact_sampler_is_nan_by_declaration(monkeypatch):
    """A sampler outside EXACT_KL_SAMPLERS gets NaN without its KL being computed; the others are
    computed as before."""
    spec = _spec()
    monkeypatch.setattr(spec_mod, "EXACT_KL_SAMPLERS", ("exponential_integrator",))
    calls = []

    def counting(name, *a, **kw):
        calls.append(name)
        return sampler_law(name, *a, **kw)

    monkeypatch.setattr(exact, "sampler_law", counting)
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

    monkeypatch.setattr(exact, "sampler_law", broken)
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

    monkeypatch.setattr(exact, "sampler_law", overflow)
    with pytest.raises(errors.NUMERICAL):
        run_cell(spec, _cell(spec, "gaussian", "exact"))


def test_exact_route_refuses_a_score_without_one():
    with pytest.raises(ValueError, match="trained"):
        exact.gaussian_kl_curves(_spec(), 2, "trained")
    with pytest.raises(ValueError, match="trained"):
        exact.product_kl_1d(_spec(), "trained")


def test_diverged_training_raises_training_diverged(monkeypatch):
    """In the train stage: the cell gets the failure (the train task marks it failed); its
    evaluation never trains, so it refuses to run without the trained networks."""
    from dsclab.studies.sampler_convergence import KIND

    spec = _spec(target=["mixture"], score=["trained"], seed=[0, 1])
    cell = spec.cells()[0]
    monkeypatch.setattr(targets, "train_ensemble", lambda data, seeds, **kw: [None] * len(seeds))
    with pytest.raises(errors.TrainingDiverged, match=r"seeds \[0, 1\]"):
        targets.train_members(spec, cell, "cpu")
    out = KIND.train(spec, [cell], None, {}, "cpu")
    assert isinstance(out[cell.key], errors.TrainingDiverged)
    with pytest.raises(ValueError, match="trained networks"):
        run_cell(spec, cell)


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
        with pytest.raises(SpecError) as e:
            _spec(**{field: value})
        msg = str(e.value)  # one line naming the field
        assert "\n" not in msg and (msg.startswith(field) or field in msg), (field, msg)
    with pytest.raises(SpecError, match="max_cells"):
        _spec(max_cells=1)


def test_a_cell_stores_both_kl_directions():
    """A gaussian cell stores ``kl`` and ``kl_reverse`` as ``exact.gaussian_kl_pair`` gives them (the
    reverse checked against the hand recursion above); a product-mixture cell has no reverse (NaN)."""
    spec = _spec()
    ds = run_cell(spec, _cell(spec, "gaussian", "exact"))
    fwd, rev = exact.gaussian_kl_pair(spec, 2, "exact")
    np.testing.assert_array_equal(ds.kl.values, fwd)
    np.testing.assert_array_equal(ds.kl_reverse.values, rev)
    assert np.isfinite(rev).all() and not np.array_equal(fwd, rev)
    assert np.isnan(run_cell(spec, _cell(spec, "product_mixture", "exact")).kl_reverse.values).all()
