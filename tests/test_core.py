"""Conventions, exact scores and the DSM loss against closed forms."""
import math

import numpy as np
import pytest
import torch

from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

from dsclab import distributions, noise
from dsclab.distributions.gaussian import GaussianMixture
from dsclab.losses import dsm_loss
from dsclab.seeds import derive_seed, generator


def test_noise_conversions_round_trip():
    t = np.array([1e-4, 1e-2, 0.3, 1.0, 5.0])
    np.testing.assert_allclose(noise.t_from_snr(noise.snr(t)), t, rtol=1e-10)
    np.testing.assert_allclose(noise.t_from_logsnr(noise.logsnr(t)), t, rtol=1e-10)
    np.testing.assert_allclose(noise.snr(t), np.exp(-2 * t) / (1 - np.exp(-2 * t)), rtol=1e-12)
    np.testing.assert_allclose(noise.sigma2(t) + noise.mean_coef(t) ** 2, 1.0, rtol=1e-14)
    assert noise.sl_time(0.5) == pytest.approx(1 / math.expm1(1.0))
    tt = torch.tensor(t)
    torch.testing.assert_close(noise.logsnr(tt), torch.tensor(noise.logsnr(t)))


@pytest.mark.parametrize("schedule", ["uniform", "exp"])
@pytest.mark.parametrize("steps", [1, 7, 64])
def test_time_grid(schedule, steps):
    ts = noise.time_grid(5.0, 1e-3, steps, schedule)
    assert len(ts) == steps + 1 and ts[0] == 5.0 and ts[-1] == 1e-3
    assert np.all(np.diff(ts) < 0)
    if schedule == "exp" and steps == 64:
        h = -np.diff(ts)
        late = ts[:-1] < 1
        # geometric late: h_k / t_k is constant below t = 1 (up to the one interior split)
        ratio = h[late] / ts[:-1][late]
        assert ratio.std() / ratio.mean() < 0.25


FAMILIES = [("gaussian", {"cond": 10.0}), ("gaussian_mixture", {"k": 3, "separation": 3.0, "std": 0.7})]


@pytest.mark.parametrize("name,params", FAMILIES)
@pytest.mark.parametrize("t", [0.0, 0.05, 0.7])
def test_exact_score_is_gradient_of_log_density(name, params, t):
    dist = distributions.make(name, 5, **params)
    g = torch.Generator().manual_seed(0)
    x = dist.sample(64, g, t=t).requires_grad_()
    tt = t if t > 0 else 0.0
    (grad,) = torch.autograd.grad(dist.log_prob(x, tt).sum(), x)
    torch.testing.assert_close(dist.score(x.detach(), tt), grad, rtol=1e-9, atol=1e-9)


def test_per_point_times_match_scalar_times():
    dist = distributions.make("gaussian_mixture", 3, k=2)
    g = torch.Generator().manual_seed(1)
    x = dist.sample(10, g, t=0.2)
    ts = torch.linspace(0.01, 2.0, 10, dtype=torch.float64)
    per = dist.score(x, ts)
    one = torch.stack([dist.score(x[i:i + 1], float(ts[i]))[0] for i in range(10)])
    torch.testing.assert_close(per, one)


def test_pushforward_moments_by_monte_carlo():
    """q_t of N(mu, Sigma) is N(e^-t mu, e^-2t Sigma + sigma_t^2 I): the moments of forward-noised
    samples and of the exact sampler of q_t (``dist.sample(m, g, t=t)``) each agree with it within
    5 standard errors."""
    dist = distributions.make("gaussian", 3, mean=1.0, cond=4.0)
    g = generator(derive_seed("test-core-pushforward"))
    t, m = 0.4, 200_000
    x0 = dist.sample(m, g)
    forward = noise.mean_coef(t) * x0 + noise.sigma(t) * torch.randn(m, 3, generator=g, dtype=torch.float64)
    cov_t = math.exp(-2 * t) * dist.cov() + noise.sigma2(t) * torch.eye(3, dtype=torch.float64)
    se_mean = torch.sqrt(torch.diagonal(cov_t) / m)
    se_var = torch.sqrt(2 * torch.diagonal(cov_t) ** 2 / m)  # var of a Gaussian sample variance: 2 s^4 / m
    for xt in (forward, dist.sample(m, g, t=t)):
        assert ((xt.mean(0) - math.exp(-t) * dist.mean()).abs() < 5 * se_mean).all()
        assert ((xt.var(0) - torch.diagonal(cov_t)).abs() < 5 * se_var).all()


def _mixture():
    """Three components with unequal weights and full, unequal covariances in d = 3."""
    gg = generator(derive_seed("test-core-mixture"))
    A = torch.randn(3, 3, 3, generator=gg, dtype=torch.float64)
    covs = A @ A.transpose(1, 2) / 3 + 0.2 * torch.eye(3, dtype=torch.float64)
    means = torch.tensor([[2.0, 0.0, 0.0], [-1.0, 1.5, 0.0], [0.0, -1.0, 2.0]], dtype=torch.float64)
    return GaussianMixture([0.2, 0.5, 0.3], means, covs), np.array([0.2, 0.5, 0.3]), means.numpy(), covs.numpy()


@pytest.mark.parametrize("t", [0.0, 0.05, 0.7])
def test_log_prob_matches_scipy_on_the_pushed_components(t):
    """log q_t(x) against scipy, component by component: q_t = sum_j w_j N(e^-t mu_j, e^-2t C_j +
    sigma_t^2 I) (logsumexp of scipy's multivariate-normal log densities); the product Rademacher law
    (p of +1) per coordinate p N(e^-t, sigma_t^2) + (1 - p) N(-e^-t, sigma_t^2). Independent of the
    library's shared density/score helper, so with ``test_exact_score_is_gradient_of_log_density``
    it pins the score too. rtol 1e-10: float64 against float64."""
    law, w, mu, C = _mixture()
    x = law.sample(40, generator(derive_seed("test-core-logprob", t)), t=t)
    a, s2 = math.exp(-t), noise.sigma2(t)
    comps = np.stack([multivariate_normal(a * mu[j], a * a * C[j] + s2 * np.eye(3)).logpdf(x.numpy()) + math.log(w[j])
                      for j in range(3)])
    np.testing.assert_allclose(law.log_prob(x, t).numpy(), logsumexp(comps, axis=0), rtol=1e-10)
    if t > 0:  # the Rademacher law has a density only for t > 0
        p = 0.3
        rad = distributions.make("rademacher", 4, p=p)
        y = rad.sample(40, generator(derive_seed("test-core-rademacher", t)), t=t).numpy()
        sd = math.sqrt(s2)
        want = np.logaddexp(math.log(p) + norm.logpdf(y, a, sd), math.log1p(-p) + norm.logpdf(y, -a, sd)).sum(1)
        np.testing.assert_allclose(rad.log_prob(torch.as_tensor(y), t).numpy(), want, rtol=1e-10)


def test_sample_at_t_has_the_moments_of_q_t():
    """``dist.sample(m, g, t=t)`` against the closed-form moments of the mixture q_t: mean
    sum_j w_j e^-t mu_j and covariance sum_j w_j (C_j(t) + m_j m_j^T) - mean mean^T, each entry
    within 5 standard errors (of a mean: sd / sqrt(m); of a covariance entry: the sd of the centred
    products over the sample, / sqrt(m), which does not assume Gaussian data)."""
    law, w, mu, C = _mixture()
    t, m = 0.3, 200_000
    x = law.sample(m, generator(derive_seed("test-core-sample-at-t")), t=t).numpy()
    a, s2 = math.exp(-t), noise.sigma2(t)
    mt = a * mu
    mean = (w[:, None] * mt).sum(0)
    cov = sum(w[j] * (a * a * C[j] + s2 * np.eye(3) + np.outer(mt[j], mt[j])) for j in range(3)) - np.outer(mean, mean)
    assert (np.abs(x.mean(0) - mean) < 5 * x.std(0) / math.sqrt(m)).all()
    xc = x - x.mean(0)
    prods = xc[:, :, None] * xc[:, None, :]
    assert (np.abs(prods.mean(0) - cov) < 5 * prods.std(0) / math.sqrt(m)).all()


def test_denoiser_is_tweedie_and_exact_for_gaussian():
    """For N(0, diag lam), E[X0 | X_t = x] = e^-t lam / (e^-2t lam + sigma^2) x."""
    dist = distributions.make("gaussian", 4, cond=8.0)
    g = torch.Generator().manual_seed(3)
    t = 0.3
    x = dist.sample(50, g, t=t)
    lam = torch.diagonal(dist.cov())
    expect = math.exp(-t) * lam / (math.exp(-2 * t) * lam + noise.sigma2(t)) * x
    torch.testing.assert_close(dist.denoise(x, t), expect)


def _exact_eps_model(dist):
    return lambda x, t: noise.eps_from_score(dist.score(x, t), t)


def test_dsm_loss_constant_for_gaussian():
    """At the exact score E[loss at t] = d - sigma_t^2 tr(Sigma_t^{-1}) (docstring of dsm_loss)."""
    dist = distributions.make("gaussian", 6, cond=20.0)
    g = torch.Generator().manual_seed(4)
    m, t = 200_000, 0.2
    x0 = dist.sample(m, g)
    tt = torch.full((m,), t, dtype=torch.float64)
    z = torch.randn(m, 6, generator=g, dtype=torch.float64)
    loss = dsm_loss(_exact_eps_model(dist), x0, tt, z)
    lam_t = math.exp(-2 * t) * torch.diagonal(dist.cov()) + noise.sigma2(t)
    expect = 6 - noise.sigma2(t) * (1 / lam_t).sum().item()
    se = loss.std().item() / math.sqrt(m)
    assert abs(loss.mean().item() - expect) < 5 * se


def test_dsm_loss_smaller_at_exact_score():
    """The exact score minimises DSM: a perturbed score pays E||sigma (s_hat - s)||^2 more,
    on the same data, times and noise (paired, so the comparison is exact up to MC error)."""
    dist = distributions.make("gaussian_mixture", 3, k=2)
    g = torch.Generator().manual_seed(5)
    m = 100_000
    x0 = dist.sample(m, g)
    t = 0.01 * (200.0 ** torch.rand(m, generator=g, dtype=torch.float64))
    z = torch.randn(m, 3, generator=g, dtype=torch.float64)
    exact = _exact_eps_model(dist)
    shift = torch.tensor([0.3, 0.0, -0.2], dtype=torch.float64)
    pert = lambda x, tt: exact(x, tt) + shift  # eps_hat off by a constant
    diff = dsm_loss(pert, x0, t, z) - dsm_loss(exact, x0, t, z)
    # E[diff] = ||shift||^2 (cross term 2 shift . E[eps_hat - Z | X_t] vanishes at the exact score)
    se = diff.std().item() / math.sqrt(m)
    assert diff.mean().item() > 0
    assert abs(diff.mean().item() - (shift ** 2).sum().item()) < 5 * se
