"""Time bootstrapping, dependent data and the score-learning study (issues 5 and 17), against
closed forms: training data, losses (pure and Rao–Blackwellised BSM), hypothesis classes, n*(eps, d),
the spec and the real flow. The regression targets' identities, variances and biases are tested in
``tests/test_bootstrap_targets.py``.

Monte Carlo checks use a tolerance of 5 standard errors computed in the test (a false alarm at
5 SE has probability < 1e-6 per comparison, so a few dozen comparisons stay safe), and each
has a negative control showing the test can fail.
"""
import math

import numpy as np
import pytest
import torch
import xarray as xr

from dsclab.studies.score_learning import bootstrap as bs
from dsclab import analysis, distributions, losses, noise
from dsclab.seeds import derive_seed, generator
from dsclab.spec import SpecError
from dsclab.study import parse_spec
from dsclab.studies.score_learning.numerics import draw_training_data, gauss_kl_to
from dsclab.studies.score_learning.plot import plot as sl_plot
from dsclab.studies.score_learning.readout import n_star as n_star_table
from dsclab.studies.score_learning.report import report as sl_report
from dsclab.studies.score_learning.spec import CELL_DIMS, ScoreLearningSpec

Z = 5.0  # standard errors


# ------------------------------------------------------------------------------------------
# Training data: the OU transition law
# ------------------------------------------------------------------------------------------

def test_trajectory_sampling_has_the_ou_transition_law():
    """Given x0, a row of ``trajectory`` mode is Gaussian with mean e^{-t_k} x0 and covariance
    Cov(X_{t_j}, X_{t_k}) = e^{-(t_k - t_j)} sigma_{t_j}^2 (j <= k) per coordinate, the law of the
    OU process; ``independent`` mode has the same marginals and zero cross-covariances, and its
    (prev, xt) pairs have the one-step transition law. Sample covariances have
    SE sqrt((C_jj C_kk + C_jk^2) / N)."""
    N, d = 40_000, 2
    g = torch.Generator().manual_seed(4)
    x0 = torch.tensor([[1.5, -2.0]], dtype=torch.float64).expand(N, d)
    ts = torch.tensor([0.05, 0.3, 0.35, 1.2], dtype=torch.float64)
    times = ts[None].expand(N, -1).clone()
    tj, tk = ts[:, None], ts[None, :]
    lo = torch.minimum(tj, tk)
    C = torch.exp(-(tj - tk).abs()) * noise.sigma2(lo)
    mean_want = torch.exp(-ts)[:, None] * x0[0][None]
    for mode in ("trajectory", "independent"):
        data = bs.DATA_MODES[mode](x0, times, g)
        want = C if mode == "trajectory" else torch.diag(torch.diagonal(C))
        for c in range(d):
            v = data.xt[:, :, c]
            m = v.mean(0)
            assert ((m - mean_want[:, c]).abs() <= Z * torch.sqrt(torch.diagonal(C) / N)).all()
            emp = torch.cov(v.T)
            se = torch.sqrt((torch.diagonal(C)[:, None] * torch.diagonal(C)[None, :] + want ** 2) / N)
            assert ((emp - want).abs() <= Z * se).all(), (mode, emp, want)
        # one-step transition: xt - e^{-Delta} prev ~ N(0, sigma_Delta^2), uncorrelated with prev
        dl = data.times - data.t_prev
        res = data.xt - torch.exp(-dl)[..., None] * data.prev
        s2 = noise.sigma2(dl)[0]
        var = res.var(0)  # (K, d)
        assert ((var - s2[:, None]).abs() <= Z * s2[:, None] * math.sqrt(2 / N)).all()
        corr = ((res - res.mean(0)) * (data.prev - data.prev.mean(0))).mean(0) / (res.std(0) * data.prev.std(0) + 1e-300)
        assert (corr[1:].abs() <= Z / math.sqrt(N)).all()
    # negative control: the trajectory mode's cross-covariance is not the independent one
    assert (C[0, 1] / torch.sqrt(C[0, 0] * C[1, 1] / N)) > 10 * Z


def test_prefix_of_a_training_set_is_the_smaller_training_set():
    """A training set is drawn in whole blocks of ``dsclab.seeds.DATA_BLOCK`` rows; a cell uses its
    first n rows, which do not depend on the grid's largest n."""
    from dsclab.seeds import block_rows

    spec = parse_spec({"name": "p", "kind": "score_learning", "d": [3], "n": [10, 50]}, ScoreLearningSpec)
    a = draw_training_data(spec, 3, 0, "trajectory")
    assert a.n == block_rows(50) and a.xt.shape == (block_rows(50), spec.train.K, 3)
    b = a.head(10)
    assert b.n == 10 and torch.equal(b.xt, a.xt[:10]) and torch.equal(b.times, a.times[:10])
    wide = parse_spec({"name": "p", "kind": "score_learning", "d": [3], "n": [10, 50, block_rows(50) + 1]},
                      ScoreLearningSpec)
    c = draw_training_data(wide, 3, 0, "trajectory")
    assert c.n == 2 * block_rows(50) and torch.equal(c.xt[:50], a.xt[:50]) and torch.equal(c.x0[:50], a.x0[:50])
    # row times: geometric with ratio r along each row
    r = a.times[:, 1:] / a.times[:, :-1]
    torch.testing.assert_close(r, torch.full_like(r, spec.train.ratio))


# ------------------------------------------------------------------------------------------
# Losses and hypothesis classes
# ------------------------------------------------------------------------------------------

def test_losses_per_sample_and_bsm_reduces_to_dsm_below_t_c():
    g = torch.Generator().manual_seed(5)
    net = bs.make_mlp(3, width=16, depth=2, generator=g)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    x0 = torch.randn(40, 3, generator=g)
    data = bs.sample_trajectory(x0, bs.row_times(40, 3, 0.05, 2.0, g), g)
    xt, prev = data.xt.reshape(-1, 3).float(), data.prev.reshape(-1, 3).float()
    t, tp = data.times.reshape(-1), data.t_prev.reshape(-1)
    b0 = x0[:, None].expand(-1, 3, -1).reshape(-1, 3).float()
    dsm = losses.dsm_pair_loss(net, b0, xt, t)
    z = (xt.double() - torch.exp(-t)[:, None] * b0.double()) / noise.sigma(t)[:, None]
    torch.testing.assert_close(dsm.double(), ((net(xt, t).double() - z) ** 2).sum(1), rtol=1e-4, atol=1e-4)
    assert dsm.shape == (120,)
    t_c = float(t.median())
    bsm = losses.bsm_loss(net, b0, xt, t, prev, tp, target=net, t_c=t_c, mix=0.25)
    lo = t <= t_c
    torch.testing.assert_close(bsm[lo], dsm[lo])
    # above t_c: 0.25 DSM + 0.75 sigma_t^2 ||s_hat - e^{Delta} s_hat(t', prev)||^2
    with torch.no_grad():
        tgt = torch.exp(t - tp)[:, None].float() * net.score(prev, tp)
        b = (noise.sigma(t)[:, None].float() ** 2 * (net.score(xt, t) - tgt) ** 2).sum(1)
    torch.testing.assert_close(bsm[~lo], 0.25 * dsm[~lo] + 0.75 * b[~lo], rtol=1e-4, atol=1e-4)
    # Rao–Blackwellised: the target in its denoiser form -(X_t - e^{-t} D(X_{t'}))/sigma_t^2,
    # D(y) = e^{t'}(y + sigma_{t'}^2 h_hat(t', y))
    rb = losses.bsm_loss(net, b0, xt, t, prev, tp, target=net, t_c=t_c, mix=0.25, rao_blackwell=True)
    torch.testing.assert_close(rb[lo], dsm[lo])
    with torch.no_grad():
        den = torch.exp(tp)[:, None] * (prev.double() + noise.sigma2(tp)[:, None] * net.score(prev, tp).double())
        tgt_rb = -(xt.double() - torch.exp(-t)[:, None] * den) / noise.sigma2(t)[:, None]
        b_rb = (noise.sigma2(t)[:, None] * (net.score(xt, t).double() - tgt_rb) ** 2).sum(1)
    torch.testing.assert_close(rb[~lo].double(), 0.25 * dsm[~lo].double() + 0.75 * b_rb[~lo], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(rb[~lo], bsm[~lo])


def test_structured_class_is_d_free_and_has_the_form_minus_x_plus_g_e1():
    g = torch.Generator().manual_seed(6)
    sizes = {d: bs.n_parameters(bs.make_structured(d, width=16, depth=2, generator=g)) for d in (4, 128)}
    assert sizes[4] == sizes[128]
    assert bs.n_parameters(bs.make_mlp(128, width=16, depth=2, generator=g)) > \
        bs.n_parameters(bs.make_mlp(4, width=16, depth=2, generator=g))
    net = bs.make_structured(5, width=16, depth=2, generator=g)
    with torch.no_grad():
        net.out.weight.normal_(generator=g)
    x = torch.randn(50, 5, generator=g)
    s = net.score(x, 0.4)
    torch.testing.assert_close(s[:, 1:], -x[:, 1:])
    assert (s[:, 0] + x[:, 0]).abs().max() > 1e-3
    # the exact score of +-a e_1 + N(0, I_d) has this form: -x + a e^{-t} tanh(a e^{-t} x_1) e_1
    law = distributions.make("gaussian_mixture", 5, k=2, separation=4.0, std=1.0)
    xx = law.sample(20, g, t=0.4).double()
    at = 2.0 * math.exp(-0.4)
    want = -xx.clone()
    want[:, 0] += at * torch.tanh(at * xx[:, 0])
    torch.testing.assert_close(law.score(xx, 0.4), want)


def _empirical_dsm_risk(model, data: bs.NoisedData) -> float:
    """The DSM risk on every one of the n K training pairs, mean of ||eps_hat(X_t, t) - Z||^2
    (``losses.dsm_pair_loss``), whatever estimator trained ``model``: the objective every estimator's
    network approximates the minimiser of (the exact score, up to the finite training set)."""
    d, K = data.x0.shape[1], data.K
    x0 = data.x0[:, None, :].expand(-1, K, -1).reshape(-1, d).float()
    with torch.no_grad():
        return float(losses.dsm_pair_loss(model, x0, data.xt.reshape(-1, d).float(),
                                          data.times.reshape(-1).float()).mean())


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _spy_phases(monkeypatch, snap_at: int | None = None) -> list[dict]:
    """Record every call of ``dsclab.train.fit`` that ``bootstrap.fit`` makes (one per phase): the
    loss, its steps, the times of every drawn pair, the model's state at the phase's start and end,
    the teacher (h_hat) and its state at both ends, the times at which the teacher's score was
    evaluated, and (``snap_at``) the model's state after ``snap_at`` steps of the phase."""
    calls, real = [], bs.train.fit

    def spy(model, loss, draw, *, steps, **kw):
        rec = {"loss": loss, "steps": steps, "times": [], "model_start": _state(model), "teacher_times": []}
        target = getattr(loss, "target", None)
        rec["teacher"] = target
        if isinstance(target, torch.nn.Module):
            rec["teacher_start"] = _state(target)
            rec["teacher_grad"] = any(p.requires_grad for p in target.parameters())
            score = target.score
            target.score = lambda x, t: (rec["teacher_times"].append(torch.as_tensor(t).detach().clone()), score(x, t))[1]

        def spy_draw(step):
            if step == 0:
                rec["lr0"] = kw["optimizer"].param_groups[0]["lr"]  # the learning rate of the phase's first step
            if step == snap_at:
                rec["snap"] = _state(model)  # draw(step) comes before the step's update: `step` updates so far
            batch = draw(step)
            rec["times"].append(batch[2].detach().clone())
            return batch

        out = real(model, loss, spy_draw, steps=steps, **kw)
        rec["model_end"] = _state(model)
        if isinstance(target, torch.nn.Module):
            del target.score
            rec["teacher_end"] = _state(target)
        calls.append(rec)
        return out

    monkeypatch.setattr(bs.train, "fit", spy)
    return calls


def _small_fit_setup(K: int = 16):
    law = distributions.make("gaussian_mixture", 2, k=2, separation=4.0, std=1.0)
    g = generator(derive_seed("test-bootstrap-phases"))
    data = bs.sample_independent(law.sample(100, g), bs.row_times(100, K, 0.01, 3.0, g), g)
    data = bs.NoisedData(data.x0.float(), data.times, data.xt.float(), data.prev.float(), data.t_prev)
    init = lambda: bs.make_mlp(2, width=16, depth=2, generator=generator(1))
    return law, data, init


@pytest.mark.usefixtures("one_thread")
def test_frozen_teacher_is_dsm_after_half_the_steps_and_stays_frozen(monkeypatch):
    """``bsm_rb_frozen``: two phases of steps/2 each; the first is DSM at every t and is the first
    half of ``dsm``'s own run (its state after 20 of 40 ``dsm`` steps, captured independently, is the
    teacher); the teacher of the second is a copy without gradients whose parameters do not change
    during that phase while the student's do; the step budget is ``dsm``'s. Negative control:
    ``bsm_rb``'s teacher (the network itself) does change, so the check can fail."""
    law, data, init = _small_fit_setup()
    cfg = bs.FitConfig(steps=40, batch_size=8, mix=0.2)
    calls = _spy_phases(monkeypatch, snap_at=20)
    bs.fit(init(), data, "dsm", cfg, generator(2), law=law)
    (dsm,) = calls
    calls.clear()
    frozen = bs.fit(init(), data, "bsm_rb_frozen", cfg, generator(2), law=law)
    assert [c["steps"] for c in calls] == [20, 20] and dsm["steps"] == 40
    first, second = calls
    assert first["loss"] is losses.dsm_pair_loss and first["teacher"] is None
    assert _same(first["model_end"], dsm["snap"])  # the first phase is dsm's first half, step for step
    # one cosine decay over the 40 steps, continued: lr0 (1 + cos(pi 20/40)) / 2 = lr0 / 2 at step 20
    assert first["lr0"] == cfg.lr and second["lr0"] == pytest.approx(cfg.lr / 2, rel=1e-12)
    teacher = second["teacher"]
    assert isinstance(teacher, torch.nn.Module) and teacher is not frozen.model
    assert isinstance(second["loss"], losses.BSMPairLoss) and second["loss"].rao_blackwell
    assert not second["teacher_grad"]
    assert _same(second["teacher_start"], first["model_end"])  # h_hat = the DSM network of phase 1 ...
    assert _same(second["teacher_end"], second["teacher_start"])  # ... frozen through phase 2
    assert not _same(second["model_end"], second["model_start"])  # while the student trains
    assert second["teacher_times"], "the teacher was never evaluated"
    assert not _same(_state(frozen.model), dsm["model_end"])  # a different fit from dsm's
    calls.clear()
    bs.fit(init(), data, "bsm_rb", cfg, generator(2), law=law)
    (joint,) = calls
    assert not _same(joint["teacher_end"], joint["teacher_start"])  # the negative control


@pytest.mark.usefixtures("one_thread")
def test_band_sequential_bands_are_trained_in_order(monkeypatch):
    """``bsm_band``: band edges e_j = t_c r^j up to the first at or above T (closed form; r the
    training grid's ratio, 1.4283 here: t_c = 0.3 and T = 3 give 7 bands), steps split equally over
    DSM below t_c and the 7 bands; phase j trains exactly the pairs with t <= e_j (its band is
    reached, the bands below are kept, none above appears), in increasing order; its teacher is the
    network frozen at the phase's start, unchanged through the phase, and is evaluated only at
    times t' <= e_{j-1}, i.e. on the bands already trained; each phase starts at the full learning
    rate (a cosine decay of its own)."""
    law, data, init = _small_fit_setup()
    r = bs.grid_ratio(16, 0.01, 3.0)
    cfg = bs.FitConfig(steps=8 * 6 + 3, batch_size=16, t_c=0.3, mix=0.2, grid_ratio=r, T=3.0)
    edges = bs.band_edges(0.3, 3.0, r)
    B = math.ceil(math.log(3.0 / 0.3) / math.log(r))
    assert B == 7 and edges == pytest.approx([0.3 * r ** j for j in range(8)], rel=1e-12)
    assert edges[-2] < 3.0 <= edges[-1]
    calls = _spy_phases(monkeypatch)
    bs.fit(init(), data, "bsm_band", cfg, generator(2), law=law)
    assert [c["steps"] for c in calls] == [7, 7, 7, 6, 6, 6, 6, 6]  # 51 steps over 8 phases
    for j, c in enumerate(calls):
        assert c["lr0"] == cfg.lr  # every phase has its own cosine decay, from lr
        t = torch.cat(c["times"])
        hi = edges[j] if j < B else math.inf
        assert float(t.max()) <= hi
        assert float(t.min()) < 0.3  # the DSM band stays in every phase
        if j == 0:
            assert c["loss"] is losses.dsm_pair_loss and float(t.max()) <= 0.3
            continue
        assert float(t.max()) > edges[j - 1]  # band j is trained in phase j, not before
        assert _same(c["teacher_start"], calls[j - 1]["model_end"])  # frozen after the bands below
        assert _same(c["teacher_end"], c["teacher_start"]) and not c["teacher_grad"]
        tp = torch.cat([v.reshape(-1) for v in c["teacher_times"]])
        assert tp.numel() > 0 and float(tp.max()) <= edges[j - 1] * (1 + 1e-9), (j, float(tp.max()), edges[j - 1])
    # each pair's predecessor lies in the band below its own (what the edges are chosen for)
    t, tp = data.times[:, 1:], data.t_prev[:, 1:]
    band = lambda v: torch.bucketize(v, torch.tensor(edges, dtype=v.dtype), right=False)
    above = t > 0.3
    assert torch.equal(band(tp[above]) + 1, band(t[above]))


def test_regime_verdict_counts_only_points_where_every_seed_beats_dsm():
    """``bsm_report.regime_wins``: a point is a win iff every seed's ratio is below 1 (a NaN seed, a
    cell not done, is no win); the region text lists exactly those points by d, then n."""
    from dsclab.studies.score_learning.bsm_report import _region_text, regime_wins

    r = xr.DataArray(np.array([[[[0.9, 0.5]], [[0.7, 0.8]]], [[[0.8, 0.7]], [[np.nan, 0.9]]],
                               [[[0.95, 1.0]], [[0.5, 0.6]]]]),
                     dims=("seed", "d", "n", "t"), coords={"seed": [0, 1, 2], "d": [2, 8], "n": [64], "t": [0.5, 1.0]})
    win = regime_wins(r)
    # seeds at (d=2, t=0.5): 0.9, 0.8, 0.95 -> win; (d=2, t=1): 0.5, 0.7, 1.0 -> not (1.0 is not below);
    # (d=8, t=0.5): 0.7, nan, 0.5 -> not (the NaN); (d=8, t=1): 0.8, 0.9, 0.6 -> win
    assert win.sel(n=64).values.tolist() == [[True, False], [False, True]]
    assert _region_text(win) == "d=2: n=64 (t=0.5); d=8: n=64 (t=1)"
    assert _region_text(win & False) == ""


def test_schedules_need_a_learned_bootstrap_and_enough_steps():
    """A frozen-teacher or band schedule on DSM or an oracle is refused by the registry; a run too
    short to give every phase a step is refused before training."""
    from dsclab.registry import RegistryError

    with pytest.raises(RegistryError, match="learned bootstrap"):
        bs._check_estimator("x", bs.BootstrapEstimator(schedule=bs.Bands()))
    with pytest.raises(RegistryError, match="learned bootstrap"):
        bs._check_estimator("x", bs.BootstrapEstimator(bootstrap=True, oracle=True, schedule=bs.DSMThenFrozen()))
    est = bs.BOOTSTRAP_ESTIMATORS["bsm_band"]
    with pytest.raises(ValueError, match="cannot be split"):
        est.schedule.phases(est, bs.FitConfig(steps=5, grid_ratio=bs.grid_ratio(16, 0.01, 3.0), T=3.0))
    with pytest.raises(ValueError, match="grid's ratio"):
        est.schedule.phases(est, bs.FitConfig(steps=50))


@pytest.mark.usefixtures("one_thread")  # a tiny network: threads only add overhead
def test_training_is_deterministic_and_lowers_the_loss():
    """Same generators, same parameters; and 100 steps of every estimator lower the empirical DSM
    risk on the training pairs from the initial network's by at least 15% of the gap to the exact
    score's (the floor; measured: 34% for the pure bsm target, whose variance is the largest, and
    79% to 82% for the other four). The losses are deterministic (fixed generators): the margin is
    for changes of seeds, not noise."""
    law = distributions.make("gaussian_mixture", 2, k=2, separation=4.0, std=1.0)
    g = generator(derive_seed("test-bootstrap-fit"))
    data = bs.sample_independent(law.sample(200, g), bs.row_times(200, 4, 0.05, 2.0, g), g)
    grid = dict(grid_ratio=bs.grid_ratio(4, 0.05, 2.0), T=2.0)  # band-sequential training's band edges
    cfg = bs.FitConfig(steps=30, batch_size=16, **grid)
    init = lambda: bs.make_mlp(2, width=16, depth=2, generator=generator(1))
    fit = lambda e, c=cfg: bs.fit(init(), data, e, c, generator(2), law=law)
    for est in ("bsm", "bsm_rb"):
        a, b = fit(est), fit(est)
        assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    runs = {e: fit(e) for e in bs.BOOTSTRAP_ESTIMATORS}
    assert all(math.isfinite(r.loss) for r in runs.values())
    before = _empirical_dsm_risk(init(), data)
    exact = lambda x, t: -noise.sigma(t).to(x.dtype)[:, None] * law.score(x.double(), t.double()).to(x.dtype)
    floor = _empirical_dsm_risk(exact, data)
    assert floor < before
    for e in bs.BOOTSTRAP_ESTIMATORS:
        after = _empirical_dsm_risk(fit(e, bs.FitConfig(steps=100, batch_size=16, **grid)).model, data)
        assert after < before - 0.15 * (before - floor), (e, before, after, floor)
    # the targets differ, so do the fits; a lagged copy as h_hat (lag 5) differs from stop-gradient
    assert not torch.equal(next(runs["bsm"].model.parameters()), next(runs["bsm_rb"].model.parameters()))
    lagged = fit("bsm_rb", bs.FitConfig(steps=30, batch_size=16, lag=5, **grid))
    assert not torch.equal(next(lagged.model.parameters()), next(runs["bsm_rb"].model.parameters()))
    with pytest.raises(ValueError, match="exact score"):
        bs.fit(init(), data, "bsm_rb_oracle", cfg, generator(2))


def test_kl_of_the_gaussian_fit_to_q_t_is_the_textbook_formula():
    """``gauss_kl_to``: KL(N(m1, C1) || N(m2, C2)) = 1/2 [tr(C2^{-1} C1) + (m2 - m1)^T C2^{-1} (m2 - m1) - d
    + log det C2 / det C1], m1, C1 the samples' mean and covariance and m2, C2 those of q_t
    (e^{-t} mean_0, e^{-2t} Cov_0 + sigma_t^2 I), computed here in numpy."""
    law = distributions.make("gaussian_mixture", 3, k=2, separation=4.0, std=1.0)
    g = torch.Generator().manual_seed(9)
    y = 1.3 * law.sample(400, g, t=0.05) + 0.2
    t = 0.05
    m1, C1 = y.numpy().mean(0), np.cov(y.numpy().T)
    m2 = math.exp(-t) * law.mean().numpy()
    C2 = math.exp(-2 * t) * law.cov().numpy() + noise.sigma2(t) * np.eye(3)
    P = np.linalg.inv(C2)
    want = 0.5 * (np.trace(P @ C1) + (m2 - m1) @ P @ (m2 - m1) - 3 + np.log(np.linalg.det(C2) / np.linalg.det(C1)))
    assert gauss_kl_to(law, y, t) == pytest.approx(want, rel=1e-9)
    # an exact draw of q_t is near 0 (finite-sample floor), the distorted one is not
    assert gauss_kl_to(law, law.sample(4000, g, t=t), t) < 0.02 < want


# ------------------------------------------------------------------------------------------
# n*(eps, d)
# ------------------------------------------------------------------------------------------

def test_n_star_and_its_exponent_in_d_for_power_laws():
    """err = C d^b n^{-a}: n*(eps) = (C d^b / eps)^{1/a} exactly (log-log interpolation is exact
    for power laws) and the exponent of n* in d is b / a."""
    n = np.array([10.0, 100.0, 1000.0, 10_000.0])
    a, b, C, eps = 0.8, 1.2, 5.0, 1.0
    d = np.array([4.0, 16.0, 64.0])
    n_star = lambda e: analysis.crossing(n, e, eps, missing="unknown")
    cs = [n_star(C * dd ** b * n ** (-a)) for dd in d]
    ns = [c.value for c in cs]
    np.testing.assert_allclose(ns, (C * d ** b / eps) ** (1 / a), rtol=1e-10)
    assert math.isclose(analysis.crossing_exponent(d, cs), b / a, rel_tol=1e-10)
    never, once = n_star(np.full(4, 2.0)), n_star(np.full(4, 0.5))
    assert math.isnan(never.value) and never.censored == "right"        # never reached
    assert once.value == 10.0 and once.censored == "left"               # reached at once
    # a missing value before the crossing makes n* unknown; after it, it does not matter
    e = C * 4.0 ** b * n ** (-a)
    assert n_star(np.where(n == 100.0, np.nan, e)).censored == "unknown"
    assert n_star(np.where(n == 10_000.0, np.nan, e)).value == pytest.approx(ns[0], rel=1e-12)
    # censored n* are left out of the exponent: the two uncensored points give b / a
    assert math.isclose(analysis.crossing_exponent(np.append(d, 256.0), cs + [never]), b / a, rel_tol=1e-10)
    err = xr.DataArray(np.stack([C * dd ** b * n ** (-a) for dd in d]), dims=("d", "n"), coords={"d": d, "n": n})
    np.testing.assert_allclose(analysis.crossing_values(n_star_table(err, eps)).values, ns)
    lv = analysis.common_levels(err)
    assert lv and all(float(err.isel(n=-1).max()) < e < float(err.isel(n=0).min()) for e in lv)


# ------------------------------------------------------------------------------------------
# Spec and the real flow
# ------------------------------------------------------------------------------------------

def test_spec_errors_are_one_line():
    base = {"name": "x", "kind": "score_learning", "d": [2], "n": [10]}
    for bad, pattern in [({"estimator": ["tsm"]}, r"^estimator: unknown estimator 'tsm'"),
                         ({"model": ["structured"], "distribution": {"name": "gaussian", "params": {"cond": 4.0}}},
                          r"^spec: model 'structured' needs identity component covariances"),
                         ({"evaluation": {"t": [5.0]}}, r"^spec: evaluation.t \[5.0\] outside the training range"),
                         ({"evaluation": {"sampler": "srk", "nfe": 15}},
                          r"^spec: evaluation.nfe 15 is not a multiple of 2, .* sampler 'srk'$")]:
        with pytest.raises(SpecError, match=pattern) as e:
            parse_spec({**base, **bad}, ScoreLearningSpec)
        assert "\n" not in str(e.value)


TINY = {
    "name": "tiny_sl", "kind": "score_learning", "d": [2, 3], "n": [20, 60], "seed": [0],
    "estimator": ["dsm", "bsm", "bsm_rb"], "data_mode": ["independent", "trajectory"], "model": ["mlp"],
    "train": {"steps": 20, "batch_size": 8, "K": 4, "width": 8, "depth": 1},
    "bsm": {"t_c": 0.2, "mix": 0.5},
    "evaluation": {"t": [0.05, 0.5, 1.5], "delta": [0.05, 0.5], "n_score": 100, "n_var": 8, "n_draws": 4,
                   "nfe": 8, "n_samples": 50},
}


def test_tiny_study_through_the_flow_then_resume_computes_nothing(study_run, tmp_path):
    from flows.study import score_learning

    run = study_run(score_learning, parse_spec(TINY, ScoreLearningSpec), "tiny_sl.zarr")
    ds = run.complete(cells=24)
    assert ds.score_l2.dims == CELL_DIMS + ("t",) and ds.target_var.dims == CELL_DIMS + ("t",)
    for var in ("score_l2", "score_quantile", "target_var", "target_var_oracle", "sliced_w2", "mode_tv", "kl_gauss"):
        assert np.isfinite(ds[var].values).all(), var
    # DSM's target does not depend on the network or the data mode: paired draws, equal values
    dsm = ds.target_var.sel(estimator="dsm")
    np.testing.assert_allclose(dsm.sel(data_mode="independent").values, dsm.sel(data_mode="trajectory").values)
    text = sl_report(ds)
    for part in ("dimension-free", "BSM against DSM", "trajectory against independent", "closing note",
                 "bsm_rb score_l2 / DSM's", "sampling kl_gauss"):
        assert part in text
    run.rerun_computes_nothing(ds)
    assert sl_plot(ds, str(tmp_path / "p.png")).endswith("p.png")
