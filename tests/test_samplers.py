"""Samplers, Brownian noise, exact Gaussian propagation and 1-D quadrature KL (science.md §3).

Settings shared by the convergence tests: T = 5, t_min = 1e-3, the 'exp' schedule (uniform for
t >= 1, geometric below: the schedule the discretisation bounds are stated for, and the one on
which every scheme shows its asymptotic rate from NFE ~ 32 on), and a start exactly at q_T so that
the KL is pure discretisation error (with N(0, I) at T = 5 the initialisation error would add
~ e^{-4T} ~ 2e-9 per unit eigenvalue gap, below every KL compared here anyway).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from dsclab import noise, noise_sources, samplers
from dsclab.distributions import GaussianMixture, make
from dsclab.studies.sampler_convergence.exact_kl import mixture1d, product_sampler_kl, sampler_kl_1d
from dsclab.studies.sampler_convergence.gaussian_exact import gaussian_kl, gaussian_score, sampler_kl, sampler_law, target_law
from dsclab.registry import RegistryError, declare
from dsclab.noise_sources import BrownianNoise, GaussianNoise
from dsclab.samplers import NFE_PER_STEP, SAMPLERS

T, T_MIN, SCHED = 5.0, 1e-3, "exp"
SDE_SAMPLERS = ["euler_maruyama", "exponential_integrator", "srk", "sra1", "shark"]


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (tests/conftest.py)


def grid(name: str, nfe: int, t_max: float = T, t_min: float = T_MIN):
    return noise.time_grid(t_max, t_min, samplers.steps_for_nfe(name, nfe), SCHED)


def rotated_gaussian(d: int, seed: int = 0) -> GaussianMixture:
    """N(mu, Q diag(lam) Q^T) with a random rotation: a full (non-diagonal) covariance."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.logspace(0, -1, d)
    mu = rng.normal(size=d) * 0.5
    return GaussianMixture([1.0], mu[None], (q @ np.diag(lam) @ q.T)[None])


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------

def test_registry_complete():
    for name in ["euler_maruyama", "exponential_integrator", "srk", "sra1", "shark", "heun"]:
        assert name in SAMPLERS and name in NFE_PER_STEP and name in samplers.SAMPLER_ORDERS
    assert NFE_PER_STEP["srk"] == NFE_PER_STEP["heun"] == NFE_PER_STEP["sra1"] == NFE_PER_STEP["shark"] == 2
    assert samplers.steps_for_nfe("srk", 64) == 32 and samplers.steps_for_nfe("euler_maruyama", 64) == 64


def test_facts_are_declared_on_the_samplers():
    """NFE_PER_STEP and SAMPLER_ORDERS are views of the attributes declared on each sampler; the
    declared ``levy_area`` is what a one-step probe shows (the output moves with H iff it is used)."""
    assert list(SAMPLERS) == list(SAMPLERS.builtin_names) == [
        "euler_maruyama", "exponential_integrator", "srk", "sra1", "shark", "heun"]
    assert dict(NFE_PER_STEP) == {"euler_maruyama": 1, "exponential_integrator": 1, "srk": 2, "sra1": 2,
                                  "shark": 2, "heun": 2}
    assert samplers.SAMPLER_ORDERS["srk"] == (1.0, 2.0) and samplers.SAMPLER_ORDERS["shark"] == (1.5, 2.0)
    x, z = torch.full((1, 1), 0.3, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    for name, fn in SAMPLERS.items():
        assert NFE_PER_STEP[name] == fn.nfe_per_step and samplers.SAMPLER_ORDERS[name] == fn.order
        outs = [fn(lambda y, t: -torch.tanh(y) - y, x, np.array([1.0, 0.5]), noise=lambda a, b, h=h: (z + 0.1, h))
                for h in (z, z + 1.0)]
        assert (not torch.equal(*outs)) == fn.levy_area, name
    with pytest.raises(TypeError):
        NFE_PER_STEP["srk"] = 3  # read-only


def test_plugin_sampler_declares_its_facts():
    """A sampler added at run time (as an entry point would add it) appears in the views with its
    declared facts; one that does not declare nfe_per_step is refused with one line."""
    @declare(nfe_per_step=3, order=(1.0, 1.0))
    def sample_triple_em(score, x, ts, *, noise):
        return samplers.sample_euler_maruyama(score, x, ts, noise=noise)

    SAMPLERS.register("triple_em", sample_triple_em)
    try:
        assert NFE_PER_STEP["triple_em"] == 3 and samplers.steps_for_nfe("triple_em", 30) == 10
        assert samplers.SAMPLER_ORDERS["triple_em"] == (1.0, 1.0)
    finally:
        SAMPLERS.unregister("triple_em")
    assert "triple_em" not in NFE_PER_STEP

    def sample_undeclared(score, x, ts, *, noise):
        return x

    with pytest.raises(RegistryError) as e:
        SAMPLERS.register("undeclared", sample_undeclared)
    assert "\n" not in str(e.value) and "sampler 'undeclared'" in str(e.value) and "nfe_per_step" in str(e.value)
    assert "undeclared" not in SAMPLERS
    with pytest.raises(RegistryError, match="declares nfe_per_step=0"):
        SAMPLERS.register("zero", declare(nfe_per_step=0, order=(1.0, 1.0))(sample_undeclared))


def test_tableau_validation():
    with pytest.raises(ValueError):
        samplers.AdditiveSRKTableau("bad", c=(0.0, 1.0), A=((0.0, 1.0), (1.0, 0.0)), aW=(0, 0), aH=(0, 0),
                                    b=(0.5, 0.5), bW=1.0, bH=0.0, strong_order=1, weak_order=1, reference="")


def test_gaussian_score_matches_distribution():
    dist = rotated_gaussian(5)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in (1e-3, 0.3, 4.0):
        assert torch.allclose(gaussian_score(dist)(x, t), dist.score(x, t), atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# exact propagation: convergence, agreement with Monte Carlo, rates
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SAMPLERS))
def test_exact_kl_decreases_with_nfe(name):
    dist = make("gaussian", 4, cond=10.0, mean=0.5)
    kls = [sampler_kl(name, dist, grid(name, nfe), start="exact") for nfe in (8, 32, 128, 512)]
    assert all(b < a for a, b in zip(kls, kls[1:])), kls
    assert kls[-1] < 2e-4, kls
    # from N(0, I) at T = 5 the same holds (initialisation error ~1e-9 is far below these KLs)
    prior = [sampler_kl(name, dist, grid(name, nfe), start="prior") for nfe in (32, 512)]
    assert prior[1] < prior[0] and prior[1] < 2e-4


def test_gaussian_kl_closed_form():
    f64 = dict(dtype=torch.float64)
    m1, m2 = torch.tensor([0.3, -0.1], **f64), torch.tensor([0.0, 0.2], **f64)
    c1, c2 = torch.tensor([[1.0, 0.2], [0.2, 0.5]], **f64), torch.tensor([[0.8, -0.1], [-0.1, 0.7]], **f64)
    c2i = torch.linalg.inv(c2)
    dm = m2 - m1
    ref = 0.5 * (torch.trace(c2i @ c1) + dm @ c2i @ dm - 2 + torch.logdet(c2) - torch.logdet(c1))
    assert abs(gaussian_kl(m1, c1, m2, c2) - float(ref)) < 1e-12
    assert gaussian_kl(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_exact_law_matches_monte_carlo(name):
    """Mean and covariance of 20000 runs of the actual sampler agree with the exact law.

    Coarse grid (6 steps) so that the law differs clearly from the target; tolerance 5 standard
    errors: SE(mean_i) = sqrt(C_ii / m), SE(cov_ij) = sqrt((C_ii C_jj + C_ij^2) / m) (Gaussian law).
    """
    d, m = 3, 20000
    dist = rotated_gaussian(d, seed=1)
    ts = noise.time_grid(3.0, 1e-2, 6, SCHED)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(m, d, generator=gen, dtype=torch.float64)
    src = GaussianNoise((m, d), gen, dtype=torch.float64)
    y = SAMPLERS[name](dist.score, x0, ts, noise=src)
    mu, C = sampler_law(name, dist, ts, start="prior")
    se_mu = (torch.diagonal(C) / m).sqrt()
    assert ((y.mean(0) - mu).abs() <= 5 * se_mu).all()
    dv = torch.diagonal(C)
    se_c = ((dv[:, None] * dv[None, :] + C ** 2) / m).sqrt()
    assert ((torch.cov(y.T) - C).abs() <= 5 * se_c).all()
    # the check has power: the exact law is far (> 10 SE) from the target at this step count
    mt, Ct = target_law(dist, ts[-1])
    assert max(float(((mu - mt).abs() / se_mu).max()), float(((C - Ct).abs() / se_c).max())) > 10


def test_monte_carlo_with_brownian_noise():
    """srk and shark driven by BrownianNoise (which also supplies H) match the exact law (5 SE)."""
    d, m = 2, 20000
    dist = rotated_gaussian(d, seed=3)
    ts = noise.time_grid(3.0, 1e-2, 5, SCHED)
    for k, name in enumerate(["srk", "shark"]):
        src = BrownianNoise((m, d), 11 + k, t0=0.0, t1=3.0, dtype=torch.float64)
        x0 = torch.randn(m, d, generator=torch.Generator().manual_seed(5 + k), dtype=torch.float64)
        y = SAMPLERS[name](dist.score, x0, ts, noise=src)
        mu, C = sampler_law(name, dist, ts, start="prior")
        dv = torch.diagonal(C)
        assert ((y.mean(0) - mu).abs() <= 5 * (dv / m).sqrt()).all()
        assert ((torch.cov(y.T) - C).abs() <= 5 * ((dv[:, None] * dv[None, :] + C ** 2) / m).sqrt()).all()


def _kl_curve(name, dist, nfes):
    return np.array([sampler_kl(name, dist, grid(name, n), start="exact") for n in nfes])


def _nfe_to_reach(nfes, kls, level):
    """NFE at which the log-log interpolated KL curve first reaches ``level``."""
    lk, ln = np.log(kls), np.log(nfes)
    i = int(np.argmax(kls <= level))
    assert kls[i] <= level < kls[i - 1] and i > 0
    f = (math.log(level) - lk[i - 1]) / (lk[i] - lk[i - 1])
    return float(np.exp(ln[i - 1] + f * (ln[i] - ln[i - 1])))


def test_srk_doubles_the_exponential_integrator_rate():
    """Anisotropic Gaussian d = 32 (cond 10): weak order 2 versus 1 shows as KL ~ NFE^-4 vs NFE^-2.

    Measured (this grid): EI slope -2.09, srk -4.47; NFE for KL = 1e-4: EI ~1470, srk ~200.
    """
    dist = make("gaussian", 32, cond=10.0)
    nfes = np.array([32, 64, 128, 256, 512, 1024, 2048])
    ei = _kl_curve("exponential_integrator", dist, nfes)
    srk = _kl_curve("srk", dist, nfes[:5])
    fit = slice(0, 5)  # NFE 32..512
    s_ei = np.polyfit(np.log(nfes[fit]), np.log(ei[fit]), 1)[0]
    s_srk = np.polyfit(np.log(nfes[fit]), np.log(srk), 1)[0]
    assert -2.4 < s_ei < -1.8
    assert s_srk / s_ei >= 1.8, (s_srk, s_ei)
    assert _nfe_to_reach(nfes[:5], srk, 1e-4) <= 0.5 * _nfe_to_reach(nfes, ei, 1e-4)


def test_weak_orders_on_gaussian():
    """KL slope ~ -2 x weak order: EM/EI about -2, srk/SRA1/ShARK and the Heun ODE about -4."""
    dist = make("gaussian", 4, cond=10.0, mean=0.5)
    nfes = np.array([64, 128, 256, 512])
    for name in SAMPLERS:
        s = np.polyfit(np.log(nfes), np.log(_kl_curve(name, dist, nfes)), 1)[0]
        weak = samplers.SAMPLER_ORDERS[name][1]
        assert abs(s + 2 * weak) < 0.4 * weak, (name, s)


# ----------------------------------------------------------------------------------------------
# score error: every sampler levels off at the floor of its continuous-time limit
# ----------------------------------------------------------------------------------------------

def _continuous_floor(dist, eta, v, M, c):
    """KL to q_{t_min} of the exact perturbed dynamics, from the moment ODEs (solve_ivp, rtol 1e-11).

    Drift Y + c (s_t + eta g) with s_t(y) = -P_t (y - e^{-t} mu), g(y) = v + M y; c = 2 with noise
    sqrt(2) dW (reverse SDE), c = 1 without noise (probability-flow ODE):
        dm/dtau = A m + a,  dC/dtau = A C + C A^T + (2 I if SDE),
        A = I - c P_t + c eta M,  a = c P_t e^{-t} mu + c eta v.
    """
    d = dist.d
    mu, lam, U = dist.means[0].numpy(), dist.lam[0].numpy(), dist.U[0].numpy()

    def rhs(tau, y):
        t = T - tau
        a2 = math.exp(-2 * t)
        P = U @ np.diag(1.0 / (a2 * lam + 1 - a2)) @ U.T
        A = np.eye(d) - c * P + c * eta * M
        a = c * P @ (math.exp(-t) * mu) + c * eta * v
        Cm = y[d:].reshape(d, d)
        dC = A @ Cm + Cm @ A.T + (2 * np.eye(d) if c == 2 else 0.0)
        return np.concatenate([A @ y[:d] + a, dC.ravel()])

    m0, C0 = target_law(dist, T)
    sol = solve_ivp(rhs, (0.0, T - T_MIN), np.concatenate([m0.numpy(), C0.numpy().ravel()]),
                    method="DOP853", rtol=1e-11, atol=1e-13)
    mt, Ct = target_law(dist, T_MIN)
    return gaussian_kl(sol.y[:d, -1], sol.y[d:, -1].reshape(d, d), mt, Ct)


def test_perturbed_score_floor():
    """With s + eta g (g affine) every SDE sampler tends to the same floor, the KL of the exact
    perturbed reverse SDE; heun tends to the (different) floor of the perturbed flow ODE.

    Measured relative gaps to the floor at NFE 1024 are <= 6e-3 (EI), shrinking with NFE; the
    tolerance 1e-2 is well below the spread between samplers at NFE 64 (10-20 %).
    """
    dist = rotated_gaussian(3, seed=0)
    eta = 0.2
    v = np.array([1.0, -0.5, 0.3])
    M = np.array([[0.3, 0.1, 0.0], [0.1, -0.2, 0.05], [0.0, 0.05, 0.1]])
    vt, Mt = torch.as_tensor(v), torch.as_tensor(M)
    base = gaussian_score(dist)

    def score(x, t):
        return base(x, t) + eta * (vt + x @ Mt.T)

    floor_sde = _continuous_floor(dist, eta, v, M, 2)
    floor_ode = _continuous_floor(dist, eta, v, M, 1)
    assert floor_sde > 1e-2 and floor_ode > 1e-1  # a real floor, far above discretisation error
    for name in SAMPLERS:
        floor = floor_ode if name == "heun" else floor_sde
        gaps = [abs(sampler_kl(name, dist, grid(name, n), start="exact", score=score) / floor - 1) for n in (256, 1024)]
        assert gaps[1] < 1e-2 and gaps[1] < gaps[0], (name, gaps)


# ----------------------------------------------------------------------------------------------
# Brownian noise: one path, consistent under splitting
# ----------------------------------------------------------------------------------------------

def test_brownian_split_consistency():
    shape = (50, 3)
    a, b, c = 3.1, 2.2173, 0.7
    # three separate objects with one seed: the path is a function of (seed, time)
    w_ac, h_ac = BrownianNoise(shape, 7, t1=5.0, dtype=torch.float64)(a, c)
    src = BrownianNoise(shape, 7, t1=5.0, dtype=torch.float64)
    w_ab, h_ab = src(a, b)
    w_bc, h_bc = src(b, c)
    assert torch.allclose(w_ac, w_ab + w_bc, atol=1e-13, rtol=0)
    rel = (a - b) * h_ab + (b - c) * h_bc + 0.5 * ((b - c) * w_ab - (a - b) * w_bc)
    assert torch.allclose((a - c) * h_ac, rel, atol=1e-12, rtol=0)


def test_brownian_path_shared_across_step_counts():
    """A coarse grid and any refinement of it (e.g. with the midpoints added) see one path."""
    src_c = BrownianNoise((20,), 3, t1=T, dtype=torch.float64)
    src_f = BrownianNoise((20,), 3, t1=T, dtype=torch.float64)
    coarse = noise.time_grid(T, T_MIN, 16, SCHED)
    fine = np.sort(np.concatenate([coarse, 0.5 * (coarse[1:] + coarse[:-1])]))[::-1]
    fine_inc = {}
    for t0, t1 in zip(fine[:-1], fine[1:]):
        fine_inc[t0] = (t1, *src_f(t0, t1))
    for t0, t1 in zip(coarse[:-1], coarse[1:]):
        w, hh = src_c(t0, t1)
        tm, w1, h1 = fine_inc[t0]
        _, w2, h2 = fine_inc[tm]
        ha, hb = t0 - tm, tm - t1
        assert torch.allclose(w, w1 + w2, atol=1e-12, rtol=0)
        assert torch.allclose((t0 - t1) * hh, ha * h1 + hb * h2 + 0.5 * (hb * w1 - ha * w2), atol=1e-12, rtol=0)


def test_brownian_marginals():
    """dW ~ N(0, h), H ~ N(0, h/12), uncorrelated with each other and across steps, on non-dyadic
    steps (one large, one inside the geometric region). 5-SE tolerances from m = 20000 draws:
    SE of a variance ratio sqrt(2/m), SE of a correlation 1/sqrt(m)."""
    m = 20000
    src = BrownianNoise((m,), 123, t1=T, dtype=torch.float64)
    steps = [(4.3, 2.9), (2.9, 2.9 - 1.7e-3), (0.0137, 0.0101)]
    draws = [src(a, b) for a, b in steps]
    tol_var, tol_cor = 5 * math.sqrt(2 / m), 5 / math.sqrt(m)
    for (a, b), (w, hh) in zip(steps, draws):
        h = a - b
        assert abs(float((w * w).mean()) / h - 1) < tol_var
        assert abs(float((hh * hh).mean()) / (h / 12) - 1) < tol_var
        assert abs(float(torch.corrcoef(torch.stack([w, hh]))[0, 1])) < tol_cor
    assert abs(float(torch.corrcoef(torch.stack([draws[0][0], draws[1][0]]))[0, 1])) < tol_cor
    assert abs(float(torch.corrcoef(torch.stack([draws[1][1], draws[2][1]]))[0, 1])) < tol_cor


def test_brownian_rejects_steps_inside_one_leaf():
    src = BrownianNoise((2,), 0, t1=T, leaf_rel=1e-3)
    with pytest.raises(ValueError):
        src(0.5, 0.5 - 1e-7)


def test_bridge_split_law():
    """The exact bridge split reproduces independent halves: Var W_L = a, Var H_L = a/12, and
    Cov(W_L, W_R) = Cov(H_L, H_R) = 0 (5-SE, m = 40000, non-dyadic split a = 0.3 delta)."""
    m, delta, a = 40000, 2.0, 0.6
    g = torch.Generator().manual_seed(9)
    w = math.sqrt(delta) * torch.randn(m, generator=g, dtype=torch.float64)
    hh = math.sqrt(delta / 12) * torch.randn(m, generator=g, dtype=torch.float64)
    z = torch.randn(2, m, generator=g, dtype=torch.float64)
    wl, hl, wr, hr = noise_sources.bridge_split(w, hh, delta, a, z)
    tol = 5 * math.sqrt(2 / m)
    for v, ref in ((wl, a), (wr, delta - a), (hl, a / 12), (hr, (delta - a) / 12)):
        assert abs(float(v.var()) / ref - 1) < tol
    for u, v in ((wl, wr), (hl, hr), (wl, hl), (wr, hl)):
        assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 5 / math.sqrt(m)


# ----------------------------------------------------------------------------------------------
# 1-D quadrature KL (products of 1-D mixtures)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["euler_maruyama", "exponential_integrator", "srk"])
def test_quadrature_kl_matches_gaussian_closed_form(name):
    """A 1-D Gaussian through the grid propagation equals the exact Gaussian propagation.

    Measured relative errors 1e-11..5e-7; tolerance 1e-5 (the Lagrange interpolation is exact for
    Gaussian log-densities, the remaining error is Gauss–Hermite and the 4th-order slope)."""
    mix = mixture1d([1.0], [1.0], [0.3])
    for nfe, start in ((32, "prior"), (64, "exact")):
        ts = grid(name, nfe)
        ref = sampler_kl(name, mix, ts, start=start)
        assert sampler_kl_1d(name, mix, ts, start=start) == pytest.approx(ref, rel=1e-5)


def test_quadrature_product_of_gaussians():
    """A product of three different 1-D Gaussians: sum of 1-D KLs = KL of the diagonal Gaussian."""
    mus, sds = [0.5, -1.0, 0.0], [0.3, 1.2, 0.6]
    mixes = [mixture1d([1.0], [m_], [s_]) for m_, s_ in zip(mus, sds)]
    diag = GaussianMixture([1.0], np.array(mus)[None], np.diag(np.square(sds))[None])
    ts = grid("srk", 48)
    assert product_sampler_kl("srk", mixes, ts) == pytest.approx(sampler_kl("srk", diag, ts), rel=1e-5)


@pytest.mark.parametrize("name,nfe", [("euler_maruyama", 16), ("srk", 32)])
def test_quadrature_mixture_matches_monte_carlo(name, nfe):
    """Two-component mixture (nonlinear step maps): moments of the grid density agree with
    200000 runs of the actual sampler (5 SE: SE(mean) = sd/sqrt(m), SE(P[X > 0]) = sqrt(p(1-p)/m),
    SE(var) from the sample fourth moment); and differ detectably from the target."""
    mix = mixture1d([0.3, 0.7], [-1.5, 1.0], [0.4, 0.3])
    ts = grid(name, nfe)
    kl, info = sampler_kl_1d(name, mix, ts, start="prior", return_density=True)
    x, p = info["x"], info["p"]
    dx = x[1] - x[0]
    p = p / np.trapezoid(p, dx=dx)
    mean = np.trapezoid(p * x, dx=dx)
    var = np.trapezoid(p * (x - mean) ** 2, dx=dx)
    ppos = np.trapezoid(np.where(x > 0, p, 0.0), dx=dx)  # P[X > 0] to O(dx p(0))
    m = 200_000
    gen = torch.Generator().manual_seed(4)
    y = SAMPLERS[name](mix.score, torch.randn(m, 1, generator=gen, dtype=torch.float64), ts,
                       noise=GaussianNoise((m, 1), gen, dtype=torch.float64))[:, 0].numpy()
    se_var = math.sqrt((np.mean((y - y.mean()) ** 4) - y.var() ** 2) / m)
    assert abs(y.mean() - mean) < 5 * math.sqrt(var / m)
    assert abs(y.var() - var) < 5 * se_var
    assert abs((y > 0).mean() - ppos) < 5 * math.sqrt(ppos * (1 - ppos) / m) + dx * p[np.argmin(abs(x))]
    # the check has power: the target q_{t_min} differs from the output law by far more than 5 SE
    q = np.exp(info["logq"])
    tmean = np.trapezoid(q * x, dx=dx)
    tvar = np.trapezoid(q * (x - tmean) ** 2, dx=dx)
    assert kl > 1e-3
    assert max(abs(tmean - mean) / math.sqrt(var / m), abs(tvar - var) / se_var) > 10
