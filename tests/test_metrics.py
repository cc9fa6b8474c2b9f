"""Score errors and sample distances against closed forms or independent computations."""
import math

import numpy as np
import pytest
import torch

from dsclab import distributions
from dsclab.registry import RegistryError, declare
from dsclab.metrics import (SAMPLE_METRICS, SlicedW2, gaussian_fit_kl, gaussian_kl, mmd, quantile_error, score_errors,
                            sliced_w2, w2_exact)
from dsclab.seeds import derive_seed, generator


def test_quantile_error_matches_numpy():
    rng = np.random.default_rng(0)
    v = rng.exponential(size=1001)
    got = quantile_error(v, [0.01, 0.1, 0.5])
    # inverted-CDF quantile: the smallest v with empirical CDF >= 1 - delta
    want = np.quantile(v, [0.99, 0.9, 0.5], method="inverted_cdf")
    np.testing.assert_allclose(got, want)
    # the defining property: at most delta of the mass lies strictly above the quantile
    for q, delta in zip(got, [0.01, 0.1, 0.5]):
        assert (v > q).mean() <= delta


def test_score_errors_closed_form_for_shifted_score():
    """s_hat = s + c (constant): L2 error is exactly ||c||^2 at every t, every quantile ||c||."""
    dist = distributions.make("gaussian_mixture", 4, k=2)
    c = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    out = score_errors(lambda x, t: dist.score(x.double(), t) + c, dist, [0.1, 1.0], 500, [0.01, 0.1], g,
                       dtype=torch.float64)
    np.testing.assert_allclose(out["l2"], 1.5, rtol=1e-10)
    np.testing.assert_allclose(out["quantile"], math.sqrt(1.5), rtol=1e-10)


def test_gaussian_kl_closed_form_1d():
    m1, v1, m2, v2 = 0.3, 2.0, -0.1, 0.5
    want = 0.5 * (v1 / v2 + (m2 - m1) ** 2 / v2 - 1 + math.log(v2 / v1))
    t = lambda a: torch.tensor([a], dtype=torch.float64)
    got = gaussian_kl(t(m1), t(v1)[:, None], t(m2), t(v2)[:, None])
    assert got == pytest.approx(want, rel=1e-12)


def test_w2_exact_equals_sorted_coupling_in_1d():
    """In 1-D the optimal coupling of two equal-size empirical measures matches sorted points."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 1, generator=g), 2 + 0.5 * torch.randn(300, 1, generator=g)
    want = math.sqrt(((torch.sort(x[:, 0])[0] - torch.sort(y[:, 0])[0]) ** 2).mean().item())
    assert w2_exact(x, y) == pytest.approx(want, rel=1e-6)


def _w2_network_simplex(x: torch.Tensor, y: torch.Tensor) -> float:
    """W2 by POT's network simplex on the same float64 squared-distance matrix (dsclab's solver
    before issue 30): the reference the assignment solver must reproduce."""
    import ot

    from dsclab.metrics import _sqdist

    cost = _sqdist(x.to(torch.float64), y.to(torch.float64)).numpy()
    a, b = np.full(x.shape[0], 1.0 / x.shape[0]), np.full(y.shape[0], 1.0 / y.shape[0])
    return math.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0))


def _tied_clouds(case: str, m: int, d: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clouds of m points in R^d whose assignment problem has many optimal permutations:
    'duplicates' (each cloud a few points repeated), 'shared' (half of y are points of x, in another
    order), 'lattice' (small integer points: many equal costs), or 'gaussian' (a shifted, scaled
    mixture: the generic case)."""
    if case == "duplicates":
        base_x, base_y = torch.randn(7, d, generator=gen, dtype=torch.float64), torch.randn(5, d, generator=gen, dtype=torch.float64)
        ix, iy = torch.randint(0, 7, (m,), generator=gen), torch.randint(0, 5, (m,), generator=gen)
        return base_x[ix], 0.3 + base_y[iy]
    if case == "shared":
        x = torch.randn(m, d, generator=gen, dtype=torch.float64)
        y = 1.2 * torch.randn(m, d, generator=gen, dtype=torch.float64)
        y[: m // 2] = x[torch.randperm(m, generator=gen)[: m // 2]]
        return x, y
    if case == "lattice":
        return (torch.randint(0, 3, (m, d), generator=gen).to(torch.float64),
                torch.randint(0, 3, (m, d), generator=gen).to(torch.float64) + 0.5)
    dist = distributions.make("gaussian_mixture", d, k=2, separation=4.0, std=1.0)
    return dist.sample(m, gen, t=0.001).double(), 1.05 * dist.sample(m, gen, t=0.001).double() + 0.02


@pytest.mark.parametrize("case", ["duplicates", "shared", "lattice", "gaussian"])
@pytest.mark.parametrize("m, d", [(50, 1), (200, 2), (300, 8), (400, 32)])
def test_w2_exact_equal_sizes_equals_the_network_simplex(case, m, d):
    """Equal sizes go to the assignment solver (issue 30): its W2 equals POT's network simplex on
    the same cost within 1e-12 relative, ties and duplicated points included. The optimum of an
    assignment problem is unique even where the optimal permutation is not; the two differ only by
    float rounding (the summation order, and the reduced costs' few-ulp errors: at most about
    4 eps max C in W2^2, below 1e-13 of it here), while a suboptimal permutation would miss by far
    more than 1e-12 on these instances."""
    gen = generator(derive_seed("test-w2-assignment", case, m, d))
    x, y = _tied_clouds(case, m, d, gen)
    assert w2_exact(x, y) == pytest.approx(_w2_network_simplex(x, y), rel=1e-12)


def test_w2_exact_is_the_best_permutation_on_tiny_instances():
    """On clouds of 2 to 7 points W2^2 is the minimum over every permutation of the mean squared
    distance, computed here by enumeration with direct differences (no matrix products), within
    1e-12 relative (the solver's cost matrix uses |a|^2 + |b|^2 - 2 a.b: rounding of a few eps
    times the squared norms); duplicated points (ties) included, and a value of 0 for a cloud
    against its own permutation."""
    import itertools

    gen = generator(derive_seed("test-w2-brute"))
    for trial in range(40):
        m, d = 2 + trial % 6, 1 + trial % 4
        x = torch.randn(m, d, generator=gen, dtype=torch.float64)
        y = 0.5 + torch.randn(m, d, generator=gen, dtype=torch.float64)
        if trial % 3 == 0:  # duplicated points in both clouds
            x[1:] = x[0] if m > 3 else x[1:]
            y[: m // 2] = y[-1]
        xs, ys = x.tolist(), y.tolist()
        best = min(sum(sum((a - b) ** 2 for a, b in zip(xs[i], ys[p[i]])) for i in range(m))
                   for p in itertools.permutations(range(m))) / m
        assert w2_exact(x, y) ** 2 == pytest.approx(best, rel=1e-12), (m, d)
        assert w2_exact(x, x[torch.randperm(m, generator=gen)]) < 1e-7  # rounding of a zero cost


def test_sliced_w2_of_a_shift():
    """Sliced W2 between a cloud and its translate by c: sqrt(E_theta <c, theta>^2) = ||c|| / sqrt(d)
    (uniform theta on the sphere); Monte Carlo over 4096 directions."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64)
    c = torch.zeros(8, dtype=torch.float64)
    c[0] = 3.0
    got = sliced_w2(x, x + c, g, n_proj=4096)
    # E<c,theta>^2 = 9/8; the 4096-direction mean has relative sd sqrt(2/(d+2)/4096) ~ 0.7%
    assert got == pytest.approx(3.0 / math.sqrt(8), rel=0.03)


def _quantile_w2_by_replication(a: np.ndarray, b: np.ndarray) -> float:
    """Exact empirical 1-D W2 of unequal sizes m, m', independently of dsclab: repeat each point
    of a m'/g times and each of b m/g times (g = gcd), which leaves both empirical measures
    unchanged and gives two clouds of lcm(m, m') points, coupled by sorting (optimal in 1-D)."""
    g = math.gcd(a.size, b.size)
    ra, rb = np.sort(np.repeat(a, b.size // g)), np.sort(np.repeat(b, a.size // g))
    return math.sqrt(((ra - rb) ** 2).mean())


@pytest.mark.parametrize("m, mp", [(50, 200), (60, 84), (200, 37)])
def test_sliced_w2_unequal_sizes_is_the_exact_empirical_w2(m, mp):
    """In d = 1 every direction is +-1 and sliced W2 is the 1-D W2 of the empirical measures: it must
    equal both the replicated sorted coupling and optimal transport (POT), to rounding (1e-10)."""
    gen = generator(derive_seed("test-sw2-unequal", m, mp))
    x = torch.randn(m, 1, generator=gen, dtype=torch.float64)
    y = 0.5 + 1.3 * torch.randn(mp, 1, generator=gen, dtype=torch.float64)
    want = _quantile_w2_by_replication(x[:, 0].numpy(), y[:, 0].numpy())
    assert w2_exact(x, y) == pytest.approx(want, rel=1e-9)
    assert sliced_w2(x, y, generator(7), n_proj=3) == pytest.approx(want, rel=1e-10)
    # in d = 3 along fixed directions: the mean over directions of the per-direction exact W2^2
    x3 = torch.randn(m, 3, generator=gen, dtype=torch.float64)
    y3 = torch.randn(mp, 3, generator=gen, dtype=torch.float64) @ torch.diag(torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    sw = SlicedW2(y3, generator(8), n_proj=5)
    per = [_quantile_w2_by_replication((x3 @ th).numpy(), (y3 @ th).numpy()) ** 2 for th in sw.theta.T]
    assert sw(x3) == pytest.approx(math.sqrt(np.mean(per)), rel=1e-10)


def test_sliced_w2_unequal_sizes_the_issue_example():
    """The issue's 50 against 200 points: the exact value 0.639 (the old quantile interpolation
    gave 0.674): here on a fresh draw, against the replicated coupling; the old rule differs."""
    gen = generator(derive_seed("test-sw2-issue"))
    x, y = torch.randn(50, 1, generator=gen, dtype=torch.float64), torch.randn(200, 1, generator=gen, dtype=torch.float64)
    want = _quantile_w2_by_replication(x[:, 0].numpy(), y[:, 0].numpy())
    q = torch.linspace(0, 1, 200, dtype=torch.float64)
    old = float(((torch.quantile(torch.sort(x[:, 0])[0], q) - torch.sort(y[:, 0])[0]) ** 2).mean().sqrt())
    assert sliced_w2(x, y, generator(1), n_proj=2) == pytest.approx(want, rel=1e-10)
    assert abs(old - want) > 1e-3 * want  # the interpolated coupling is not the empirical W2


def _brute_mmd2(x: np.ndarray, y: np.ndarray, h: float) -> float:
    """The biased V-statistic of MMD^2 by explicit loops over every pair (no matrix algebra)."""
    k = lambda a, b: math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * h * h))
    kxx = sum(k(a, b) for a in x for b in x) / len(x) ** 2
    kyy = sum(k(a, b) for a in y for b in y) / len(y) ** 2
    kxy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return kxx + kyy - 2 * kxy


def test_mmd_is_the_brute_force_v_statistic():
    """mmd(x, y)^2 equals the loop V-statistic, with a given bandwidth and with the default (the
    median pairwise distance of y, computed here by hand over the distinct pairs i < j)."""
    gen = generator(derive_seed("test-mmd-brute"))
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    y = 0.7 + 1.5 * torch.randn(41, 3, generator=gen, dtype=torch.float64)
    xn, yn = x.numpy(), y.numpy()
    assert mmd(x, y, bandwidth=1.3) ** 2 == pytest.approx(_brute_mmd2(xn, yn, 1.3), rel=1e-10)
    dists = sorted(math.dist(yn[i], yn[j]) for i in range(len(yn)) for j in range(i + 1, len(yn)))
    h = dists[(len(dists) - 1) // 2]  # the lower middle value of the 820 distinct pairs
    assert mmd(x, y) ** 2 == pytest.approx(_brute_mmd2(xn, yn, h), rel=1e-10)


def _gauss_rbf_mean(ma, va, mb, vb, h, d):
    """E k(X, Y) for independent X ~ N(ma, va I), Y ~ N(mb, vb I) and k = exp(-|x - y|^2 / (2 h^2)):
    X - Y ~ N(ma - mb, (va + vb) I), so E k = (h^2 / (h^2 + va + vb))^(d/2)
    exp(-|ma - mb|^2 / (2 (h^2 + va + vb)))."""
    s = h * h + va + vb
    return (h * h / s) ** (d / 2) * math.exp(-float(((ma - mb) ** 2).sum()) / (2 * s))


def test_mmd_matches_the_closed_form_for_two_gaussians():
    """For P = N(0, I), Q = N(mu, 4 I) in d = 2 and a fixed bandwidth h, the V-statistic's mean is
    MMD^2 + (1 - E k(X, X'))/m + (1 - E k(Y, Y'))/m' (its diagonal terms k(x, x) = 1), with every E k in
    closed form (:func:`_gauss_rbf_mean`). The mean of R = 6 replicates must sit within 4 standard
    errors (estimated from the replicates) of it, and the bias term must matter less than that."""
    d, m, mp, h, R = 2, 1500, 1000, 1.5, 6
    mu = np.array([1.0, -0.5])
    kxx = _gauss_rbf_mean(np.zeros(d), 1.0, np.zeros(d), 1.0, h, d)
    kyy = _gauss_rbf_mean(mu, 4.0, mu, 4.0, h, d)
    kxy = _gauss_rbf_mean(np.zeros(d), 1.0, mu, 4.0, h, d)
    want = kxx + kyy - 2 * kxy + (1 - kxx) / m + (1 - kyy) / mp
    gen = generator(derive_seed("test-mmd-gauss"))
    vals = []
    for _ in range(R):
        x = torch.randn(m, d, generator=gen, dtype=torch.float64)
        y = torch.as_tensor(mu) + 2.0 * torch.randn(mp, d, generator=gen, dtype=torch.float64)
        vals.append(mmd(x, y, bandwidth=h) ** 2)
    se = np.std(vals, ddof=1) / math.sqrt(R)
    assert abs(np.mean(vals) - want) < 4 * se, (np.mean(vals), want, se)
    assert se < 0.05 * want  # the check has teeth: MMD^2 ~ 0.2 is resolved to a few per cent


def test_mmd_identical_is_zero_and_floor_positive():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(400, 3, generator=g), torch.randn(400, 3, generator=g)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-7)
    floor = mmd(x, y)
    shifted = mmd(x + 1.0, y)
    assert 0 < floor < shifted


def test_gaussian_fit_kl_large_sample():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    y = 1.0 + 2.0 * torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    # KL(N(0,I) || N(1, 4I)) = 0.5 * (2/4 + 2/4 - 2 + 2 log 4)
    want = 0.5 * (0.5 + 0.5 - 2 + 2 * math.log(4.0))
    assert gaussian_fit_kl(x, y) == pytest.approx(want, abs=0.01)


def test_metrics_declare_long_name_and_units():
    """Each registered metric carries its long name and units; the metric functions give the numbers
    of the functions they wrap (same draws: the generator only matters to sliced W2)."""
    assert list(SAMPLE_METRICS) == list(SAMPLE_METRICS.builtin_names) == ["sliced_w2", "mmd", "w2", "kl_gauss"]
    assert dict(SAMPLE_METRICS.facts("units")) == {"sliced_w2": "1", "mmd": "1", "w2": "1", "kl_gauss": "nats"}
    assert all(SAMPLE_METRICS[k].long_name for k in SAMPLE_METRICS)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, 3, generator=g), 0.5 + torch.randn(200, 3, generator=g)
    assert SAMPLE_METRICS["mmd"](x, y, g) == mmd(x, y) and SAMPLE_METRICS["w2"](x, y, g) == w2_exact(x, y)
    assert SAMPLE_METRICS["kl_gauss"](x, y, g) == gaussian_fit_kl(x, y)
    assert SAMPLE_METRICS["sliced_w2"](x, y, torch.Generator().manual_seed(4)) == \
        sliced_w2(x, y, torch.Generator().manual_seed(4))


def test_plugin_metric_without_units_is_refused():
    @declare(long_name="mean distance")
    def mean_distance(x, y, generator):
        return float((x.mean(0) - y.mean(0)).norm())

    with pytest.raises(RegistryError) as e:
        SAMPLE_METRICS.register("mean_distance", mean_distance)
    assert "\n" not in str(e.value) and "metric 'mean_distance'" in str(e.value) and "units" in str(e.value)
    SAMPLE_METRICS.register("mean_distance", declare(units="1")(mean_distance))
    try:
        assert SAMPLE_METRICS.facts("long_name")["mean_distance"] == "mean distance"
    finally:
        SAMPLE_METRICS.unregister("mean_distance")
    assert "mean_distance" not in SAMPLE_METRICS


def test_metrics_against_one_target_give_the_plain_calls_bit_for_bit():
    """``metrics.against`` (a cell's calls against one target share what depends on the target
    alone: issue 30) gives every built-in metric's value exactly, call after call, each plain call
    with a fresh generator in the same state; a metric without ``against`` gets a fresh generator
    at every evaluation."""
    from dsclab.metrics import against

    gen = generator(derive_seed("test-against"))
    y = torch.randn(150, 4, generator=gen, dtype=torch.float64)
    xs = [0.1 * k + (1 + 0.1 * k) * torch.randn(150, 4, generator=gen) for k in range(3)]
    fresh = lambda: generator(derive_seed("test-against-projections"))
    for name, metric in SAMPLE_METRICS.items():
        scorer = against(metric, y, fresh)
        for x in xs:
            assert scorer(x) == metric(x, y, fresh()), name
    seen = []

    def draws(x, y, g):  # a plugin-like metric that draws at every call
        seen.append(float(torch.rand(1, generator=g)))
        return 0.0
    scorer = against(draws, y, fresh)
    scorer(xs[0]), scorer(xs[1])
    assert seen[0] == seen[1] == float(torch.rand(1, generator=fresh()))
