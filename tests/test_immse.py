"""Likelihood from the MMSE curve (dsclab.immse; science.md §6), each check against a closed form.

Tolerances: Monte Carlo estimates are compared within Z standard errors computed from the same
draws (Z = 5 for single estimates: a false failure has probability ~6e-7 per comparison; the
ensemble test uses the brief's 3 SE one-sided). Seeds are fixed, so the outcome is deterministic.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dsclab import immse, noise
from dsclab.distributions.gaussian import GaussianMixture, gaussian, gaussian_mixture
from dsclab.distributions.rademacher import Rademacher, rademacher

Z = 5.0


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- closed forms for X ~ N(0, diag lam) with its exact (linear) denoiser ----------------------
# Per coordinate, with w = alpha + log lam, u = e^w:  x_hat - x = -x/(1+u) + sqrt(gamma) lam eps/(1+u),
# so  E_eps mmse_eps(x, alpha) = (x^2/lam) sigmoid'(w) + sigmoid(w)^2.
# Over [a, b] (sigmoid^2 = sigmoid - sigmoid', int sigmoid = softplus):
#   matched :  h_G + 1/2 sum_i (x_i^2/lam_i - 1) [sigmoid(b_i) - sigmoid(a_i)]
#   standard:  (d/2) log 2 pi e + 1/2 sum_i { (x_i^2/lam_i) [sigmoid]_{a_i}^{b_i} + [softplus]_{a_i}^{b_i}
#              - [sigmoid]_{a_i}^{b_i} - [softplus]_a^b },      a_i = a + log lam_i, b_i = b + log lam_i.
# For a, b -> -inf, +inf both give 1/2 sum (log 2 pi lam_i + x_i^2 / lam_i) = -log p(x).

def mmse_closed(x, alpha, lam):
    w = alpha[None, :, None] + torch.log(lam)[None, None, :]          # (m, k, d)
    s = torch.sigmoid(w)
    return ((x[:, None, :] ** 2 / lam) * s * (1 - s) + s * s).sum(-1)  # (m, k)


def truncated_expectation(x, lam, reference, a, b):
    ll = torch.log(lam)
    y2 = x ** 2 / lam
    ds = torch.sigmoid(b + ll) - torch.sigmoid(a + ll)
    if reference == "matched":
        return immse.gaussian_entropy(lam) + 0.5 * ((y2 - 1) * ds).sum(-1)
    dsp = F.softplus(b + ll) - F.softplus(a + ll)
    d_ref = F.softplus(torch.tensor(b, dtype=torch.float64)) - F.softplus(torch.tensor(a, dtype=torch.float64))
    return 0.5 * lam.numel() * math.log(2 * math.pi * math.e) + 0.5 * (y2 * ds + dsp - ds - d_ref).sum(-1)


def diag_gaussian(d=4, cond=10.0, scale=2.0):
    P = gaussian(d, cond=cond, scale=scale)
    return P, torch.diagonal(P.covs[0]).clone()  # eigenvalues in coordinate order


# --- building blocks ----------------------------------------------------------------------

def test_channel_is_ou_at_logsnr():
    alpha = torch.tensor([-6.0, -1.0, 0.0, 2.5, 15.0], dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=gen(0))
    eps = torch.randn(5, 3, dtype=torch.float64, generator=gen(1))
    xt, t = immse.channel(x, alpha, eps)
    assert torch.allclose(noise.logsnr(t), alpha, rtol=0, atol=1e-9)
    z = xt / noise.sigma(t)[:, None]  # z = sqrt(gamma) x + eps
    assert torch.allclose(z, torch.exp(alpha / 2)[:, None] * x + eps, rtol=1e-10, atol=1e-9)


def test_mmse_curve_gaussian_closed_form():
    P, lam = diag_gaussian()
    x = P.sample(3, gen(2))
    alpha = torch.linspace(-5, 8, 6, dtype=torch.float64)
    est = immse.mmse_eps(x, alpha, P.denoise, gen(3), n_eps=4000, return_se=True)
    ref = mmse_closed(x, alpha, lam)
    assert est.value.shape == (3, 6)
    assert ((est.value - ref).abs() <= Z * est.se).all()
    assert immse.mmse_eps(x, alpha, P.denoise, gen(3), n_eps=2).shape == (3, 6)


def test_denoiser_from_score_matches_denoise():
    P = gaussian_mixture(3, k=2, separation=3.0)
    x = P.sample(50, gen(4), t=0.3)
    t = torch.rand(50, dtype=torch.float64, generator=gen(5)) + 0.05
    den = immse.denoiser_from_score_fn(P.score)
    assert torch.allclose(den(x, t), P.denoise(x, t), atol=1e-12)


def test_logsnr_sampler_range_and_weights():
    loc, scale, clip = 0.7, 1.6, 4.0
    alpha, w = immse.sample_logsnr(200_000, loc, scale, gen(6), clip=clip)
    a, b = immse.logsnr_range(loc, scale, clip)
    assert alpha.min() >= a and alpha.max() <= b
    # E[w f] = int_a^b f: f = 1 gives b - a; f = sigmoid'(alpha) gives sigmoid(b) - sigmoid(a).
    for f, exact in [(torch.ones_like(alpha), b - a),
                     (torch.sigmoid(alpha) * torch.sigmoid(-alpha), math.tanh(b / 2) / 2 - math.tanh(a / 2) / 2)]:
        terms = w * f
        se = terms.std() / math.sqrt(terms.numel())
        assert abs(terms.mean().item() - exact) <= Z * se.item()
    # loc and scale from a spectrum: loc = -mean log lam, scale = sqrt(1 + 3/pi Var log lam)
    lam = torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64)
    l0, s0 = immse.loc_scale(lam)
    assert l0 == pytest.approx(0.0, abs=1e-12)
    assert s0 == pytest.approx(math.sqrt(1 + 3 / math.pi * (2 * math.log(4.0) ** 2 / 3)), rel=1e-12)
    assert immse.loc_scale(torch.ones(5)) == pytest.approx((0.0, 1.0))


# --- continuous estimator: Gaussian data, exact denoiser ------------------------------------

@pytest.mark.parametrize("reference", ["matched", "standard"])
def test_gaussian_truncated_estimator_closed_form(reference):
    """clip = 4 (the paper's): the estimate equals the closed-form truncated integral."""
    P, lam = diag_gaussian()
    x = P.sample(8, gen(7))
    loc, scale = immse.loc_scale(lam)
    a, b = immse.logsnr_range(loc, scale, 4.0)
    est = immse.nll_continuous(x, P.denoise, gen(8), lam=lam, reference=reference, n_alpha=8000, clip=4.0)
    expect = truncated_expectation(x, lam, reference, a, b)
    assert ((est.value - expect).abs() <= Z * est.se).all(), ((est.value - expect) / est.se)


@pytest.mark.parametrize("reference", ["matched", "standard"])
def test_gaussian_wide_range_gives_exact_nll(reference):
    """clip = 12: the dropped tails are ~e^{-12} and the estimate is -log p(x) itself."""
    P, lam = diag_gaussian()
    x = P.sample(8, gen(9))
    a, b = immse.logsnr_range(*immse.loc_scale(lam), 12.0)
    exact = -P.log_prob(x)
    assert torch.allclose(truncated_expectation(x, lam, reference, a, b), exact, atol=1e-3)
    est = immse.nll_continuous(x, P.denoise, gen(10), lam=lam, reference=reference, n_alpha=8000, clip=12.0)
    assert ((est.value - exact).abs() <= Z * est.se).all(), ((est.value - exact) / est.se)
    pd = immse.per_dim(est, 4)
    assert torch.allclose(pd.value * 4, est.value) and torch.allclose(pd.se * 4, est.se)


def test_standard_reference_truncation_factor():
    """Isotropic N(0, lam I): with the standard reference and clip = 4 the truncation bias is real
    (about 8 SE of the mean here) and the estimator follows the truncated closed form; for lam = 1
    (loc = 0, scale = 1) the closed form is h + 1/2 tanh(2) (||x||^2 - d): the tanh(2) factor."""
    d, m = 3, 16
    lam = torch.full((d,), 3.0, dtype=torch.float64)
    P = GaussianMixture([1.0], torch.zeros(1, d), torch.diag(lam)[None])
    x = P.sample(m, gen(11))
    a, b = immse.logsnr_range(*immse.loc_scale(lam), 4.0)
    est = immse.nll_continuous(x, P.denoise, gen(12), lam=lam, reference="standard", n_alpha=8000)
    expect = truncated_expectation(x, lam, "standard", a, b)
    exact = -P.log_prob(x)
    se_mean = est.se.pow(2).sum().sqrt() / m
    assert (est.value - expect).mean().abs() <= Z * se_mean
    assert (est.value - exact).mean().abs() >= Z * se_mean  # the truncation bias is resolved (~8 SE here)
    one = torch.ones(d, dtype=torch.float64)
    h = 0.5 * d * math.log(2 * math.pi * math.e)
    assert torch.allclose(truncated_expectation(x, one, "standard", -4.0, 4.0),
                          h + 0.5 * math.tanh(2.0) * ((x ** 2).sum(-1) - d), atol=1e-12)


def test_control_variate_is_unbiased_and_helps():
    P, lam = diag_gaussian()
    x = P.sample(4, gen(13))
    exact = -P.log_prob(x)
    on = immse.nll_continuous(x, P.denoise, gen(14), lam=lam, n_alpha=8000, clip=8.0)
    off = immse.nll_continuous(x, P.denoise, gen(15), lam=lam, n_alpha=8000, clip=8.0, control_variate=False)
    assert ((off.value - exact).abs() <= Z * off.se).all()
    assert (on.se < off.se / 3).all()


# --- discrete estimator: independent +-1 coordinates -----------------------------------------

def test_rademacher_matches_mixture_of_deltas():
    """Exact denoiser/score/density at t > 0 against the 2^d-component GaussianMixture (zero covariances)."""
    d, p = 3, 0.3
    R = rademacher(d, p=p)
    pts = torch.tensor(list(itertools.product([1.0, -1.0], repeat=d)), dtype=torch.float64)
    wts = torch.tensor([p ** (v == 1).sum().item() * (1 - p) ** (v == -1).sum().item() for v in pts])
    M = GaussianMixture(wts, pts, torch.zeros(len(pts), d, d, dtype=torch.float64))
    t = torch.tensor([0.02, 0.3, 1.0, 2.5, 0.3, 0.7], dtype=torch.float64)
    x = R.sample(6, gen(16), t=0.3)
    assert torch.allclose(R.denoise(x, t), M.denoise(x, t), atol=1e-10)
    assert torch.allclose(R.score(x, t), M.score(x, t), atol=1e-8)
    assert torch.allclose(R.log_prob(x, t), M.log_prob(x, t), atol=1e-10)
    # t = 0: a pmf summing to one over the lattice, identity denoiser on the lattice
    assert torch.exp(R.log_prob(pts)).sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(R.denoise(pts, 0.0), pts)
    assert R.entropy() == pytest.approx(-(torch.exp(R.log_prob(pts)) * R.log_prob(pts)).sum().item(), abs=1e-12)
    # sample moments of q_0: mean 2p - 1 per coordinate (Bernoulli SE)
    s = R.sample(20_000, gen(17))
    se = math.sqrt(4 * p * (1 - p) / 20_000)
    assert ((s.mean(0) - (2 * p - 1)).abs() <= Z * se).all()


def test_discrete_estimator_rademacher_pointwise():
    """-log P(x) = 1/2 int mmse_eps(x, alpha) d alpha at every lattice point (clip = 12: tails dropped ~e^{-12})."""
    d, p = 3, 0.3
    R = rademacher(d, p=p)
    x = torch.tensor(list(itertools.product([1.0, -1.0], repeat=d)), dtype=torch.float64)
    lam = torch.diagonal(R.cov())
    est = immse.nll_discrete(x, R.denoise, gen(18), lam=lam, n_alpha=20_000, clip=12.0)
    exact = -R.log_prob(x)
    assert ((est.value - exact).abs() <= Z * est.se).all(), ((est.value - exact) / est.se)
    # mismatch: the Bayes denoiser of p' = 0.6 returns -log P_{p'}(x) at the same points
    Q = rademacher(d, p=0.6)
    est_q = immse.nll_discrete(x, Q.denoise, gen(19), lam=lam, n_alpha=20_000, clip=12.0)
    exact_q = -Q.log_prob(x)
    assert ((est_q.value - exact_q).abs() <= Z * est_q.se).all(), ((est_q.value - exact_q) / est_q.se)


# --- mismatch: a denoiser Bayes-optimal for Q returns -log q(x) -----------------------------

def test_mismatched_denoisers_return_their_own_nll():
    """Data from the mixture P; denoisers Bayes for Q = P with wrong weights, and for the
    moment-matched Gaussian N(mu_P, Sigma_P): each estimate equals -log q(x) of its own law."""
    P = gaussian_mixture(2, k=2, separation=4.0, std=1.0)
    Q = GaussianMixture([0.8, 0.2], P.means, P.covs)                 # wrong weights
    G = immse.moment_matched_gaussian(P.mean(), P.cov())            # linear denoiser
    lam = immse.spectrum(P.cov())
    x = P.sample(8, gen(20))
    for law, seed in [(P, 21), (Q, 22), (G, 23)]:
        est = immse.nll_continuous(x, law.denoise, gen(seed), lam=lam, n_alpha=8000, clip=12.0)
        exact = -law.log_prob(x)
        assert ((est.value - exact).abs() <= Z * est.se).all(), (law, (est.value - exact) / est.se)


# --- ensembles: never below the entropy ------------------------------------------------------

def test_ensemble_not_below_entropy_mixture():
    P = gaussian_mixture(2, k=2, separation=4.0, std=1.0)
    members = {
        "exact": P,
        "wrong_weights": GaussianMixture([0.8, 0.2], P.means, P.covs),
        "wrong_separation": GaussianMixture(P.weights, 0.7 * P.means, P.covs),
        "gaussian": immse.moment_matched_gaussian(P.mean(), P.cov()),
    }
    lam = immse.spectrum(P.cov())
    big = P.sample(50_000, gen(24))
    nlp = -P.log_prob(big)
    H, H_se = nlp.mean().item(), (nlp.std() / math.sqrt(nlp.numel())).item()  # true entropy by MC
    m = 500
    x = P.sample(m, gen(25))
    data_se = nlp.std().item() / math.sqrt(m)  # the data set's own sampling error about H
    for names, seed in [(list(members), 26), (["wrong_weights", "wrong_separation", "gaussian"], 27)]:
        ens = immse.ensemble_nll(x, [members[k].denoise for k in names], gen(seed), lam=lam, n_alpha=200)
        se = math.sqrt(ens.se.item() ** 2 + data_se ** 2 + H_se ** 2)
        assert ens.value.item() >= H - 3 * se, (names, ens.value.item(), H, se)
        if "exact" in names:  # with the exact member present the ensemble is close to H
            assert abs(ens.value.item() - H) <= Z * se


def test_ensemble_not_below_entropy_discrete():
    d, p = 4, 0.3
    R = rademacher(d, p=p)
    H = R.entropy()  # exact
    lam = torch.diagonal(R.cov())
    m = 500
    x = R.sample(m, gen(28))
    nlp = -R.log_prob(x)
    data_se = nlp.std().item() / math.sqrt(m)
    dens = [Rademacher(d, q).denoise for q in (0.3, 0.5, 0.15)]
    for members in [dens, dens[1:]]:
        ens = immse.ensemble_nll(x, members, gen(29), lam=lam, discrete=True, n_alpha=300, clip=12.0)
        se = math.sqrt(ens.se.item() ** 2 + data_se ** 2)
        assert ens.value.item() >= H - 3 * se, (ens.value.item(), H, se)


def test_ensemble_is_the_pointwise_min_of_the_members_closed_form_curves():
    """An independent check of what the ensemble computes (replacing ``ensemble <= members``,
    which holds by construction). Data X ~ N(0, diag lam), members the linear denoisers of
    N(0, diag mu_k), mu_1 = 3 lam (over-dispersed) and mu_2 = lam / 3. Per coordinate, with
    gamma = e^alpha, x_hat = sqrt(gamma) mu z / (1 + gamma mu) for z = sqrt(gamma) x + eps, so the
    expected eps-MSE is gamma (lam + gamma mu^2) / (1 + gamma mu)^2 (mu = lam: sigmoid(alpha + log lam)).
    The two curves cross (mu_2 wins at low SNR, mu_1 at high), so the expected ensemble,
    h + 1/2 int [min_k mse_k - mmse_ref] over the truncated range (quadrature), lies 0.074 nats below
    the best member's. Over R = 6 independent data sets the mean estimate must sit within 5
    standard errors (from the replicates' spread: data, alpha and eps) of it, every member within 5
    of its own closed form, and the ensemble below the best member by more than 5 paired standard
    errors (a mean of the best member alone would not be)."""
    import numpy as np

    from dsclab.seeds import derive_seed, generator

    torch.set_num_threads(1)  # tiny tensors
    lam = torch.tensor([1.0, 0.25], dtype=torch.float64)
    mus = [3.0 * lam, lam / 3.0]
    law = lambda v: GaussianMixture([1.0], torch.zeros(1, 2, dtype=torch.float64), torch.diag(v)[None])
    loc, scale = immse.core.loc_scale(lam)
    a, b = immse.core.logsnr_range(loc, scale, 4.0)
    grid = np.linspace(a, b, 100_001)
    g = np.exp(grid)[:, None]
    curves = [(g * (lam.numpy() + g * mu.numpy() ** 2) / (1 + g * mu.numpy()) ** 2).sum(-1) for mu in mus]
    ref = immse.core.mmse_gaussian(torch.as_tensor(grid), lam).numpy()
    h = immse.core.gaussian_entropy(lam)
    closed = lambda c: h + 0.5 * float(np.trapezoid(c - ref, grid))
    want_members = np.array([closed(c) for c in curves])
    want_ens = closed(np.minimum(*curves))
    assert want_ens < want_members.min() - 0.05
    R = 6
    ens, mem = np.empty(R), np.empty((R, 2))
    for r in range(R):
        gr = generator(derive_seed("test-immse-ensemble-closed-form", r))
        x = torch.randn(1000, 2, generator=gr, dtype=torch.float64) * lam.sqrt()
        e = immse.ensemble_nll(x, [law(mu).denoise for mu in mus], gr, lam=lam, n_alpha=128)
        ens[r], mem[r] = e.value.item(), e.members.numpy()
    se = lambda v: float(np.std(v, ddof=1) / math.sqrt(R))
    assert abs(ens.mean() - want_ens) < Z * se(ens), (ens.mean(), want_ens, se(ens))
    for k in range(2):
        assert abs(mem[:, k].mean() - want_members[k]) < Z * se(mem[:, k]), (k, mem[:, k].mean(), want_members[k])
    gap = mem[:, 0] - ens  # member 0 is the better one
    assert gap.mean() > Z * se(gap), (gap.mean(), se(gap))
