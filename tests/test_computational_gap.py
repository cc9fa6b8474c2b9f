"""A tiny computational-gap study through the real Prefect flow (local test server): complete
store, a rerun computes nothing, the report has its lines; plus closed-form checks of the store."""
import math

import numpy as np
import pytest

from dsclab.spec import SpecError
from dsclab.study import parse_spec
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
    assert np.allclose(ds.mse_constant.isel(k=0).values, [0.5 - 0.25 / 6, 0.5 - 0.25 / 8])
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


def test_family_is_a_registry_and_hidden_clique_runs_through_the_kind():
    """family chooses the law (a registry, validated like any name); the hidden clique's law has
    + signs, its closed forms follow (C(n,k) Bayes terms; constant MSE p - p^2 (1/n + (k-1)^2/(n(n-1))))."""
    from dsclab.study import KINDS

    kind = KINDS["computational_gap"]
    with pytest.raises(SpecError):
        parse_spec({**TINY, "family": "nope"}, ComputationalGapSpec)
    spec = parse_spec({**TINY, "family": "hidden_clique", "n": [6], "drift": ["bayes", "spectral_paper", "constant"]},
                      ComputationalGapSpec)
    assert spec.law(6, 2).signs == "plus" and spec.law(6, 2).p_spike == 0.5
    ds = kind.template(spec)
    assert ds.attrs["family"] == "hidden_clique" and float(ds.bayes_terms.sel(n=6, k=2)) == 15.0
    assert math.isclose(float(ds.mse_constant.sel(n=6, k=2)), 0.5 - 0.25 * (1 / 6 + 1 / 30))
    cell = kind.cells(spec)[0]
    out = kind.evaluate(spec, cell, None, {}, None, "cpu").assign_coords(drift=spec.drift)
    # the constant's MC mean within 5 standard errors of its closed form; Bayes never above it
    c, se = out.mse.sel(drift="constant"), out.mse_se.sel(drift="constant")
    assert (abs(c - float(ds.mse_constant.sel(n=6, k=2))) <= 5 * se).all()
    assert (out.mse.sel(drift="bayes") <= c + 5 * se).all()
    # the paper's spectral baseline outputs 0 or a rank-one + matrix: its samples have norm 0 or 1
    nr = out.sample_norm.sel(drift="spectral_paper").values
    assert np.allclose(np.minimum(nr, abs(nr - 1)), 0, atol=1e-12)


def test_report_and_plot_against_published_at_paper_size(tmp_path):
    """At n = 350, k = 20 the report prints ours against the published numbers per t (mean,
    min-max, in band) and the plot draws the band; a store filled with the published seed means
    is in band at every t."""
    from dsclab.studies.computational_gap.spike.paper import published
    from dsclab.study import KINDS

    kind = KINDS["computational_gap"]
    pub = published()
    spec = parse_spec({"kind": "computational_gap", "name": "pub", "n": [350], "k": [20], "seed": [0],
                       "drift": ["spectral_paper", "constant", "mpnn"], "mpnn": {"budget": 0.1},
                       "evaluation": {"t": [200, 300, 400], "n_samples": 4}}, ComputationalGapSpec)
    ds = kind.template(spec)
    ds["status"][:] = 1
    for i, t in enumerate([200, 300, 400]):
        j = int(t // 20 - 1)
        ds["mse"].loc[{"t": t, "drift": "mpnn"}] = pub["network"][:, j].mean()
        ds["mse"].loc[{"t": t, "drift": "spectral_paper"}] = pub["spectral"][j]
    for v in ("frac_norm_above_half", "frac_norm_below_tenth", "w1_norm", "frac_rank_one", "integrated_loss",
              "frac_diverged", "mpnn_train_loss", "mpnn_train_seconds"):
        ds[v][:] = 0.0
    ds["sample_norm"][:] = 0.005
    rep = report(ds)
    assert "ours vs published" in rep and "budget 0.1" in rep and "frac(norm<0.1)" in rep
    rows = [line.split() for line in rep.splitlines() if line.strip().split(" ")[0] in ("200", "300", "400")
            and "[" in line]
    assert len(rows) == 6 and all(r[-1] == "yes" for r in rows[:3]) and all(r[-1] == "+0.0000" for r in rows[3:])
    assert (tmp_path / "p.png").exists() is False
    plot(ds, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0


SMALL_BUDGET = {  # the kind's small_budget.yaml, one budget less (the growth adds it)
    "kind": "computational_gap", "name": "tiny_budget", "n": [6], "k": [2], "seed": [0],
    "drift": ["bayes", "spectral_paper", "constant", "mpnn"],
    "mpnn": {"budget": [0.005], "n_train": 40, "batch_size": 20},
    "evaluation": {"t": [1, 4, 16], "n_mse": 40, "n_int": 20, "int_steps": 8, "n_samples": 30, "delta": 1.0,
                   "bayes_max_terms": 50},
    "workers": 2,
}


def test_scalar_budget_is_no_axis_and_a_list_is_refused_without_mpnn():
    """A scalar mpnn.budget keeps the store as before (no budget dim, the budget in the attributes,
    keys of (n, k, seed)); a list is an axis; bad budgets are refused in one line."""
    from dsclab.study import KINDS

    kind = KINDS["computational_gap"]
    scalar = parse_spec({**SMALL_BUDGET, "mpnn": {**SMALL_BUDGET["mpnn"], "budget": 0.005}}, ComputationalGapSpec)
    assert not scalar.budget_axis and "budget" not in scalar.AXES and kind.dims(scalar) == ("n", "k", "seed")
    tpl = kind.template(scalar)
    assert "budget" not in tpl.dims and tpl.attrs["mpnn_budget"] == 0.005 and "frac_norm_near_one" not in tpl
    assert [c.key for c in kind.cells(scalar)] == [scalar.key(n=6, k=2, seed=0)]
    listed = parse_spec(SMALL_BUDGET, ComputationalGapSpec)
    assert kind.dims(listed) == ("n", "k", "seed", "budget") and listed.AXES["budget"] == "mpnn.budget"
    assert listed.setting_change(scalar) == "mpnn.budget"  # one store cannot hold both
    for bad in ([0.01, 0.01], [0.0], 11, []):
        with pytest.raises(SpecError, match=r"^mpnn\.budget: "):
            parse_spec({**SMALL_BUDGET, "mpnn": {"budget": bad}}, ComputationalGapSpec)
    with pytest.raises(SpecError, match="mpnn drift"):
        parse_spec({**SMALL_BUDGET, "drift": ["bayes", "constant"]}, ComputationalGapSpec)


def test_budget_axis_grows_in_place_and_shares_draws_across_budgets(study_run, tmp_path):
    """Adding a budget computes only the new cell and leaves the old one's values as they were; the
    cells of one seed share every draw, so every drift but the mpnn has the same values at each
    budget; the stored ratios and near-1 fractions equal their recomputation from the stored
    integrated losses and sample norms; the steps follow the schedule's closed form."""
    import xarray as xr

    from flows.study import computational_gap

    one = parse_spec(SMALL_BUDGET, ComputationalGapSpec)
    run = study_run(computational_gap, one, "budget.zarr")
    before = run.complete(cells=1)
    two = parse_spec({**SMALL_BUDGET, "mpnn": {**SMALL_BUDGET["mpnn"], "budget": [0.002, 0.005]}}, ComputationalGapSpec)
    out = computational_gap(spec=two, store=run.path)
    assert out["cells"] == 2 and out["computed"] == 1 and out["done"] == 2 and out["failed"] == 0
    ds = xr.open_zarr(run.path).load()
    old = ds.sel(budget=[0.005])
    for v in before.data_vars:
        if "seconds" not in v and "budget" in before[v].dims:
            xr.testing.assert_identical(old[v], before[v])
    others = ["bayes", "spectral_paper", "constant"]
    for v in ("mse", "integrated_loss", "sample_norm", "frac_norm_near_one"):
        a = ds[v].sel(drift=others)
        np.testing.assert_array_equal(a.sel(budget=0.002).values, a.sel(budget=0.005).values, err_msg=v)
    assert not np.array_equal(ds.integrated_loss.sel(drift="mpnn", budget=0.002).values,
                              ds.integrated_loss.sel(drift="mpnn", budget=0.005).values)
    il = ds.integrated_loss
    np.testing.assert_allclose(ds.loss_ratio_bayes.values, (il.sel(drift="mpnn") / il.sel(drift="bayes")).values)
    np.testing.assert_allclose(ds.loss_ratio_spectral_paper.values,
                               (il.sel(drift="mpnn") / il.sel(drift="spectral_paper")).values)
    near = (abs(ds.sample_norm - 1) < 0.1).mean("sample")
    np.testing.assert_array_equal(ds.frac_norm_near_one.values, near.transpose(*ds.frac_norm_near_one.dims).values)
    # 40 points / batch 20 = 2 steps per epoch; epochs max(1, round(b * (600, 300, 300)))
    assert list(ds.mpnn_steps.values) == [2 * (1 + 1 + 1), 2 * (3 + 2 + 2)]
    rep = report(ds)
    assert "=== mpnn budget 0.002 ===" in rep and "trend (computed)" in rep
    plot(ds, str(tmp_path / "budget.png"))
    assert (tmp_path / "budget.png").stat().st_size > 0


@pytest.mark.parametrize("low,verdict", [(0.9, "PERSISTS"), (0.5, "DOES NOT PERSIST")])
def test_budget_trend_verdict_follows_its_rule(low, verdict):
    """The report's verdict on a store filled by hand: 30 samples per cell, Bayes' fraction below
    0.1 is 0.5; the mpnn's is ``low`` at every budget. Collapse means a difference above twice its
    standard error sqrt((p(1-p) + q(1-q)) / 30): 0.4 > 2 * 0.106 (collapse), 0 is not."""
    from dsclab.study import KINDS

    kind = KINDS["computational_gap"]
    spec = parse_spec({**SMALL_BUDGET, "mpnn": {**SMALL_BUDGET["mpnn"], "budget": [0.002, 0.005]}},
                      ComputationalGapSpec)
    ds = kind.template(spec)
    ds["status"][:] = 1
    for v in ds.data_vars:
        if v not in ("status", "failure") and ds[v].dtype.kind == "f" and np.isnan(ds[v].values).all():
            ds[v][:] = 0.5
    ds["frac_norm_below_tenth"].loc[{"drift": "mpnn"}] = low
    ds["loss_ratio_bayes"].loc[{"budget": 0.002}] = 2.0
    ds["loss_ratio_bayes"].loc[{"budget": 0.005}] = 1.5
    assert math.isclose(2 * math.sqrt((0.9 * 0.1 + 0.25) / 30), 0.2129, abs_tol=1e-4)
    rep = report(ds)
    assert f"collapse {verdict}" in rep, rep.splitlines()[-1]
    assert "falls with the budget at every step for 1 of 1 seeds" in rep


def test_search_refuses_a_budget_axis_in_one_line():
    """An n* search covers the kind's cell dims only: a spec whose budget list adds one is refused."""
    from dsclab.search import SearchSettings
    from dsclab.study import KINDS
    from flows.search import validate

    spec = parse_spec(SMALL_BUDGET, ComputationalGapSpec)
    with pytest.raises(SpecError, match="^search: this spec adds the cell axis budget"):
        validate(KINDS["computational_gap"], spec, SearchSettings(metric="integrated_loss", eps=1.0))
