"""Time bootstrapping, dependent data and the score-learning study (issue 5), against closed forms.

Monte Carlo checks use a tolerance of 5 standard errors computed in the test (a false alarm at
5 SE has probability < 1e-6 per comparison, so a few dozen comparisons stay safe), and each
has a negative control showing the test can fail.
"""
import math

import numpy as np
import pytest
import torch
import xarray as xr

from dsclab import bootstrap as bs
from dsclab import analysis, distributions, losses, noise
from dsclab.spec import SpecError, parse_spec
from dsclab.studies.score_learning.cell import draw_training_data
from dsclab.studies.score_learning.plot import plot as sl_plot
from dsclab.studies.score_learning.readout import n_star as n_star_table
from dsclab.studies.score_learning.report import report as sl_report
from dsclab.studies.score_learning.spec import CELL_DIMS, ScoreLearningSpec

Z = 5.0  # standard errors


def _mixture(d=2):
    return distributions.make("gaussian_mixture", d, k=3, separation=3.0, std=0.7)


# ------------------------------------------------------------------------------------------
# The bootstrapping identity and unbiased BSM targets
# ------------------------------------------------------------------------------------------

def test_bootstrap_identity_for_a_gaussian_mixture_by_importance_sampling():
    """s_t(x) = e^{t-t'} E[s_{t'}(X_{t'}) | X_t = x], with the conditional expectation computed
    independently of dsclab.bootstrap: X_{t'} ~ q_{t'} exactly, weighted by the OU transition
    density N(x; e^{-Delta} X_{t'}, sigma_Delta^2 I) (self-normalised importance sampling; SE by
    the delta method)."""
    law = _mixture()
    g = torch.Generator().manual_seed(0)
    t, tp = 0.7, 0.4
    dl = t - tp
    xs = law.sample(4, g, t=t)
    y = law.sample(200_000, g, t=tp)
    sy = law.score(y, tp)
    for x in xs:
        logw = -((x[None] - math.exp(-dl) * y) ** 2).sum(1) / (2 * noise.sigma2(dl))
        w = torch.exp(logw - logw.max())
        w = w / w.sum()
        mu = (w[:, None] * sy).sum(0)
        se = torch.sqrt((w[:, None] ** 2 * (sy - mu) ** 2).sum(0))
        lhs, rhs = law.score(x[None], t)[0], math.exp(dl) * mu
        assert ((lhs - rhs).abs() <= Z * math.exp(dl) * se).all(), (lhs, rhs, se)
        # negative control: without the factor e^{t - t'} the identity fails by many SEs somewhere
        if (mu.abs() > 20 * se).any():
            assert ((lhs - mu).abs() > Z * se).any()


def test_posterior_draws_have_the_tweedie_mean():
    """E[X_0 | X_t = x] from ``posterior_x0`` equals the exact denoiser (Tweedie)."""
    law = _mixture(3)
    g = torch.Generator().manual_seed(1)
    x = law.sample(6, g, t=0.5)
    draws = bs.posterior_x0(law, x, 0.5, 20_000, g)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - law.denoise(x, 0.5)).abs() <= Z * se).all()


@pytest.mark.parametrize("mode", ["trajectory", "independent"])
def test_bsm_targets_with_the_exact_score_are_unbiased(mode):
    """With h_hat = s, the BSM target T = e^{t-t'} s_{t'}(X_{t'}) satisfies E[T | X_t] = s_t(X_t):
    the residual T - s_t(X_t) is orthogonal to functions of X_t (1, x_1, x_2, tanh x_1). Rows
    are independent (pairs within a row are not, in trajectory mode): SE over rows."""
    law = _mixture()
    g = torch.Generator().manual_seed(2)
    n, K = 20_000, 4
    x0 = law.sample(n, g)
    times = bs.row_times(n, K, 0.2, 2.0, g)
    data = bs.DATA_MODES[mode](x0, times, g)
    xt, prev = data.xt[:, 1:].reshape(-1, 2), data.prev[:, 1:].reshape(-1, 2)
    t, tp = data.times[:, 1:].reshape(-1), data.t_prev[:, 1:].reshape(-1)
    s = law.score(xt, t)
    feats = torch.stack([torch.ones_like(t), xt[:, 0], xt[:, 1], torch.tanh(xt[:, 0])], dim=1)  # (m, 4)

    def moments(target):
        r = (target - s)[:, :, None] * feats[:, None, :]  # (m, d, 4)
        per_row = r.reshape(n, K - 1, 2, 4).sum(1)
        return per_row.mean(0), per_row.std(0) / math.sqrt(n)

    mean, se = moments(losses.bsm_target(law.score, prev, t, tp))
    assert (mean.abs() <= Z * se).all(), mean / se
    # negative control: dropping the factor e^{t - t'} biases the target detectably
    bad, se_bad = moments(law.score(prev, tp))
    assert (bad.abs() > Z * se_bad).any()


# ------------------------------------------------------------------------------------------
# Conditional variances of the targets, Gaussian data (closed forms in the docstring of
# dsclab.bootstrap.gaussian_target_variance)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("t,tp", [(0.15, 0.1), (1.5, 1.2)])
@pytest.mark.parametrize("estimator,mix", [("dsm", 0.0), ("bsm", 0.0), ("bsm", 0.3)])
def test_target_variances_match_closed_forms_for_gaussian_data(t, tp, estimator, mix):
    """Per point x ~ q_t, the unbiased sample variance of R target draws has mean tr Cov[T | X_t = x],
    which is x-independent for Gaussian data: the mean over points must match the closed form
    within 5 SE (SE over points)."""
    law = distributions.make("gaussian", 3, cond=10.0, mean=0.5)
    g = torch.Generator().manual_seed(3)
    x = law.sample(300, g, t=t)
    draws = bs.target_draws(law, x, t, tp, 64, g, estimator=estimator, score_prev=law.score, t_c=0.0, mix=mix,
                            dtype=torch.float64)
    v, v1 = bs.conditional_variance(draws)
    cf = bs.gaussian_target_variance(law.lam[0].numpy(), t, tp, mix)
    want = cf["dsm"] if estimator == "dsm" else cf["mixed"]
    se = v.std() / math.sqrt(v.numel())
    assert abs(v.mean().item() - want) <= Z * se.item(), (v.mean().item(), want, se.item())
    # coordinate 1 alone (the covariance is diagonal): the closed form with its variance only
    cf1 = bs.gaussian_target_variance([float(law.cov()[0, 0])], t, tp, mix)
    want1 = cf1["dsm"] if estimator == "dsm" else cf1["mixed"]
    assert abs(v1.mean().item() - want1) <= Z * (v1.std() / math.sqrt(v1.numel())).item()


def test_closed_form_condition_for_bsm_to_win():
    """(e^{2 Delta} - 1)(e^{2t} - 1) < 1 for unit-scale data: the variance ratio crosses 1 exactly
    at the step ``bsm_wins_max_step`` returns."""
    for t in (0.5, 1.0, 2.0):
        dl = bs.bsm_wins_max_step(1.0, t)
        assert math.isclose(math.expm1(2 * dl) * math.expm1(2 * t), 1.0, rel_tol=1e-9)
        below = bs.gaussian_target_variance([1.0], t, t - 0.9 * dl)
        above = bs.gaussian_target_variance([1.0], t, t - 1.1 * dl)
        assert below["bsm"] < below["dsm"] and above["bsm"] > above["dsm"]


# ------------------------------------------------------------------------------------------
# Training data: the OU transition law
# ------------------------------------------------------------------------------------------

def test_trajectory_sampling_has_the_ou_transition_law():
    """Given x0, a row of ``trajectory`` mode is Gaussian with mean e^{-t_k} x0 and covariance
    Cov(X_{t_j}, X_{t_k}) = e^{-(t_k - t_j)} sigma_{t_j}^2 (j <= k) per coordinate, the law of the
    OU process; ``independent`` mode has the same marginals and zero cross-covariances, and its
    (prev, xt) pairs have the one-step transition law. Sample covariances have
    SE sqrt((C_jj C_kk + C_jk^2) / N)."""
    N, d = 40_000, 2
    g = torch.Generator().manual_seed(4)
    x0 = torch.tensor([[1.5, -2.0]], dtype=torch.float64).expand(N, d)
    ts = torch.tensor([0.05, 0.3, 0.35, 1.2], dtype=torch.float64)
    times = ts[None].expand(N, -1).clone()
    tj, tk = ts[:, None], ts[None, :]
    lo = torch.minimum(tj, tk)
    C = torch.exp(-(tj - tk).abs()) * noise.sigma2(lo)
    mean_want = torch.exp(-ts)[:, None] * x0[0][None]
    for mode in ("trajectory", "independent"):
        data = bs.DATA_MODES[mode](x0, times, g)
        want = C if mode == "trajectory" else torch.diag(torch.diagonal(C))
        for c in range(d):
            v = data.xt[:, :, c]
            m = v.mean(0)
            assert ((m - mean_want[:, c]).abs() <= Z * torch.sqrt(torch.diagonal(C) / N)).all()
            emp = torch.cov(v.T)
            se = torch.sqrt((torch.diagonal(C)[:, None] * torch.diagonal(C)[None, :] + want ** 2) / N)
            assert ((emp - want).abs() <= Z * se).all(), (mode, emp, want)
        # one-step transition: xt - e^{-Delta} prev ~ N(0, sigma_Delta^2), uncorrelated with prev
        dl = data.times - data.t_prev
        res = data.xt - torch.exp(-dl)[..., None] * data.prev
        s2 = noise.sigma2(dl)[0]
        var = res.var(0)  # (K, d)
        assert ((var - s2[:, None]).abs() <= Z * s2[:, None] * math.sqrt(2 / N)).all()
        corr = ((res - res.mean(0)) * (data.prev - data.prev.mean(0))).mean(0) / (res.std(0) * data.prev.std(0) + 1e-300)
        assert (corr[1:].abs() <= Z / math.sqrt(N)).all()
    # negative control: the trajectory mode's cross-covariance is not the independent one
    assert (C[0, 1] / torch.sqrt(C[0, 0] * C[1, 1] / N)) > 10 * Z


def test_prefix_of_a_training_set_is_the_smaller_training_set():
    spec = parse_spec({"name": "p", "kind": "score_learning", "d": [3], "n": [10, 50]}, ScoreLearningSpec)
    a = draw_training_data(spec, 3, 0, "trajectory")
    assert a.n == 50 and a.xt.shape == (50, spec.train.K, 3)
    b = a.head(10)
    assert torch.equal(b.xt, a.xt[:10]) and torch.equal(b.times, a.times[:10])
    # row times: geometric with ratio r along each row
    r = a.times[:, 1:] / a.times[:, :-1]
    torch.testing.assert_close(r, torch.full_like(r, spec.train.ratio))


# ------------------------------------------------------------------------------------------
# Losses and hypothesis classes
# ------------------------------------------------------------------------------------------

def test_losses_per_sample_and_bsm_reduces_to_dsm_below_t_c():
    g = torch.Generator().manual_seed(5)
    net = bs.make_mlp(3, width=16, depth=2, generator=g)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    x0 = torch.randn(40, 3, generator=g)
    data = bs.sample_trajectory(x0, bs.row_times(40, 3, 0.05, 2.0, g), g)
    xt, prev = data.xt.reshape(-1, 3).float(), data.prev.reshape(-1, 3).float()
    t, tp = data.times.reshape(-1), data.t_prev.reshape(-1)
    b0 = x0[:, None].expand(-1, 3, -1).reshape(-1, 3).float()
    dsm = losses.dsm_pair_loss(net, b0, xt, t)
    z = (xt.double() - torch.exp(-t)[:, None] * b0.double()) / noise.sigma(t)[:, None]
    torch.testing.assert_close(dsm.double(), ((net(xt, t).double() - z) ** 2).sum(1), rtol=1e-4, atol=1e-4)
    assert dsm.shape == (120,)
    t_c = float(t.median())
    bsm = losses.bsm_loss(net, b0, xt, t, prev, tp, target=net, t_c=t_c, mix=0.25)
    lo = t <= t_c
    torch.testing.assert_close(bsm[lo], dsm[lo])
    # above t_c: 0.25 DSM + 0.75 sigma_t^2 ||s_hat - e^{Delta} s_hat(t', prev)||^2
    with torch.no_grad():
        tgt = torch.exp(t - tp)[:, None].float() * net.score(prev, tp)
        b = (noise.sigma(t)[:, None].float() ** 2 * (net.score(xt, t) - tgt) ** 2).sum(1)
    torch.testing.assert_close(bsm[~lo], 0.25 * dsm[~lo] + 0.75 * b[~lo], rtol=1e-4, atol=1e-4)


def test_structured_class_is_d_free_and_has_the_form_minus_x_plus_g_e1():
    g = torch.Generator().manual_seed(6)
    sizes = {d: bs.n_parameters(bs.make_structured(d, width=16, depth=2, generator=g)) for d in (4, 128)}
    assert sizes[4] == sizes[128]
    assert bs.n_parameters(bs.make_mlp(128, width=16, depth=2, generator=g)) > \
        bs.n_parameters(bs.make_mlp(4, width=16, depth=2, generator=g))
    net = bs.make_structured(5, width=16, depth=2, generator=g)
    with torch.no_grad():
        net.out.weight.normal_(generator=g)
    x = torch.randn(50, 5, generator=g)
    s = net.score(x, 0.4)
    torch.testing.assert_close(s[:, 1:], -x[:, 1:])
    assert (s[:, 0] + x[:, 0]).abs().max() > 1e-3
    # the exact score of +-a e_1 + N(0, I_d) has this form: -x + a e^{-t} tanh(a e^{-t} x_1) e_1
    law = distributions.make("gaussian_mixture", 5, k=2, separation=4.0, std=1.0)
    xx = law.sample(20, g, t=0.4).double()
    at = 2.0 * math.exp(-0.4)
    want = -xx.clone()
    want[:, 0] += at * torch.tanh(at * xx[:, 0])
    torch.testing.assert_close(law.score(xx, 0.4), want)


def test_training_is_deterministic_and_lowers_the_loss():
    law = distributions.make("gaussian_mixture", 2, k=2, separation=4.0, std=1.0)
    g = torch.Generator().manual_seed(7)
    data = bs.sample_independent(law.sample(200, g), bs.row_times(200, 4, 0.05, 2.0, g), g)
    cfg = bs.FitConfig(steps=30, batch_size=16)
    runs = [bs.fit(bs.make_mlp(2, width=16, depth=2, generator=torch.Generator().manual_seed(1)), data, e, cfg,
                   torch.Generator().manual_seed(2), law=law) for e in ("bsm", "bsm", "bsm_oracle")]
    assert all(torch.equal(p, q) for p, q in zip(runs[0].model.parameters(), runs[1].model.parameters()))
    assert math.isfinite(runs[2].loss)


# ------------------------------------------------------------------------------------------
# n*(eps, d)
# ------------------------------------------------------------------------------------------

def test_n_star_and_its_exponent_in_d_for_power_laws():
    """err = C d^b n^{-a}: n*(eps) = (C d^b / eps)^{1/a} exactly (log-log interpolation is exact
    for power laws) and the exponent of n* in d is b / a."""
    n = np.array([10.0, 100.0, 1000.0, 10_000.0])
    a, b, C, eps = 0.8, 1.2, 5.0, 1.0
    d = np.array([4.0, 16.0, 64.0])
    n_star = lambda e: analysis.crossing(n, e, eps, missing="unknown")
    cs = [n_star(C * dd ** b * n ** (-a)) for dd in d]
    ns = [c.value for c in cs]
    np.testing.assert_allclose(ns, (C * d ** b / eps) ** (1 / a), rtol=1e-10)
    assert math.isclose(analysis.crossing_exponent(d, cs), b / a, rel_tol=1e-10)
    never, once = n_star(np.full(4, 2.0)), n_star(np.full(4, 0.5))
    assert math.isnan(never.value) and never.censored == "right"        # never reached
    assert once.value == 10.0 and once.censored == "left"               # reached at once
    # a missing value before the crossing makes n* unknown; after it, it does not matter
    e = C * 4.0 ** b * n ** (-a)
    assert n_star(np.where(n == 100.0, np.nan, e)).censored == "unknown"
    assert n_star(np.where(n == 10_000.0, np.nan, e)).value == pytest.approx(ns[0], rel=1e-12)
    # censored n* are left out of the exponent: the two uncensored points give b / a
    assert math.isclose(analysis.crossing_exponent(np.append(d, 256.0), cs + [never]), b / a, rel_tol=1e-10)
    err = xr.DataArray(np.stack([C * dd ** b * n ** (-a) for dd in d]), dims=("d", "n"), coords={"d": d, "n": n})
    np.testing.assert_allclose(analysis.crossing_values(n_star_table(err, eps)).values, ns)
    lv = analysis.common_levels(err)
    assert lv and all(float(err.isel(n=-1).max()) < e < float(err.isel(n=0).min()) for e in lv)


# ------------------------------------------------------------------------------------------
# Spec and the real flow
# ------------------------------------------------------------------------------------------

def test_spec_errors_are_one_line():
    base = {"name": "x", "kind": "score_learning", "d": [2], "n": [10]}
    with pytest.raises(SpecError, match="estimator"):
        parse_spec({**base, "estimator": ["tsm"]}, ScoreLearningSpec)
    with pytest.raises(SpecError, match="structured"):
        parse_spec({**base, "model": ["structured"], "distribution": {"name": "gaussian", "params": {"cond": 4.0}}},
                   ScoreLearningSpec)
    with pytest.raises(SpecError, match="training range"):
        parse_spec({**base, "evaluation": {"t": [5.0]}}, ScoreLearningSpec)


TINY = {
    "name": "tiny_sl", "kind": "score_learning", "d": [2, 3], "n": [20, 60], "seed": [0],
    "estimator": ["dsm", "bsm"], "data_mode": ["independent", "trajectory"], "model": ["mlp"],
    "train": {"steps": 20, "batch_size": 8, "K": 4, "width": 8, "depth": 1},
    "bsm": {"t_c": 0.2, "mix": 0.5},
    "evaluation": {"t": [0.05, 0.5, 1.5], "delta": [0.05, 0.5], "n_score": 100, "n_var": 8, "n_draws": 4,
                   "nfe": 8, "n_samples": 50},
}


def test_tiny_study_through_the_flow_then_resume_computes_nothing(study_run, tmp_path):
    from flows.study import score_learning

    run = study_run(score_learning, parse_spec(TINY, ScoreLearningSpec), "tiny_sl.zarr")
    ds = run.complete(cells=16)
    assert ds.score_l2.dims == CELL_DIMS + ("t",) and ds.target_var.dims == CELL_DIMS + ("t",)
    for var in ("score_l2", "score_quantile", "target_var", "target_var_oracle", "sliced_w2", "mode_tv"):
        assert np.isfinite(ds[var].values).all(), var
    # DSM's target does not depend on the network or the data mode: paired draws, equal values
    dsm = ds.target_var.sel(estimator="dsm")
    np.testing.assert_allclose(dsm.sel(data_mode="independent").values, dsm.sel(data_mode="trajectory").values)
    text = sl_report(ds)
    for part in ("dimension-free", "BSM against DSM", "trajectory against independent", "closing note"):
        assert part in text
    run.rerun_computes_nothing(ds)
    assert sl_plot(ds, str(tmp_path / "p.png")).endswith("p.png")
