"""A tiny study through the real Prefect flow (local test server): complete store, no recompute."""

import numpy as np

from dsclab.spec import parse_spec

TINY = {
    "name": "tiny", "d": [2, 3], "n": [40, 400], "seed": [0], "nfe": [4, 8],
    "sampler": ["euler_maruyama", "exponential_integrator"],
    "train": {"steps": 150, "width": 32, "depth": 2},
    "evaluation": {"t": [0.05, 0.5], "n_score": 300, "n_samples": 200, "logsnr": [-4, -2, 0, 2, 4],
                   "n_nll": 200, "n_alpha": 16},
    "workers": 2,
}


def test_flow_complete_store_then_resume_computes_nothing(study_run, tmp_path):
    from flows.study import sample_complexity

    run = study_run(sample_complexity, parse_spec(TINY))
    ds = run.complete(cells=4)
    # The figure beside the store (which `dsclab run` prints) is the plot artifact's image.
    import base64

    from prefect.artifacts import Artifact

    art = Artifact.get("tiny-plot")
    png = (tmp_path / "tiny.files" / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and art.data == "data:image/png;base64," + base64.b64encode(png).decode()

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

    run.rerun_computes_nothing(ds)
    assert [p.stat().st_mtime_ns for p in ckpts] == mtimes
