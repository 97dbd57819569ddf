"""Plotly figures over Arrow tables. Every function returns a ``go.Figure`` and writes nothing."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa
from plotly.colors import sample_colorscale

from analysis.fits import RatioFit


def _label(metric: str) -> str:
    return metric.replace("_", " ")


def metric_vs_ratio(trials: pa.Table, metric: str, fit: RatioFit | None = None, log_y: bool = False) -> go.Figure:
    """``metric`` per trial against eta/S (log axis), one colour per batch size, fit line on top.

    Diverged trials are drawn as crosses at the bottom of the axis range when their value is not finite.
    """
    fig = go.Figure()
    rows = trials.select(["ratio", "batch_size", "lr", "seed", "status", "trial_id", metric]).to_pylist()
    for s in sorted({r["batch_size"] for r in rows}):
        pts = [r for r in rows if r["batch_size"] == s and r[metric] is not None and math.isfinite(r[metric])]
        fig.add_trace(go.Scatter(
            x=[r["ratio"] for r in pts], y=[r[metric] for r in pts], mode="markers", name=f"S={s}",
            marker=dict(size=9, symbol=["x" if r["status"] == "diverged" else "circle" for r in pts]),
            text=[f"{r['trial_id']}<br>lr={r['lr']:g} S={r['batch_size']} seed={r['seed']} {r['status']}" for r in pts],
            hovertemplate="%{text}<br>eta/S=%{x:.3g}<br>" + _label(metric) + "=%{y:.4g}<extra></extra>"))
    if fit is not None and math.isfinite(fit.slope):
        xs = [r["ratio"] for r in rows if r["ratio"]]
        lx = np.linspace(math.log10(min(xs)), math.log10(max(xs)), 50)
        ly = fit.intercept + fit.slope * lx
        fig.add_trace(go.Scatter(
            x=10 ** lx, y=10 ** ly if log_y else ly, mode="lines", line=dict(dash="dash", color="black"),
            name=f"fit: slope {fit.slope:.3g} [{fit.slope_ci[0]:.3g}, {fit.slope_ci[1]:.3g}], rho {fit.spearman_rho:.2f}"))
    fig.update_layout(title=f"{_label(metric)} against eta/S", xaxis_title="eta / S (lr per example)",
                      yaxis_title=_label(metric), legend_title="batch size", template="plotly_white")
    fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def learning_curves(metrics: pa.Table, y: str = "val_acc", x: str = "epoch") -> go.Figure:
    """One line per trial, coloured by log10(eta/S) of its base point, so equal ratios share a colour."""
    rows = metrics.select(["trial_id", x, y, "ratio", "lr", "batch_size", "seed"]).to_pylist()
    by_trial: dict[str, list[dict]] = {}
    for r in rows:
        by_trial.setdefault(r["trial_id"], []).append(r)
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    lo, hi = (math.log10(min(ratios)), math.log10(max(ratios))) if ratios else (0.0, 1.0)
    fig = go.Figure()
    for trial_id, pts in sorted(by_trial.items()):
        first = pts[0]
        t = 0.5 if hi == lo else (math.log10(first["ratio"]) - lo) / (hi - lo)
        colour = sample_colorscale("Viridis", [t])[0]
        fig.add_trace(go.Scatter(
            x=[p[x] for p in pts], y=[p[y] for p in pts], mode="lines", line=dict(color=colour, width=1.5),
            name=f"lr={first['lr']:g} S={first['batch_size']} s{first['seed']}",
            legendgroup=f"{first['ratio']:.6g}",
            hovertemplate=f"{trial_id}<br>eta/S={first['ratio']:.3g}<br>{x}=%{{x}}<br>{_label(y)}=%{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=f"Learning curves: {_label(y)} (colour: log10 eta/S, {lo:.2f} to {hi:.2f})",
                      xaxis_title=x, yaxis_title=_label(y), template="plotly_white")
    return fig


def interpolation_curve(table: pa.Table) -> go.Figure:
    """Train and validation loss along theta(alpha) = (1 - alpha) theta_A + alpha theta_B (Fig. 4)."""
    rows = table.to_pylist()
    a, b = (rows[0]["trial_a"], rows[0]["trial_b"]) if rows else ("A", "B")
    fig = go.Figure()
    for key, dash in (("train_loss", "solid"), ("val_loss", "dash")):
        fig.add_trace(go.Scatter(x=[r["alpha"] for r in rows], y=[r[key] for r in rows], mode="lines+markers",
                                 line=dict(dash=dash), name=_label(key)))
    fig.update_layout(title=f"Interpolation: alpha=0 is {a}, alpha=1 is {b}", xaxis_title="alpha",
                      yaxis_title="loss (nats per example)", template="plotly_white")
    fig.update_yaxes(type="log")
    return fig
