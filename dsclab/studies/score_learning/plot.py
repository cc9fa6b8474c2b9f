"""The score-learning figure: one row per section of the report (:func:`.readout.sections`), the
BSM section one row per data mode."""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from dsclab import analysis
from dsclab.analysis import weighted_l2

from .bsm_report import closed_form_ratio
from .readout import band, done, n_star, ratio_table, sections
from .report import exceedances


def _line_band(ax, x, da: xr.DataArray, label: str, **kw):
    med, lo, hi = band(da)
    kw.setdefault("marker", "o")
    (line,) = ax.plot(x, med, label=label, **kw)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def _finish_axes(ax, xlabel: str, title: str):
    ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9), ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _bsm_row(ax, ds: xr.Dataset, mode: str) -> None:
    """One data mode: ratios to DSM per t of the target variance (closed forms as black lines) and
    of the score error, one colour per estimator, one line style per n; then sliced W2 and KL of
    Gaussian fits of each trained score's samples against n, beside the floors."""
    ests = list(ds.estimator.values)
    t_c = json.loads(ds.attrs["spec"])["bsm"]["t_c"]
    m, d = ds.model.values[0], ds.d.values[0]
    styles = ["--", "-", "-.", ":"]
    for j, var in enumerate(("target_var", "score_l2")):
        for est in [e for e in ests if e != "dsm"]:
            for k, nn in enumerate(ds.n.values):
                sel = {"d": d, "model": m, "data_mode": mode, "n": nn}
                r = ratio_table(ds, var, "estimator", est, "dsm", sel).transpose("seed", "t")
                _line_band(ax[j], ds.t.values, r, f"{est}, n={int(nn)}", color=f"C{ests.index(est)}",
                           linestyle=styles[k % len(styles)], alpha=0.9)
        if var == "target_var":
            for est, ls in (("bsm", "--"), ("bsm_rb", "-")):
                if est in ests or est + "_oracle" in ests:
                    ax[j].plot(ds.t.values, closed_form_ratio(ds, est), color="k", ls=ls, lw=1.2, marker="",
                               label=f"closed form, {'pure' if est == 'bsm' else 'RB'} target")
        ax[j].axhline(1.0, color="0.3", lw=0.8)
        ax[j].axvline(t_c, color="0.5", ls=":")
        _finish_axes(ax[j], "t", f"{var}: estimator / dsm ({mode}, {m}, d={int(d)})")
    for j, var in ((2, "sliced_w2"), (3, "kl_gauss")):
        sub = done(ds, var).sel(d=d, model=m, data_mode=mode)
        for est in ests:
            _line_band(ax[j], ds.n.values, sub.sel(estimator=est).transpose("seed", "n"), est, color=f"C{ests.index(est)}")
        ax[j].axhline(float(done(ds, var + "_floor").median()), color="0.3", ls="--", lw=0.8, label="floor (exact draw)")
        _finish_axes(ax[j], "n", f"sampling: {var} vs n ({mode}, {m})")
        ax[j].set_xticks(ds.n.values, [str(int(v)) for v in ds.n.values], minor=False)
        ax[j].set_xticks([], minor=True)


def _regime_row(ax, ds: xr.Dataset) -> None:
    """The regime map: one panel per bootstrap estimator (the oracle's beside the learned ones),
    rows (d, n), columns t above t_c, colour log2 of the median score-error ratio to DSM over
    seeds (blue: below DSM), each cell labelled with the median and its [min, max] over seeds,
    framed where the ratio is below 1 for every seed (``bsm_report.regime_wins``)."""
    from matplotlib.patches import Rectangle

    from .bsm_report import _above, regime_wins

    above = _above(ds)
    ests = [str(e) for e in ds.estimator.values if e != "dsm"]
    mode, m = ds.data_mode.values[0], ds.model.values[0]
    rows = [(d, n) for d in ds.d.values for n in ds.n.values]
    for j, est in enumerate(ests[:len(ax)]):
        r = ratio_table(ds, "score_l2", "estimator", est, "dsm", {"data_mode": mode, "model": m}).sel(t=above)
        med, lo, hi, win = r.median("seed"), r.min("seed"), r.max("seed"), regime_wins(r)
        grid = np.array([[float(np.log2(med.sel(d=d, n=n, t=t))) for t in above] for d, n in rows])
        im = ax[j].imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for i, (d, n) in enumerate(rows):
            for k, t in enumerate(above):
                ax[j].text(k, i, f"{float(med.sel(d=d, n=n, t=t)):.2f}\n[{float(lo.sel(d=d, n=n, t=t)):.2f},"
                                 f"{float(hi.sel(d=d, n=n, t=t)):.2f}]", ha="center", va="center", fontsize=5,
                            color="w" if abs(grid[i, k]) > 0.6 else "k")
                if bool(win.sel(d=d, n=n, t=t)):
                    ax[j].add_patch(Rectangle((k - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="k"))
        ax[j].set_xticks(range(len(above)), [f"{t:g}" for t in above])
        ax[j].set_yticks(range(len(rows)), [f"d={int(d)} n={int(n)}" for d, n in rows], fontsize=6)
        ax[j].set_xlabel("t (above t_c)")
        ax[j].set_title(f"score_l2 {est} / dsm ({mode}); framed: every seed < 1", fontsize=8)
    if ests:
        ax[0].figure.colorbar(im, ax=ax[min(len(ests), len(ax)) - 1], label="log2(median ratio)")


def _exceedance_row(ax, ds: xr.Dataset) -> None:
    """Gupta et al. (2023), Figure 1: P[error > τ] against n at the smallest t of the grid, side by
    side for √L2 and each quantile level, one colour per τ (``report.exceedances``), the band the
    Clopper–Pearson 95% interval over seeds."""
    ex = exceedances(ds)
    if not ex:
        return
    t = min(ex)
    e = ex[t]
    eta = float(ds.attrs.get("min_weight", np.nan))
    for j, err in enumerate(list(e.error.values)[:3]):
        for k, tau in enumerate(e.tau.values):
            r = e.sel(error=err, tau=tau)
            (line,) = ax[j].plot(e.n.values, r.p, marker="o", color=f"C{k}", label=f"τ={float(tau):.3g}")
            ax[j].fill_between(e.n.values, r.lo, r.hi, color=line.get_color(), alpha=0.15)
        ax[j].axvline(1 / eta, color="0.5", ls=":", label="n = 1/η")
        ax[j].set_xscale("log"), ax[j].set_ylim(-0.03, 1.03), ax[j].set_xlabel("n")
        ax[j].set_ylabel("P[error > τ] over seeds")
        ax[j].set_title(f"P[{err} > τ] at t={t:g} ({ds.sizes['seed']} seed{'s' if ds.sizes['seed'] != 1 else ''})", fontsize=9)
        ax[j].grid(True, which="both", alpha=0.3), ax[j].legend(fontsize=7)


def plot(ds: xr.Dataset, out: str) -> str:
    """One row per section (:func:`.readout.sections`): error curves in n per d for each class and
    n*(eps, d); per data mode, ratios to dsm per t of the target variance (with the closed forms)
    and of the score error, and the sampling errors (sliced W2, KL of Gaussian fits) against n of
    every estimator; the regime map (a d sweep: score-error ratio to DSM per (d, n) and t above t_c,
    one panel per bootstrap estimator); trajectory/independent
    ratios per t; P[error > τ] against n for √L2 and each quantile level side by side (Gupta et
    al. 2023, Figure 1; band: Clopper–Pearson interval); L2, quantile (δ below / above η) and
    sampling errors against n. Bands: min–max over seeds unless said."""
    from dsclab.figures import figure, save, tight_layout

    ds = ds.load()
    rows = [(r, mode) for r in (sections(ds) or ["none"])
            for mode in (ds.data_mode.values if r == "bsm" else [None])]
    if "quantile" in sections(ds):
        rows.insert([r for r, _ in rows].index("quantile"), ("exceed", None))
    ncols = 4 if any(r == "bsm" for r, _ in rows) else 3
    if any(r == "regime" for r, _ in rows):
        ncols = max(ncols, ds.sizes["estimator"] - 1)
    heights = [max(4.0, 0.4 * ds.sizes["d"] * ds.sizes["n"]) if r == "regime" else 4.0 for r, _ in rows]
    fig = figure(figsize=(5 * ncols, sum(heights)))
    axes = fig.subplots(len(rows), ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    n = ds.n.values
    for ax, (row, mode) in zip(axes, rows):
        if row == "regime":
            for extra in ax[ds.sizes["estimator"] - 1:]:
                extra.set_visible(False)
        elif row != "bsm":
            for extra in ax[3:]:
                extra.set_visible(False)
        if row == "dim":
            err = weighted_l2(ds).isel(estimator=0, data_mode=0)
            for j, m in enumerate(ds.model.values[:2]):
                for k, d in enumerate(ds.d.values):
                    _line_band(ax[j], n, err.sel(model=m, d=d).transpose("seed", "n"), f"d={int(d)}", color=f"C{k}")
                _finish_axes(ax[j], "n", f"{m}: mean_t σ_t² score L2 error vs n")
            for empty in ax[len(ds.model.values[:2]):2]:  # one model class: its second panel stays empty
                empty.set_visible(False)
            for j, m in enumerate(ds.model.values):
                levels = analysis.common_levels(err.sel(model=m).median("seed").transpose("d", "n"), levels=1)
                if levels:
                    ns = analysis.crossing_values(n_star(err.sel(model=m), levels[0]))
                    _line_band(ax[2], ds.d.values, ns.transpose("seed", "d"), f"{m}, eps={levels[0]:.3g}", color=f"C{j}")
            _finish_axes(ax[2], "d", "n*(eps, d) per class")
            ax[2].set_xticks(ds.d.values, [str(int(d)) for d in ds.d.values], minor=False)
            ax[2].set_xticks([], minor=True)  # the log axis' minor labels crowd a short d axis
        elif row == "bsm":
            _bsm_row(ax, ds, mode)
        elif row == "regime":
            _regime_row(ax, ds)
        elif row == "exceed":
            _exceedance_row(ax, ds)
        elif row == "traj":
            for j, est in enumerate(ds.estimator.values[:3]):
                for k, nn in enumerate(n):
                    sel = {"d": ds.d.values[0], "model": ds.model.values[0], "estimator": est, "n": nn}
                    r = ratio_table(ds, "score_l2", "data_mode", "trajectory", "independent", sel).transpose("seed", "t")
                    _line_band(ax[j], ds.t.values, r, f"n={int(nn)}", color=f"C{k}")
                ax[j].axhline(1.0, color="k", lw=0.8)
                _finish_axes(ax[j], "t", f"score_l2: trajectory / independent ({est})")
        elif row == "quantile":
            sub = ds.isel(estimator=0, data_mode=0, model=0, d=0)
            eta = float(ds.attrs.get("min_weight", np.nan))
            for j, t in enumerate([ds.t.values[0], ds.t.values[len(ds.t) // 2]]):
                _line_band(ax[j], n, done(sub, "score_l2").sel(t=t), "L2 error E||ŝ-s||²", color="C0")
                for k, dl in enumerate(ds.delta.values):
                    _line_band(ax[j], n, done(sub, "score_quantile").sel(t=t, delta=dl) ** 2,
                               f"(quantile δ={dl:g} {'<' if dl < eta else '>'} η)²", color=f"C{k + 1}")
                ax[j].axvline(1 / eta, color="0.5", ls=":", label="n = 1/η")
                _finish_axes(ax[j], "n", f"score errors at t={float(t):g} (η={eta:.3g})")
            _line_band(ax[2], n, done(sub, "sliced_w2"), "sliced W2", color="C0")
            ax[2].axhline(float(done(sub, "sliced_w2_floor").median()), color="C0", ls="--", lw=0.8, label="sliced W2 floor")
            _line_band(ax[2], n, done(sub, "mode_tv"), "mode TV (≤ TV)", color="C3")
            ax[2].axhline(eta, color="C3", ls=":", lw=0.8, label="η")
            ax[2].axvline(1 / eta, color="0.5", ls=":")
            _finish_axes(ax[2], "n", "sampling error vs n")
        else:
            ax[0].text(0.5, 0.5, "no section for this grid", ha="center")
    fig.suptitle(f"{ds.attrs.get('name', '')} (score_learning): bands = min–max over {ds.sizes['seed']} seed{'s' if ds.sizes['seed'] != 1 else ''}"
                 + (" (P[error > τ]: Clopper–Pearson 95% interval)" if ("exceed", None) in rows else ""))
    tight_layout(fig)
    return save(fig, out, dpi=100)
