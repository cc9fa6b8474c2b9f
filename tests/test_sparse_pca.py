"""Sparse PCA (issue 10): the spiked law's exact score, the baseline estimators, the null level,
and a tiny study through the real Prefect flow."""
import itertools
import math

import numpy as np
import pytest
import torch
import xarray as xr

from dsclab.studies.sparse_pca import estimators as spe
from dsclab.studies.sparse_pca import numerics, report
from dsclab.studies.sparse_pca.plot import plot
from dsclab.studies.sparse_pca.spec import ESTIMATOR_NAMES, SparsePCAEvalSpec, SparsePCASpec
from dsclab.distributions.sparse_pca import sparse_pca, spike_direction
from dsclab.metrics import SlicedW2, sliced_w2
from dsclab.spec import SpecError
from dsclab.study import parse_spec


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (tests/conftest.py)


# ------------------------------------------------------------------------------------------
# the law
# ------------------------------------------------------------------------------------------


def test_spike_is_k_sparse_pm_and_drawn_once_per_seed():
    u = spike_direction(20, 5, 7)
    nz = u[u != 0]
    assert nz.numel() == 5 and torch.allclose(nz.abs(), torch.full((5,), 1 / math.sqrt(5), dtype=torch.float64))
    assert torch.equal(u, spike_direction(20, 5, 7))                     # same seed, same u
    assert not torch.equal(u, spike_direction(20, 5, 8))
    planted, null = sparse_pca(20, 5, 2.0, 7), sparse_pca(20, 5, 0.0, 7)
    assert torch.equal(planted.u, null.u) and torch.equal(planted.null().u, planted.u)
    assert torch.allclose(null.cov(), torch.eye(20, dtype=torch.float64))  # beta = 0: N(0, I)
    with pytest.raises(ValueError):
        sparse_pca(4, 5, 1.0, 0)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.7, "vector"])
def test_exact_score_matches_autograd_of_log_density(t):
    dist = sparse_pca(12, 3, 2.5, support_seed=3)
    g = torch.Generator().manual_seed(0)
    tt = torch.rand(64, generator=g, dtype=torch.float64) if t == "vector" else t
    x = dist.sample(64, g, t=0.3).requires_grad_(True)
    lp = dist.log_prob(x, tt).sum()   # generic GaussianMixture density of q_t
    (grad,) = torch.autograd.grad(lp, x)
    # float64 throughout: agreement to rounding (1e-10 leaves 5 orders of margin over ~1e-15 * |x|)
    assert torch.allclose(dist.score(x.detach(), tt), grad, atol=1e-10, rtol=0)
    # the baselines' closed form (spike_score) is the same formula for any (u_hat, beta_hat)
    if t != "vector":
        assert torch.allclose(spe.spike_score(dist.u, dist.beta)(x.detach(), t), grad, atol=1e-10, rtol=0)


def test_sampler_moments_match_pushed_covariance():
    """u^T x and a unit direction w orthogonal to u have variances 1 + e^{-2t} beta and 1."""
    dist = sparse_pca(30, 4, 3.0, support_seed=1)
    t, m = 0.2, 40_000
    x = dist.sample(m, torch.Generator().manual_seed(2), t=t)
    w = torch.zeros(30, dtype=torch.float64)
    w[int(torch.nonzero(dist.u == 0)[0])] = 1.0
    for v, var in [(dist.u, 1 + math.exp(-2 * t) * 3.0), (w, 1.0)]:
        est = float(((x @ v) ** 2).mean())
        se = var * math.sqrt(2.0 / m)  # Var((v^T x)^2) = 2 var^2 for a centred Gaussian
        assert abs(est - var) < 5 * se, (est, var, se)


# ------------------------------------------------------------------------------------------
# estimators
# ------------------------------------------------------------------------------------------


def test_exhaustive_equals_brute_force_on_a_tiny_case():
    d, k = 9, 3
    dist = sparse_pca(d, k, 1.5, support_seed=4)
    x = dist.sample(25, torch.Generator().manual_seed(5))
    s = (x.T @ x / x.shape[0]).numpy()
    best_val, best_vec = -np.inf, None
    for sup in itertools.combinations(range(d), k):   # one numpy eigh per support
        lam, vec = np.linalg.eigh(s[np.ix_(sup, sup)])
        if lam[-1] > best_val:
            best_val, best_vec = lam[-1], np.zeros(d)
            best_vec[list(sup)] = vec[:, -1]
    u_hat = spe.exhaustive(x, k, chunk=5)           # small chunks: the Gershgorin pruning stops early
    assert abs(float(u_hat.numpy() @ s @ u_hat.numpy()) - best_val) < 1e-12
    assert abs(abs(float(u_hat.numpy() @ best_vec)) - 1.0) < 1e-12
    with pytest.raises(spe.ExhaustiveTooLarge, match=r"C\(9,3\) = 84 supports is above max_supports=50"):
        spe.exhaustive(x, k, max_supports=50)


def test_every_estimator_recovers_u_far_above_the_spectral_size():
    """n = 20 d / beta^2: BBP gives PCA overlap^2 -> (1 - g/b^2) / (1 + g/b) = 0.905 (g = d/n) at
    beta = 1, i.e. overlap 0.95; finite-n fluctuations are O(n^-1/2) ~ 0.03."""
    d, k, beta = 32, 4, 1.0
    for seed in range(3):
        dist = sparse_pca(d, k, beta, support_seed=seed)
        x = dist.sample(20 * d, torch.Generator().manual_seed(100 + seed))
        for name, f in spe.BASELINES.items():
            ov = spe.overlap(f(x, k), dist.u)
            assert ov > 0.9, (name, seed, ov)


def test_null_overlap_of_every_baseline_is_one_over_d():
    """beta = 0: E<u_hat, u>^2 = 1/d exactly for estimators equivariant under signed permutations.
    Mean over R independent data sets within 5 standard errors (computed from the draws)."""
    d, k, n, R = 16, 2, 40, 300
    dist = sparse_pca(d, k, 0.0, support_seed=9)
    g = torch.Generator().manual_seed(11)
    vals = {name: [] for name in spe.BASELINES}
    for _ in range(R):
        x = dist.sample(n, g)
        for name, f in spe.BASELINES.items():
            vals[name].append(spe.overlap(f(x, k), dist.u) ** 2)
    for name, v in vals.items():
        v = np.asarray(v)
        se = v.std(ddof=1) / math.sqrt(R)
        assert abs(v.mean() - 1 / d) < 5 * se, (name, v.mean(), 1 / d, se)
    # and the typical |overlap| is the ~1/sqrt(d) null level, far below the 1/2 the study asks for
    assert np.sqrt(np.mean(vals["pca"])) < 0.5


def test_null_overlap_of_trained_networks_is_one_over_d():
    """The network's direction (top eigenvector of its samples' covariance) under beta = 0: training
    (i.i.d. symmetric initialisation, elementwise Adam, Gaussian noise) is equivariant in law under
    signed coordinate permutations, so E<v, u>^2 = 1/d too. R independent networks trained as one
    ensemble; mean within 5 SE."""
    from dsclab.train import TrainConfig, train_ensemble

    d, R, n = 8, 16, 32
    dist = sparse_pca(d, 2, 0.0, support_seed=0)
    g = torch.Generator().manual_seed(3)
    data = [dist.sample(n, g).float() for _ in range(R)]
    res = train_ensemble(data, list(range(1000, 1000 + R)),
                         config=TrainConfig(steps=100, batch_size=64, width=32, depth=2))
    ev = SparsePCAEvalSpec(n_samples=300, nfe=10)
    v = []
    for r in res:
        x0 = torch.randn(300, d, generator=g)
        y = numerics.draw_samples(ev, r.model.score, x0, numerics.replay_noise(ev, x0.shape, g))
        v.append(spe.overlap(spe.sample_direction(y), dist.u) ** 2)
    v = np.asarray(v)
    assert abs(v.mean() - 1 / d) < 5 * v.std(ddof=1) / math.sqrt(R), (v.mean(), 1 / d)


def test_sample_sizes_and_crossing():
    sz = spe.sample_sizes(128, 4, 1.0)
    assert sz["it"] == pytest.approx(4 * math.log(32)) and sz["poly"] == pytest.approx(16 * math.log(8))
    assert sz["spectral"] == 128
    assert math.isnan(spe.sample_sizes(32, 8, 1.0)["poly"])                  # k^2 >= d
    assert spe.sample_sizes(32, 4, 3.0)["it"] == pytest.approx(4 * math.log(8) / 9)
    ns = [4, 8, 16, 32]
    assert report.n_half(ns, [0.1, 0.3, 0.7, 0.9]) == (pytest.approx(8 * 2 ** 0.5), "")  # halfway in log n
    assert report.n_half(ns, [0.6, 0.4, 0.7, 0.9])[0] == pytest.approx(8 * 2 ** (1 / 3))  # stays above from 16
    assert report.n_half(ns, [0.6, 0.7, 0.8, 0.9]) == (4.0, "<=")
    assert report.n_half(ns, [0.1, 0.2, 0.6, 0.4]) == (32.0, ">")
    assert report.n_half(ns, [0.1, 0.5, 0.7, 0.9]) == (pytest.approx(8.0), "")   # at the level at 8, above after
    n, flag = report.n_half(ns, [0.1, math.nan, 0.7, 0.9])                        # a missing value: unknown
    assert math.isnan(n) and flag == ">"
    assert report.position(8.0, 2.0, 32.0) == pytest.approx(0.5)


def test_cached_sliced_w2_equals_metrics_sliced_w2():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 5, generator=g, dtype=torch.float64), torch.randn(300, 5, generator=g, dtype=torch.float64)
    cached = SlicedW2(b, torch.Generator().manual_seed(1), n_proj=64)
    fast = [cached(a), cached(a)]  # the directions are fixed: the same number on every call
    assert fast == [pytest.approx(sliced_w2(a, b, torch.Generator().manual_seed(1), n_proj=64), rel=1e-12)] * 2


def test_spec_refuses_bad_grids_in_one_line():
    base = {"name": "s", "kind": "sparse_pca", "d": [8, 16], "k": [2], "beta": [1.0], "n": [10]}
    for bad, msg in [({"k": [8]}, "k: 8 must be below every d"), ({"beta": [-1.0]}, "beta"),
                     ({"estimator": ["lasso"]}, "unknown estimator 'lasso'")]:
        with pytest.raises(SpecError, match=msg):
            parse_spec({**base, **bad}, SparsePCASpec)


# ------------------------------------------------------------------------------------------
# the flow
# ------------------------------------------------------------------------------------------

TINY = {
    "name": "tiny_spca", "kind": "sparse_pca", "d": [12], "k": [2], "beta": [0.0, 4.0], "n": [6, 60],
    "seed": [0, 1], "estimator": list(ESTIMATOR_NAMES), "train": {"steps": 60, "batch_size": 32, "width": 16, "depth": 1},
    "evaluation": {"t": [0.1, 1.0], "n_score": 100, "n_samples": 200, "nfe": 8}, "workers": 2,
}


def test_flow_complete_store_report_then_resume_computes_nothing(study_run, tmp_path):
    from flows.study import sparse_pca as flow

    run = study_run(flow, parse_spec(TINY, SparsePCASpec))
    ds = run.complete(cells=8)
    assert ds.attrs["study"] == "sparse_pca"
    assert ds.overlap.dims == ("d", "k", "beta", "n", "seed", "estimator")
    for var in ["overlap", "overlap_samples", "support_recovery", "beta_hat", "sliced_w2", "kl_gauss", "score_l2",
                "sliced_w2_floor", "kl_gauss_floor", "overlap_samples_floor", "train_loss"]:
        assert np.isfinite(ds[var].values).all(), var
    assert (ds.overlap.sel(estimator="oracle") == 1).all()
    assert (ds.score_l2.sel(estimator="oracle") == 0).all()
    # u is stored with the cell and is the law's u (one per (d, k, seed), shared by beta and n)
    u = ds.u.sel(d=12, k=2, beta=4.0, n=60, seed=1).values
    assert np.array_equal(u[:12], numerics.law(12, 2, 4.0, 1).u.numpy()) and np.isnan(u[12:]).all()
    assert np.array_equal(u, ds.u.sel(d=12, k=2, beta=0.0, n=6, seed=1).values)
    assert float(ds.n_spectral.sel(d=12, k=2, beta=4.0)) == pytest.approx(12 / 16)
    from storage.check import check_store
    assert check_store(run.path) == []   # `dsclab check`: status and values agree cell by cell

    run.rerun_computes_nothing(ds)

    text = report.report(ds)
    assert "[d=12 k=2 beta=4]" in text and "closing note" in text and "null (beta = 0)" in text
    png = plot(ds, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0 and png.endswith("p.png")


def test_flow_without_network_runs_the_baselines_only(harness, tmp_path):
    from flows.study import sparse_pca as flow
    from storage.check import check_store

    spec = parse_spec({**TINY, "seed": [0], "estimator": ["pca", "exhaustive", "oracle"]}, SparsePCASpec)
    path = str(tmp_path / "base.zarr")
    assert flow(spec=spec, store=path)["done"] == 4
    ds = xr.open_zarr(path)
    assert "train_seconds" not in ds and np.isfinite(ds.overlap.values).all()
    assert not (tmp_path / "base.files" / "checkpoints").exists()
    assert check_store(path) == []
