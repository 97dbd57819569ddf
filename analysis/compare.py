"""``lrbs report A --compare B``: two runs side by side, with the differences that matter.

First what differs between the two runs (data set and its options, model and its options, epochs,
training settings, learning rates, batch sizes, seeds, schedule, convergence threshold, code
version), read from the trial tables' ``cfg.*`` columns and the rows. Then, for every fit against
eta/S both runs have (validation accuracy, loss, sharpness, generalization gap), the slopes with
their 95% CIs and whether the intervals overlap: that verdict is withheld when the runs train
different models or on different data sets (a slope that differs may be the model's or the data's
doing), unless asked for (``allow_any``, ``--compare-any``). beta* per training-set size where both
ran a beta family; every section's headline (or its reason to skip) for both runs; and, in HTML,
the two runs' fits (point means and fit lines) and learning curves overlaid. Pure functions over
two ``RunView`` objects, so a section added to the registry appears here without code.
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from lrbs.analysis import plots
from lrbs.analysis.convergence import converged
from lrbs.analysis.fits import metric_values, point_keys, point_means, slope_text
from lrbs.analysis.render import Report, html_page, html_table, md_table, status_words
from lrbs.analysis.sections import CURVATURE_FIT_METRICS, Table, fmt


@dataclass
class RunView:
    """One run of a comparison: its name on the page, its report and its tables."""

    name: str
    report: Report
    metrics: pa.Table
    trials: pa.Table  # ``lrbs.analysis.trialinfo.trial_table(metrics)``


@dataclass(frozen=True)
class Difference:
    """One aspect of the two runs: how each describes it, and whether they agree (None: one
    run does not record it, or records keys the other does not, so it cannot be told)."""

    what: str
    a: str
    b: str
    same: bool | None
    why_unknown: str = ""

    @property
    def verdict(self) -> str:
        return (self.why_unknown or "unknown") if self.same is None else ("yes" if self.same else "DIFFERS")


# Keys of the cfg.* groups that say where files are or how fast a step runs, not what is trained.
_NOT_SETTINGS = {"data_dir", "download", "eval_batch_size", "cuda_graphs", "pack", "pack_layout"}
# Aspects whose difference withholds the same/different verdict (``allow_any`` overrides).
VERDICT_NEEDS_SAME = ("data set", "model")
MAX_LISTED = 6  # values of a list (learning rates, seeds) shown before "..."
Group = dict[str, tuple[Any, ...]]  # a cfg.* group of the trial table: key -> its distinct values


def _value_text(v: object) -> str:
    return fmt(v, 6) if not isinstance(v, str) else v


def _group(trials: pa.Table, prefix: str, skip: Collection[str] = ()) -> Group | None:
    """``cfg.<prefix>.*`` of every trial as {key: distinct values}, ``options.`` dropped from the
    keys (older runs wrote model options flat); None when the run has no such column."""
    cols = [c for c in trials.column_names if c.startswith(f"cfg.{prefix}.")]
    if not cols:
        return None
    out: Group = {}
    for c in cols:
        key = c[len(f"cfg.{prefix}.") :].removeprefix("options.")
        if key in skip:
            continue
        values = list(dict.fromkeys(_hashable(v) for v in trials.column(c).to_pylist()))
        if values != [None]:
            out[key] = tuple(values)
    return dict(sorted(out.items()))


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def _describe(values: tuple[Any, ...]) -> str:
    return " | ".join(_value_text(list(v) if isinstance(v, tuple) else v) for v in values)


def _named(group: Group | None, name_key: str = "name") -> tuple[str, Group] | None:
    """A group as text (``mlp (depth=3, width=64)``) and the values it was made of."""
    if group is None:
        return None
    name = _describe(group.get(name_key, ("?",)))
    opts = ", ".join(f"{k}={_describe(v)}" for k, v in group.items() if k != name_key)
    return (f"{name} ({opts})" if opts else name), group


def _listed(values: list[Any]) -> tuple[str, tuple[Any, ...]] | None:
    """Sorted distinct values as text, shortened past ``MAX_LISTED``."""
    distinct = sorted({v for v in values if v is not None})
    if not distinct:
        return None
    text = [_value_text(v) for v in distinct]
    if len(text) > MAX_LISTED:
        text = text[:3] + ["..."] + text[-2:] + [f"({len(distinct)} values)"]
    return ", ".join(text).replace(", (", " ("), tuple(distinct)


def _schedule(trials: pa.Table) -> tuple[str, object] | None:
    group = _group(trials, "schedule")
    if group is not None:
        kinds = group.get("kind", ("constant",))
        if kinds == ("constant",):
            return "constant", kinds
        return _named(group, "kind")
    if "schedule" in trials.column_names:  # older runs: the label in the rows
        labels = tuple(dict.fromkeys(v for v in trials.column("schedule").to_pylist() if v is not None))
        return (" | ".join(labels), labels) if labels else None
    return None


def _column_values(table: pa.Table, column: str) -> list[Any]:
    return table.column(column).to_pylist() if column in table.column_names else []


def run_settings(metrics: pa.Table, trials: pa.Table) -> dict[str, tuple[str, object] | None]:
    """What a run trained, per aspect: (text, the values compared), or None where the run does
    not record it."""
    train = _group(trials, "train", _NOT_SETTINGS)
    epochs = (train or {}).pop("epochs", None)
    threshold = _group(trials, "report")
    return {
        "data set": _named(_group(trials, "dataset", _NOT_SETTINGS)),
        "model": _named(_group(trials, "model")),
        "epochs": (_describe(epochs), epochs) if epochs else None,
        "training": (", ".join(f"{k}={_describe(v)}" for k, v in train.items()), train) if train else None,
        "learning rates": _listed(_column_values(trials, "lr")),
        "batch sizes": _listed(_column_values(trials, "batch_size")),
        "seeds": _listed(_column_values(trials, "seed")),
        "schedule": _schedule(trials),
        "converged_train_acc (sharpness fits)": (_describe(threshold["converged_train_acc"]), threshold)
        if threshold and "converged_train_acc" in threshold
        else None,
        "code version": _listed(_column_values(metrics, "code_version")),
    }


def differences(a: RunView, b: RunView) -> list[Difference]:
    """Every aspect of ``run_settings`` for both runs, and whether they agree."""
    sa, sb = run_settings(a.metrics, a.trials), run_settings(b.metrics, b.trials)
    out = []
    for what in sa:
        va, vb = sa[what], sb[what]
        if va is None and vb is None:
            continue
        same, why = (None, "not recorded in both") if va is None or vb is None else _agree(va[1], vb[1])
        out.append(Difference(what, va[0] if va else "not recorded", vb[0] if vb else "not recorded", same, why))
    return out


def _agree(va: object, vb: object) -> tuple[bool | None, str]:
    """Whether two runs' values of an aspect agree. Settings (dicts): a key both record with
    different values differs; keys only one run records (written by other code) leave it
    unknown, never "differs"."""
    if not (isinstance(va, dict) and isinstance(vb, dict)):
        return va == vb, ""
    if any(va[k] != vb[k] for k in va.keys() & vb.keys()):
        return False, ""
    only = sorted(va.keys() ^ vb.keys())
    if only:
        return None, "unknown: " + ", ".join(f"{k} only in {'A' if k in va else 'B'}" for k in only)
    return True, ""


def verdict_refused(diffs: list[Difference], allow_any: bool) -> str:
    """Why no same/different verdict is given (one line), or "" when it is."""
    bad = [d for d in diffs if d.what in VERDICT_NEEDS_SAME and d.same is not True]
    if not bad or allow_any:
        return ""
    plural = {"data set": "data sets", "model": "models"}
    differ = [plural[d.what] for d in bad if d.same is False]
    unknown = [d.what for d in bad if d.same is None]
    why = [f"the runs have different {' and '.join(differ)}"] if differ else []
    why += (
        [f"the {' and '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not recorded in both runs"]
        if unknown
        else []
    )
    return (
        f"No same/different verdict: {'; '.join(why)}, so a difference in slope cannot be told apart from "
        "that (--compare-any shows whether the CIs overlap anyway)."
    )


def _slopes(report: Report) -> dict[str, dict[str, Any]]:
    out = dict(report.fits)
    gap = next((s for s in report.sections if s.key == "gap" and s.status == "ok"), None)
    if gap is not None:
        out["generalization_gap"] = gap.data["fit"]
    return out


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool | None:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (*a, *b)):
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def _slope(fit: dict[str, Any]) -> str:
    return slope_text(fit["slope"], tuple(fit["slope_ci"]), fit.get("ci_note", ""))


def _beta_star(report: Report) -> dict[str, float | None]:
    sec = next((s for s in report.sections if s.key == "breakdown" and s.status == "ok"), None)
    if sec is None:
        return {}
    return {str(r.get("n_train")): r.get("beta_star") for r in sec.data.get("results", [])}


def differences_table(a: RunView, b: RunView, diffs: list[Difference]) -> Table:
    return Table(
        "what each run trained (cfg.* columns of the trial tables; code version of the rows)",
        ["", a.name, b.name, "same?"],
        [[d.what, d.a, d.b, d.verdict] for d in diffs],
    )


def differs_line(diffs: list[Difference]) -> str:
    differ = [d.what for d in diffs if d.same is False]
    unknown = [d.what for d in diffs if d.same is None]
    return (
        "The runs differ in: " + ", ".join(differ) + "." if differ else "The runs differ in nothing recorded here."
    ) + (f" Cannot tell (not recorded alike in both): {', '.join(unknown)}." if unknown else "")


def verdict_caveat(diffs: list[Difference]) -> str:
    """With the verdict given: what else differs and may explain slopes whose CIs do not overlap."""
    differ = [d.what for d in diffs if d.same is False]
    if not differ:
        return ""
    return (
        f"Where the CIs do not overlap, the slopes differ; the runs also differ in {', '.join(differ)}, "
        "any of which may be why."
    )


def compare_tables(a: RunView, b: RunView, allow_any: bool = False) -> list[Table]:
    """The comparison as tables (rendered to markdown and HTML by ``render_compare_*``); the
    "CIs overlap" verdict only when ``verdict_refused`` allows it."""
    refused = verdict_refused(differences(a, b), allow_any)
    sa, sb = _slopes(a.report), _slopes(b.report)
    rows = []
    for metric in [m for m in sa if m in sb]:
        fa, fb = sa[metric], sb[metric]
        row = [fa.get("metric", metric), _slope(fa), _slope(fb), fmt(fb["slope"] - fa["slope"], 3)]
        if not refused:
            ov = _overlap(tuple(fa["slope_ci"]), tuple(fb["slope_ci"]))
            row.append("-" if ov is None else ("yes" if ov else "NO: the runs differ"))
        rows.append(row)
    tables = []
    if rows:
        tables.append(
            Table(
                "slopes against log10(eta/S) over point means [95% CI]",
                ["metric", a.name, b.name, "B - A", *([] if refused else ["CIs overlap"])],
                rows,
            )
        )
    ba, bb = _beta_star(a.report), _beta_star(b.report)
    if ba and bb:
        keys = sorted(set(ba) | set(bb), key=str)
        tables.append(
            Table(
                "beta* (the breakdown of eta/S scaling) per training-set size",
                ["n_train", a.name, b.name],
                [[k, fmt(ba.get(k)), fmt(bb.get(k))] for k in keys],
            )
        )
    other = {s.key: s for s in b.report.sections}
    tables.append(
        Table(
            "every section",
            ["section", a.name, b.name],
            [
                [
                    s.title,
                    s.headline if s.status == "ok" else f"skipped: {s.reason}",
                    (other[s.key].headline if other[s.key].status == "ok" else f"skipped: {other[s.key].reason}")
                    if s.key in other
                    else "-",
                ]
                for s in a.report.sections
            ],
        )
    )
    return tables


def _fit_points(run: RunView, key: str, fit: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points a fit was made over: eta/S, the metric's mean per point (10 ** mean log10 for
    a log fit) and the trials in each; the same trials the report's fit used (curvature over
    the converged ones)."""
    log_y = str(fit.get("metric", "")).startswith("log10 ")
    trials = run.trials
    if key == "generalization_gap":
        gap = next(s for s in run.report.sections if s.key == "gap")
        train_col = "final_train_eval_acc" if gap.data.get("train_accuracy") == "eval_mode" else "final_train_acc"
        y = metric_values(trials, train_col, False) - metric_values(trials, "final_val_acc", False)
    else:
        if key in {m for m, _ in CURVATURE_FIT_METRICS}:
            trials = converged(trials).kept
        y = metric_values(trials, key, log_y)
    pm = point_means(point_keys(trials), metric_values(trials, "ratio", True), y)
    return 10**pm.x, (10**pm.y if log_y else pm.y), pm.n_seeds


def compare_figures(a: RunView, b: RunView) -> list[tuple[str, go.Figure]]:
    """The two runs overlaid: one figure per fit both have (point means and fit lines), and the
    validation accuracy learning curves."""
    sa, sb = _slopes(a.report), _slopes(b.report)
    figures = []
    for key in [m for m in sa if m in sb]:
        runs = [(run.name, *_fit_points(run, key, fits[key]), fits[key]) for run, fits in ((a, sa), (b, sb))]
        metric = str(sa[key].get("metric", key))
        figures.append(
            (
                f"{metric} against eta/S",
                plots.compare_fits(metric.removeprefix("log10 "), runs, log_y=metric.startswith("log10 ")),
            )
        )
    if all("val_acc" in r.metrics.column_names and r.trials.num_rows for r in (a, b)):
        figures.append(
            (
                "Validation accuracy per epoch",
                plots.compare_curves([(r.name, r.metrics, r.trials) for r in (a, b)], "val_acc"),
            )
        )
    return figures


def _run_line(run: RunView) -> str:
    s = run.report.summary
    return f"{run.name}: {s.get('trials')} trials, status {status_words(s.get('status_counts'))}" + (
        " (PARTIAL)" if s.get("partial") else ""
    )


def render_compare_md(a: RunView, b: RunView, allow_any: bool = False) -> str:
    diffs = differences(a, b)
    refused = verdict_refused(diffs, allow_any)
    out = [f"# lrbs comparison: {a.name} (A) against {b.name} (B)", ""]
    out += [f"- {_run_line(run)}" for run in (a, b)] + [""]
    out += ["## What differs", "", differs_line(diffs), "", md_table(differences_table(a, b, diffs)), ""]
    tables = compare_tables(a, b, allow_any)
    if not any(t.title.startswith("slopes") for t in tables):
        out += ["No fit against eta/S is in both runs (no common metric).", ""]
    elif refused or verdict_caveat(diffs):
        out += [f"> {refused or verdict_caveat(diffs)}", ""]
    for t in tables:
        out += [md_table(t), ""]
    return "\n".join(out)


def render_compare_html(a: RunView, b: RunView, allow_any: bool = False) -> str:
    diffs = differences(a, b)
    refused = verdict_refused(diffs, allow_any)
    table = differences_table(a, b, diffs)
    diff_rows = "".join(  # the aspects that differ highlighted
        ("<tr class='differs'>" if d.same is False else "<tr>")
        + "".join(f"<td>{html.escape(c)}</td>" for c in row)
        + "</tr>"
        for d, row in zip(diffs, table.rows)
    )
    body = [
        *(f"<p>{html.escape(_run_line(run))}</p>" for run in (a, b)),
        "<h2 id='differs'>What differs</h2>",
        f"<p><b>{html.escape(differs_line(diffs))}</b></p>",
        f"<p class='cap'>{html.escape(table.title)}</p><table class='text'><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
        + f"</tr>{diff_rows}</table>",
    ]
    tables = compare_tables(a, b, allow_any)
    if not any(t.title.startswith("slopes") for t in tables):
        body.append("<p>No fit against eta/S is in both runs (no common metric).</p>")
    elif refused or verdict_caveat(diffs):
        body.append(f"<p class='verdict'>{html.escape(refused or verdict_caveat(diffs))}</p>")
    body += ["<h2 id='tables'>Side by side</h2>", *(html_table(t) for t in tables)]
    figures = compare_figures(a, b)
    if figures:
        body.append("<h2 id='overlays'>Both runs on one figure</h2>")
        for name, fig in figures:
            body += [f"<h3>{html.escape(name)}</h3>", fig.to_html(full_html=False, include_plotlyjs=False)]
    return html_page(f"lrbs comparison: {a.name} (A) against {b.name} (B)", body)
