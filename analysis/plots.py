"""Plotly figures over Arrow tables. Every function returns a ``go.Figure`` and writes nothing."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pyarrow as pa
import pyarrow.compute as pc
from plotly.colors import sample_colorscale

from lrbs.analysis.breakdown import BreakdownResult
from lrbs.analysis.collapse import CollapseResult
from lrbs.analysis.curves import CurveDistance
from lrbs.analysis.fits import RatioFit, slope_text
from lrbs.analysis.geometry import BandFit, Eq7Result

# A run's fit in a comparison: its name, the points' eta/S, their mean of the metric, the trials
# in each, and the fit as a dict (``RatioFit.to_dict``).
FitRun = tuple[str, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


def _f32(values: Iterable[float | None]) -> np.ndarray:
    """Plot data as float32 (None -> NaN): plotly writes numpy arrays as base64 binary, ~4x smaller
    in report.html than JSON text of Python floats, with 7 digits still shown on hover."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


def _label(metric: str) -> str:
    return metric.replace("_", " ")


MAX_SVG_POINTS = 1000  # above this many trials, per-trial scatter plots draw with WebGL (Scattergl)


def metric_vs_ratio(trials: pa.Table, metric: str, fit: RatioFit | None = None, log_y: bool = False) -> go.Figure:
    """``metric`` per trial against eta/S (log axis), one colour per batch size, fit line on top.

    Diverged trials are drawn as crosses at the bottom of the axis range when their value is not finite.
    """
    fig = go.Figure()
    rows = trials.select(["ratio", "batch_size", "lr", "seed", "status", "trial_id", metric]).to_pylist()
    scatter = go.Scattergl if len(rows) > MAX_SVG_POINTS else go.Scatter  # WebGL: thousands of markers
    for s in sorted({r["batch_size"] for r in rows}):
        pts = [r for r in rows if r["batch_size"] == s and r[metric] is not None and math.isfinite(r[metric])]
        fig.add_trace(
            scatter(
                x=_f32([r["ratio"] for r in pts]),
                y=_f32([r[metric] for r in pts]),
                mode="markers",
                name=f"S={s}",
                marker=dict(size=9, symbol=["x" if r["status"] == "diverged" else "circle" for r in pts]),
                text=[
                    f"{r['trial_id']}<br>lr={r['lr']:g} S={r['batch_size']} seed={r['seed']} {r['status']}" for r in pts
                ],
                hovertemplate="%{text}<br>eta/S=%{x:.3g}<br>" + _label(metric) + "=%{y:.4g}<extra></extra>",
            )
        )
    if fit is not None and math.isfinite(fit.slope):
        xs = [r["ratio"] for r in rows if r["ratio"]]
        lx = np.linspace(math.log10(min(xs)), math.log10(max(xs)), 50)
        ly = fit.intercept + fit.slope * lx
        fig.add_trace(
            go.Scatter(
                x=10**lx,
                y=10**ly if log_y else ly,
                mode="lines",
                line=dict(dash="dash", color="black"),
                name=f"fit over {fit.n_points} point means: slope {slope_text(fit.slope, fit.slope_ci, fit.ci_note)}, "
                f"rho {fit.spearman_rho:.2f}",
            )
        )
    fig.update_layout(
        title=f"{_label(metric)} against eta/S",
        xaxis_title="eta / S (lr per example)",
        yaxis_title=_label(metric),
        legend_title="batch size",
        template="plotly_white",
    )
    fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


# Above this many trials a learning-curve figure draws one line per point (lr, S, ... without
# the seed: the mean over seeds, with a min-max band) instead of one line per trial: 10,000
# trials' lines would make a 100 MB report that no browser draws.
MAX_TRIAL_CURVES = 200
CURVE_GROUP = ("lr", "batch_size", "n_train", "beta", "rescale", "variant", "schedule")


def learning_curves(
    metrics: pa.Table,
    y: str = "val_acc",
    x: str = "epoch",
    trials: pa.Table | None = None,
    max_trials: int | None = None,
) -> go.Figure:
    """One line per trial, coloured by log10(eta/S) of its base point, so equal ratios share a colour;
    with more than ``max_trials`` trials (and ``trials`` given), one line per point: the mean over
    its seeds, with a band from their min to max (``aggregated_curves``)."""
    if trials is not None and trials.num_rows > (MAX_TRIAL_CURVES if max_trials is None else max_trials):
        return aggregated_curves(metrics, trials, y, x)
    rows = metrics.select(["trial_id", x, y, "ratio", "lr", "batch_size", "seed"]).to_pylist()
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_trial.setdefault(r["trial_id"], []).append(r)
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    lo, hi = (math.log10(min(ratios)), math.log10(max(ratios))) if ratios else (0.0, 1.0)
    fig = go.Figure()
    for trial_id, pts in sorted(by_trial.items()):
        first = pts[0]
        t = 0.5 if hi == lo else (math.log10(first["ratio"]) - lo) / (hi - lo)
        colour = sample_colorscale("Viridis", [t])[0]
        fig.add_trace(
            go.Scatter(
                x=_f32([p[x] for p in pts]),
                y=_f32([p[y] for p in pts]),
                mode="lines",
                line=dict(color=colour, width=1.5),
                name=f"lr={first['lr']:g} S={first['batch_size']} s{first['seed']}",
                legendgroup=f"{first['ratio']:.6g}",
                hovertemplate=f"{trial_id}<br>eta/S={first['ratio']:.3g}<br>{x}=%{{x}}<br>{_label(y)}=%{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"Learning curves: {_label(y)} (colour: log10 eta/S, {lo:.2f} to {hi:.2f})",
        xaxis_title=x,
        yaxis_title=_label(y),
        template="plotly_white",
    )
    return fig


def point_label(point: dict[str, Any]) -> str:
    """``lr=0.1 S=32 variant='big batch'``: a point's legend name, which is also a selector of its
    trials (``analysis/selection.py``; strings quoted where they need it)."""

    def value(v: object) -> str:
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, str) and not re.fullmatch(r"[\w.+-]+", v):  # quoted as a POSIX shell would
            return "'" + v.replace("'", "'\"'\"'") + "'"
        return str(v)

    return " ".join(f"{'S' if k == 'batch_size' else k}={value(v)}" for k, v in point.items() if v is not None)


def _point_curves(
    metrics: pa.Table, trials: pa.Table, y: str, x: str, band: bool = False
) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Per point (``CURVE_GROUP`` labels and eta/S; seeds pooled), in the order of its labels as
    text: rows of ``x`` in order, with the mean of ``y`` over the point's trials with a finite
    value and their count (``band``: also their min and max). Grouped in Arrow."""
    keys = [k for k in CURVE_GROUP if k in trials.column_names]
    joined = metrics.select(["trial_id", x, y]).join(trials.select(["trial_id", "ratio", *keys]), "trial_id")
    valid = (
        pc.is_finite(joined.column(y)) if pa.types.is_floating(joined.column(y).type) else pc.is_valid(joined.column(y))
    )
    joined = joined.filter(pc.fill_null(valid, False))
    stats = joined.group_by([*keys, "ratio", x], use_threads=False).aggregate(
        [(y, "mean"), (y, "count"), *([(y, "min"), (y, "max")] if band else [])]
    )
    curves: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in stats.to_pylist():
        curves.setdefault(tuple(r[k] for k in keys) + (r["ratio"],), []).append(r)
    for pts in curves.values():
        pts.sort(key=lambda r: r[x])
    return {key: pts for key, pts in sorted(curves.items(), key=lambda kv: [str(v) for v in kv[0]])}


def aggregated_curves(metrics: pa.Table, trials: pa.Table, y: str = "val_acc", x: str = "epoch") -> go.Figure:
    """Per point (the trial's base lr, S and family labels; seeds pooled): mean of ``y`` per
    ``x`` over the seeds, and a min-max band, coloured by log10(eta/S). Computed in Arrow (group
    by point and epoch); the figure has two traces per point, whatever the number of seeds."""
    keys = [k for k in CURVE_GROUP if k in trials.column_names]
    curves = _point_curves(metrics, trials, y, x, band=True)
    ratios = [k[-1] for k in curves if k[-1]]
    lo, hi = (math.log10(min(ratios)), math.log10(max(ratios))) if ratios else (0.0, 1.0)
    # What every band and every mean line share is said once, in the figure's template (its trace
    # defaults apply in turn: band, mean, band, mean, ...), not once per trace.
    template = go.layout.Template(pio.templates["plotly_white"])
    template.data.scattergl = [
        go.Scattergl(mode="lines", fill="toself", line=dict(width=0), opacity=0.15, hoverinfo="skip", showlegend=False),
        go.Scattergl(
            mode="lines",
            line=dict(width=1.5),
            hovertemplate=f"%{{fullData.name}}<br>{x}=%{{x}}<br>mean {_label(y)}=%{{y:.4g}} over "
            f"%{{customdata}} seeds<extra></extra>",
        ),
    ]
    fig = go.Figure(layout=dict(template=template))
    for key, pts in curves.items():
        ratio = key[-1]
        t = 0.5 if hi == lo or not ratio else (math.log10(ratio) - lo) / (hi - lo)
        colour = sample_colorscale("Viridis", [t])[0]
        label = point_label(dict(zip(keys, key)))
        # the label (without its eta/S) is a selector of the point's trials (analysis/selection.py)
        label += f" (eta/S={ratio:.3g})" if ratio else ""
        xs = [p[x] for p in pts]
        fig.add_trace(
            go.Scattergl(  # the band: min over seeds forward, max back
                x=_f32(xs + xs[::-1]),
                y=_f32([p[f"{y}_min"] for p in pts] + [p[f"{y}_max"] for p in pts][::-1]),
                fillcolor=colour,
                legendgroup=label,
            )
        )
        fig.add_trace(
            go.Scattergl(
                x=_f32(xs),
                y=_f32([p[f"{y}_mean"] for p in pts]),
                line=dict(color=colour),
                name=label,
                legendgroup=label,
                customdata=np.array([p[f"{y}_count"] for p in pts], dtype=np.int32),
            )
        )
    fig.update_layout(
        title=f"Learning curves: {_label(y)}, mean over seeds per point and min-max band "
        f"({trials.num_rows:,} trials; colour: log10 eta/S, {lo:.2f} to {hi:.2f})<br>"
        f"<sup>a point's trials, one line each: lrbs report RUN_DIR --trials '&lt;its legend "
        f"name&gt;'; their rows: lrbs export</sup>",
        xaxis_title=x,
        yaxis_title=_label(y),
    )
    return fig


# ----------------------------------------------------------------------------- report sections

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def collapse_coefficients(results: list[CollapseResult]) -> go.Figure:
    """b (log eta) against -c (-log S) per metric with 95% CIs: equal under the collapse."""
    fig = go.Figure()
    names = [f"{r.metric} ({r.group})" if r.group != "all" else r.metric for r in results]
    b = [(r.b, r.b_ci) for r in results]
    minus_c = [(-r.c, (-r.c_ci[1], -r.c_ci[0])) for r in results]
    for k, (label, vals) in enumerate((("b (log10 eta)", b), ("-c (-log10 S)", minus_c))):
        fig.add_trace(
            go.Scatter(
                x=names,
                y=[v for v, _ in vals],
                mode="markers",
                name=label,
                marker=dict(size=11, color=_PALETTE[k], symbol="circle" if k == 0 else "diamond"),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[ci[1] - v for v, ci in vals],
                    arrayminus=[v - ci[0] for v, ci in vals],
                ),
            )
        )
    fig.update_layout(
        title="Collapse test: b and -c with 95% CIs (equal if only eta/S matters)",
        yaxis_title="coefficient",
        template="plotly_white",
        scattermode="group",
    )
    return fig


def curve_differences(distances: list[CurveDistance], title: str) -> go.Figure:
    """Per-epoch difference of seed-mean curves (A - B) with +-2 standard errors, one line per pair."""
    fig = go.Figure()
    for k, d in enumerate(distances):
        colour = _PALETTE[k % len(_PALETTE)]
        se = [0.0 if (s is None or not math.isfinite(s)) else 2 * s for s in d.diff_se]
        fig.add_trace(
            go.Scatter(
                x=np.asarray(d.epochs, dtype=np.int32),
                y=_f32(d.diff),
                mode="lines+markers",
                name=f"{d.a} vs {d.b} (rms {d.rms:.3g}, noise {d.noise_rms:.3g})",
                line=dict(color=colour),
                error_y=dict(type="data", array=_f32(se), visible=any(se), color=colour, thickness=1),
            )
        )
    fig.add_hline(y=0, line=dict(color="grey", dash="dot"))
    metric = distances[0].metric if distances else ""
    fig.update_layout(
        title=title,
        xaxis_title="epoch",
        yaxis_title=f"{_label(metric)}: A - B (seed means)",
        template="plotly_white",
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def breakdown_plot(results: list[BreakdownResult]) -> go.Figure:
    """Mean +- sd over seeds of max val acc against beta, one line per training-set size;
    '*' above a beta where a seed diverged; beta* and the noise-scale prediction as vertical lines."""
    fig = go.Figure()
    for k, res in enumerate(results):
        colour = _PALETTE[k % len(_PALETTE)]
        rows = [r for r in res.rows if math.isfinite(r.mean)]
        fig.add_trace(
            go.Scatter(
                x=[r.beta for r in rows],
                y=[r.mean for r in rows],
                mode="lines+markers",
                name=f"n_train={res.n_train}",
                line=dict(color=colour),
                error_y=dict(type="data", array=[0.0 if math.isnan(r.sd) else r.sd for r in rows], visible=True),
                hovertemplate="beta=%{x}<br>max val acc=%{y:.4f}<extra></extra>",
            )
        )
        starred = [r for r in rows if r.diverged_mark]
        if starred:
            fig.add_trace(
                go.Scatter(
                    x=[r.beta for r in starred],
                    y=[r.mean + (0 if math.isnan(r.sd) else r.sd) for r in starred],
                    mode="text",
                    text=["*"] * len(starred),
                    textposition="top center",
                    textfont=dict(size=22, color=colour),
                    name=f"n_train={res.n_train}: a seed diverged",
                )
            )
        # Vertical markers as traces: plotly shapes on a log axis take log10 coordinates.
        ys = [r.mean - (0 if math.isnan(r.sd) else r.sd) for r in rows] + [r.mean for r in rows]
        lo, hi = (min(ys), max(r.mean + (0 if math.isnan(r.sd) else r.sd) for r in rows)) if rows else (0, 1)
        for x, dash, label in (
            (res.beta_star, "dash", f"beta*={res.beta_star:g}" if res.beta_star else ""),
            (res.beta_crit, "dot", f"B_crit/S0={res.beta_crit:.3g}" if res.beta_crit else ""),
        ):
            if x is not None and x > 0:
                fig.add_trace(
                    go.Scatter(
                        x=[x, x],
                        y=[lo, hi],
                        mode="lines",
                        line=dict(color=colour, dash=dash),
                        name=f"n_train={res.n_train}: {label}",
                    )
                )
    fig.update_layout(
        title="Breakdown: max val acc (mean +- sd over seeds) against beta (lr = lr0 beta, S = S0 beta); "
        "* = a seed diverged",
        xaxis_title="beta",
        yaxis_title="max val acc",
        template="plotly_white",
    )
    fig.update_xaxes(type="log")
    return fig


def beta_search_plot(rep: dict[str, Any]) -> go.Figure:
    """Per training-set size: mean max val acc of each beta the search tested (label: its step),
    filled when significantly below beta = 1; the bracket of beta* shaded; the noise-scale
    prediction B_crit/S0 dotted."""
    fig = go.Figure()
    steps: dict[tuple[int | None, float], list[str]] = {}
    for t in rep["trace"]:
        steps.setdefault((t["n_train"], t["beta"]), []).append(str(t["step"]))
    for k, size in enumerate(rep["sizes"]):
        colour = _PALETTE[k % len(_PALETTE)]
        tests = sorted(size["tests"].values(), key=lambda t: t["beta"])
        ref = next((t for t in rep["trace"] if t["n_train"] == size["n_train"] and t["decision"] == "reference"), None)
        xs = ([1.0] if ref and ref["mean"] is not None else []) + [t["beta"] for t in tests]
        ys = ([ref["mean"]] if ref and ref["mean"] is not None else []) + [t["mean"] for t in tests]
        below = ([False] if ref and ref["mean"] is not None else []) + [t["significant"] for t in tests]
        labels = [",".join(steps.get((size["n_train"], x), [])) for x in xs]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                text=labels,
                textposition="top center",
                name=f"n_train={size['n_train']}",
                marker=dict(size=11, color=[colour if b else "white" for b in below], line=dict(color=colour, width=2)),
                hovertemplate="beta=%{x:.4g}<br>mean max val acc=%{y:.4f}<br>step %{text}<extra></extra>",
            )
        )
        if size["beta_star"] is not None:
            fig.add_vrect(x0=size["beta_lo"], x1=size["beta_star"], fillcolor=colour, opacity=0.12, line_width=0)
        if size["beta_crit"]:
            fig.add_vline(x=size["beta_crit"], line=dict(color=colour, dash="dot"))
    fig.update_layout(
        title="Beta search: tested betas (label: step; filled: below beta = 1), bracket of beta* "
        "(shaded), noise-scale prediction (dotted)",
        xaxis_title="beta",
        yaxis_title="max val acc",
        template="plotly_white",
    )
    fig.update_xaxes(type="log")
    return fig


def band_fit_plot(trials: pa.Table, fit: BandFit) -> go.Figure:
    """``fit.column`` per trial against eta/S with the OLS line and its 95% confidence band."""
    fig = metric_vs_ratio(trials, fit.column, None, log_y=fit.log_y)
    if all(math.isfinite(v) for v in fit.band_lo):  # no band where the design allows no interval
        fig.add_trace(
            go.Scatter(
                x=fit.band_x + fit.band_x[::-1],
                y=fit.band_hi + fit.band_lo[::-1],
                fill="toself",
                fillcolor="rgba(0,0,0,0.12)",
                line=dict(width=0),
                name="95% band of the mean",
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=fit.band_x,
            y=fit.band_mean,
            mode="lines",
            line=dict(color="black", dash="dash"),
            name=f"fit over {fit.n_points} point means: slope "
            f"{slope_text(fit.slope, fit.slope_ci, fit.ci_note)}, R^2 {fit.r2:.2f}",
        )
    )
    return fig


def eq7_plot(result: Eq7Result) -> go.Figure:
    pts = result.points
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[p["predicted"] for p in pts],
            y=[p["loss"] for p in pts],
            mode="markers",
            name="trials",
            text=[f"{p['trial_id']} lr={p['lr']:g} S={p['batch_size']}" for p in pts],
            hovertemplate="%{text}<br>(eta/4S) Tr H=%{x:.3g}<br>loss=%{y:.3g}<extra></extra>",
            marker=dict(size=9),
        )
    )
    lo = min(min(p["predicted"] for p in pts), min(p["loss"] for p in pts))
    hi = max(max(p["predicted"] for p in pts), max(p["loss"] for p in pts))
    fig.add_trace(
        go.Scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="grey", dash="dot"), name="loss = (eta/4S) Tr H"
        )
    )
    fig.update_layout(
        title=f"Eq. 7: {result.loss_column} against (eta/4S) Tr(H) (median ratio {result.ratio_median:.3g}, "
        f"log-log slope {result.slope:.3g})",
        xaxis_title="(eta / 4S) Tr(H)",
        yaxis_title=result.loss_column,
        template="plotly_white",
    )
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def interpolation_plot(curves: dict[str, pa.Table], y: str = "train_loss") -> go.Figure:
    fig = go.Figure()
    for k, (name, table) in enumerate(sorted(curves.items())):
        fig.add_trace(
            go.Scatter(
                x=table.column("alpha").to_pylist(),
                y=table.column(y).to_pylist(),
                mode="lines+markers",
                name=name.replace("__", " -> "),
                line=dict(color=_PALETTE[k % len(_PALETTE)]),
            )
        )
    for x in (0, 1):
        fig.add_vline(x=x, line=dict(color="grey", dash="dot"))
    fig.update_layout(
        title=f"Interpolation: {_label(y)} along (1 - alpha) theta_A + alpha theta_B",
        xaxis_title="alpha",
        yaxis_title=_label(y),
        template="plotly_white",
    )
    if y.endswith("loss"):
        fig.update_yaxes(type="log")
    return fig


def grid_map(cells: list[dict[str, Any]], value: str, log_color: bool = False) -> go.Figure:
    """(lr, S) grid on log axes, one square per cell coloured by ``value`` (mean over seeds), with
    dashed iso-eta/S lines (lr = r S) through the cells' ratios: the paper's claim is that colour is
    constant along them. Cells without a finite value (every seed diverged) are grey crosses."""

    def ok(v: float | None) -> bool:
        return v is not None and math.isfinite(v) and (v > 0 or not log_color)

    xs = [c["batch_size"] for c in cells]
    ys = [c["lr"] for c in cells]
    fig = go.Figure()
    s_lo, s_hi = min(xs) / 1.5, max(xs) * 1.5
    for r in sorted({round(c["lr"] / c["batch_size"], 15) for c in cells}):
        fig.add_trace(
            go.Scatter(
                x=[s_lo, s_hi],
                y=[r * s_lo, r * s_hi],
                mode="lines",
                showlegend=False,
                line=dict(color="#999", dash="dash", width=1),
                hoverinfo="skip",
            )
        )
    good = [c for c in cells if ok(c[value])]
    bad = [c for c in cells if not ok(c[value])]
    fig.add_trace(
        go.Scatter(
            x=[c["batch_size"] for c in good],
            y=[c["lr"] for c in good],
            mode="markers",
            showlegend=False,
            marker=dict(
                symbol="square",
                size=30,
                color=[math.log10(c[value]) if log_color else c[value] for c in good],
                colorscale="Viridis",
                showscale=True,
                colorbar=dict(title=("log10 " if log_color else "") + value),
                line=dict(color="#333", width=1),
            ),
            text=[
                f"lr={c['lr']:.3g}, S={c['batch_size']}, eta/S={c['lr'] / c['batch_size']:.3g}<br>{value}="
                f"{c[value]:.4g} (n={c['n']})"
                for c in good
            ],
            hovertemplate="%{text}<extra></extra>",
        )
    )
    if bad:
        fig.add_trace(
            go.Scatter(
                x=[c["batch_size"] for c in bad],
                y=[c["lr"] for c in bad],
                mode="markers",
                name="no finite value (diverged)",
                marker=dict(symbol="x", size=14, color="#888"),
            )
        )
    fig.update_layout(
        title=f"{value} over the (lr, S) grid; dashed: equal eta/S",
        xaxis_title="batch size S",
        yaxis_title="learning rate",
        xaxis_type="log",
        yaxis_type="log",
        template="plotly_white",
        yaxis_range=[math.log10(min(ys) / 1.5), math.log10(max(ys) * 1.5)],
        xaxis_range=[math.log10(s_lo), math.log10(s_hi)],
    )
    return fig


# ----------------------------------------------------------------------------- comparing two runs

# Run A and run B of ``lrbs report A --compare B``: a colour and a colour scale each (the scale
# shades a run's points by eta/S when its curves are drawn one per point).
_RUN_COLOURS = ("#1f77b4", "#d62728")
_RUN_SCALES = ("Blues", "Reds")
_RUN_SYMBOLS = ("circle", "diamond")
COMPARE_MAX_POINTS = 8  # up to this many points a run's learning curves are drawn one line per point


def compare_fits(metric: str, runs: list[FitRun], log_y: bool = False) -> go.Figure:
    """Two runs' fits of one metric against eta/S on one figure: each run's point means (seeds
    averaged, the fit's unit) and its fit line over its own range of eta/S.

    ``runs``: per run ``(name, ratios, values, n_seeds, fit)``: the points' eta/S, their mean of
    the metric (for ``log_y``, 10 ** the mean of log10, as fitted), the trials averaged into each,
    and the fit as a dict (``slope``, ``intercept``, ``slope_ci``, ``ci_note``, ``n_points``)."""
    fig = go.Figure()
    for k, (name, ratios, values, n_seeds, fit) in enumerate(runs):
        colour = _RUN_COLOURS[k % len(_RUN_COLOURS)]
        fig.add_trace(
            go.Scatter(
                x=_f32(ratios),
                y=_f32(values),
                mode="markers",
                name=f"{name}: point means",
                legendgroup=name,
                marker=dict(size=10, color=colour, symbol=_RUN_SYMBOLS[k % len(_RUN_SYMBOLS)]),
                customdata=np.asarray(n_seeds, dtype=np.int32),
                hovertemplate=f"{name}<br>eta/S=%{{x:.3g}}<br>{_label(metric)}=%{{y:.4g}} (mean of %{{customdata}} "
                f"trials)<extra></extra>",
            )
        )
        slope, intercept = fit.get("slope"), fit.get("intercept")
        finite = [r for r in ratios if r is not None and r > 0 and math.isfinite(r)]
        if slope is None or intercept is None or not math.isfinite(slope) or not finite:
            continue
        lx = np.linspace(math.log10(min(finite)), math.log10(max(finite)), 50)
        ly = intercept + slope * lx
        ci = fit.get("slope_ci") or (None, None)
        fig.add_trace(
            go.Scatter(
                x=10**lx,
                y=10**ly if log_y else ly,
                mode="lines",
                legendgroup=name,
                line=dict(color=colour, dash="solid" if k == 0 else "dash", width=2),
                name=f"{name}: fit over {fit.get('n_points')} points, slope {slope_text(slope, ci, fit.get('ci_note', ''))}",
            )
        )
    fig.update_layout(
        title=f"{_label(metric)} against eta/S: both runs (point means and fit lines)",
        xaxis_title="eta / S (lr per example)",
        yaxis_title=_label(metric),
        template="plotly_white",
        legend=dict(orientation="h", y=-0.25),
    )
    fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def compare_curves(
    runs: list[tuple[str, pa.Table, pa.Table]],
    y: str = "val_acc",
    x: str = "epoch",
    max_points: int = COMPARE_MAX_POINTS,
) -> go.Figure:
    """Two runs' learning curves on one figure. ``runs``: per run ``(name, metrics, trials)``.

    A run with at most ``max_points`` points draws one line per point (the mean over its seeds),
    shaded in the run's colour by log10(eta/S) over both runs' range, so equal eta/S get equal
    shades; a run with more draws one line, the mean over its points' curves per epoch, with a
    band from the lowest to the highest point."""
    curves = [_point_curves(metrics, trials, y, x) for _, metrics, trials in runs]
    ratios = [key[-1] for c in curves for key in c if key[-1]]
    lo, hi = (math.log10(min(ratios)), math.log10(max(ratios))) if ratios else (0.0, 1.0)
    fig = go.Figure()
    for k, ((name, _, trials), points) in enumerate(zip(runs, curves)):
        colour = _RUN_COLOURS[k % len(_RUN_COLOURS)]
        dash = "solid" if k == 0 else "dash"
        if len(points) <= max_points:
            keys = [c for c in CURVE_GROUP if c in trials.column_names]
            for key, pts in points.items():
                ratio = key[-1]
                t = 0.5 if hi == lo or not ratio else (math.log10(ratio) - lo) / (hi - lo)
                shade = sample_colorscale(_RUN_SCALES[k % len(_RUN_SCALES)], [0.4 + 0.6 * t])[0]
                label = point_label(dict(zip(keys, key))) + (f" (eta/S={ratio:.3g})" if ratio else "")
                fig.add_trace(
                    go.Scatter(
                        x=_f32([p[x] for p in pts]),
                        y=_f32([p[f"{y}_mean"] for p in pts]),
                        mode="lines",
                        name=f"{name}: {label}",
                        legendgroup=name,
                        line=dict(color=shade, dash=dash, width=1.8),
                        customdata=np.array([p[f"{y}_count"] for p in pts], dtype=np.int32),
                        hovertemplate=f"{name}: {label}<br>{x}=%{{x}}<br>mean {_label(y)}=%{{y:.4g}} over "
                        f"%{{customdata}} seeds<extra></extra>",
                    )
                )
            continue
        by_x: dict[Any, list[float]] = {}
        for pts in points.values():
            for p in pts:
                by_x.setdefault(p[x], []).append(p[f"{y}_mean"])
        xs = sorted(by_x)
        means = [sum(by_x[v]) / len(by_x[v]) for v in xs]
        fig.add_trace(
            go.Scatter(  # the band: the lowest point forward, the highest back
                x=_f32(xs + xs[::-1]),
                y=_f32([min(by_x[v]) for v in xs] + [max(by_x[v]) for v in xs][::-1]),
                mode="lines",
                fill="toself",
                fillcolor=colour,
                opacity=0.15,
                line=dict(width=0),
                hoverinfo="skip",
                legendgroup=name,
                name=f"{name}: lowest to highest point",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=_f32(xs),
                y=_f32(means),
                mode="lines",
                name=f"{name}: mean over its {len(points)} points",
                legendgroup=name,
                line=dict(color=colour, dash=dash, width=2.5),
                customdata=np.array([len(by_x[v]) for v in xs], dtype=np.int32),
                hovertemplate=f"{name}<br>{x}=%{{x}}<br>mean {_label(y)}=%{{y:.4g}} over %{{customdata}} points"
                f"<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"Learning curves: {_label(y)}, both runs (a line per point, seeds averaged, up to "
        f"{max_points} points; beyond that the mean over the run's points)",
        xaxis_title=x,
        yaxis_title=_label(y),
        template="plotly_white",
        legend=dict(orientation="h", y=-0.25),
    )
    return fig
