"""The two-scores study (Gupta et al. 2023, Figure 1's construction; dsclab/studies/two_scores):
its scores, the ERM's pick, the closed form (1 - eta)^n and the computed verdict, each against an
independent computation (numpy formulas written here, binomial simulation)."""
import math

import numpy as np
import pytest
import xarray as xr

from dsclab.study import KINDS
from dsclab.studies.two_scores import numerics as nm
from dsclab.studies.two_scores.report import verdict

KIND = KINDS["two_scores"]
pytestmark = pytest.mark.usefixtures("one_thread")


def spec(**kw):
    return KIND.parse({**KIND.small, **kw})


def np_scores(x: np.ndarray, t: np.ndarray, eta: float, R: float) -> tuple[np.ndarray, np.ndarray]:
    """s_1 and s_2 at (x, t) from the mixture's density written out: q_t of p_2 is
    (1 - eta) N(0, I) + eta N(e^-t R e_1, I), so s_2 = -x + w_far e^-t R e_1 with w_far the
    normalised weight of the far component's density."""
    a = np.exp(-t)
    log_near = np.log1p(-eta) - 0.5 * (x ** 2).sum(1)
    far = x.copy()
    far[:, 0] -= a * R
    log_far = np.log(eta) - 0.5 * (far ** 2).sum(1)
    w = 1.0 / (1.0 + np.exp(log_near - log_far))
    s2 = -x.copy()
    s2[:, 0] += w * a * R
    return -x, s2


def test_scores_are_the_mixture_scores():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)) * 3
    t = rng.uniform(0.01, 2.0, size=500)
    import torch

    s1, s2 = np_scores(x, t, 0.01, 8.0)
    xt, tt = torch.as_tensor(x), torch.as_tensor(t)
    np.testing.assert_allclose(nm.score(1, xt, tt, 0.01, 8.0).numpy(), s1, rtol=1e-12)
    np.testing.assert_allclose(nm.score(2, xt, tt, 0.01, 8.0).numpy(), s2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("truth,n", [("p2", 1), ("p2", 7), ("p1", 3)])
def test_the_erm_picks_the_smaller_empirical_dsm_loss_of_the_same_draws(truth, n):
    """On the cell's own draws, the losses recomputed here (numpy, the formulas of (2)) equal the
    study's, and its pick is their argmin."""
    sp = spec(n=[n], truth=[truth])
    cell = next(c for c in KIND.cells(sp) if c.seed == 1)
    x, far, t, z = (v.numpy() for v in nm.training_rows(sp, cell))
    K, d = z.shape[1], z.shape[2]
    tt = t.reshape(-1)
    sig = np.sqrt(1 - np.exp(-2 * tt))
    xt = np.exp(-tt)[:, None] * np.repeat(x, K, axis=0) + sig[:, None] * z.reshape(-1, d)
    losses = [((sig[:, None] * s + z.reshape(-1, d)) ** 2).sum(1).mean() for s in np_scores(xt, tt, sp.eta, sp.R)]
    np.testing.assert_allclose(nm.dsm_losses(*(nm.training_rows(sp, cell)[i] for i in (0, 2, 3)), sp.eta, sp.R).numpy(),
                               losses, rtol=1e-12)
    ds = nm.evaluate(sp, cell)
    assert int(ds.picked) == (1 if losses[0] <= losses[1] else 2)
    assert float(ds.dsm_loss_gap) == pytest.approx(losses[1] - losses[0], rel=1e-10, abs=1e-14)
    assert int(ds.far_samples) == int(far.sum())
    # a right pick has no error, a wrong one the other candidate's
    right = int(ds.picked) == (1 if truth == "p1" else 2)
    np.testing.assert_array_equal(ds.score_l2.values, 0.0 if right else ds.wrong_l2.values)


def test_no_far_sample_happens_with_probability_one_minus_eta_to_the_n():
    """(1 - eta)^n against the study's own sampler: 4000 data sets of n = 50 draws of p_2 (eta
    0.01: 0.605), none from the far component in k of them; binomial standard error 0.0077, bound
    4.5 of them. And the template's closed form is that number."""
    import torch

    eta, n, reps = 0.01, 50, 4000
    g = torch.Generator().manual_seed(3)
    none = sum(int(nm.sample_law("p2", n, 2, eta, 8.0, 0.0, g)[:, -1].sum() == 0) for _ in range(reps))
    p = (1 - eta) ** n
    assert abs(none / reps - p) < 4.5 * math.sqrt(p * (1 - p) / reps), (none / reps, p)
    tpl = KIND.template(spec(n=[1, 50]))
    np.testing.assert_allclose(tpl["p_no_far"].values, [(1 - 0.01), p])


def _store(picked_wrong: np.ndarray, q_miss: np.ndarray, n=(3, 10, 300)) -> xr.Dataset:
    """A done store of truth p2 (40 seeds) whose √L2 misses where ``picked_wrong`` and whose
    quantile error (delta 0.05 > eta) misses where ``q_miss`` (arrays (n, seed))."""
    sp = spec(truth=["p2"], n=list(n), seed=list(range(40)), evaluation={"t": [0.1], "delta": [0.05]})
    ds = KIND.template(sp)
    ds["status"][:] = 1
    shape = ds["score_l2"].shape  # truth, d, n, seed, t
    ds["wrong_l2"][:] = 1.0
    ds["score_l2"][:] = np.broadcast_to(picked_wrong[None, None, :, :, None], shape).astype(float)
    ds["score_quantile"][:] = np.broadcast_to(q_miss[None, None, :, :, None, None], ds["score_quantile"].shape) * 1.0
    return ds


def test_the_verdict_is_computed_from_the_intervals():
    n, s = 3, 40
    rng = np.random.default_rng(0)
    half = rng.permutation(np.arange(s) < 20)  # 20 of 40 seeds miss in L2
    none = np.zeros(s, dtype=bool)
    ds = _store(np.stack([half] * n), np.stack([none] * n))
    assert verdict(ds, 2)[0] == "AGREES"  # 20/40 [0.34, 0.66] against 0/40 [0, 0.09]
    ds = _store(np.stack([half] * n), np.stack([half] * n))
    assert verdict(ds, 2)[0] == "DISAGREES"  # the quantile misses as often
    few = np.arange(s) < 4  # 4/40 [0.03, 0.24] against 0/40 [0, 0.09]: intervals overlap
    ds = _store(np.stack([few] * n), np.stack([none] * n))
    assert verdict(ds, 2)[0] == "INCONCLUSIVE"
    assert verdict(_store(np.stack([half] * 1), np.stack([none] * 1), n=(300,)), 2)[0] == "CANNOT SAY"  # n eta > 1/4
