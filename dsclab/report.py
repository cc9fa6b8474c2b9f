"""Tables and plots of stored results (read an ``xr.Dataset``; no Prefect). A study's own report
and plot are its kind's (``dsclab.study.kind_of(ds).report`` / ``.plot``)."""
from __future__ import annotations

import pandas as pd
import xarray as xr


def _done(ds: xr.Dataset, var: str) -> xr.DataArray:
    """``var`` with cells that are not done masked out."""
    return ds[var].where(ds["status"] == 1)


def score_error_table(ds: xr.Dataset) -> pd.DataFrame:
    """Mean over seeds and t of ``score_l2`` (first estimator), rows n, columns d."""
    da = _done(ds, "score_l2").isel(estimator=0).mean(["seed", "t"]).load()
    df = da.to_pandas()
    df = df.T if da.dims[0] == "d" else df
    df.index.name, df.columns.name = "n", "d"
    return df


def sample_complexity_report(ds: xr.Dataset) -> str:
    est = str(ds.estimator.values[0])
    lines = [f"score_l2 (mean over seeds and t; estimator {est}): rows n, columns d",
             score_error_table(ds).to_string(float_format=lambda v: f"{v:.4g}")]
    sw = _done(ds, "sliced_w2").isel(estimator=0, nfe=-1).mean("seed").load()
    for s in sw.sampler.values:
        df = sw.sel(sampler=s).to_pandas()
        df = df.T if sw.sel(sampler=s).dims[0] == "d" else df
        df.index.name, df.columns.name = "n", "d"
        lines += ["", f"sliced_w2 (mean over seeds; sampler {s}, nfe {int(ds.nfe[-1])}): rows n, columns d",
                  df.to_string(float_format=lambda v: f"{v:.4g}")]
    if "nll_immse" in ds and "nll_exact" in ds:
        gap = (_done(ds, "nll_immse") - ds["nll_exact"]).isel(estimator=0).mean("seed").load()
        df = gap.transpose("n", "d").to_pandas()
        lines += ["", "likelihood gap nll_immse - nll_exact (nats/dim, I-MMSE estimate; mean over seeds): rows n, columns d",
                  df.to_string(float_format=lambda v: f"{v:.4g}")]
    return "\n".join(lines)


def _band(ax, x, da: xr.DataArray, label: str, **kw):
    """Mean over seeds with a min-max band over seeds."""
    mean, lo, hi = (da.mean("seed"), da.min("seed"), da.max("seed"))
    kw.setdefault("marker", "o")
    (line,) = ax.plot(x, mean, label=label, **kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def plot_sample_complexity(ds: xr.Dataset, out: str) -> str:
    """Log-log: score L2 error, quantile error and sliced W2 against n, one line per d, band over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = ds.isel(estimator=0).load()
    ds = ds.where(ds["status"] == 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    n = ds.n.values
    delta = float(ds.delta.values[-1])
    for i, d in enumerate(ds.d.values):
        sel, color = ds.sel(d=d), f"C{i}"
        _band(axes[0], n, sel.score_l2.mean("t"), f"d={d}", color=color)
        _band(axes[1], n, sel.score_quantile.sel(delta=delta).mean("t"), f"d={d}", color=color)
        for k, s in enumerate(ds.sampler.values):
            _band(axes[2], n, sel.sliced_w2.sel(sampler=s).isel(nfe=-1), f"d={d}, {s}", color=color,
                  linestyle=["-", "--", ":", "-."][k % 4], marker="os^v"[k % 4])
    titles = ["L2 score error (mean over t)", f"(1-δ)-quantile score error, δ={delta:g} (mean over t)",
              f"sampling error: sliced W2 at nfe={int(ds.nfe.values[-1])}"]
    for ax, title in zip(axes, titles):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("n (training samples)")
        ax.set_title(title, fontsize=10), ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8), axes[2].legend(fontsize=7)
    fig.suptitle(f"{ds.attrs.get('name', '')}: band = min–max over {ds.sizes['seed']} seeds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def status_table(ds: xr.Dataset) -> str:
    """Counts of done / pending / failed cells along each cell axis."""
    st = ds["status"].load()
    lines = [f"cells: {st.size} | done {int((st == 1).sum())} | pending {int((st == 0).sum())} | "
             f"failed {int((st == 2).sum())}"]
    for dim in st.dims:
        rows = []
        for v in st[dim].values:
            s = st.sel({dim: v})
            rows.append({dim: v, "done": int((s == 1).sum()), "pending": int((s == 0).sum()),
                         "failed": int((s == 2).sum())})
        lines += ["", pd.DataFrame(rows).to_string(index=False)]
    failed = failure_lines(ds)
    if failed:
        lines += ["", "failed cells (reason stored in the 'failure' variable):", *failed]
    return "\n".join(lines)


def failure_lines(ds: xr.Dataset, limit: int = 20) -> list[str]:
    """One line per failed cell, 'dim=value ...: reason', at most ``limit`` (then a count)."""
    from storage import failures

    fails = failures(ds)
    out = [" ".join(f"{k}={v}" for k, v in idx.items()) + f": {reason or '(no reason recorded)'}"
           for idx, reason in fails[:limit]]
    if len(fails) > limit:
        out.append(f"... and {len(fails) - limit} more")
    return [f"  {line}" for line in out]


def query_table(ds: xr.Dataset, var: str, sel: dict, mean: list[str]) -> str:
    if var not in ds.data_vars:
        raise KeyError(f"no variable {var!r} (have: {', '.join(ds.data_vars)})")
    da = ds[var]
    for dim, val in sel.items():
        if dim not in da.dims:
            raise KeyError(f"{var} has no dim {dim!r} (dims: {', '.join(da.dims)})")
        coord = da[dim].values
        kind = coord.dtype.kind
        v = type(coord[0].item())(val) if kind in "iuf" else val
        da = da.sel({dim: [v]})
    if mean:
        da = da.mean(mean)
    return da.load().to_dataframe(name=var)[[var]].to_string(float_format=lambda v: f"{v:.5g}")
