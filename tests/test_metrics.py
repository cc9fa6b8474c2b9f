"""Score errors and sample distances against closed forms or independent computations."""
import math

import numpy as np
import pytest
import torch

from dsclab import distributions
from dsclab.registry import RegistryError, declare
from dsclab.metrics import SAMPLE_METRICS, gaussian_fit_kl, gaussian_kl, mmd, quantile_error, score_errors, sliced_w2, w2_exact


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
