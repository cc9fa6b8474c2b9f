"""Adding a built-in study kind is one package, one registry line and one preset file (README,
"Adding a study"). A throwaway kind is added exactly that way — its package written from scratch,
registered under its name (the run-time form of its line in ``dsclab.study.BUILTIN``), its preset a
file of its own — and then meets the layout rules of ``tests/test_layers.py``, deploys with its
preset, and runs through the generic flow to a complete store. Nothing else of the lab is edited.

The kind measures the squared error of the sample mean of n draws of N(0, I_d), whose expectation
is d / n exactly (each coordinate of the mean is N(0, 1/n)): its store keeps both.
"""
import importlib
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from dsclab.study import KINDS, Status
from test_layers import KIND_MODULES

NAME = "throwaway_mean"

PACKAGE = {
    "spec.py": '''
        """The spec: grid d x n x seed."""
        from typing import ClassVar, Literal

        from pydantic import Field

        from dsclab import axes
        from dsclab.spec import Frozen, StudyBase

        CELL_DIMS = ("d", "n", "seed")


        class MeanSpec(StudyBase):
            AXES: ClassVar[dict[str, str]] = {"d": "d", "n": "n", "seed": "seed"}

            kind: Literal["throwaway_mean"] = Field("throwaway_mean", description="study kind")
            d: axes.PositiveInts = Field(..., description="dimensions")
            n: axes.PositiveInts = Field(..., description="sample sizes")
            seed: axes.Seeds = Field([0], description="seeds")

            def cells(self):
                return self.grid(MeanCell, d=self.d, n=self.n, seed=self.seed)


        class MeanCell(Frozen):
            d: int
            n: int
            seed: int
            key: str
        ''',
    "layout.py": '''
        """The store: the squared error of the sample mean per cell, its expectation d / n per (d, n)."""
        import numpy as np

        from dsclab import layout

        from .spec import CELL_DIMS


        def template(spec):
            coords = {"d": np.array(spec.d), "n": np.array(spec.n), "seed": np.array(spec.seed)}
            expected = np.array([[d / n for n in spec.n] for d in spec.d], dtype=np.float64)
            return layout.template(
                spec, coords, CELL_DIMS, {"sq_error": (CELL_DIMS, "||mean of n draws||^2", "1")},
                layout.coord_attrs("d", "n", "seed"),
                closed={"sq_error_expected": (("d", "n"), expected, {"long_name": "d / n", "units": "1"})})
        ''',
    "numerics.py": '''
        """One cell: n draws of N(0, I_d) from the cell's own seed."""
        import torch
        import xarray as xr

        from dsclab.seeds import rng


        def evaluate(cell):
            x = torch.randn(cell.n, cell.d, generator=rng("throwaway-mean", cell.key), dtype=torch.float64)
            return xr.Dataset({"sq_error": ((), float((x.mean(0) ** 2).sum()))})
        ''',
    "report.py": '''
        """The text report: mean squared error over seeds against d / n."""
        from dsclab.study import Status


        def report(ds):
            err = ds["sq_error"].where(ds["status"] == Status.DONE).mean("seed")
            return "\\n".join(f"d={d} n={n}: {float(err.sel(d=d, n=n)):.4g} (d/n = {d / n:.4g})"
                             for d in ds["d"].values for n in ds["n"].values)
        ''',
    "plot.py": '''
        """The figure: squared error of the mean against n, per d, with d / n."""


        def plot(ds, out):
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots()
            for d in ds["d"].values:
                ax.loglog(ds["n"], ds["sq_error"].sel(d=d).mean("seed"), "o-", label=f"d={d}")
                ax.loglog(ds["n"], ds["sq_error_expected"].sel(d=d), "k:")
            ax.set_xlabel("n")
            ax.set_ylabel("||mean||^2")
            ax.legend()
            fig.savefig(out)
            plt.close(fig)
            return out
        ''',
    "__init__.py": '''
        """The throwaway kind: the contract adapter composing its modules."""
        from dsclab.studies import small_preset
        from dsclab.study import StudyKind

        from . import layout, numerics, plot, report
        from .spec import CELL_DIMS, MeanSpec


        class Mean(StudyKind):
            name = "throwaway_mean"
            spec_model = MeanSpec
            cell_dims = CELL_DIMS
            description = "squared error of the sample mean against n"
            small = small_preset(__file__)
            preset = None  # set by the test: the preset file it writes
            template = staticmethod(layout.template)
            report = staticmethod(report.report)
            plot = staticmethod(plot.plot)

            def evaluate(self, spec, cell, cache, prepared, trained, device):
                return numerics.evaluate(cell)


        KIND = Mean()
        ''',
    "small.yaml": "name: throwaway_small\nkind: throwaway_mean\nd: [1, 4]\nn: [10, 100]\nseed: [0, 1]\n",
}
PRESET = "name: throwaway_mean\nkind: throwaway_mean\nd: [1, 4, 16]\nn: [10, 100, 1000]\nseed: [0, 1, 2]\n"


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """The kind's package and preset written, the package importable and the kind registered."""
    pkg = tmp_path / "pkgs" / NAME
    pkg.mkdir(parents=True)
    for file, text in PACKAGE.items():
        (pkg / file).write_text(textwrap.dedent(text).lstrip())
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / f"{NAME}.yaml").write_text(PRESET)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    kind = importlib.import_module(NAME).KIND
    monkeypatch.setattr(type(kind), "preset", str(studies / f"{NAME}.yaml"))  # a file of studies/
    KINDS.register(NAME, kind)  # its line in dsclab.study.BUILTIN, at run time
    try:
        yield kind, pkg
    finally:
        KINDS.unregister(NAME)


def test_a_kind_added_as_the_readme_says_deploys_and_runs(throwaway, harness, tmp_path):
    from flows import deployments
    from flows.study import run_flow

    kind, pkg = throwaway
    assert all((pkg / m).is_file() for m in KIND_MODULES)  # the layout every built-in kind has

    # deploy check: its deployment carries its preset, which validates with its spec model
    deps = [d for d in deployments.document([NAME])["deployments"] if d["entrypoint"] == f"flows/study.py:{NAME}"]
    assert [(d["name"], d["work_pool"]["name"]) for d in deps] == [("gpu", "gpu")]
    assert deps[0]["parameters"]["spec"] == yaml.safe_load(Path(kind.preset).read_text())
    deployments.validate([NAME])

    # the small preset through the generic flow: every cell done, the numbers as the law says
    spec = kind.parse(kind.small)
    out = run_flow(kind, spec, str(tmp_path / "s.zarr"))
    assert out["done"] == out["cells"] == len(spec.cells()) == 8 and out["failed"] == 0
    ds = xr.open_zarr(tmp_path / "s.zarr").load()
    assert (ds["status"] == Status.DONE).all() and ds.attrs["study"] == NAME
    np.testing.assert_allclose(ds["sq_error_expected"].values, [[0.1, 0.01], [0.4, 0.04]])
    # ||mean||^2 n is chi-square with d degrees of freedom: every one of the 8 draws lies within
    # its 1e-6 and 1 - 1e-6 quantiles (a bound that fails with probability < 2e-5)
    from scipy.stats import chi2

    scaled = ds["sq_error"] * ds["n"]
    for d in ds["d"].values:
        v = scaled.sel(d=d).values
        assert (v > chi2.ppf(1e-6, d)).all() and (v < chi2.ppf(1 - 1e-6, d)).all(), v
    assert "d=4 n=100" in kind.report(ds)
    assert Path(kind.plot(ds, str(tmp_path / "p.png"))).read_bytes()[:4] == b"\x89PNG"
