"""A tiny study through the real Prefect flow (local test server): complete store, no recompute."""

import numpy as np
import pytest
import xarray as xr

import storage
from dsclab.spec import parse_spec

TINY = {
    "name": "tiny", "d": [2, 3], "n": [40, 400], "seed": [0], "nfe": [4, 8],
    "sampler": ["euler_maruyama", "exponential_integrator"],
    "train": {"steps": 150, "width": 32, "depth": 2},
    "evaluation": {"t": [0.05, 0.5], "n_score": 300, "n_samples": 200, "logsnr": [-4, -2, 0, 2, 4],
                   "n_nll": 200, "n_alpha": 16},
    "workers": 2,
}


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_complete_store_then_resume_computes_nothing(harness, tmp_path):
    from flows.study import sample_complexity

    spec = parse_spec(TINY)
    path = str(tmp_path / "tiny.zarr")
    out = sample_complexity(spec=spec, store=path)
    assert out == {"store": path, "cells": 4, "done": 4, "failed": 0, "computed": 4, "plot": storage.plot_path(path)}
    # The figure beside the store (which `dsclab run` prints) is the plot artifact's image.
    import base64

    from prefect.artifacts import Artifact

    art = Artifact.get("tiny-plot")
    png = (tmp_path / "tiny.files" / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and art.data == "data:image/png;base64," + base64.b64encode(png).decode()

    ds = xr.open_zarr(path)  # plain xarray, consolidated metadata
    assert (ds.status == storage.DONE).all()
    for var in ["score_l2", "score_quantile", "sliced_w2", "mmd", "w2", "kl_gauss", "train_seconds",
                "nll_immse", "nll_immse_se", "nll_exact", "mmse"]:
        assert np.isfinite(ds[var].values).all(), var
    assert ds.sliced_w2.dims == ("d", "n", "seed", "estimator", "sampler", "nfe")
    assert ds.mmse.dims == ("d", "n", "seed", "estimator", "logsnr") and ds.sizes["logsnr"] == 5
    assert (ds.nll_immse_se > 0).all() and ds.nll_immse.attrs["units"] == "nats per dimension"
    # Held-out points depend on (d, seed) only: nll_exact repeats along n.
    assert (ds.nll_exact.isel(n=0) == ds.nll_exact.isel(n=1)).all()
    ckpts = sorted((tmp_path / "tiny.files" / "checkpoints").iterdir())
    assert len(ckpts) == 4
    mtimes = [p.stat().st_mtime_ns for p in ckpts]
    before = ds.load()

    out2 = sample_complexity(spec=spec, store=path)
    assert out2["computed"] == 0 and out2["done"] == 4
    assert [p.stat().st_mtime_ns for p in ckpts] == mtimes
    xr.testing.assert_identical(xr.open_zarr(path).load(), before)
