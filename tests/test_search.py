"""The n* search (dsclab/search.py): the plan of each round on synthetic monotone curves whose
n*(eps, d) is known in closed form, the read-out (n*, bracket, seed interval, exponent in d), bad
input refused in one line; and (flows/search.py, ``dsclab search``) a small search end to end
through the flow, appending every round to one store."""
from __future__ import annotations


import numpy as np
import pytest
import xarray as xr

from dsclab import search as sr
from dsclab.spec import SpecError
from dsclab.study import parse_spec
from dsclab.study import KINDS, Status

# A power-law error curve m(n, d, seed) = C_s d^beta n^-a: the seed mean is mean(C_s) d^beta n^-a,
# so n*(eps, d) = (mean(C_s) d^beta / eps)^(1/a) exactly, each seed's own crossing is
# (C_s d^beta / eps)^(1/a), and the exponent of n* in d is beta / a. log-log interpolation is exact
# for power laws, so the read-outs must equal these up to float rounding (rel 1e-9).
A, BETA, EPS = 0.8, 1.2, 0.05
C = np.array([0.8, 1.0, 1.3])  # per seed
D = [2, 8, 32]


def truth(d: float, c: float = float(C.mean())) -> float:
    return (c * d ** BETA / EPS) ** (1 / A)


def synthetic(n_by_curve: dict[int, set[int]], curve=None) -> xr.DataArray:
    """The metric per cell (d, n, seed) on the union of the n computed, NaN where a curve has no
    cell at that n (as in a store where another d asked for it)."""
    curve = curve or (lambda d, n, c: c * d ** BETA * n ** -A)
    ns = sorted(set().union(*n_by_curve.values()))
    v = np.full((len(D), len(ns), len(C)), np.nan)
    for i, d in enumerate(D):
        for j, n in enumerate(ns):
            if n in n_by_curve[d]:
                v[i, j] = [curve(d, n, c) for c in C]
    return xr.DataArray(v, dims=("d", "n", "seed"), coords={"d": D, "n": ns, "seed": [0, 1, 2]})


def run(settings: sr.SearchSettings, n_range=(30, 30000), curve=None):
    """The search loop of flows.search on the synthetic curves: (values, rounds, cells per round)."""
    n_bounds = sr.bounds(n_range, settings.factor)
    grid = sr.geometric_grid(*n_range, settings.factor)
    have = {d: set(grid) for d in D}
    cells = [len(grid) * len(D) * len(C)]
    values = synthetic(have, curve)
    for _ in range(settings.max_rounds - 1):
        nxt = sr.plan(values, settings, n_bounds)
        if not nxt:
            break
        for p in nxt:
            assert set(p) == {"d", "n"} and p["n"] not in have[p["d"]]
            have[p["d"]].add(p["n"])
        cells.append(len(nxt) * len(C))
        values = synthetic(have, curve)
    return values, have, cells


def test_geometric_grid_and_bounds():
    g = sr.geometric_grid(30, 30000, 4.0)
    assert g[0] == 30 and g[-1] == 30000 and len(g) == 6  # log(1000)/log(4) = 4.98: 5 intervals
    assert max(b / a for a, b in zip(g, g[1:])) <= 4.0 * 1.02  # rounding to integers: within 2%
    dense = sr.geometric_grid(30, 30000, 1.25)
    assert len(dense) == 32 and max(b / a for a, b in zip(dense, dense[1:])) <= 1.25 * 1.02
    assert sr.geometric_grid(7, 7, 4.0) == [7] and sr.geometric_grid(1, 3, 4.0) == [1, 3]
    assert sr.bounds([30, 30000], 4.0) == (8, 120000) and sr.bounds([2, 10], 4.0) == (1, 40)


def test_search_brackets_the_closed_form_n_star():
    s = sr.SearchSettings(metric="m", eps=EPS)
    values, have, cells = run(s)
    results = sr.summarize(values, EPS)
    assert [r.coords for r in results] == [{"d": d} for d in D]
    for r in results:
        d = r.coords["d"]
        b = r.bracket
        assert b.lo < truth(d) <= b.hi and b.ratio <= 1.25  # the bracket contains the exact n*
        assert r.n_star == pytest.approx(truth(d), rel=1e-9)  # exact interpolation of a power law
        lo, hi = r.interval()  # per-seed crossings on the same n: exact too
        assert lo == pytest.approx(truth(d, C.min()), rel=1e-9) and hi == pytest.approx(truth(d, C.max()), rel=1e-9)
        assert r.n == tuple(sorted(have[d]))
    # from a coarse bracket of ratio <= 4 to 1.25: 3 bisections (4 -> 2 -> 1.41 -> 1.19) per d
    assert len(cells) == 4 and cells == [54, 9, 9, 9]
    (coords, b, band), = sr.exponents(results)
    assert coords == {} and b == pytest.approx(BETA / A, rel=1e-9)
    assert band == (pytest.approx(BETA / A, rel=1e-9), pytest.approx(BETA / A, rel=1e-9))  # same slope per seed
    # 81 cells against 288 for the dense geometric grid of ratio 1.25 on the same range
    assert len(sr.geometric_grid(30, 30000, 1.25)) * len(D) * len(C) >= 3 * sum(cells)


def test_censored_curves_extend_past_the_range_within_the_bounds():
    s = sr.SearchSettings(metric="m", eps=EPS, ratio=1.5)
    # n* far below the range at d=2 and above it at d=32: the search steps one factor out, no further
    shift = {2: 1e-3, 8: 1.0, 32: 1e3}
    values, have, _ = run(s, n_range=(100, 1000), curve=lambda d, n, c: shift[d] * c * n ** -A * 8 ** BETA)
    results = {r.coords["d"]: r for r in sr.summarize(values, EPS)}
    lo_bound, hi_bound = sr.bounds((100, 1000), 4.0)
    assert min(have[2]) == lo_bound == 25 and results[2].bracket.crossing.censored == "left"
    assert max(have[32]) == hi_bound == 4000 and results[32].bracket.crossing.censored == "right"
    assert results[8].bracket.lo < truth(8) <= results[8].bracket.hi and results[8].bracket.ratio <= 1.5
    text = sr.report(list(results.values()), s, [1, 2])
    assert "n* <= 25" in text and "n* > 4000" in text
    assert "exponent of n* in d: nan" in text  # one uncensored d: no fit


def test_next_n_rules():
    n = np.array([10.0, 40.0, 160.0])
    kw = dict(ratio=1.25, factor=4.0, n_bounds=(3, 640))
    assert sr.next_n(n, [1.0, 0.5, 0.1], 0.3, **kw) == 80       # bisect (40, 160): sqrt(6400)
    assert sr.next_n(n, [0.2, 0.1, 0.05], 0.3, **kw) == 3        # left-censored: 10 / 4 -> 2.5, the bound 3
    assert sr.next_n([3.0, *n], [0.2, 0.2, 0.1, 0.05], 0.3, **kw) is None  # at the lower bound
    assert sr.next_n(n, [1.0, 0.9, 0.8], 0.3, **kw) == 640       # right-censored: 160 * 4
    assert sr.next_n(n, [np.nan] * 3, 0.3, **kw) is None         # nothing computed
    # a NaN (another curve's n, or failed cells) is skipped: the bracket is (10, 160)
    assert sr.next_n(n, [1.0, np.nan, 0.1], 0.3, **kw) == 40
    assert sr.next_n([10.0, 12.0], [1.0, 0.1], 0.3, **kw) is None  # ratio 1.2: resolved
    assert sr.next_n([10.0, 11.0], [1.0, 0.1], 0.3, ratio=1.01, factor=4.0, n_bounds=(3, 640)) is None  # no integer inside
    # not monotone: the first point past eps decides, and later bisections stay inside its bracket
    assert sr.next_n([10.0, 40.0, 160.0, 640.0], [1.0, 0.2, 0.5, 0.1], 0.3, **kw) == 20


def _store(metric_values: np.ndarray, status: np.ndarray) -> xr.Dataset:
    dims = ("d", "n", "seed", "estimator")
    t = np.array([0.1, 1.0])
    return xr.Dataset(
        {"score_l2": (dims + ("t",), np.repeat(metric_values[..., None], 2, -1) * np.array([0.5, 1.5])),
         "status": (dims, status.astype(np.int8)), "failure": (dims, np.full(status.shape, "", dtype="<U4"))},
        coords={"d": [2], "n": [10, 20], "seed": [0, 1], "estimator": ["dsm"], "t": t},
        attrs={"study": "sample_complexity"})


def test_metric_values_mask_cells_that_are_not_done():
    v = np.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    st = np.full(v.shape, Status.DONE)
    st[0, 1, 0, 0] = Status.FAILED
    ds = _store(v, st)
    m = sr.metric_values(ds, "score_l2", KINDS["sample_complexity"])
    assert m.dims == ("d", "n", "seed", "estimator")
    np.testing.assert_allclose(m.values.ravel(), [1.0, 2.0, np.nan, 4.0])  # mean over t of (0.5, 1.5) x v
    w = sr.metric_values(ds, "score_l2_weighted", KINDS["sample_complexity"])
    sig2 = 1 - np.exp(-2 * ds.t.values)  # sigma_t^2 of the OU process (dsclab.noise)
    np.testing.assert_allclose(w.values[0, 0, 0, 0], np.mean(sig2 * np.array([0.5, 1.5])), rtol=1e-12)


def test_bad_input_is_one_line():
    ds = _store(np.ones((1, 2, 2, 1)), np.zeros((1, 2, 2, 1)))
    kind = KINDS["sample_complexity"]
    assert sr.known_metrics(ds, kind) == ["score_l2", "score_l2_weighted"]
    with pytest.raises(ValueError, match=r"^metric 'nope' is not a metric of this study \(known: score_l2, "):
        sr.check("nope", ds, kind)
    with pytest.raises(ValueError, match="has no n axis to search"):
        sr.check("score_l2", ds, KINDS["sampler_convergence"])
    for bad, field in [({"eps": 0.0}, "eps"), ({"eps": -1}, "eps"), ({"ratio": 1.0}, "ratio"),
                       ({"factor": 0.5}, "factor"), ({"eps": "x"}, "eps")]:
        with pytest.raises(SpecError) as e:
            parse_spec({"metric": "score_l2", "eps": 0.1, **bad}, sr.SearchSettings)
        assert str(e.value).startswith(f"{field}: ") and "\n" not in str(e.value)


# -- end to end: the search flow on a tiny study (real training, real store) ----------------------

TINY = {"kind": "sample_complexity", "name": "tiny_search", "d": [2, 3], "n": [16, 1024], "seed": [0, 1],
        "sampler": ["exponential_integrator"], "nfe": [4], "train": {"steps": 60, "width": 16, "depth": 1},
        "evaluation": {"t": [0.05, 0.5], "n_score": 200, "n_samples": 50, "logsnr": [0.0], "n_nll": 8,
                       "n_alpha": 4}, "workers": 2}


def test_search_flow_appends_rounds_to_one_store(harness, tmp_path):
    import storage
    from dsclab import analysis
    from flows.search import prepare, search

    store = str(tmp_path / "tiny.zarr")
    # round 1 alone: the coarse grid (ratio 4 from 16 to 1024) at every d and seed
    out = search(request=prepare(TINY, store=store, metric="score_l2", eps=1.0, max_rounds=1))
    assert out["computed"] == [4 * 2 * 2] and out["rounds"] == 1
    ds = storage.open_results(store)
    assert list(ds.n.values) == [16, 64, 256, 1024] and (ds.status == storage.DONE).all()
    # eps between the seed means at two coarse n of d=2, below every earlier value, so that d=2's
    # first crossing lies in that interval: then the search must bisect it
    m = sr.metric_values(ds, "score_l2", KINDS["sample_complexity"]).sel(d=2, estimator="dsm").mean("seed").values
    k = next(i for i in range(1, 4) if m[i] < m[:i].min())
    eps = float(np.sqrt(m[:k].min() * m[k]))
    request = prepare(TINY, store=store, metric="score_l2", eps=eps, ratio=1.5)
    out = search(request=request)
    assert out["computed"][0] == 0  # the coarse grid is done: resumed, not recomputed
    assert out["computed"][1:] and all(c > 0 and c % 2 == 0 for c in out["computed"][1:])  # (curve, n) x 2 seeds
    ds = storage.open_results(store).load()
    d2 = next(c for c in out["curves"] if c["d"] == 2)
    lo, hi = d2["bracket"]
    assert d2["censored"] == "" and hi / lo <= 1.5 and lo < d2["n_star"] <= hi
    assert sum(len(c["n"]) for c in out["curves"]) * 2 == 16 + sum(out["computed"])  # every cell counted once
    for c in out["curves"]:  # done exactly at the curve's n; the other n of the store's axis pending
        st = ds.status.sel(d=c["d"], estimator="dsm")
        for n in ds.n.values:
            assert (st.sel(n=n) == (storage.DONE if n in c["n"] else storage.PENDING)).all(), (c["d"], n)
    # n* read independently from the store: the crossing of the seed mean on d=2's computed n
    v = ds.score_l2.sel(d=2, estimator="dsm", n=d2["n"]).mean(["t", "seed"]).values
    assert d2["n_star"] == pytest.approx(analysis.crossing(np.array(d2["n"], float), v, eps).value, rel=1e-12)
    assert "cells computed" in out["report"] and out["plot"].endswith("search.png")
    # the same search again: round 1 reads every n done before, which already resolves each
    # bracket: one round, nothing computed, the same result, the store unchanged
    again = search(request=request)
    assert again["computed"] == [0] and again["curves"] == out["curves"]
    xr.testing.assert_identical(storage.open_results(store).load(), ds)


def test_dsclab_search_refuses_bad_input_in_one_line(tmp_path, capsys):
    """Exit 2 and one line, before any server starts or anything is written."""
    from pathlib import Path

    from dsclab.cli import main

    root = Path(__file__).resolve().parents[1]
    quick, srk = str(root / "studies" / "search_quick.yaml"), str(root / "studies" / "srk.yaml")
    store = tmp_path / "s.zarr"
    cases = [([quick, "--metric", "nope", "--eps", "0.5"], "search: metric 'nope' is not a metric of this study"),
             ([quick, "--metric", "score_l2", "--eps", "0"], "eps: 0.0: Input should be greater than 0"),
             ([quick, "--metric", "score_l2", "--eps", "0.5", "--ratio", "1"], "ratio: 1.0: Input should be greater than 1"),
             ([quick, "--metric", "score_l2", "--eps", "0.5", "--seeds", "-1"], "seed"),
             ([srk, "--metric", "kl", "--eps", "0.5"], "search: study kind 'sampler_convergence' has no n axis")]
    for argv, message in cases:
        assert main(["search", *argv, "--store", str(store)]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"dsclab: error: {message}") and err.count("\n") == 1, err
        assert not store.exists() and not (tmp_path / "s.files").exists()


def test_a_score_learning_request_round_trips_as_json(tmp_path):
    """score_learning's n* (score_l2_weighted, one curve per (d, model)): the request a deployment
    would send, as JSON, validates back to the same request through the kinds' union."""
    from pathlib import Path

    from dsclab.spec import load_yaml
    from flows.search import SearchRequest, coarse_spec, prepare

    data = load_yaml(Path(__file__).resolve().parents[1] / "studies" / "dimension_free.yaml")
    request = prepare(data, store=str(tmp_path / "s.zarr"), metric="score_l2_weighted", eps=0.05)
    assert request.spec.kind == "score_learning" and request.settings().ratio == 1.25
    assert SearchRequest.model_validate(request.model_dump(mode="json")) == request
    assert coarse_spec(request.spec, request.settings()).n == [64, 256, 1024, 4096]
    assert not (tmp_path / "s.zarr").exists()
