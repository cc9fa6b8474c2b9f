"""Extension from outside through entry points (dsclab.registry), and the example plugin
(examples/dsclab-example-plugin, installed into the venv by the Makefile): its data family and its
study kind are found through the entry points; the family's q_t and the study's numbers match
closed forms; clashing and broken entry points are refused with one line; ``dsclab run`` runs the
plugin's kind end to end."""
from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from scipy import integrate, stats

from dsclab import cli, distributions, noise
from dsclab.distributions import DISTRIBUTIONS
from dsclab.registry import Needs, Registry, RegistryError
from dsclab.study import KINDS, Status, StudyKind
from dsclab_example import denoiser_gap as gap_kind  # installed by `make venv` (examples/dsclab-example-plugin)
from dsclab_example import uniform as uniform_mod

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# found through the entry points
# ----------------------------------------------------------------------------------------------

def test_plugin_is_found_through_its_entry_points():
    eps = {(ep.group, ep.name): ep.value for g in ("dsclab.distributions", "dsclab.studies")
           for ep in importlib.metadata.entry_points(group=g)}
    assert eps[("dsclab.distributions", "uniform")] == "dsclab_example.uniform:uniform"
    assert eps[("dsclab.studies", "denoiser_gap")] == "dsclab_example.denoiser_gap:KIND"
    assert DISTRIBUTIONS["uniform"] is uniform_mod.uniform
    assert "uniform" not in DISTRIBUTIONS.builtin_names
    kind = KINDS["denoiser_gap"]
    assert kind is gap_kind.KIND and isinstance(kind, StudyKind)
    assert kind.flow_name == "denoiser-gap" and kind.spec_model.model_fields["kind"].default == "denoiser_gap"
    law = distributions.make("uniform", 3, a=2.0)
    assert isinstance(law, uniform_mod.UniformCube) and law.d == 3 and law.a == 2.0


# ----------------------------------------------------------------------------------------------
# the uniform family: q_t against closed forms and independent computations
# ----------------------------------------------------------------------------------------------

TIMES = (0.01, 0.1, 1.0, 3.0)


@pytest.mark.parametrize("t", TIMES)
def test_uniform_score_is_the_gradient_of_log_prob(t):
    """Central differences of log q_t (step 1e-5, float64: truncation ~ h^2 |q'''| / 6 <= 1e-8 even
    at t = 0.01, where sigma_t = 0.14 sets the scale of the edges; rounding ~ 1e-16 / h = 1e-11),
    at draws from q_t and at points far outside the cube (the log-space tails)."""
    law = uniform_mod.uniform(3, a=1.5)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([law.sample(200, g, t=t), torch.tensor([[6.0, -9.0, 0.0], [-1.5, 1.5, 40.0]], dtype=torch.float64)])
    h = 1e-5
    fd = torch.stack([(law.log_prob(x + h * e, t) - law.log_prob(x - h * e, t)) / (2 * h)
                      for e in torch.eye(3, dtype=torch.float64)], dim=1)
    np.testing.assert_allclose(law.score(x, t).numpy(), fd.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("t", TIMES)
def test_uniform_density_and_denoiser_closed_forms(t):
    """In d = 1: q_t integrates to 1 (quadrature of exp log_prob); the Tweedie denoiser equals the
    mean of the posterior N(y / c, (s / c)^2) truncated to [-a, a] (scipy's truncnorm)."""
    a = 1.5
    law = uniform_mod.uniform(1, a=a)
    c, s = math.exp(-t), noise.sigma(t)
    dens = lambda y: math.exp(float(law.log_prob(torch.tensor([[y]], dtype=torch.float64), t)[0]))
    edge = c * a + 12 * s
    mass = sum(integrate.quad(dens, lo, hi, limit=200)[0] for lo, hi in [(-edge, -c * a), (-c * a, c * a), (c * a, edge)])
    assert mass == pytest.approx(1.0, abs=1e-9)
    y = torch.linspace(-c * a - 4 * s, c * a + 4 * s, 41, dtype=torch.float64)[:, None]
    loc, scale = y[:, 0].numpy() / c, s / c
    want = stats.truncnorm.mean((-a - loc) / scale, (a - loc) / scale, loc=loc, scale=scale)
    np.testing.assert_allclose(law.denoise(y, t)[:, 0].numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", (0.0, 0.1, 1.0))
def test_uniform_samples_match_the_moments_of_q_t(t):
    """Per coordinate of q_t: mean 0, Var = c^2 a^2/3 + s^2, E X^4 = c^4 a^4/5 + 2 c^2 s^2 a^2 + 3 s^4;
    sample averages over 2e5 draws x 2 coordinates within 4.5 standard errors (closed-form SEs)."""
    a, m = 1.5, 200_000
    law = uniform_mod.uniform(2, a=a)
    x = law.sample(m, torch.Generator().manual_seed(1), t=t).numpy().ravel()
    c, s2 = math.exp(-t), noise.sigma2(t)
    m2 = c * c * a * a / 3 + s2
    m4 = c ** 4 * a ** 4 / 5 + 2 * c * c * s2 * a * a + 3 * s2 * s2
    m8 = np.mean(x ** 8)  # only for the SE of the 4th moment
    n = x.size
    assert abs(x.mean()) < 4.5 * math.sqrt(m2 / n)
    assert abs(np.mean(x ** 2) - m2) < 4.5 * math.sqrt((m4 - m2 * m2) / n)
    assert abs(np.mean(x ** 4) - m4) < 4.5 * math.sqrt((m8 - m4 * m4) / n)
    if t == 0.0:
        assert np.abs(x).max() <= a
        assert float(law.log_prob(torch.tensor([[0.3, -1.2], [0.3, 1.6]]), 0.0)[1]) == -math.inf


# ----------------------------------------------------------------------------------------------
# the denoiser_gap study against closed forms
# ----------------------------------------------------------------------------------------------

def _uniform_mmse(a: float, t: float) -> float:
    """1-D MMSE of U([-a, a]) through X_t, by quadrature: a^2/3 - int q_t(y) E[X_0 | y]^2 dy, with
    q_t from (U1) and the posterior mean from scipy's truncated normal (independent of the plugin)."""
    c, s = math.exp(-t), noise.sigma(t)

    def integrand(y):
        q = (stats.norm.cdf((y + c * a) / s) - stats.norm.cdf((y - c * a) / s)) / (2 * a * c)
        loc, scale = y / c, s / c
        return q * stats.truncnorm.mean((-a - loc) / scale, (a - loc) / scale, loc=loc, scale=scale) ** 2

    edge = c * a + 12 * s
    second = sum(integrate.quad(integrand, lo, hi, limit=200)[0] for lo, hi in [(-edge, 0.0), (0.0, edge)])
    return a * a / 3 - second


@pytest.fixture(scope="module")
def gap_run():
    kind = KINDS["denoiser_gap"]
    spec = kind.parse({"kind": "denoiser_gap", "name": "gap_test", "d": [1, 3], "seed": [0], "t": [0.05, 0.5],
                       "n_points": 20_000, "data": [{"name": "gaussian", "params": {"cond": 4.0}},
                                                    {"name": "uniform", "params": {"a": 1.0}}]})
    ds = kind.template(spec)
    for cell in kind.cells(spec):
        values = kind.evaluate(spec, cell, None, {}, None, "cpu")
        for name in values.data_vars:
            ds[name].loc[kind.index(cell)] = values[name].values
    return spec, ds


def test_gap_is_zero_for_gaussian_data(gap_run):
    """For Gaussian data the Tweedie denoiser is the linear one (G1): computed through the mixture's
    score and through the moment eigenbasis, the two agree to float64 rounding, so the paired gap is
    ~1e-16 x MSE x e^t; 1e-10 leaves that a wide margin and is far below any gap of a non-Gaussian
    law here (>= 1e-3 for the uniform at t = 0.05). The MSE itself matches (G2) within 4 standard
    errors: the posterior error is N(0, diag(v)), v_i = lam_i s^2 / (c^2 lam_i + s^2), so
    ||err||^2 / d has variance 2 sum v_i^2 / d^2 per point."""
    spec, ds = gap_run
    sel = ds.sel(data="gaussian")
    assert np.abs(sel["gap"].values).max() < 1e-10
    for d in spec.d:
        for t in spec.t:
            law = spec.law("gaussian", d)
            lam = torch.linalg.eigvalsh(law.cov()).numpy()
            c2, s2 = math.exp(-2 * t), noise.sigma2(t)
            v = lam * s2 / (c2 * lam + s2)
            closed = float(sel["mse_linear_closed"].sel(d=d, t=t))
            assert closed == pytest.approx(v.mean(), rel=1e-12)
            se = math.sqrt(2 * (v ** 2).sum()) / d / math.sqrt(spec.n_points)
            for var in ("mse_exact", "mse_linear"):
                assert abs(float(sel[var].sel(d=d, t=t, seed=0)) - closed) < 4 * se, (var, d, t)


def test_gap_for_uniform_data_matches_quadrature(gap_run):
    """Uniform data: the linear MSE is (G2) with lam = a^2/3, the exact MSE is the 1-D MMSE by
    quadrature (coordinates are independent), and the measured paired gap equals their difference
    within 4 of its own standard errors; it is positive and significant at small t."""
    spec, ds = gap_run
    sel = ds.sel(data="uniform", seed=0)
    for t in spec.t:
        mmse = _uniform_mmse(1.0, t)
        lam, c2, s2 = 1 / 3, math.exp(-2 * t), noise.sigma2(t)
        lin = lam * s2 / (c2 * lam + s2)
        for d in spec.d:
            assert float(ds["mse_linear_closed"].sel(data="uniform", d=d, t=t)) == pytest.approx(lin, rel=1e-12)
            gap, se = float(sel["gap"].sel(d=d, t=t)), float(sel["gap_se"].sel(d=d, t=t))
            assert abs(gap - (lin - mmse)) < 4 * se, (d, t, gap, lin - mmse, se)
            # relative sd of a mean of m d squared errors is about sqrt(2 / (m d)) <= 1%: 4% is 4 sd
            assert float(sel["mse_exact"].sel(d=d, t=t)) == pytest.approx(mmse, rel=0.04)
    gap, se = float(sel["gap"].sel(d=3, t=0.05)), float(sel["gap_se"].sel(d=3, t=0.05))
    assert gap > 10 * se and gap > 1e-3


# ----------------------------------------------------------------------------------------------
# refusals: clashing and broken entry points (a fake installed distribution on sys.path)
# ----------------------------------------------------------------------------------------------

def _fake_dist(root: Path, name: str, group: str, entries: dict[str, str]) -> None:
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


def _one_line_error(registry: Registry) -> str:
    with pytest.raises(RegistryError) as e:
        registry["anything"]
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_clash_with_a_builtin_is_refused(tmp_path, monkeypatch):
    _fake_dist(tmp_path, "fake_clash", "dsclab.test_clash", {"gaussian": "dsclab_example.uniform:uniform"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("dsclab.test_clash", "distribution", builtins={"gaussian": distributions.gaussian})
    msg = _one_line_error(reg)
    assert "'gaussian'" in msg and "dsclab_example.uniform:uniform" in msg
    assert "dsclab.distributions.gaussian:gaussian" in msg


def test_two_plugins_with_one_name_are_refused(tmp_path, monkeypatch):
    _fake_dist(tmp_path, "fake_one", "dsclab.test_twins", {"twin": "dsclab_example.uniform:uniform"})
    _fake_dist(tmp_path, "fake_two", "dsclab.test_twins", {"twin": "dsclab_example.uniform:UniformCube"})
    monkeypatch.syspath_prepend(str(tmp_path))
    msg = _one_line_error(Registry("dsclab.test_twins", "distribution"))
    assert "dsclab_example.uniform:uniform" in msg and "dsclab_example.uniform:UniformCube" in msg


def test_broken_entry_point_is_refused_every_time(tmp_path, monkeypatch):
    """A plugin that cannot be imported is named in one line, on every lookup (the registry keeps
    nothing from a failed load, so the second lookup does not report a bogus clash)."""
    _fake_dist(tmp_path, "fake_ok", "dsclab.test_broken", {"fine": "dsclab_example.uniform:uniform"})
    _fake_dist(tmp_path, "fake_broken", "dsclab.test_broken", {"broken": "dsclab_example.no_such_module:thing"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("dsclab.test_broken", "distribution")
    first, second = _one_line_error(reg), _one_line_error(reg)
    assert first == second
    assert "cannot load distribution 'broken' from 'dsclab_example.no_such_module:thing'" in first
    assert "ModuleNotFoundError" in first


def test_names_are_known_without_importing_a_variant(tmp_path, monkeypatch):
    """Membership, iteration and len read the names only; a lazy built-in and an entry point are
    imported (and checked) on their first lookup, each alone, and kept."""
    (tmp_path / "probe_lazy_variant.py").write_text("def family(d):\n    return d\n")
    (tmp_path / "probe_plugin_variant.py").write_text("def family(d):\n    return 2 * d\n")
    _fake_dist(tmp_path, "fake_probe", "dsclab.test_names", {"plugged": "probe_plugin_variant:family"})
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in ("probe_lazy_variant", "probe_plugin_variant"):
        monkeypatch.delitem(sys.modules, m, raising=False)
    reg = Registry("dsclab.test_names", "distribution", check=Needs("distribution"),
                   lazy={"probe": "probe_lazy_variant:family"})
    assert "probe" in reg and "plugged" in reg and "other" not in reg
    assert list(reg) == ["probe", "plugged"] and len(reg) == 2 and reg.builtin_names == ("probe",)
    assert "probe_lazy_variant" not in sys.modules and "probe_plugin_variant" not in sys.modules
    assert reg["probe"](3) == 3 and "probe_plugin_variant" not in sys.modules
    assert reg["plugged"](3) == 6 and reg["plugged"] is sys.modules["probe_plugin_variant"].family


def test_plugin_failing_its_registry_check_is_refused(monkeypatch):
    """The check runs on entry points too: a 'distribution' that is not callable (entry points
    patched through importlib.metadata.entry_points)."""
    real = importlib.metadata.entry_points
    fake = importlib.metadata.EntryPoint("not_a_family", "dsclab_example.uniform:LOG_SQRT_2PI", "dsclab.test_check")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [fake] if kw.get("group") == "dsclab.test_check" else real(**kw))
    reg = Registry("dsclab.test_check", "distribution", check=Needs("distribution"))
    msg = _one_line_error(reg)
    assert "distribution 'not_a_family'" in msg and "not callable" in msg


# ----------------------------------------------------------------------------------------------
# dsclab run on the plugin's kind
# ----------------------------------------------------------------------------------------------

def test_dsclab_run_on_the_plugin_preset(tmp_path):
    """``dsclab run`` (a subprocess, its own temporary Prefect server) on the plugin's small preset:
    exit 0, every cell done, every value of the store written, the kind's report printed."""
    spec = tmp_path / "gap.yaml"
    spec.write_text(yaml.safe_dump(KINDS["denoiser_gap"].small))
    store = tmp_path / "gap.zarr"
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(tmp_path / "home"))
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "dsclab.cli", "run", str(spec), "--store", str(store)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "denoiser gap study small_denoiser_gap: 8/8 cells done" in out.stdout
    ds = xr.open_zarr(store)
    assert ds.attrs["study"] == "denoiser_gap"
    assert (ds["status"] == Status.DONE).all()
    for name in ("mse_exact", "mse_linear", "gap", "gap_se", "eval_seconds", "mse_linear_closed"):
        assert np.isfinite(ds[name].values).all(), name
    assert bool((ds["gap"] >= -4 * ds["gap_se"] - 1e-12).all())  # gap >= 0 up to noise and rounding


def test_dsclab_run_refuses_a_bad_value_in_the_plugin_spec(tmp_path, capsys):
    bad = {**KINDS["denoiser_gap"].small, "data": [{"name": "uniform", "params": {"a": -1.0}}]}
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(bad))
    store = tmp_path / "bad.zarr"
    code = cli.main(["run", str(spec), "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    # the laws are built once every field is valid (a model validator, as the built-in kinds'), so the
    # message is the spec's: "spec: distribution uniform at d=1: ..."
    assert err.count("\n") == 0 and "spec: distribution uniform at d=1: a: -1.0 is not a positive half-width" in err
    assert not store.exists() and not Path(str(store) + ".files").exists()
