"""A tiny computational-gap study through the real Prefect flow (local test server): complete
store, a rerun computes nothing, the report has its lines; plus closed-form checks of the store."""
import math

import numpy as np
import pytest

from dsclab.spec import SpecError, parse_spec
from dsclab.studies.computational_gap.plot import plot
from dsclab.studies.computational_gap.report import report
from dsclab.studies.computational_gap.spec import ComputationalGapSpec

TINY = {
    "kind": "computational_gap", "name": "tiny_gap", "n": [6, 8], "k": [2], "seed": [0],
    "train": {"steps": 20, "batch_size": 16, "width": 8, "depth": 2, "n_train": 100},
    "evaluation": {"t": [1, 4, 16], "n_mse": 40, "n_int": 20, "int_steps": 8, "n_samples": 30,
                   "delta": 1.0, "bayes_max_terms": 50},  # n=8,k=2: C(8,2)*2 = 56 terms > 50 -> bayes NaN
    "workers": 2,
}


def test_spec_rejects_bad_grid():
    with pytest.raises(SpecError):
        parse_spec({**TINY, "k": [6]}, ComputationalGapSpec)  # k must be below every n
    with pytest.raises(SpecError):
        parse_spec({**TINY, "drift": ["nope"]}, ComputationalGapSpec)


def test_flow_complete_store_then_rerun_computes_nothing(study_run, tmp_path):
    from flows.study import computational_gap

    spec = parse_spec(TINY, ComputationalGapSpec)
    run = study_run(computational_gap, spec, "gap.zarr")
    ds = run.complete(cells=2)
    assert ds.mse.dims == ("drift", "n", "k", "t", "seed")
    assert ds.sample_norm.dims == ("drift", "n", "k", "seed", "sample")
    # n=6: C(6,2)*2 = 30 terms, Bayes computed; n=8: 56 > 50, Bayes NaN by design.
    assert np.isfinite(ds.mse.sel(drift="bayes", n=6)).all()
    assert np.isnan(ds.mse.sel(drift="bayes", n=8)).all()
    others = [d for d in spec.drift if d != "bayes"]
    for var in ["mse", "integrated_loss", "frac_norm_above_half", "frac_rank_one", "frac_diverged"]:
        assert np.isfinite(ds[var].sel(drift=others).values).all(), var
    # The tiny network may drive the sampler to overflow: norm +inf, W1 +inf, never NaN.
    for var in ["sample_norm", "w1_norm"]:
        assert not np.isnan(ds[var].sel(drift=others).values).any(), var
    assert np.isfinite(ds["sample_norm"].sel(drift=[d for d in others if d != "network"]).values).all()
    # Closed forms: the constant drift's MSE is 1/2 - 1/(4n) (Var of x under mu_bar); its Monte
    # Carlo mean over n_mse = 40 draws must lie within 5 standard errors (computed per t).
    c = ds.mse.sel(drift="constant", seed=0, k=2)
    se = ds.mse_se.sel(drift="constant", seed=0, k=2)
    target = 0.5 - 0.25 / ds.n
    assert (abs(c - target) <= 5 * se).all()
    assert np.allclose(ds.mse_constant.values, [0.5 - 0.25 / 6, 0.5 - 0.25 / 8])
    # fixed_sample returns one exact target draw per trajectory: every sample is 0 or some u u^T.
    nf = ds.sample_norm.sel(drift="fixed_sample").values
    assert np.allclose(np.minimum(abs(nf), abs(nf - 1)), 0, atol=1e-12)
    # The constant drift's sampler output is E x, whose norm is ||E x||_F (same for every sample).
    assert np.allclose(ds.sample_norm.sel(drift="constant").std("sample"), 0, atol=1e-12)
    assert np.allclose(ds.t_spectral.values[:, 0], [3.0, 4.0])
    assert np.allclose(ds.t_bayes.values[:, 0], [4 * math.log(3), 4 * math.log(4)])

    rep = report(ds)
    assert "frac(norm>1/2)" in rep and "W1(norm law)" in rep and "integrated loss spectral" in rep
    assert "bayes not computed" in rep and "n=8, k=2" in rep
    png = plot(ds, str(tmp_path / "gap.png"))
    assert (tmp_path / "gap.png").stat().st_size > 0 and png.endswith("gap.png")

    run.rerun_computes_nothing(ds)
