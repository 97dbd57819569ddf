"""``lrbs report``: fits.json and a self-contained plotly report.html for a run directory."""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import pyarrow as pa
from plotly.offline import get_plotlyjs

from analysis import plots
from analysis.fits import RatioFit, ratio_fit
from analysis.tables import load_metrics_with_report, trials_from_metrics

# (column, fit on log10 of the value?) for the eta/S fits.
FIT_METRICS = (("final_val_acc", False), ("max_val_acc", False), ("final_train_loss", True))


@dataclass
class Report:
    fits: dict[str, RatioFit]
    figures: list[tuple[str, go.Figure]]
    summary: dict
    notes: list[str] = field(default_factory=list)

    def fits_json(self) -> dict:
        return {"summary": self.summary, "fits": {k: v.to_dict() for k, v in self.fits.items()},
                "notes": self.notes}


def build_report(metrics: pa.Table, read_info: dict | None = None) -> Report:
    """Everything the report shows, computed from the metric table alone."""
    trials = trials_from_metrics(metrics)
    statuses = trials.column("status").to_pylist() if trials.num_rows else []
    summary = {
        "sweep": trials.column("sweep")[0].as_py() if trials.num_rows else None,
        "trials": trials.num_rows,
        "epoch_rows": metrics.num_rows,
        "status_counts": {s: statuses.count(s) for s in sorted(set(statuses))},
        "partial": any(s == "running" for s in statuses),
        **(read_info or {}),
    }
    notes = []
    if summary["partial"]:
        notes.append("Some trials are still running (or were cut off): values are from their latest epoch.")
    fits = {}
    figures: list[tuple[str, go.Figure]] = []
    for metric, log_y in FIT_METRICS:
        if trials.num_rows >= 3:
            fits[metric] = ratio_fit(trials, metric, log_y=log_y)
        figures.append((f"{metric} against eta/S",
                        plots.metric_vs_ratio(trials, metric, fits.get(metric), log_y=log_y)))
    if trials.num_rows < 3:
        notes.append("Fits skipped: fewer than 3 trials with data.")
    figures.append(("Validation accuracy per epoch", plots.learning_curves(metrics, "val_acc")))
    figures.append(("Training loss per epoch", plots.learning_curves(metrics, "train_loss")))
    return Report(fits=fits, figures=figures, summary=summary, notes=notes)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return html.escape(str(v))


def render_html(report: Report, title: str) -> str:
    """One HTML file with plotly.js inline: opens offline, no files beside it."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{f.n}</td><td>{_fmt(f.slope)}</td><td>{_fmt(f.slope_ci)}</td>"
        f"<td>{_fmt(f.r2)}</td><td>{_fmt(f.spearman_rho)}</td><td>{_fmt(f.spearman_p)}</td></tr>"
        for name, f in report.fits.items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{_fmt(report.summary.get('trials'))} trials, {_fmt(report.summary.get('epoch_rows'))} epoch rows; "
        f"status: {html.escape(json.dumps(report.summary.get('status_counts')))}</p>",
        *(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in report.notes),
        "<h2>Fits against log10(eta/S)</h2><table><tr><th>metric</th><th>n</th><th>slope</th>"
        "<th>95% CI (bootstrap over seeds)</th><th>R^2</th><th>Spearman rho</th><th>p</th></tr>",
        rows, "</table>",
    ]
    for name, fig in report.figures:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``fits.json`` into the run directory; returns their paths."""
    run_dir = Path(run_dir)
    metrics, info = load_metrics_with_report(run_dir)
    report = build_report(metrics, {"truncated_files": info.dropped_bytes} if info.dropped_bytes else None)
    html_path, json_path = run_dir / "report.html", run_dir / "fits.json"
    title = f"lrbs report: {report.summary.get('sweep') or run_dir.name}"
    html_path.write_text(render_html(report, title))
    json_path.write_text(json.dumps(_json_safe(report.fits_json()), indent=2))
    return html_path, json_path


def _json_safe(value):
    """NaN is not JSON: write null instead."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
