"""P[error > tau] over seeds (dsclab.exceedance, re-exported by dsclab.analysis): counts against a
hand count, the Clopper–Pearson interval against scipy's exact binomial interval and its coverage
by exact enumeration, the derived tau levels, and the readings of the score-learning and
sample-complexity reports and of `dsclab report --tau`."""
from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy.stats import binom, binomtest

import storage
from storage.store import zarr_target
from dsclab import analysis, cli
from dsclab import exceedance as exc
from dsclab.study import parse_spec
from dsclab.study import Status


def test_exceedance_counts_and_interval():
    """p = k / m over the finite replicates (strictly above tau), per index of the other dims; the
    interval is scipy's exact (Clopper–Pearson) binomial interval, to 1e-10."""
    vals = np.array([[0.1, 0.5, 0.9, np.nan, 2.0],    # n=10: 4 finite, above 0.5: 0.9, 2.0
                     [0.6, 0.7, 0.8, 0.9, 1.0]])      # n=20: 5 finite, all above 0.5
    da = xr.DataArray(vals, dims=("n", "seed"), coords={"n": [10, 20], "seed": range(5)})
    ex = analysis.exceedance(da, [0.5, 0.95])
    assert ex.p.dims == ("tau", "n")
    np.testing.assert_array_equal(ex.k.sel(tau=0.5).values, [2, 5])
    np.testing.assert_array_equal(ex.m.sel(tau=0.5).values, [4, 5])
    np.testing.assert_allclose(ex.p.sel(tau=0.5).values, [0.5, 1.0])
    np.testing.assert_array_equal(ex.k.sel(tau=0.95).values, [1, 1])
    for tau in (0.5, 0.95):
        for n in (10, 20):
            r = ex.sel(tau=tau, n=n)
            ci = binomtest(int(r.k), int(r.m)).proportion_ci(confidence_level=0.95, method="exact")
            assert float(r.lo) == pytest.approx(ci.low, abs=1e-10) and float(r.hi) == pytest.approx(ci.high, abs=1e-10)
    one = analysis.exceedance(da, 0.5)  # a scalar tau: no tau dim
    assert one.p.dims == ("n",) and float(one.p.sel(n=10)) == 0.5
    empty = analysis.exceedance(xr.DataArray([np.nan, np.nan], dims="seed"), 1.0)
    assert int(empty.m) == 0 and np.isnan(float(empty.p)) and np.isnan(float(empty.lo))


def _coverage(lo: np.ndarray, hi: np.ndarray, m: int, p: float) -> float:
    """Exact coverage at p of an interval rule given as (lo_k, hi_k), k = 0..m: the binomial
    probability of the k whose interval holds p."""
    k = np.arange(m + 1)
    return float(binom.pmf(k, m, p)[(lo <= p) & (p <= hi)].sum())


def test_clopper_pearson_covers_at_every_p_and_wilson_does_not():
    """Why Clopper–Pearson (module docstring): for m = 20 replicates its exact coverage is >= 95% at
    every p of a fine grid, while Wilson's score interval falls below 95% somewhere (at 93% or
    less), which is the end regime the exceedance readings live in."""
    m, z = 20, 1.959963984540054
    k = np.arange(m + 1)
    lo, hi = exc.clopper_pearson(k, np.full(m + 1, m))
    ph = k / m
    centre = (ph + z * z / (2 * m)) / (1 + z * z / m)
    half = z / (1 + z * z / m) * np.sqrt(ph * (1 - ph) / m + z * z / (4 * m * m))
    grid = np.linspace(0.001, 0.999, 999)
    cp = np.array([_coverage(lo, hi, m, p) for p in grid])
    wilson = np.array([_coverage(centre - half, centre + half, m, p) for p in grid])
    assert cp.min() >= 0.95 - 1e-12
    assert wilson.min() < 0.93
    assert hi[0] == pytest.approx(1 - 0.025 ** (1 / m), rel=1e-10)  # k = 0: 0.168, in closed form


def test_tau_levels_are_geometric_between_pooled_quantiles():
    a = xr.DataArray(np.linspace(1.0, 10.0, 91), dims="x")
    b = xr.DataArray(np.array([np.nan, -1.0, 0.0, 100.0]), dims="y")  # only 100 is finite and positive
    pooled = np.append(np.linspace(1.0, 10.0, 91), 100.0)
    lo, hi = np.quantile(pooled, [0.1, 0.9])
    got = exc.tau_levels(a, b, levels=3)
    np.testing.assert_allclose(got, [lo, math.sqrt(lo * hi), hi], rtol=1e-12)
    assert exc.tau_levels(a, levels=1) == pytest.approx([math.sqrt(np.prod(np.quantile(a.values, [0.1, 0.9])))])
    assert exc.tau_levels(xr.DataArray([np.nan, 0.0], dims="x")) == []
    ds = xr.Dataset(attrs={exc.TAU_ATTR: [0.2, 0.4]})
    assert exc.taus_for(ds, a) == [0.2, 0.4] and exc.taus_for(xr.Dataset(), a, b, levels=3) == got


def test_score_error_norms_are_root_l2_and_the_quantiles():
    l2 = xr.DataArray([4.0, 0.25], dims="n", coords={"n": [1, 2]})
    q = xr.DataArray([[1.0, 3.0], [0.5, 0.7]], dims=("n", "delta"), coords={"n": [1, 2], "delta": [0.001, 0.1]})
    e = exc.score_error_norms(l2, q, eta=0.01)
    assert list(e.error.values) == ["√L2", "q δ=0.001<η", "q δ=0.1>η"]
    np.testing.assert_allclose(e.sel(error="√L2").values, [2.0, 0.5])
    np.testing.assert_allclose(e.sel(error="q δ=0.1>η").values, [3.0, 0.7])


# ---- the reports read it -----------------------------------------------------------------------

SL = {"kind": "score_learning", "name": "exc", "d": [2], "n": [30, 300, 3000], "seed": list(range(10)),
      "distribution": {"name": "gaussian_mixture", "params": {"k": 2, "separation": 10.0, "weights": [0.99, 0.01]}},
      "evaluation": {"t": [0.1, 1.0], "delta": [0.001, 0.1]}}


def _filled_score_learning():
    """A score-learning store template with every cell done and errors that make P[√L2 > 1] known:
    √L2 = 2 for the first 7 of 10 seeds at every n (else 0.5), quantile errors 0.1 (δ > η) and 5
    (δ < η) everywhere."""
    from dsclab.studies.score_learning import KIND

    spec = parse_spec(SL)
    ds = KIND.template(spec).load()
    ds["status"][:] = Status.DONE
    l2 = np.where(ds.seed.values < 7, 4.0, 0.25)
    ds["score_l2"][:] = l2[None, None, :, None, None, None, None]
    ds["score_quantile"].loc[{"delta": 0.1}] = 0.1
    ds["score_quantile"].loc[{"delta": 0.001}] = 5.0
    for v in ("sliced_w2", "sliced_w2_floor", "mode_tv", "mode_tv_floor", "kl_gauss", "kl_gauss_floor",
              "train_seconds", "eval_seconds", "n_params", "train_loss"):
        ds[v][:] = 1.0
    return spec, ds


def test_score_learning_report_prints_the_exceedance_with_intervals(tmp_path):
    from dsclab.studies.score_learning.report import exceedances, report

    _, ds = _filled_score_learning()
    ex = exceedances(ds.assign_attrs({exc.TAU_ATTR: [1.0]}))
    r = ex[0.1].sel(tau=1.0)
    np.testing.assert_array_equal(r.k.sel(error="√L2").values, [7, 7, 7])
    np.testing.assert_array_equal(r.k.sel(error="q δ=0.1>η").values, [0, 0, 0])
    np.testing.assert_array_equal(r.k.sel(error="q δ=0.001<η").values, [10, 10, 10])
    text = report(ds.assign_attrs({exc.TAU_ATTR: [1.0]}))
    lo, hi = exc.clopper_pearson(7, 10)
    assert f"0.70 [{lo:.2f},{hi:.2f}]" in text and "t=0.1, τ=1:" in text and "the reader's (--tau)" in text
    assert "L2 error misses far more often than the δ>η quantile error at n below ~1/η: agrees" in text


def test_dsclab_report_tau_option(tmp_path, capsys):
    """`dsclab report STORE --tau 1` reads at the given level; a bad --tau is one line, exit 2."""
    from dsclab.studies.score_learning import KIND

    spec, ds = _filled_score_learning()
    path = str(tmp_path / "s.zarr")
    storage.create_or_open(path, KIND.template(spec), KIND.cell_dims)
    ds[["status", "score_l2", "score_quantile"]].drop_vars(list(ds.coords)).to_zarr(
        zarr_target(path), mode="r+", consolidated=False)  # every cell's values at once
    assert cli.main(["report", path, "--tau", "1"]) == 0
    out = capsys.readouterr().out
    assert "t=0.1, τ=1:" in out and "0.70 [" in out
    for bad in ("abc", "0,1", "-1"):
        assert cli.main(["report", path, "--tau", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dsclab: error: --tau") and "\n" not in err, err


def test_sample_complexity_report_reads_exceedance_per_d():
    from dsclab.studies.sample_complexity import KIND
    from dsclab.studies.sample_complexity.report import exceedances, report

    spec = parse_spec({"name": "e", "d": [2, 4], "n": [10, 20], "seed": [0, 1, 2, 3], "nfe": [5]})
    ds = KIND.template(spec).load()
    ds["status"][:] = Status.DONE
    ds["score_l2"][:] = 1.0
    ds["score_l2"].loc[{"seed": 0}] = 9.0  # √(mean_t L2) = 3 at seed 0, 1 elsewhere
    ds["score_quantile"][:] = 0.5
    ex = exceedances(ds.assign_attrs({exc.TAU_ATTR: [2.0]}))
    assert sorted(ex) == [2, 4]
    r = ex[4].sel(tau=2.0)
    np.testing.assert_array_equal(r.k.sel(error="√L2").values, [1, 1])
    np.testing.assert_array_equal(r.m.sel(error="√L2").values, [4, 4])
    assert (r.k.sel(error="q δ=0.1").values == 0).all()
    assert "d=4, τ=2:" in report(ds.assign_attrs({exc.TAU_ATTR: [2.0]}))
