"""The far-component study (Gupta et al. 2023, Figure 1's two laws learned by a network;
dsclab/studies/far_component): the exact scores against the mixture's density written out here,
the coupled draws of a cell and its control, the control's identical training, the error
decomposition against closed forms, (1 - eta)^n by simulation, and the computed verdict on the far
component's part."""
import math

import numpy as np
import pytest
import torch
import xarray as xr

from dsclab.study import KINDS
from dsclab.studies.far_component import numerics as nm
from dsclab.studies.far_component.report import far_parts, readings, report, verdict

KIND = KINDS["far_component"]
pytestmark = pytest.mark.usefixtures("one_thread")


def spec(**kw):
    return KIND.parse({**KIND.small, **kw})


def cell(sp, truth, n, seed):
    return next(c for c in KIND.cells(sp) if (c.truth, c.n, c.seed) == (truth, n, seed))


def np_s2(x: np.ndarray, t: float, eta: float, R: float) -> np.ndarray:
    """s_2 from the density of q_t of p_2 = (1 - eta) N(0, I) + eta N(e^-t R e_1, I) written out:
    -x + w_far e^-t R e_1, w_far the far component's normalised weight."""
    a = np.exp(-t)
    far = x.copy()
    far[:, 0] -= a * R
    log_near = np.log1p(-eta) - 0.5 * (x ** 2).sum(1)
    log_far = np.log(eta) - 0.5 * (far ** 2).sum(1)
    w = np.exp(log_far - np.logaddexp(log_near, log_far))
    s = -x.copy()
    s[:, 0] += w * a * R
    return s


@pytest.mark.parametrize("t", [0.0, 0.02, 0.3, 1.5])
def test_the_laws_scores_are_the_closed_forms(t):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3)) * 4
    x[:200, 0] += 30
    np.testing.assert_allclose(nm.law("p2", 3, 0.01, 40.0).score(torch.as_tensor(x), t).numpy(), np_s2(x, t, 0.01, 40.0),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(nm.law("p1", 3, 0.01, 40.0).score(torch.as_tensor(x), t).numpy(), -x, rtol=1e-12)


def test_a_cell_and_its_control_share_their_draws():
    """p1's samples are p2's with the far shift removed; the first n rows do not depend on the grid."""
    sp = spec(n=[40, 300])
    x2, f2 = nm.training_set(sp, cell(sp, "p2", 300, 1))
    x1, f1 = nm.training_set(sp, cell(sp, "p1", 300, 1))
    assert float(f1.sum()) == 0 and float(f2.sum()) > 0  # seed 1 has far samples among 300 (checked here)
    shift = torch.zeros_like(x2)
    shift[:, 0] = sp.R * f2
    torch.testing.assert_close(x2 - shift, x1, rtol=0, atol=1e-12)  # z + R - R: rounding only
    x40, _ = nm.training_set(sp, cell(sp, "p2", 40, 1))
    torch.testing.assert_close(x40, x2[:40], rtol=0, atol=0)


def test_the_control_is_trained_identically():
    """Equal training sets give equal networks (same initialisation, minibatches, times, noise);
    a far sample among the n changes p2's network only."""
    sp = spec(n=[5, 200], train={"steps": 20, "batch_size": 8, "width": 8, "depth": 1})
    for n, same in ((5, True), (200, False)):
        far = nm.training_set(sp, cell(sp, "p2", n, 0))[1].sum()
        assert (float(far) == 0) == same  # seed 0: none among 5, some among 200
        a = nm.train_cell(sp, cell(sp, "p2", n, 0), "cpu").model.state_dict()
        b = nm.train_cell(sp, cell(sp, "p1", n, 0), "cpu").model.state_dict()
        equal = all(torch.equal(a[k], b[k]) for k in a)
        assert equal == same


def test_the_errors_of_the_exact_scores():
    """The truth's own score has no error. s_1 = -x under p_2: its L2 error is bulk_score_l2 and
    all but a negligible part of it is the far component's, E||s_1 - s_2||^2 = e^-2t R^2 E[w_far^2]
    ~= eta e^-2t R^2 (far draws ~ Binomial(20000, 0.01): 7% relative spread; bound 25%); its
    (1 - delta)-quantile is ~0 for delta > eta and ~e^-t R for delta < eta."""
    sp = spec(evaluation={"t": [0.02, 0.3], "delta": [0.001, 0.05], "n_score": 20000})
    c = cell(sp, "p2", 5, 0)
    eta, R = sp.eta, sp.R
    exact = nm.errors(lambda x, t: nm.law("p2", 2, eta, R).score(x.double(), t).float(), sp, c)
    assert np.abs(exact["l2"]).max() < 1e-8 and np.abs(exact["quantile"]).max() < 1e-4
    s1 = nm.errors(lambda x, t: -x, sp, c)
    np.testing.assert_allclose(s1["l2"], s1["bulk_l2"], rtol=1e-6)
    np.testing.assert_allclose(s1["far_l2"], s1["l2"], rtol=1e-6)
    for i, t in enumerate(sp.evaluation.t):
        assert s1["l2"][i] == pytest.approx(eta * math.exp(-2 * t) * R * R, rel=0.25)
        assert s1["quantile"][i, 1] < 1e-6  # delta 0.05 > eta: the bulk, where s_1 = s_2
        assert s1["quantile"][i, 0] == pytest.approx(math.exp(-t) * R, rel=0.02)  # delta 0.001 < eta
    control = nm.errors(lambda x, t: -x, sp, cell(sp, "p1", 5, 0))
    assert np.abs(control["l2"]).max() < 1e-12 and np.abs(control["far_l2"]).max() == 0


def test_no_far_sample_happens_with_probability_one_minus_eta_to_the_n():
    """(1 - eta)^n against the study's own sampler (``numerics.coupled``): 4000 data sets of n = 50
    draws (eta 0.01: 0.605); binomial standard error 0.0077, bound 4.5 of them; and the template's
    closed form. And a seed's training set has the far samples of its first n draws."""
    n, reps = 50, 4000
    sp = spec(n=[n])
    _, far = nm.coupled("p2", nm._draws(reps * n, 2, torch.Generator().manual_seed(5)), sp.eta, sp.R)
    none = int((far.reshape(reps, n).sum(1) == 0).sum())
    p = (1 - sp.eta) ** n
    assert abs(none / reps - p) < 4.5 * math.sqrt(p * (1 - p) / reps), (none / reps, p)
    np.testing.assert_allclose(KIND.template(spec(n=[1, 50]))["p_no_far"].values, [1 - sp.eta, p])


def _store(l2_extra: np.ndarray, q_extra: np.ndarray, n=(10, 25, 300), bulk=4.0) -> xr.Dataset:
    """A done store of 40 seeds: the control's L2 error ``bulk`` and quantile errors 2; p2's the
    same plus ``l2_extra`` and ``q_extra`` (arrays (n, seed)); bulk_score_l2 = 4 (tau = 1)."""
    sp = spec(n=list(n), seed=list(range(40)), evaluation={"t": [0.1], "delta": [0.001, 0.05]})
    ds = KIND.template(sp)
    ds["status"][:] = 1
    ds["bulk_score_l2"][:] = 4.0
    for v in ("far_samples", "train_seconds", "eval_seconds", "train_loss", "far_l2"):
        ds[v][:] = 0.0
    ds["score_l2"][:] = bulk
    ds["score_quantile"][:] = 2.0
    ds["score_l2"].loc[{"truth": "p2"}] = bulk + np.broadcast_to(l2_extra[None, :, :, None], (1, len(n), 40, 1))
    ds["score_quantile"].loc[{"truth": "p2"}] = 2.0 + np.broadcast_to(q_extra[None, :, :, None, None], (1, len(n), 40, 1, 2))
    return ds


def test_the_far_part_and_the_verdict_are_computed_from_the_intervals():
    s = 40
    half = np.random.default_rng(0).permutation(np.arange(s) < 20)
    none = np.zeros((3, s))
    miss = np.stack([half * 4.0] * 3)  # extra L2 4: √ΔL2 = 2 > tau = 1 at 20 of 40 seeds
    ds = _store(miss, none)
    part = far_parts(ds, 2)
    np.testing.assert_allclose(part.sel(error="√ΔL2").values[..., 0], np.sqrt(miss))
    np.testing.assert_allclose(part.sel(error="Δq δ=0.05>η").values, 0.0)
    assert verdict(ds, readings(ds, 2, part))[0] == "AGREES"  # 20/40 [0.34, 0.66] against 0/40 [0, 0.09]
    # a large bulk error does not hide the far part (it is subtracted), nor does a negative difference count
    ds = _store(miss - 3.0 * (1 - np.stack([half] * 3)), none, bulk=50.0)
    assert verdict(ds, readings(ds, 2, far_parts(ds, 2)))[0] == "AGREES"
    ds = _store(miss, np.stack([half * 1.5] * 3))  # the quantile's part misses as often
    assert verdict(ds, readings(ds, 2, far_parts(ds, 2)))[0] == "DISAGREES"
    few = np.stack([(np.arange(s) < 4) * 4.0] * 3)  # 4/40 [0.03, 0.24] against 0/40: overlap
    ds = _store(few, none)
    assert verdict(ds, readings(ds, 2, far_parts(ds, 2)))[0] == "INCONCLUSIVE"
    ds = _store(miss[:1], none[:1], n=(300,))  # n eta > 1/2: outside the region
    assert verdict(ds, readings(ds, 2, far_parts(ds, 2)))[0] == "CANNOT SAY"
    text = report(_store(miss, none))
    assert "AGREES with Figure 1's statement" in text and "on the far component's part" in text
