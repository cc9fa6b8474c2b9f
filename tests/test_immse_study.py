"""The I-MMSE study: data-set estimators with honest standard errors, and a tiny study through
the real Prefect flow (local test server) giving a complete store.

Tolerances: a Monte Carlo mean is compared with its target within Z = 5 standard errors (a false
failure has probability ~6e-7 per comparison); seeds are fixed, so outcomes are deterministic.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from dsclab import immse
from dsclab.distributions import gaussian, gaussian_mixture, rademacher
from dsclab.spec import SpecError
from dsclab.study import parse_spec
from dsclab.studies.immse.denoisers import ENSEMBLE_MEMBERS, MISMATCHED
from dsclab.studies.immse.plot import plot
from dsclab.studies.immse.report import report
from dsclab.studies.immse.spec import ImmseSpec

Z = 5.0


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (tests/conftest.py)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- data-set estimates (dsclab.immse.gap_terms / crossed_estimates) -------------------------

def test_crossed_se_covers_data_and_draws():
    """X ~ N(0, diag lam), exact denoiser, matched reference: over x the truncated estimator's mean is
    exactly h_G (the dropped part is (x_i^2/lam_i - 1)-weighted, mean zero), the entropy. Over R
    independent data sets the spread of the estimates must match the reported SE, which covers the
    points and the draws; the draws-only SE (as ensemble_nll reports) must be too small here.
    With R = 120 the sample SD has relative error ~1/sqrt(2R) = 6.5%: the band [0.7, 1.35] is ~5 of those."""
    P = gaussian(3, cond=10.0, scale=2.0)
    lam = immse.spectrum(P.cov())
    H = immse.gaussian_entropy(lam)
    g = gen(0)
    est, se, se_draws = [], [], []
    for _ in range(120):
        x = P.sample(40, g)
        t = immse.gap_terms(x, [P.denoise], g, lam=lam, n_alpha=16)
        c = immse.crossed_estimates(t)
        est.append(float(c.value[0])), se.append(float(c.se[0]))
        se_draws.append(float(immse.crossed_mean(t.values(0).mean(1, keepdim=True)).se))
    est, se = np.array(est), np.array(se)
    sd = est.std(ddof=1)
    assert abs(est.mean() - H) <= Z * sd / math.sqrt(len(est))
    assert 0.7 <= sd / np.sqrt((se ** 2).mean()) <= 1.35, (sd, np.sqrt((se ** 2).mean()))
    assert np.sqrt(np.mean(np.square(se_draws))) < 0.7 * sd


def test_stratified_draws_unbiased_and_se_conservative():
    """+-1 data, exact denoiser, fixed points: over repeated draws the stratified estimate has the
    same mean as the i.i.d. one (within 5 SE of their difference), a far smaller spread, and its
    collapsed-strata SE is not below the observed spread (30 repeats: sample SD within ~13%)."""
    R = rademacher(4, p=0.3)
    x = R.sample(1000, gen(30))
    nlp = -R.log_prob(x)
    g = gen(31)
    runs = {}
    for strat in (False, True):
        vals, ses = [], []
        for _ in range(30):
            t = immse.gap_terms(x, [R.denoise], g, lam=torch.diagonal(R.cov()), discrete=True, left_tail=True,
                                n_alpha=128, stratified=strat)
            c = immse.crossed_estimates(t, offset=nlp)
            vals.append(float(c.value[0])), ses.append(float(c.se[0]))
        runs[strat] = (np.array(vals), np.array(ses))
    (v0, _), (v1, s1) = runs[False], runs[True]
    assert abs(v0.mean() - v1.mean()) <= Z * math.sqrt(v0.var(ddof=1) / 30 + v1.var(ddof=1) / 30)
    assert v1.std(ddof=1) < v0.std(ddof=1) / 4
    assert v1.std(ddof=1) <= 1.4 * np.sqrt((s1 ** 2).mean())


def test_crossed_matches_ensemble_nll_and_offset_is_paired():
    P = gaussian_mixture(2, k=2, separation=4.0)
    lam = immse.spectrum(P.cov())
    Q = MISMATCHED["gaussian_mixture"](P, 4.0)
    G = immse.moment_matched_gaussian(P.mean(), P.cov())
    dens = [P.denoise, Q.denoise, G.denoise]
    x = P.sample(200, gen(1))
    ens = immse.ensemble_nll(x, dens, gen(2), lam=lam, n_alpha=64)
    t = immse.gap_terms(x, dens, gen(2), lam=lam, n_alpha=64)
    c = immse.crossed_estimates(t)
    assert torch.allclose(c.value, ens.members, atol=1e-10) and abs(float(c.ensemble - ens.value)) < 1e-10
    assert torch.equal(c.choice, ens.choice)
    assert (c.se >= ens.members_se - 1e-12).all()  # adds the points' sampling to the draws'
    nlp = -P.log_prob(x)
    off = immse.crossed_estimates(t, offset=nlp)
    assert torch.allclose(off.value, c.value - nlp.mean(), atol=1e-10)
    assert (off.se[0] < c.se[0])  # the exact model's paired difference is far less noisy
    sub = immse.crossed_estimates(t, members=[1, 2])
    assert set(sub.choice.tolist()) <= {1, 2} and sub.ensemble >= c.ensemble - 1e-12
    assert Q.weights.tolist() == pytest.approx([0.8, 0.2])


def test_clamp_to_box_never_increases_error():
    R = rademacher(4, p=0.3)
    x = R.sample(500, gen(3))
    alpha = torch.full((500,), 2.0, dtype=torch.float64)
    xt, t = immse.channel(x, alpha, torch.randn(500, 4, dtype=torch.float64, generator=gen(4)))
    G = immse.moment_matched_gaussian(R.mean(), R.cov())
    raw = G.denoise(xt, t)
    box = immse.clamp_to_box(G.denoise)(xt, t)
    assert (box.abs() <= 1).all() and (((box - x) ** 2) <= ((raw - x) ** 2) + 1e-15).all()
    assert immse.lattice_box(R) == (-1.0, 1.0) and immse.lattice_box(G) is None


@pytest.mark.parametrize("law", [gaussian(3, cond=10.0), rademacher(3, p=0.3)], ids=["gaussian", "rademacher"])
def test_data_set_nll_exact_denoiser_gap(law):
    """The exact denoiser's gap is zero up to truncation: for the Gaussian its mean over x is zero
    exactly; for +-1 data the left-tail Gaussian bound exceeds the dropped part by < 1e-3 nats."""
    x = law.sample(400, gen(5))
    out = immse.data_set_nll(x, [law.denoise], law, gen(6), logsnr=[-2.0, 0.0, 2.0], n_alpha=256)
    assert abs(out.gap[0]) <= Z * out.gap_se[0] + 1e-3 / 3, (out.gap, out.gap_se)
    assert out.exact == pytest.approx(float(-law.log_prob(x).mean()) / 3)
    assert out.curve.shape == (1, 3) and np.isnan(out.ens_value) and np.isnan(out.share).all()


def test_spec_errors_are_one_line():
    with pytest.raises(SpecError, match=r"^data: .*duplicate"):
        parse_spec({"name": "x", "d": [2], "n": [10], "data": [{"name": "gaussian"}, {"name": "gaussian"}]},
                   ImmseSpec)
    with pytest.raises(SpecError, match=r"^n: 0 is not a positive integer$"):
        parse_spec({"name": "x", "d": [2], "n": [0]}, ImmseSpec)
    spec = parse_spec({"name": "x", "d": [2, 8], "n": [10, 20]}, ImmseSpec)
    assert len(spec.cells()) == 3 * 2 * 2 and [x.name for x in spec.data] == ["gaussian", "gaussian_mixture",
                                                                              "rademacher"]


# --- the flow ----------------------------------------------------------------------------------

TINY = {
    "kind": "immse", "name": "tiny-immse", "d": [2], "n": [30, 300], "seed": [0],
    "train": {"steps": 120, "width": 32, "depth": 2},
    "evaluation": {"n_points": 120, "n_alpha": 16, "logsnr": [-4.0, 0.0, 4.0]},
}


def test_flow_complete_store_then_resume(study_run, tmp_path):
    from flows.study import immse as immse_flow

    run = study_run(immse_flow, parse_spec(TINY, ImmseSpec))
    ds = run.complete(cells=6)
    assert ds.attrs["study"] == "immse"
    for var in ["nll_immse", "nll_immse_se", "nll_gap_se", "mmse", "nll_exact", "nll_exact_se", "train_seconds",
                "mmse_gauss", "logsnr_min", "logsnr_max"]:
        assert np.isfinite(ds[var].values).all(), var
    assert ds.nll_immse.dims == ("data", "d", "n", "seed", "denoiser")
    assert ds.mmse.dims == ("data", "d", "n", "seed", "denoiser", "logsnr")
    members = ds.ensemble_share.sel(denoiser=list(ENSEMBLE_MEMBERS))
    assert np.allclose(members.sum("denoiser"), 1.0) and ds.ensemble_share.sel(denoiser="exact").isnull().all()
    # n-independent denoisers: same points and draws in every cell of (data, d, seed)
    fixed = ds.nll_immse.sel(denoiser=["exact", "gaussian", "mismatched"])
    xr.testing.assert_equal(fixed.isel(n=0, drop=True), fixed.isel(n=1, drop=True))
    # the ensemble is at least as tight as each member, its curve is the members' envelope
    assert (ds.nll_immse.sel(denoiser="ensemble") <= ds.nll_immse.sel(denoiser=list(ENSEMBLE_MEMBERS)).min("denoiser") + 1e-12).all()
    env = ds.mmse.sel(denoiser=list(ENSEMBLE_MEMBERS)).min("denoiser")
    xr.testing.assert_allclose(ds.mmse.sel(denoiser="ensemble", drop=True), env)
    # reference curve: closed form for the Gaussian, d = 2, eigenvalues 1 and 1/10
    lam = np.array([1.0, 0.1])
    ref = np.mean(1 / (1 + np.exp(-(ds.logsnr.values[:, None] + np.log(lam)))), axis=1)
    assert np.allclose(ds.mmse_gauss.sel(data="gaussian", d=2), ref)
    text = report(ds)
    assert "[rademacher]" in text and "min z" in text
    png = plot(ds, str(tmp_path / "immse.png"))
    assert (tmp_path / "immse.png").stat().st_size > 10_000 and png.endswith(".png")

    run.rerun_computes_nothing(ds)
