"""Real data (issue 27): the ``dataset`` family and its split, the built-in digits, the metrics that
need no exact score, and the memorization kind's refusals. The kind's flow runs are in
``tests/test_contract.py`` (small preset) and ``tests/test_growth.py`` (growing n)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dsclab import distributions, immse
from dsclab.distributions import DatasetError
from dsclab.distributions.dataset import BUILTIN_DATA
from dsclab.metrics import (MEMORIZATION_RATIO, ROW_METRICS, heldout_dsm, memorization_fraction, memorized,
                            nearest_similarity, nearest_two, paired_similarity)
from dsclab.seeds import rng
from dsclab.spec import SpecError
from dsclab.study import KINDS


def test_digits_ship_inside_the_package():
    f, key = BUILTIN_DATA["digits"]
    z = np.load(f)
    x = z[key].reshape(len(z[key]), -1)
    assert x.shape == (1797, 64) and x.dtype == np.uint8
    assert x.min() == 0 and x.max() == 16
    assert sorted(np.unique(z["labels"])) == list(range(10))
    for d, f in ((4, 4), (16, 2), (64, 1)):
        ds = distributions.make("digits", d)
        rows = ds.load()
        assert rows.shape == (1797, d) and ds.factor == f and ds.lattice
        assert rows.min() >= -1 and rows.max() <= 1
        # pooled values lie on the lattice of (1/f^2) raw steps
        assert np.allclose(np.round((rows + 1) * 8 * f * f), (rows + 1) * 8 * f * f)
    with pytest.raises(ValueError, match=r"d=10 is not a resolution .*\[1, 4, 16, 64\]"):
        distributions.make("digits", 10)


def test_split_is_disjoint_fixed_and_the_same_when_n_grows():
    ds = distributions.make("digits", 16)
    train, test = ds.split(0)
    assert len(train) == ds.n_train and len(test) == ds.n_test == round(1797 * 0.2)
    assert not set(train) & set(test) and len(set(train) | set(test)) == 1797
    assert all(np.array_equal(a, b) for a, b in zip(ds.split(0), distributions.make("digits", 64).split(0)))
    assert not np.array_equal(ds.split(1)[0], train)
    # a cell of size n uses the first n training rows, whatever the grid's largest n
    from dsclab.studies.memorization import numerics

    kind = KINDS["memorization"]
    small = kind.parse({**kind.small, "n": [4, 32]})
    grown = kind.parse({**kind.small, "n": [4, 32, 300]})
    a, b = (numerics.parts(s, 16, numerics.rows(s, 16, 0)) for s in (small, grown))
    for part in ("test", "train", "a", "b"):
        assert np.array_equal(a[part], b[part])
    assert np.array_equal(a["a"][:4], a["train"][:4])
    x = ds.load()
    assert np.array_equal(a["test"], x[test].astype(np.float32)) and np.array_equal(a["train"], x[train].astype(np.float32))
    # networks a and b train on the two halves of the training part: disjoint rows of the split
    half = ds.n_train // 2
    assert np.array_equal(a["a"], a["train"][:half]) and np.array_equal(a["b"], a["train"][half:2 * half])


@pytest.mark.parametrize("fmt", ["npy", "npz", "zarr", "zarr-group"])
def test_loader_reads_npy_npz_and_zarr(tmp_path, fmt):
    x = np.arange(40 * 6, dtype=np.float32).reshape(40, 6) % 7
    if fmt == "npy":
        path, key = str(tmp_path / "x.npy"), ""
        np.save(path, x)
    elif fmt == "npz":
        path, key = str(tmp_path / "x.npz"), "rows"
        np.savez(path, rows=x, other=np.zeros(3))
    elif fmt == "zarr":
        import zarr

        path, key = str(tmp_path / "x.zarr"), ""
        zarr.create_array(path, shape=x.shape, dtype=x.dtype)[...] = x
    else:
        import zarr

        path, key = str(tmp_path / "g.zarr"), "rows"
        zarr.open_group(path, mode="w").create_array("rows", shape=x.shape, dtype=x.dtype)[...] = x
    ds = distributions.make("dataset", 6, path=path, key=key, lattice=True)
    assert (ds.rows, ds.n_test, ds.n_train) == (40, 8, 32)
    rows = ds.load()
    assert np.allclose(rows, -1 + 2 * x / 6)  # scaled from the array's [0, 6] to [-1, 1]
    with pytest.raises(ValueError, match="n 33 is above 32, the largest possible n"):
        ds.check_n(33)


def test_loader_refuses_ragged_and_non_numeric_arrays_in_one_line(tmp_path):
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.zeros(2), np.zeros(3), np.zeros(2)]
    np.save(tmp_path / "ragged.npy", ragged, allow_pickle=True)
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"], ["e", "f"]]))
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2)), b=np.zeros((4, 2)))
    cases = [("ragged.npy", "", "ragged or non-numeric"), ("text.npy", "", "non-numeric"),
             ("two.npz", "", "name one with the parameter key"), ("missing.npy", "", "no such file")]
    for name, key, msg in cases:
        with pytest.raises(DatasetError) as e:
            distributions.make("dataset", 2, path=str(tmp_path / name), key=key)
        assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)
    # through a spec: one line naming the field
    kind = KINDS["memorization"]
    with pytest.raises(SpecError) as e:
        kind.parse({**kind.small, "distribution": {"name": "dataset", "params": {"path": str(tmp_path / "ragged.npy")}},
                    "d": [2]})
    assert str(e.value).startswith("spec: distribution dataset at d=2") and "ragged" in str(e.value) and "\n" not in str(e.value)


def test_an_n_above_two_disjoint_halves_is_refused_naming_the_largest_n():
    kind = KINDS["memorization"]
    with pytest.raises(SpecError) as e:
        kind.parse({**kind.small, "n": [4, 720]})
    msg = str(e.value)
    assert "n 720 is above 719, the largest possible n" in msg and "\n" not in msg, msg
    assert kind.parse({**kind.small, "n": [4, 719]}).n[-1] == 719
    with pytest.raises(SpecError, match="not a data set"):
        kind.parse({**kind.small, "distribution": {"name": "gaussian"}})


def test_memorization_criterion():
    g = torch.Generator().manual_seed(0)
    dist = distributions.make("gaussian", 16)
    train = dist.sample(200, g)
    # exact copies of training rows are memorized
    assert memorization_fraction(train[torch.randperm(200, generator=g)[:50]], train) == 1.0
    # fresh draws of the same law are not
    assert memorization_fraction(dist.sample(1000, g), train) < 0.01
    # the ratio criterion against brute force (numpy, every pair)
    x = torch.cat([dist.sample(300, g), train[:30] + 0.05 * torch.randn(30, 16, generator=g)])
    D = np.sqrt(((x.numpy()[:, None, :].astype(np.float64) - train.numpy()[None].astype(np.float64)) ** 2).sum(-1))
    D.sort(axis=1)
    brute = D[:, 0] < MEMORIZATION_RATIO * D[:, 1]
    assert np.array_equal(memorized(x, train).numpy(), brute) and 25 <= brute.sum() <= 35
    r1, r2, _ = nearest_two(x, train)
    assert np.allclose(r1.numpy(), D[:, 0]) and np.allclose(r2.numpy(), D[:, 1])
    assert ROW_METRICS["memorized"](x, train, g) == pytest.approx(brute.mean())


def test_two_network_similarity_is_one_for_identical_networks():
    from dsclab.studies.memorization import numerics
    from dsclab.train import TrainConfig, train_score

    kind = KINDS["memorization"]
    spec = kind.parse(kind.small)
    cell = kind.cells(spec)[0]
    x = torch.as_tensor(numerics.parts(spec, cell.d, numerics.rows(spec, cell.d, 0))["a"][:cell.n])
    res = train_score(x, config=TrainConfig(steps=20, width=16, depth=1), seed=1)
    a = numerics.generate(spec, cell, res.model.score, "cpu")
    b = numerics.generate(spec, cell, res.model.score, "cpu")
    assert paired_similarity(a, b) == pytest.approx(1.0, abs=1e-12)
    assert paired_similarity(a, b, a.mean(0)) == pytest.approx(1.0, abs=1e-12)
    assert paired_similarity(a, -b) == pytest.approx(-1.0, abs=1e-12)
    # a row's nearest row in a set holding it is itself
    assert nearest_similarity(a[:5], a) == pytest.approx(1.0, abs=1e-12)


def test_discrete_nll_matches_the_entropy_of_a_known_law():
    """Rademacher {-1, +1}^d with its exact denoiser: -log P = d log 2, i.e. 1 bit per dimension."""
    d = 8
    law = distributions.make("rademacher", d)
    x = law.sample(300, rng("test-x"))
    est = immse.held_out_nll(x, [law.denoise], rng("test-immse"), lam=torch.ones(d), box=(-1.0, 1.0), n_alpha=128)
    assert abs(float(est.value[0]) - 1.0) < 3 * float(est.se[0]) + 0.01, (est.value, est.se)
    assert float(est.se[0]) < 0.02


def test_heldout_dsm_is_paired_and_smallest_for_the_exact_score():
    law = distributions.make("gaussian_mixture", 4)
    x = law.sample(2000, rng("x"))
    exact = heldout_dsm(lambda y, t: law.score(y.to(torch.float64), t), x, 0.3, rng("z"), dtype=torch.float64)
    again = heldout_dsm(lambda y, t: law.score(y.to(torch.float64), t), x, 0.3, rng("z"), dtype=torch.float64)
    zero = heldout_dsm(lambda y, t: -y.to(torch.float64), x, 0.3, rng("z"), dtype=torch.float64)
    assert exact == again and exact < zero


def _uniform_lattice_denoiser(levels: torch.Tensor):
    """The Bayes denoiser of the uniform law on ``levels`` per coordinate: the posterior mean over
    the levels, each weighted by its Gaussian likelihood (independent of dsclab.immse)."""
    def denoise(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        m, s2 = torch.exp(-t)[:, None, None], -torch.expm1(-2 * t)[:, None, None]
        logw = -(x.to(torch.float64)[..., None] - m * levels) ** 2 / (2 * s2)
        return (torch.softmax(logw, -1) * levels).sum(-1)
    return denoise


def test_rounding_mmse_and_its_tail_against_monte_carlo_and_quadrature():
    from dsclab.immse.core import mmse_eps
    step = 0.125
    alpha = torch.tensor([2.0, 5.0, 6.0, 7.0])
    x = torch.zeros(40000, 2)  # an interior point of -1 + step Z
    mc = mmse_eps(x, alpha, immse.lattice_rounding(-1.0, step, -1.0, 1.0), rng("test-round")).mean(0) / 2
    np.testing.assert_allclose(mc.numpy(), immse.rounding_mmse(alpha, step).numpy(), rtol=0.03)
    for b, st in ((6.0, 0.125), (9.57, 0.03125), (1.0, 2.0)):
        grid = torch.linspace(b, 45.0, 400001, dtype=torch.float64)
        quad = 0.5 * float(torch.trapz(immse.rounding_mmse(grid, st), grid))
        assert immse.rounding_tail(b, st) == pytest.approx(quad, rel=1e-6)
    # at very high SNR rounding is exact: nothing is left above
    assert immse.rounding_tail(12.0, 0.125) < 1e-12


def test_completed_above_switches_rows_at_the_top():
    zero = lambda x, t: torch.zeros_like(x)
    one = lambda x, t: torch.ones_like(x)
    top = 4.0
    den = immse.completed_above(zero, one, top)
    alpha = torch.tensor([-2.0, 3.9, 4.1, 9.0], dtype=torch.float64)
    t = 0.5 * torch.nn.functional.softplus(-alpha)
    out = den(torch.zeros(4, 3, dtype=torch.float64), t)
    assert out[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_completed_discrete_nll_matches_the_entropy_of_a_uniform_lattice():
    """iid uniform on 5 levels {-1, -1/2, 0, 1/2, 1}: log2 5 bits per dimension. With its exact
    denoiser the estimate matches it with or without the completion; a denoiser that stops snapping
    above log-SNR 6 (it returns its rescaled input, a flat law's answer) costs 1/2 nat per coordinate
    and unit of log-SNR up to the range's end, and the completion by rounding removes that cost
    (rounding is the Bayes denoiser there: sqrt(gamma) step >= 10)."""
    d, step, top = 4, 0.5, 6.0
    levels = torch.arange(-1.0, 1.0 + 1e-9, step, dtype=torch.float64)
    x = levels[torch.randint(len(levels), (400, d), generator=rng("test-uniform"))]
    exact = _uniform_lattice_denoiser(levels)
    flat_above = immse.completed_above(exact, lambda y, t: y * torch.exp(t)[:, None], top)
    lam = torch.tensor([0.5, 0.5, 0.005, 0.005], dtype=torch.float64)  # a wide range: [-6.9, 12.9]
    kw = dict(lam=lam, box=(-1.0, 1.0), n_alpha=128)
    plain = immse.held_out_nll(x, [exact, flat_above], rng("test-immse"), **kw)
    done = immse.held_out_nll(x, [exact, flat_above], rng("test-immse"), lattice=(-1.0, step), top=top, **kw)
    h = float(np.log2(len(levels)))
    for est in (plain, done):
        assert abs(float(est.value[0]) - h) < 3 * float(est.se[0]) + 0.01, (est.value, est.se)
    assert abs(float(done.value[1]) - h) < 3 * float(done.se[1]) + 0.01, (done.value, done.se)
    b = float(immse.logsnr_range(*immse.loc_scale(lam))[1])
    # clamped to the box, the flat answer's error vanishes half the time on a face (x = -1 or 1)
    per_coordinate = 1 - 0.5 * float((x.abs() == 1).double().mean())
    assert float(plain.value[1]) - h == pytest.approx(per_coordinate * (b - top) / 2 / np.log(2), rel=0.05)


def test_digits_lie_on_their_declared_lattice():
    for d in (4, 16, 64):
        ds = distributions.make("digits", d)
        origin, step = ds.lattice_points()
        k = (ds.load() - origin) / step
        assert np.abs(k - np.round(k)).max() < 1e-9
        assert len(np.unique(np.round(k))) > 0.6 * (2 / step)  # the step is the lattice's, not a multiple
