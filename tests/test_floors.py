"""Floors of the sampling metrics (issue 18 item 2): each metric between two independent exact
samples of q_t_min of the same size, with the same projection directions, stored beside the
metric; the report marks values at their floor.

The check that gives a floor its meaning: a sampler driven by the *exact* score with a fine grid
produces (up to its small discretisation error) exact samples of q_t_min, so its metric values must
sit at the floor: the mean over seeds of each metric lies within 3 standard errors of the floors'
mean (both are means of the same statistic of two independent samples of the same law, when the
discretisation error is negligible)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from dsclab import distributions
from dsclab.studies.sample_complexity import KIND
from dsclab.studies.sample_complexity import numerics as sc
from dsclab.studies.sample_complexity import report

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = list(range(6))
SPEC = KIND.parse({"name": "floors", "d": [2], "n": [10], "seed": SEEDS, "nfe": [200],
                   "sampler": ["exponential_integrator"],
                   "evaluation": {"t": [1.0], "n_score": 10, "n_samples": 300, "logsnr": [0.0], "n_nll": 10,
                                  "n_alpha": 4}})


@pytest.fixture(scope="module")
def exact_cells() -> xr.Dataset:
    dist = distributions.make(SPEC.distribution.name, 2, **SPEC.distribution.params)

    def score(x, t):
        return dist.score(x.to(torch.float64), t).to(x.dtype)

    cells = KIND.cells(SPEC)
    tpl = KIND.template(SPEC)
    for c in cells:
        ds = sc.evaluate(SPEC, c, score)
        for v in ds.data_vars:
            tpl[v].loc[KIND.index(c)] = ds[v].values
        tpl["status"].loc[KIND.index(c)] = 1
    return tpl


@pytest.mark.parametrize("metric", report.SAMPLING)
def test_exact_samples_sit_at_the_floor(exact_cells, metric):
    ds = exact_cells
    assert f"{metric}_floor" in ds and ds[f"{metric}_floor"].attrs["long_name"]
    value = ds[metric].isel(sampler=0, nfe=0, estimator=0, d=0, n=0).values
    floor = ds[f"{metric}_floor"].isel(estimator=0, d=0, n=0).values
    assert np.isfinite(value).all() and np.isfinite(floor).all() and (floor > 0).all()
    se = np.sqrt(value.var(ddof=1) / len(value) + floor.var(ddof=1) / len(floor))
    assert abs(value.mean() - floor.mean()) <= 3 * se, (metric, value, floor)
    # and the report's test agrees: every one of these seed-means is marked at its floor
    mean = ds[metric].isel(estimator=0).mean("seed")
    assert bool(report.at_floor(ds, metric, mean).all())


def test_projections_are_fixed_per_cell(exact_cells):
    # the same cell evaluated twice gives the same sliced W2 (its directions are a function of the
    # cell, not of the order of the calls), and another cell other directions and values
    dist = distributions.make(SPEC.distribution.name, 2, **SPEC.distribution.params)
    c0, c1 = KIND.cells(SPEC)[:2]
    score = lambda x, t: dist.score(x.to(torch.float64), t).to(x.dtype)  # noqa: E731
    a, b = sc.evaluate(SPEC, c0, score), sc.evaluate(SPEC, c0, score)
    assert float(a.sliced_w2_floor) == float(b.sliced_w2_floor) == float(exact_cells.sliced_w2_floor.sel(seed=0).squeeze())
    assert float(exact_cells.sliced_w2_floor.sel(seed=c1.seed).squeeze()) != float(a.sliced_w2_floor)


def test_report_marks_values_at_their_floor(exact_cells):
    text = report.report(exact_cells)
    assert "* at its floor" in text and "*" in text.split("* at its floor")[1].splitlines()[3]
    for metric in report.SAMPLING:
        assert f"{metric}_floor d=2:" in text and "(1/1 at floor)" in text.split(f"{metric}_floor d=2:")[1].splitlines()[0]
