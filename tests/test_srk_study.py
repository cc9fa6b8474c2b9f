"""The sampler-convergence study (issue 3): analysis functions against closed forms, the study's
numerics against independent computations, and a tiny study through the real Prefect flow."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from storage.check import check_store
from dsclab import analysis, noise
from dsclab.studies.sampler_convergence.numerics import run_cell
from dsclab.studies.sampler_convergence.exact import product_kl_1d
from dsclab.studies.sampler_convergence.plot import plot
from dsclab.studies.sampler_convergence.report import report
from dsclab.studies.sampler_convergence.spec import TARGETS, SamplerConvergenceSpec
from dsclab.studies.sampler_convergence.targets import exact_score, make_target
from dsclab.studies.sampler_convergence.exact_kl import default_grid, mixture1d, sampler_kl_1d
from dsclab.studies.sampler_convergence.gaussian_exact import sampler_kl
from dsclab.samplers import SAMPLERS, steps_for_nfe, uses_levy_area
from dsclab.spec import SpecError
from dsclab.study import parse_spec


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (tests/conftest.py)


# ----------------------------------------------------------------------------------------------
# analysis: closed forms
# ----------------------------------------------------------------------------------------------

X = np.array([4, 8, 16, 32, 64, 128, 256, 512], dtype=float)


def test_slope_of_exact_power_law():
    y = 3.0 * X ** -2.5
    fit = analysis.fit_power_law(X, y)
    assert fit.slope == pytest.approx(-2.5, abs=1e-12) and fit.intercept == pytest.approx(math.log(3.0), abs=1e-12)
    # only the points in x_range enter: a curve with a different pre-asymptotic piece
    y2 = np.where(X < 32, 10.0 * X ** -1.0, 3.0 * X ** -2.5)
    fit2 = analysis.fit_power_law(X, y2, x_range=(32, 512))
    assert fit2.slope == pytest.approx(-2.5, abs=1e-12) and (fit2.x_min, fit2.x_max, fit2.n) == (32, 512, 5)
    # non-finite and non-positive values are skipped; too few points give nan
    y3 = y.copy()
    y3[[0, 3]] = [np.inf, 0.0]
    assert analysis.fit_power_law(X, y3).slope == pytest.approx(-2.5, abs=1e-12)
    assert math.isnan(analysis.fit_power_law(X[:2], y[:2], min_points=3).slope)
    assert analysis.fit_power_law(X, y).solve(3.0 * 100.0 ** -2.5) == pytest.approx(100.0, rel=1e-12)


def test_crossing_of_exact_power_law():
    """Log-log interpolation is exact for a power law: the crossing is (level / C)^(1/a)."""
    C, a = 5.0, -2.0
    y = C * X ** a
    for level in (1e-2, 3.3e-4, 2e-5):
        c = analysis.crossing(X, y, level)
        assert c.censored == "" and c.value == pytest.approx((level / C) ** (1 / a), rel=1e-12)
    left = analysis.crossing(X, y, 1.0)  # y(4) = 0.3125 already below
    assert left.censored == "left" and left.value == 4.0 and left.format() == "<=4"
    right = analysis.crossing(X, y, 1e-6, fit=analysis.fit_power_law(X, y))
    assert right.censored == "right" and math.isnan(right.value) and right.bound == 512
    assert right.extrapolated == pytest.approx((1e-6 / C) ** (1 / a), rel=1e-10)
    assert right.estimate() == right.extrapolated
    assert analysis.crossing(X, y, 1e-6).format() == ">512"
    # a diverged point at small x counts as above the level
    y_bad = y.copy()
    y_bad[0] = np.inf
    assert analysis.crossing(X, y_bad, 1e-2).value == pytest.approx((1e-2 / C) ** (1 / a), rel=1e-12)


def _synthetic(rng, S, a=-2.0, C=2.0, sigma=0.1):
    return C * X ** a * np.exp(sigma * rng.standard_normal((S, X.size)))


def test_bootstrap_band_contains_true_slope():
    """Replicates y_s(x) = C x^a exp(sigma eps), eps iid N(0, 1): the band over seeds covers a.
    For small sigma the slope of log(mean_s y_s) has sd sigma / sqrt(S sum (lx - mean)^2);
    the percentile bootstrap over S seeds reproduces (S-1)/S of that variance, so its coverage is
    about 0.89 and its half-width about 1.645 sd. Over 200 synthetic studies the coverage is
    checked to lie in [0.80, 0.97] (SE of an estimated coverage sqrt(0.9 * 0.1 / 200) = 0.021:
    the interval spans over 4 SE on each side of 0.89), and the median half-width to within
    [0.85, 1.1] of 1.645 sd (the median of 200 half-widths varies by a few per cent)."""
    S, sigma, a = 20, 0.1, -2.0
    lx = np.log(X)
    sd = sigma / math.sqrt(S * ((lx - lx.mean()) ** 2).sum())
    rng = np.random.default_rng(7)
    # one synthetic study, a 99.9 % band: misses a with probability ~0.002 (z = 3.29 sqrt(19/20))
    band = analysis.bootstrap_power_law(X, _synthetic(rng, S, a, sigma=sigma), n_boot=4000, level=0.999, rng=1)
    assert band.lo <= a <= band.hi and band.lo < band.slope < band.hi
    cover, half = [], []
    for k in range(200):
        b = analysis.bootstrap_power_law(X, _synthetic(rng, S, a, sigma=sigma), n_boot=400, level=0.9, rng=k)
        cover.append(b.lo <= a <= b.hi)
        half.append(0.5 * (b.hi - b.lo))
    assert 0.80 <= np.mean(cover) <= 0.97, np.mean(cover)
    assert 0.85 <= np.median(half) / (1.645 * sd) <= 1.1, np.median(half) / (1.645 * sd)
    # one replicate: the band collapses onto the estimate
    one = analysis.bootstrap_power_law(X, _synthetic(rng, 1, a, sigma=sigma))
    assert one.lo == one.hi == one.slope


def test_tables_over_xarray_dims():
    y = np.stack([2.0 * X ** -2.0, 7.0 * X ** -4.0])  # two "samplers"
    da = xr.DataArray(y, dims=("sampler", "nfe"), coords={"sampler": ["a", "b"], "nfe": X})
    fits = analysis.slope_table(da, "nfe", x_range=(16, 512))
    assert fits.slope.sel(sampler="a") == pytest.approx(-2.0) and fits.slope.sel(sampler="b") == pytest.approx(-4.0)
    cr = analysis.crossing_table(da, "nfe", 1e-9, fits=fits)
    assert cr.sel(sampler="a").item().extrapolated == pytest.approx((1e-9 / 2.0) ** (-1 / 2.0), rel=1e-9)
    assert cr.sel(sampler="b").item().value == pytest.approx((1e-9 / 7.0) ** (-1 / 4.0), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# study numerics
# ----------------------------------------------------------------------------------------------

def _spec(**over):
    base = {"kind": "sampler_convergence", "name": "tiny_srk", "target": ["gaussian", "product_mixture", "mixture"],
            "d": [2, 3], "sampler": ["exponential_integrator", "srk", "sra1"], "nfe": [4, 8, 16],
            "score": ["exact", "perturbed", "trained"], "seed": [0, 1], "n_train": 200,
            "train": {"steps": 30, "batch_size": 64, "width": 16, "depth": 1, "device": "cpu"},
            "sampling": {"n_samples": 60, "n_proj": 16, "score_t": [0.1, 1.0]},
            "quadrature": {"pts_per_width": 8, "pts_per_width_ode": 8, "n_sd": 6, "n_area": 2, "n_max": 40},
            "analysis": {"fit_nfe": [4, 16], "kl_levels": [0.1], "acceptance_d": 2, "acceptance_level": 0.1,
                         "n_boot": 50},
            "workers": 2}
    base.update(over)
    return parse_spec(base, SamplerConvergenceSpec)


def test_spec_validation():
    with pytest.raises(SpecError, match=r"^spec: nfe 9 is not a multiple of 2, .* sampler '\w+'$") as e:
        _spec(nfe=[4, 6, 9])  # 9 is not a whole number of srk steps
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match="target"):
        _spec(target=["gaussian", "banana"])
    with pytest.raises(SpecError, match="score"):
        _spec(score=["exact", "learned"])
    s = _spec()
    assert len(s.cells()) == 3 * 2 * 3 and s.hash == _spec(workers=1).hash


def test_fast_scores_equal_library_scores():
    spec = _spec()
    g = torch.Generator().manual_seed(0)
    for name in TARGETS:
        dist = make_target(spec, name, 4)
        x = dist.sample(9, g, t=0.2)
        ref = (torch.cat([dist.factor.score(x[:, i:i + 1], 0.2) for i in range(4)], 1) if name == "product_mixture"
               else dist.score(x, 0.2))
        assert torch.allclose(exact_score(name, dist)(x, 0.2), ref, rtol=1e-12, atol=1e-12)
    assert [uses_levy_area(SAMPLERS[s]) for s in SAMPLERS] == [s in ("sra1", "shark") for s in SAMPLERS]


@pytest.mark.filterwarnings("ignore:srk. output mass:RuntimeWarning")  # NFE 8: unstable steps, expected
def test_product_kl_is_d_times_library_1d_kl():
    """The study's 1-D curve (fast score) equals ``exact_kl.sampler_kl_1d`` (library score) on the
    same grid, and a cell stores d times it."""
    spec = _spec(sampler=["srk"], nfe=[8, 16])
    q = spec.quadrature
    mix = mixture1d(spec.product_mixture.weights, spec.product_mixture.means, spec.product_mixture.stds)
    x = default_grid(mix, spec.t_min, pts_per_width=q.pts_per_width, n_sd=q.n_sd)
    curves = product_kl_1d(spec, "exact")
    for j, nfe in enumerate(spec.nfe):
        ts = noise.time_grid(spec.T, spec.t_min, steps_for_nfe("srk", nfe), spec.schedule)
        ref = sampler_kl_1d("srk", mix, ts, start="exact", x=x, n_area=q.n_area, n_max=q.n_max)
        assert curves["kl"][0][j] == pytest.approx(ref, rel=1e-9)
    cell = next(c for c in spec.cells() if c.target == "product_mixture" and c.d == 3 and c.score == "exact")
    ds = run_cell(spec, cell, curves)
    assert np.allclose(ds.kl.values, 3 * np.asarray(curves["kl"]), rtol=1e-15)


# ----------------------------------------------------------------------------------------------
# a tiny study through the real flow
# ----------------------------------------------------------------------------------------------

def test_tiny_study_through_flow(study_run, tmp_path):
    from flows.study import sampler_convergence

    spec = _spec()
    run = study_run(sampler_convergence, spec, "tiny_srk.zarr")
    ds = run.complete(cells=18)
    assert ds.attrs["study"] == "sampler_convergence" and ds.kl.attrs["units"] == "nats"
    assert ds.kl.dims == ("target", "d", "sampler", "nfe", "score")
    assert ds.sliced_w2.dims == ("target", "d", "sampler", "nfe", "score", "seed")
    exact = ds.kl.sel(target=["gaussian", "product_mixture"], score=["exact", "perturbed"])
    assert np.isfinite(exact).all() and (exact > 0).all()
    assert ds.kl.sel(target="mixture").isnull().all() and ds.kl.sel(score="trained").isnull().all()
    # sampled metrics exactly where the KL is not exact (mixture target, trained score)
    sampled = ds.sliced_w2.sel(target="mixture")
    assert (sampled > 0).all() and (ds.mmd.sel(score="trained") >= 0).all()
    assert ds.sliced_w2.sel(target="gaussian", score="exact").isnull().all()
    # floors depend on (target, d, seed) only: stored in every cell, equal along score
    assert np.isfinite(ds.sliced_w2_floor).all() and (ds.mmd_floor > 0).all()
    assert (ds.sliced_w2_floor == ds.sliced_w2_floor.isel(score=0)).all()
    assert (ds.score_l2.sel(score="perturbed") == spec.eta ** 2 * ds.d).all()
    assert (ds.score_l2.sel(score="exact") == 0).all() and (ds.score_l2.sel(score="trained") > 0).all()
    assert (ds.train_seconds.sel(score="trained") > 0).all() and (ds.train_seconds.sel(score="exact") == 0).all()
    assert check_store(run.path) == []  # `dsclab check`: every done cell's chunks written, status agrees
    # product target: KL = d x the 1-D KL, so it scales exactly with d
    prod = ds.kl.sel(target="product_mixture", score=["exact", "perturbed"])
    assert np.allclose(prod.sel(d=3) / prod.sel(d=2), 1.5, rtol=1e-12)
    # gaussian: an independent exact propagation of one entry
    dist = make_target(spec, "gaussian", 3)
    ts = noise.time_grid(spec.T, spec.t_min, steps_for_nfe("srk", 16), spec.schedule)
    ref = sampler_kl("srk", dist, ts, start="exact")
    assert float(ds.kl.sel(target="gaussian", d=3, sampler="srk", nfe=16, score="exact")) == pytest.approx(ref, rel=1e-12)

    text = report(ds)
    assert "ACCEPTANCE" in text and "slope ratio srk/EI" in text and "NFE ratio srk/EI" in text
    png = plot(ds, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 10_000 and png.endswith("p.png")

    run.rerun_computes_nothing(ds)
