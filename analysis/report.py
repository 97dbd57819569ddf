"""``lrbs report``: report.html, fits.json and report.md for a run directory.

The report is a list of sections, one per question of the paper (see docs/report.md). Each
section is computed from the Arrow tables alone and is either ``ok`` (tables, figures, data)
or ``skipped`` with the reason (a column absent or all null, too few trials, no such family).
A run that is still going is reported from what is there, marked partial in every format.
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go
import pyarrow as pa
from plotly.offline import get_plotlyjs

from analysis import plots
from analysis.breakdown import breakdown
from analysis.collapse import COLLAPSE_METRICS, collapse_test
from analysis.curves import equal_ratio_pairs, rescale_distances
from analysis.fits import RatioFit, ratio_fit
from analysis.geometry import GEOMETRY_METRICS, eq7_check, ratio_band_fit
from analysis.interpolation import load_interpolations, summarize
from analysis.tables import load_metrics_with_report
from analysis.trialinfo import has_values, trial_table

# (column, fit on log10 of the value?) for the eta/S fits.
FIT_METRICS = (("final_val_acc", False), ("max_val_acc", False), ("final_train_loss", True))
# Sharpness fits (Fig. 3), on log axes; only for runs that measured it.
CURVATURE_FIT_METRICS = (("lambda_max", True), ("hessian_fro", True), ("hessian_trace", True))
FORMATS = ("html", "json", "md")
FILE_NAMES = {"html": "report.html", "json": "fits.json", "md": "report.md"}


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    key: str
    title: str
    figure: str                       # the paper's figure / equation it answers
    status: str = "ok"                # ok | skipped
    reason: str = ""                  # why skipped
    headline: str = ""                # one line for the summary table
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def skip(self, reason: str) -> "Section":
        self.status, self.reason = "skipped", reason
        return self

    def to_dict(self) -> dict:
        return {"title": self.title, "figure": self.figure, "status": self.status, "reason": self.reason,
                "headline": self.headline, "notes": self.notes, "data": self.data}


@dataclass
class Report:
    fits: dict[str, RatioFit]
    figures: list[tuple[str, go.Figure]]
    summary: dict
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def fits_json(self) -> dict:
        return {"summary": self.summary, "fits": {k: v.to_dict() for k, v in self.fits.items()},
                "notes": self.notes, "sections": {s.key: s.to_dict() for s in self.sections}}


def fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    return str(v)


def pm(mean: float, sd: float) -> str:
    return fmt(mean) if sd is None or math.isnan(sd) else f"{fmt(mean)} +- {fmt(sd, 2)}"


# ----------------------------------------------------------------------------- sections

def _running_note(trials: pa.Table) -> list[str]:
    n = sum(s == "running" for s in trials.column("status").to_pylist()) if trials.num_rows else 0
    return [f"PARTIAL: {n} trial(s) still running; their values are from their latest epoch."] if n else []


def section_collapse(trials: pa.Table) -> Section:
    sec = Section("collapse", "Collapse test: do eta and S act only through eta/S?", "Fig. 3 / Sec. 3")
    groups = {}
    n_trains = sorted({v for v in trials.column("n_train").to_pylist()}, key=lambda v: (v is None, v))
    for n in n_trains:
        groups["all" if len(n_trains) == 1 else f"n_train={n}"] = trials.filter(
            pa.compute.equal(trials.column("n_train"), n)) if n is not None else trials
    results, why = [], {}
    for metric, log_y in COLLAPSE_METRICS:
        name = ("log10 " if log_y else "") + metric
        if not has_values(trials, metric):
            why.setdefault("column absent or all null", []).append(name)
            continue
        for g, t in groups.items():
            r = collapse_test(t, metric, log_y, group=g)
            if isinstance(r, str):
                why.setdefault(r, []).append(name if g == "all" else f"{name} ({g})")
            else:
                results.append(r)
    skipped = [f"{', '.join(dict.fromkeys(names))}: {reason}" for reason, names in why.items()]
    sec.notes += skipped
    if not results:
        return sec.skip("; ".join(skipped) or "no trials")
    sec.tables.append(Table(
        "y = a + b log10(eta) + c log10(S), OLS with classical SEs; H0: b + c = 0 (two-sided t-test)",
        ["metric", "group", "n", "b [95% CI]", "c [95% CI]", "b + c [95% CI]", "p (b+c=0)", "R^2 full",
         "R^2 ratio-only", "equal and opposite"],
        [[r.metric, r.group, str(r.n), f"{fmt(r.b)} {fmt(r.b_ci, 3)}", f"{fmt(r.c)} {fmt(r.c_ci, 3)}",
          f"{fmt(r.b_plus_c)} {fmt(r.b_plus_c_ci, 3)}", fmt(r.p, 3), fmt(r.r2_full, 3), fmt(r.r2_ratio, 3),
          fmt(r.equal_and_opposite)] for r in results]))
    sec.figures.append(("Collapse test coefficients", plots.collapse_coefficients(results)))
    sec.data = {"results": [r.to_dict() for r in results], "skipped": skipped}
    held = [r for r in results if r.equal_and_opposite]
    sec.headline = (f"b = -c not rejected for {len(held)}/{len(results)} fits ("
                    + ", ".join(f"{r.metric}: b+c={fmt(r.b_plus_c, 3)} p={fmt(r.p, 2)}" for r in results[:3]) + ")")
    return sec


def _distance_table(title: str, distances) -> Table:
    return Table(title, ["A", "B", "epochs", "rms(mean curves)", "mean |diff|", "per-seed rms (mean +- sd)",
                         "seed-noise rms", "seeds A/B"],
                 [[d.a, d.b, str(len(d.epochs)), fmt(d.rms, 3), fmt(d.mean_abs, 3),
                   pm(d.seed_rms_mean, d.seed_rms_sd), fmt(d.noise_rms, 3), f"{d.n_a}/{d.n_b}"] for d in distances])


def section_equal_ratio(metrics: pa.Table, trials: pa.Table) -> Section:
    sec = Section("equal_ratio", "Learning curves of runs with equal eta/S", "Fig. 1")
    pairs = equal_ratio_pairs(metrics, trials, "val_acc")
    if not pairs:
        return sec.skip("no two configurations share their eta/S sequence (same n_train and model) "
                        "outside beta and rescaling families")
    loss = equal_ratio_pairs(metrics, trials, "train_loss")
    sec.tables.append(_distance_table("val acc: distance between configurations with equal eta/S", pairs))
    sec.tables.append(_distance_table("train loss: distance between configurations with equal eta/S", loss))
    sec.figures.append(("Equal eta/S: val acc difference per epoch",
                        plots.curve_differences(pairs, "Equal eta/S pairs: val acc difference per epoch (+-2 SE)")))
    sec.figures.append(("Equal eta/S: train loss difference per epoch",
                        plots.curve_differences(loss, "Equal eta/S pairs: train loss difference per epoch (+-2 SE)")))
    sec.data = {"val_acc": [d.to_dict() for d in pairs], "train_loss": [d.to_dict() for d in loss]}
    sec.headline = "; ".join(f"{d.a} vs {d.b}: val acc rms {fmt(d.rms, 2)} (seed noise {fmt(d.noise_rms, 2)})"
                             for d in pairs[:3])
    return sec


def section_rescaling(metrics: pa.Table, trials: pa.Table) -> Section:
    sec = Section("rescaling", "Rescaling rules against the small-batch reference", "Fig. 2")
    if not has_values(trials, "rescale"):
        return sec.skip("no rescale column with values (no rescaling family in this run)")
    dists = rescale_distances(metrics, trials, "val_acc")
    if not dists:
        return sec.skip("the rescaling family has only its reference batch size")
    loss = rescale_distances(metrics, trials, "train_loss")
    sec.tables.append(_distance_table("val acc: each rule and batch size against the reference", dists))
    sec.tables.append(_distance_table("train loss: each rule and batch size against the reference", loss))
    sec.figures.append(("Rescaling rules: val acc difference from the reference",
                        plots.curve_differences(dists, "Rescaling rules: val acc minus reference, per epoch (+-2 SE)")))
    sec.data = {"val_acc": [d.to_dict() for d in dists], "train_loss": [d.to_dict() for d in loss]}
    sec.headline = "; ".join(f"{d.a}: rms {fmt(d.rms, 2)}" for d in dists)
    return sec


def section_geometry(trials: pa.Table) -> Section:
    sec = Section("geometry", "Sharpness and generalization against eta/S", "Fig. 3")
    fits, skipped = [], []
    for column, log_y in GEOMETRY_METRICS:
        if not has_values(trials, column):
            skipped.append(f"{column}: column absent or all null")
            continue
        f = ratio_band_fit(trials, column, log_y)
        if isinstance(f, str):
            skipped.append(f"{column}: {f}")
        else:
            fits.append(f)
    sec.notes += skipped
    if not [f for f in fits if f.column != "final_val_acc"]:
        return sec.skip("; ".join(skipped) or "no curvature values")
    sec.tables.append(Table("y = a + slope log10(eta/S), OLS; 95% t-interval; p of slope = 0",
                            ["y", "n", "slope [95% CI]", "p", "R^2", "Spearman rho (p)"],
                            [[f.metric, str(f.n), f"{fmt(f.slope)} {fmt(f.slope_ci, 3)}", fmt(f.p, 3), fmt(f.r2, 3),
                              f"{fmt(f.spearman_rho, 3)} ({fmt(f.spearman_p, 2)})"] for f in fits]))
    for f in fits:
        sec.figures.append((f"{f.column} against eta/S", plots.band_fit_plot(trials, f)))
    sec.data = {"fits": [f.to_dict() for f in fits], "skipped": skipped}
    sec.headline = ", ".join(f"{f.metric} slope {fmt(f.slope, 3)} {fmt(f.slope_ci, 2)}" for f in fits)
    return sec


def section_eq7(trials: pa.Table) -> Section:
    sec = Section("eq7", "Eq. 7: final loss against (eta/4S) Tr(H)", "Eq. 7")
    if not has_values(trials, "hessian_trace"):
        return sec.skip("no hessian_trace values (curvature probes not run)")
    r = eq7_check(trials)
    if isinstance(r, str):
        return sec.skip(r)
    what = ("the loss on the probe subset in eval mode, at the probed weights (the loss whose Hessian Tr(H) is)"
            if r.loss_column == "probe_loss" else
            "final train loss, the train-mode epoch mean (this run predates probe_loss; it is not the loss "
            "whose Hessian Tr(H) is, and differs from it most at large eta/S)")
    if r.loss_column != "probe_loss":
        sec.notes.append("Eq. 7 uses final_train_loss: this run has no probe_loss column (written before it existed).")
    sec.tables.append(Table(f"x = (eta/4S) Tr(H) at the last epoch, y = {what}",
                            ["n", "median y/x [IQR]", "log-log slope [95% CI]", "R^2", "Spearman rho (p)"],
                            [[str(r.n), f"{fmt(r.ratio_median, 3)} [{fmt(r.ratio_q25, 3)}, {fmt(r.ratio_q75, 3)}]",
                              f"{fmt(r.slope, 3)} {fmt(r.slope_ci, 3)}", fmt(r.r2, 3),
                              f"{fmt(r.spearman_rho, 3)} ({fmt(r.spearman_p, 2)})"]]))
    sec.figures.append(("Eq. 7 check", plots.eq7_plot(r)))
    sec.data = r.to_dict()
    sec.headline = f"median loss/((eta/4S)TrH) = {fmt(r.ratio_median, 3)}, log-log slope {fmt(r.slope, 3)} {fmt(r.slope_ci, 2)}"
    return sec


def section_interpolation(run_dir: Path | None) -> Section:
    sec = Section("interpolation", "Interpolation between minima", "Fig. 4")
    if run_dir is None:
        return sec.skip("no run directory given")
    curves, problems = load_interpolations(run_dir)
    sec.notes += problems
    if not curves:
        return sec.skip("no interpolation/*.arrow files (make them with `lrbs interpolate RUN_DIR A B`)"
                        + (f"; unreadable: {'; '.join(problems)}" if problems else ""))
    sums = [summarize(name, t) for name, t in sorted(curves.items())]
    sec.tables.append(Table("train loss along the line; barrier = max loss on [0, 1] - max(loss at A, loss at B)",
                            ["A", "B", "alphas", "loss A", "loss B", "barrier", "val acc A", "val acc B"],
                            [[s.trial_a, s.trial_b, f"{s.n_alpha} in [{fmt(s.alpha_min, 3)}, {fmt(s.alpha_max, 3)}]",
                              fmt(s.loss_a, 3), fmt(s.loss_b, 3), fmt(s.barrier, 3), fmt(s.val_acc_a, 3),
                              fmt(s.val_acc_b, 3)] for s in sums]))
    sec.figures.append(("Interpolation: train loss", plots.interpolation_plot(curves, "train_loss")))
    sec.figures.append(("Interpolation: val acc", plots.interpolation_plot(curves, "val_acc")))
    sec.data = {"curves": [s.to_dict() for s in sums]}
    sec.headline = "; ".join(f"{s.trial_a}->{s.trial_b} barrier {fmt(s.barrier, 3)}" for s in sums[:3])
    return sec


def section_breakdown(metrics: pa.Table, trials: pa.Table) -> Section:
    sec = Section("breakdown", "Breakdown of eta/S scaling at large beta", "Fig. 5")
    res = breakdown(metrics, trials)
    if isinstance(res, str):
        return sec.skip(res)
    for r in res:
        sec.notes += [f"n_train={r.n_train}: {n}" for n in r.notes]
        pred = ("-" if r.b_crit is None else
                f"B_crit = {fmt(r.b_crit, 3)}" + (f" +- {fmt(r.b_crit_sd, 2)}" if r.b_crit_sd else "")
                + f" (n={r.b_crit_n}) -> beta_crit = {fmt(r.beta_crit, 3)}")
        sec.tables.append(Table(
            f"n_train={r.n_train}: S0={r.s0}, lr0={fmt(r.lr0)}; beta* = {fmt(r.beta_star)}; "
            f"noise-scale prediction: {pred}. Test: {r.test}",
            ["beta", "lr", "S", "seeds", "max val acc (mean +- sd)", "", "p (Welch)", "p (Holm)", "below beta=1",
             "curve rms vs beta=1", "per-seed rms"],
            [[fmt(b.beta), fmt(b.lr), str(b.batch_size), str(b.n) + (f" ({b.n_running} running)" if b.n_running else ""),
              pm(b.mean, b.sd), b.diverged_mark, fmt(b.p, 3), fmt(b.p_holm, 3), fmt(b.significant) if b.beta > 1 else "",
              fmt(b.curve_rms, 3), pm(b.curve_seed_rms_mean, b.curve_seed_rms_sd)] for b in r.rows]))
    sec.figures.append(("Breakdown: max val acc against beta", plots.breakdown_plot(res)))
    sec.data = {"results": [r.to_dict() for r in res]}
    sec.headline = "; ".join(f"n_train={r.n_train}: beta*={fmt(r.beta_star)}"
                             + (f", B_crit/S0={fmt(r.beta_crit, 3)}" if r.beta_crit is not None else "") for r in res)
    return sec


# The one registry of report sections, in report order: key -> builder(metrics, trials, run_dir).
# A section is a pure function of the tables returning a Section (docs/extending.md); one that
# does not apply to a run returns ``Section(...).skip(reason)``.
SECTIONS: dict[str, Callable[[pa.Table, pa.Table, Path | None], Section]] = {
    "collapse": lambda metrics, trials, run_dir: section_collapse(trials),
    "equal_ratio": lambda metrics, trials, run_dir: section_equal_ratio(metrics, trials),
    "rescaling": lambda metrics, trials, run_dir: section_rescaling(metrics, trials),
    "geometry": lambda metrics, trials, run_dir: section_geometry(trials),
    "interpolation": lambda metrics, trials, run_dir: section_interpolation(run_dir),
    "breakdown": lambda metrics, trials, run_dir: section_breakdown(metrics, trials),
    "eq7": lambda metrics, trials, run_dir: section_eq7(trials),
}


def build_report(metrics: pa.Table, read_info: dict | None = None, run_dir: str | Path | None = None) -> Report:
    """Everything the report shows, computed from the metric table (and interpolation files)."""
    trials = trial_table(metrics)
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
        notes.append(f"PARTIAL RUN: {statuses.count('running')} trial(s) still running (or cut off): "
                     "their values are from their latest epoch.")
    if summary.get("truncated_files"):
        notes.append(f"{len(summary['truncated_files'])} metric file(s) end mid-record (writer killed); "
                     "read up to the last whole row.")
    fits = {}
    figures: list[tuple[str, go.Figure]] = []
    measured = [(m, log_y) for m, log_y in CURVATURE_FIT_METRICS
                if m in trials.column_names and trials.column(m).null_count < trials.num_rows]
    n_ratios = len({round(r, 15) for r in trials.column("ratio").to_pylist() if r}) if trials.num_rows else 0
    fit_ok = trials.num_rows >= 3 and n_ratios >= 2
    for metric, log_y in FIT_METRICS + tuple(measured):
        if fit_ok:
            fits[metric] = ratio_fit(trials, metric, log_y=log_y)
        figures.append((f"{metric} against eta/S",
                        plots.metric_vs_ratio(trials, metric, fits.get(metric), log_y=log_y)))
    if trials.num_rows < 3:
        notes.append("Fits skipped: fewer than 3 trials with data.")
    elif n_ratios < 2:
        notes.append("Fits against eta/S skipped: every trial has the same eta/S (e.g. a beta family).")
    figures.append(("Validation accuracy per epoch", plots.learning_curves(metrics, "val_acc")))
    figures.append(("Training loss per epoch", plots.learning_curves(metrics, "train_loss")))
    sections: list[Section] = []
    if trials.num_rows:
        running = _running_note(trials)
        for build in SECTIONS.values():
            sec = build(metrics, trials, Path(run_dir) if run_dir else None)
            if sec.status == "ok":
                sec.notes = running + sec.notes
            sections.append(sec)
    return Report(fits=fits, figures=figures, summary=summary, notes=notes, sections=sections)


# ----------------------------------------------------------------------------- rendering

def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<p class='cap'>{html.escape(t.title)}</p><table><tr>{head}</tr>{body}</table>"


# Console errors (uncaught exceptions, rejected promises, console.error) end up in the page
# (#lrbs-errors); after load, #lrbs-status says how many plots drew an SVG with traces and where
# each one lies on the page. The browser test (tests/test_analysis_browser.py) reads both from
# the dumped DOM and crops a screenshot at each plot.
_HOOK = ("<script>window.__lrbsErrors=[];window.addEventListener('error',function(e){window.__lrbsErrors.push("
         "String(e.message||e));});window.addEventListener('unhandledrejection',function(e){"
         "window.__lrbsErrors.push('unhandled rejection: '+String(e.reason));});"
         "(function(){var ce=console.error;console.error=function(){window.__lrbsErrors.push("
         "Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};})();</script>")
_STATUS = ("<script>window.addEventListener('load',function(){setTimeout(function(){"
           "var plots=document.querySelectorAll('.js-plotly-plot');var drawn=0;var boxes=[];"
           "plots.forEach(function(p){var n=p.querySelectorAll('.main-svg .trace').length;if(n>0)drawn++;"
           "var r=p.getBoundingClientRect();boxes.push([Math.round(r.left+window.scrollX),"
           "Math.round(r.top+window.scrollY),Math.round(r.width),Math.round(r.height),n]);});"
           "var s=document.getElementById('lrbs-status');s.setAttribute('data-plots',plots.length);"
           "s.setAttribute('data-drawn',drawn);s.setAttribute('data-errors',window.__lrbsErrors.length);"
           "s.setAttribute('data-boxes',JSON.stringify(boxes));"
           "s.setAttribute('data-height',document.documentElement.scrollHeight);"
           "s.textContent='plots drawn: '+drawn+'/'+plots.length;"
           "document.getElementById('lrbs-errors').textContent=window.__lrbsErrors.join('\\n');},0);});</script>")


def render_html(report: Report, title: str) -> str:
    """One HTML file with plotly.js inline: opens offline, no files beside it."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{f.n}</td><td>{fmt(f.slope)}</td><td>{fmt(f.slope_ci)}</td>"
        f"<td>{fmt(f.r2)}</td><td>{fmt(f.spearman_rho)}</td><td>{fmt(f.spearman_p)}</td></tr>"
        for name, f in report.fits.items())
    partial = report.summary.get("partial")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>", _HOOK,
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        ".cap{font-style:italic;margin-bottom:.2em}.partial{background:#fff3cd;border:1px solid #e0b000;padding:.6em}"
        ".skipped{color:#666}#lrbs-status{color:#999;font-size:small}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='partial'><b>PARTIAL RUN</b>: trials are still running; everything below is computed from the "
        "epochs written so far.</p>" if partial else "",
        f"<p>{fmt(report.summary.get('trials'))} trials, {fmt(report.summary.get('epoch_rows'))} epoch rows; "
        f"status: {html.escape(json.dumps(report.summary.get('status_counts')))}</p>",
        *(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in report.notes),
        "<h2>Sections</h2>", _html_table(_summary_table(report)),
        "<h2>Fits against log10(eta/S)</h2><table><tr><th>metric</th><th>n</th><th>slope</th>"
        "<th>95% CI (bootstrap over seeds)</th><th>R^2</th><th>Spearman rho</th><th>p</th></tr>",
        rows, "</table>",
    ]
    for name, fig in report.figures:
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    for sec in report.sections:
        parts.append(f"<h2 id='{sec.key}'>{html.escape(sec.figure)}: {html.escape(sec.title)}</h2>")
        if sec.status != "ok":
            parts.append(f"<p class='skipped'>Skipped: {html.escape(sec.reason)}</p>")
            continue
        parts += [f"<p><b>Note:</b> {html.escape(n)}</p>" for n in sec.notes]
        parts += [_html_table(t) for t in sec.tables]
        for name, fig in sec.figures:
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    parts += ["<p id='lrbs-status'></p><pre id='lrbs-errors'></pre>", _STATUS, "</body></html>"]
    return "\n".join(parts)


def _summary_table(report: Report) -> Table:
    return Table("what the run's data supports", ["section", "figure", "status", "result / reason"],
                 [[s.title, s.figure, s.status, s.headline if s.status == "ok" else s.reason] for s in report.sections])


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = [f"*{_md_cell(t.title)}*", "", "| " + " | ".join(_md_cell(h) for h in t.header) + " |",
             "|" + "|".join(" --- " for _ in t.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render_md(report: Report, title: str) -> str:
    """A summary that reads in a terminal or a pull request: one table of sections, then theirs."""
    s = report.summary
    out = [f"# {title}", ""]
    if s.get("partial"):
        out += ["> **PARTIAL RUN**: trials are still running; values are from the epochs written so far.", ""]
    out += [f"{s.get('trials')} trials, {s.get('epoch_rows')} epoch rows; status: "
            + ", ".join(f"{k} {v}" for k, v in (s.get("status_counts") or {}).items()), ""]
    out += [f"- {n}" for n in report.notes] + ([""] if report.notes else [])
    out += [_md_table(_summary_table(report)), ""]
    if report.fits:
        out += [_md_table(Table("fits against log10(eta/S) (95% CI: bootstrap over seeds)",
                                ["metric", "n", "slope [95% CI]", "R^2", "Spearman rho (p)"],
                                [[f.metric, str(f.n), f"{fmt(f.slope)} {fmt(f.slope_ci, 3)}", fmt(f.r2, 3),
                                  f"{fmt(f.spearman_rho, 3)} ({fmt(f.spearman_p, 2)})"] for f in report.fits.values()])),
                ""]
    for sec in report.sections:
        if sec.status != "ok":
            continue
        out += [f"## {sec.figure}: {sec.title}", ""]
        out += [f"- {n}" for n in sec.notes] + ([""] if sec.notes else [])
        for t in sec.tables:
            out += [_md_table(t), ""]
    skipped = [sec for sec in report.sections if sec.status != "ok"]
    if skipped:
        out += ["## Skipped", ""] + [f"- **{sec.figure}** ({sec.title}): {sec.reason}" for sec in skipped] + [""]
    return "\n".join(out)


def write_reports(run_dir: str | Path, formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Write the report in each format (html: report.html, json: fits.json, md: report.md)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown report format(s) {', '.join(bad)} (known: {', '.join(FORMATS)})")
    run_dir = Path(run_dir)
    metrics, info = load_metrics_with_report(run_dir)
    report = build_report(metrics, {"truncated_files": info.dropped_bytes} if info.dropped_bytes else None,
                          run_dir=run_dir)
    title = f"lrbs report: {report.summary.get('sweep') or run_dir.name}"
    paths = {}
    for f in FORMATS:
        if f not in formats:
            continue
        path = run_dir / FILE_NAMES[f]
        if f == "html":
            path.write_text(render_html(report, title))
        elif f == "json":
            path.write_text(json.dumps(_json_safe(report.fits_json()), indent=2))
        else:
            path.write_text(render_md(report, title))
        paths[f] = path
    return paths


def _json_safe(value):
    """NaN is not JSON: write null instead."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _json_safe(value.item())
    return value
