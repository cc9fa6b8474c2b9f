"""The regression targets of time bootstrapping (``dsclab.studies.score_learning.bootstrap_targets``, issues 5 and 17)
against closed forms: the bootstrapping identity and unbiased pure and Rao–Blackwellised targets,
their conditional variances at fixed X_t, Var(T_RB | X_t) <= Var(T_dsm | X_t), and the bias a
perturbed lower-noise score puts into each target.

Monte Carlo checks use a tolerance of 5 standard errors computed in the test (a false alarm at
5 SE has probability < 1e-6 per comparison, so a few dozen comparisons stay safe), and each
has a negative control showing the test can fail.
"""
import math

import numpy as np
import pytest
import torch

from dsclab.studies.score_learning import bootstrap as bs
from dsclab.studies.score_learning import bootstrap_targets as bt
from dsclab import distributions, losses, noise

Z = 5.0  # standard errors


def _mixture(d=2):
    return distributions.make("gaussian_mixture", d, k=3, separation=3.0, std=0.7)


# ------------------------------------------------------------------------------------------
# The bootstrapping identity and unbiased BSM targets
# ------------------------------------------------------------------------------------------

def test_bootstrap_identity_for_a_gaussian_mixture_by_importance_sampling():
    """s_t(x) = e^{t-t'} E[s_{t'}(X_{t'}) | X_t = x], with the conditional expectation computed
    independently of dsclab.studies.score_learning.bootstrap: X_{t'} ~ q_{t'} exactly, weighted by the OU transition
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
        # the Rao–Blackwellised target has the same conditional mean: E[T_RB(x, X_{t'}) | X_t = x] = s_t(x)
        m = y.shape[0]
        rb = losses.bsm_rb_target(law.score, x[None].expand(m, -1), y, torch.full((m,), t, dtype=torch.float64),
                                  torch.full((m,), tp, dtype=torch.float64))
        mu_rb = (w[:, None] * rb).sum(0)
        se_rb = torch.sqrt((w[:, None] ** 2 * (rb - mu_rb) ** 2).sum(0))
        assert ((lhs - mu_rb).abs() <= Z * se_rb + 1e-12).all(), (lhs, mu_rb, se_rb)
        # negative control: the one-step DSM part alone, -(x - e^{-Delta} X_{t'})/sigma_t^2, is biased
        one_step = -(x[None] - math.exp(-dl) * y) / noise.sigma2(t)
        mu_1 = (w[:, None] * one_step).sum(0)
        se_1 = torch.sqrt((w[:, None] ** 2 * (one_step - mu_1) ** 2).sum(0))
        assert ((lhs - mu_1).abs() > Z * se_1).any()


def test_posterior_draws_have_the_tweedie_mean():
    """E[X_0 | X_t = x] from ``posterior_x0`` equals the exact denoiser (Tweedie)."""
    law = _mixture(3)
    g = torch.Generator().manual_seed(1)
    x = law.sample(6, g, t=0.5)
    draws = bt.posterior_x0(law, x, 0.5, 20_000, g)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - law.denoise(x, 0.5)).abs() <= Z * se).all()


@pytest.mark.parametrize("rao_blackwell", [False, True])
@pytest.mark.parametrize("mode", ["trajectory", "independent"])
def test_bsm_targets_with_the_exact_score_are_unbiased(mode, rao_blackwell):
    """With h_hat = s, the BSM targets T = e^{t-t'} s_{t'}(X_{t'}) and T_RB satisfy
    E[T | X_t] = s_t(X_t): the residual T - s_t(X_t) is orthogonal to functions of X_t
    (1, x_1, x_2, tanh x_1). Rows are independent (pairs within a row are not, in trajectory
    mode): SE over rows."""
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

    if rao_blackwell:
        mean, se = moments(losses.bsm_rb_target(law.score, xt, prev, t, tp))
        # negative control: the pure target's gain e^{t - t'} in place of e^{-(t-t')} sigma_{t'}^2/sigma_t^2
        bad_target = -(xt - torch.exp(tp - t)[:, None] * prev) / noise.sigma2(t)[:, None] \
            + torch.exp(t - tp)[:, None] * law.score(prev, tp)
    else:
        mean, se = moments(losses.bsm_target(law.score, prev, t, tp))
        # negative control: dropping the factor e^{t - t'} biases the target detectably
        bad_target = law.score(prev, tp)
    assert (mean.abs() <= Z * se).all(), mean / se
    bad, se_bad = moments(bad_target)
    assert (bad.abs() > Z * se_bad).any()


# ------------------------------------------------------------------------------------------
# Conditional variances of the targets, Gaussian data (closed forms in the docstring of
# dsclab.studies.score_learning.bootstrap.gaussian_target_variance)
# ------------------------------------------------------------------------------------------

CLOSED_KEY = {"dsm": "dsm", "bsm": "mixed", "bsm_rb": "rb_mixed"}


@pytest.mark.parametrize("t,tp", [(0.15, 0.1), (1.5, 1.2)])
@pytest.mark.parametrize("estimator,mix", [("dsm", 0.0), ("bsm", 0.0), ("bsm", 0.3), ("bsm_rb", 0.0), ("bsm_rb", 0.3)])
def test_target_variances_match_closed_forms_for_gaussian_data(t, tp, estimator, mix):
    """Per point x ~ q_t, the unbiased sample variance of R target draws has mean tr Cov[T | X_t = x],
    which is x-independent for Gaussian data: the mean over points must match the closed form
    within 5 SE (SE over points)."""
    law = distributions.make("gaussian", 3, cond=10.0, mean=0.5)
    g = torch.Generator().manual_seed(3)
    x = law.sample(300, g, t=t)
    draws = bt.target_draws(law, x, t, tp, 64, g, estimator=estimator, score_prev=law.score, t_c=0.0, mix=mix,
                            dtype=torch.float64)
    v, v1 = bt.conditional_variance(draws)
    cf = bt.gaussian_target_variance(law.lam[0].numpy(), t, tp, mix)
    want = cf[CLOSED_KEY[estimator]]
    se = v.std() / math.sqrt(v.numel())
    assert abs(v.mean().item() - want) <= Z * se.item(), (v.mean().item(), want, se.item())
    # coordinate 1 alone (the covariance is diagonal): the closed form with its variance only
    cf1 = bt.gaussian_target_variance([float(law.cov()[0, 0])], t, tp, mix)
    want1 = cf1[CLOSED_KEY[estimator]]
    assert abs(v1.mean().item() - want1) <= Z * (v1.std() / math.sqrt(v1.numel())).item()


def test_closed_form_condition_for_bsm_to_win():
    """(e^{2 Delta} - 1)(e^{2t} - 1) < 1 for unit-scale data: the variance ratio crosses 1 exactly
    at the step ``bsm_wins_max_step`` returns."""
    for t in (0.5, 1.0, 2.0):
        dl = bt.bsm_wins_max_step(1.0, t)
        assert math.isclose(math.expm1(2 * dl) * math.expm1(2 * t), 1.0, rel_tol=1e-9)
        below = bt.gaussian_target_variance([1.0], t, t - 0.9 * dl)
        above = bt.gaussian_target_variance([1.0], t, t - 1.1 * dl)
        assert below["bsm"] < below["dsm"] and above["bsm"] > above["dsm"]


def test_rb_target_variance_is_at_most_dsm_on_a_grid():
    """Var(T_RB | X_t) <= Var(T_dsm | X_t) at every (t, t', lam) of a grid, the closed form equal to
    the law of total variance V_dsm - a^2 Var[X_0 | X_{t'}] / sigma_t^4 (Var[X_0 | X_{t'}] =
    lam sigma_{t'}^2 / v'), with equality as t' -> 0 (T_RB -> T_dsm); mixing in DSM at weight w
    gives V_rb + w^2 (V_dsm - V_rb), between the two."""
    for lam in (0.01, 0.3, 1.0, 5.0, 100.0):
        for t in (0.02, 0.3, 1.0, 2.5, 6.0):
            for frac in (0.05, 0.3, 0.7, 0.95, 0.999):
                tp = frac * t
                v = bt.gaussian_target_variance([lam], t, tp, mix=0.2)
                assert v["bsm_rb"] <= v["dsm"] * (1 + 1e-12), (lam, t, tp)
                a2, s2, sp2 = math.exp(-2 * t), noise.sigma2(t), noise.sigma2(tp)
                vp = math.exp(-2 * tp) * lam + sp2
                assert math.isclose(v["bsm_rb"], v["dsm"] - a2 * lam * sp2 / (s2 * s2 * vp), rel_tol=1e-7, abs_tol=1e-9 * v["dsm"])
                assert v["bsm_rb"] <= v["rb_mixed"] <= v["dsm"]
                assert math.isclose(v["rb_mixed"], v["bsm_rb"] + 0.04 * (v["dsm"] - v["bsm_rb"]), rel_tol=1e-12)
            near = bt.gaussian_target_variance([lam], t, 1e-12 * t)
            assert math.isclose(near["bsm_rb"], near["dsm"], rel_tol=1e-6)
    # the issue's numbers: X_0 ~ N(0, 1), t = 1, t' = 0.7
    v = bt.gaussian_target_variance([1.0], 1.0, 0.7)
    assert (round(v["dsm"], 3), round(v["bsm"], 3), round(v["bsm_rb"], 3)) == (0.157, 0.822, 0.020)
    assert bt.target_variance_ratio("bsm_rb", [1.0], 1.0, 0.7) == pytest.approx(v["bsm_rb"] / v["dsm"])
    assert bt.target_variance_ratio("bsm_rb_oracle", [1.0], 1.0, 0.7, t_c=1.0) == 1.0  # DSM at t <= t_c


@pytest.mark.parametrize("estimator,mix", [("dsm", 0.0), ("bsm", 0.0), ("bsm_rb", 0.0), ("bsm_rb", 0.3)])
def test_bias_of_a_perturbed_lower_noise_score_matches_the_closed_form(estimator, mix):
    """h_hat = s_{t'} + eta g with g(y) = c + beta * y, Gaussian data N(mu, diag lam): per point x
    and coordinate, the mean of R target draws minus s_t(x) matches
    gain * eta * E[g(X_{t'}) | X_t = x] (``gaussian_target_bias``) within 5 SE, the gain being
    e^{Delta} for the pure target and the damping factor e^{-Delta} sigma_{t'}^2/sigma_t^2 for T_RB."""
    law = distributions.make("gaussian", 3, cond=10.0, mean=0.5)
    mu, lam = law.means[0].numpy(), torch.diagonal(law.cov()).numpy()  # its covariance is diagonal (U a permutation)
    g = torch.Generator().manual_seed(8)
    t, tp, eta, R = 1.2, 0.9, 0.4, 20_000
    c, beta = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64), torch.tensor([0.5, 0.2, -0.4], dtype=torch.float64)
    h_hat = lambda y, s: law.score(y, s) + eta * (c + beta * y)
    x = law.sample(6, g, t=t)
    draws = bt.target_draws(law, x, t, tp, R, g, estimator=estimator, score_prev=h_hat, mix=mix, dtype=torch.float64)
    bias = (draws.mean(0) - law.score(x, t)).numpy()
    se = (draws.std(0) / math.sqrt(R)).numpy()
    want = bt.gaussian_target_bias(mu, lam, t, tp, x.numpy(), eta, c.numpy(), beta.numpy(), estimator=estimator, mix=mix)
    assert (np.abs(bias - want) <= Z * se + 1e-12).all(), (bias, want, se)
    gain = bt.perturbation_gain(estimator, t, tp, mix=mix)
    dl = t - tp
    expected_gain = {"dsm": 0.0, "bsm": math.exp(dl),
                     "bsm_rb": math.exp(-dl) * noise.sigma2(tp) / noise.sigma2(t)}[estimator] * (1 - mix)
    assert gain == pytest.approx(expected_gain, rel=1e-12)
    if estimator == "bsm_rb":
        assert gain < 1.0
        # negative control: the pure target's gain e^{Delta} in place of the damping factor is far off
        amplified = want * math.exp(dl) * (1 - mix) / gain
        assert (np.abs(bias - amplified) > Z * se).any()
