"""``lrbs report``: report.html, fits.json and report.md for a run directory.

The report is a list of sections (``analysis/sections.py``), one per question of the paper (see
docs/report.md), built from the Arrow tables and rendered by ``analysis/render.py``. Each section
is either ``ok`` (tables, figures, data) or ``skipped`` with the reason (a column absent or all
null, too few trials, no such family). A run that is still going is reported from what is there,
marked partial in every format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lrbs.analysis.compare import RunView, render_compare_html, render_compare_md
from lrbs.analysis.render import Report, json_safe, render_html, render_md
from lrbs.analysis.sections import SECTIONS, Section
from lrbs.analysis.selection import page_name, section_selected, select_trials
from lrbs.analysis.trialinfo import trial_table
from lrbs.rundir.layout import COMPARE_PAGE, REPORT_FILES
from lrbs.rundir.safe_write import write_file_safely
from lrbs.rundir.tables import load_metrics_with_report

FORMATS = tuple(REPORT_FILES)  # html, json, md


def build_report(
    metrics: pa.Table, read_info: dict[str, Any] | None = None, run_dir: str | Path | None = None
) -> Report:
    """Every registered section, computed from the metric table (and files of the run directory)."""
    trials = trial_table(metrics)
    statuses = trials.column("status").to_pylist() if trials.num_rows else []
    summary = {
        "sweep": trials.column("sweep")[0].as_py() if trials.num_rows else None,
        "trials": trials.num_rows,
        "epoch_rows": metrics.num_rows,
        "status_counts": {s: statuses.count(s) for s in sorted(set(statuses))},
        "partial": any(s == "running" for s in statuses) or bool((read_info or {}).get("damaged_files")),
        **(read_info or {}),
    }
    notes = []
    if summary["partial"]:
        notes.append(
            f"PARTIAL RUN: {statuses.count('running')} trial(s) still running (or cut off): "
            "their values are from their latest epoch."
        )
    if summary.get("truncated_files"):
        notes.append(
            f"{len(summary['truncated_files'])} metric file(s) end mid-record (writer killed); "
            "read up to the last whole row."
        )
    for name, problem in (summary.get("damaged_files") or {}).items():
        notes.append(
            f"DAMAGED metric file {name}: {problem}; rows before the damage are kept, its trial's "
            "later epochs are missing."
        )
    sections: list[Section] = []
    if trials.num_rows:
        n = statuses.count("running")
        running = [f"PARTIAL: {n} trial(s) still running; their values are from their latest epoch."] if n else []
        for build in SECTIONS.values():
            sec = build(metrics, trials, Path(run_dir) if run_dir else None)
            if sec.status == "ok":
                sec.notes = running + sec.notes
            sections.append(sec)
    return Report(summary=summary, notes=notes, sections=sections)


def write_reports(run_dir: str | Path, formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """Write the report in each format (html: report.html, json: fits.json, md: report.md)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown report format(s) {', '.join(bad)} (known: {', '.join(FORMATS)})")
    run_dir = Path(run_dir)
    metrics, info = load_metrics_with_report(run_dir)
    read_info = {
        **({"truncated_files": info.dropped_bytes} if info.dropped_bytes else {}),
        **({"damaged_files": info.damaged} if info.damaged else {}),
    }
    report = build_report(metrics, read_info or None, run_dir=run_dir)
    title = f"lrbs report: {report.summary.get('sweep') or run_dir.name}"
    paths = {}
    for f in FORMATS:
        if f not in formats:
            continue
        path = run_dir / REPORT_FILES[f]
        # A new file renamed over the old one: a link planted at the name is replaced, not followed
        if f == "html":
            write_file_safely(path, render_html(report, title), root=run_dir)
        elif f == "json":
            write_file_safely(path, json.dumps(json_safe(report.fits_json()), indent=2), root=run_dir)
        else:
            write_file_safely(path, render_md(report, title), root=run_dir)
        paths[f] = path
    return paths


def write_trial_page(run_dir: str | Path, selectors: list[str]) -> Path:
    """``trials-<selectors>.html`` in the run directory: the trials the selectors pick
    (``analysis/selection.py``), one learning curve per trial. Raises ValueError (one line) for a
    selector that is malformed or picks nothing."""
    run_dir = Path(run_dir)
    metrics, _ = load_metrics_with_report(run_dir)
    trials = select_trials(trial_table(metrics), selectors)
    sec = section_selected(metrics, trials, selectors)
    statuses = trials.column("status").to_pylist()
    sweep = trials.column("sweep")[0].as_py()
    rows = int(pc.sum(pc.is_in(metrics.column("trial_id"), value_set=trials.column("trial_id"))).as_py())
    report = Report(
        summary={
            "sweep": sweep,
            "trials": trials.num_rows,
            "epoch_rows": rows,
            "status_counts": {s: statuses.count(s) for s in sorted(set(statuses))},
        },
        sections=[sec],
    )
    path = run_dir / page_name(selectors)
    write_file_safely(
        path, render_html(report, f"lrbs trials: {sweep or run_dir.name}: {' | '.join(selectors)}"), root=run_dir
    )
    return path


def write_comparison(run_a: str | Path, run_b: str | Path, allow_any: bool = False) -> dict[str, Path]:
    """``compare-<B>.md`` and ``.html`` in run A: the two runs side by side (``analysis/compare.py``);
    ``allow_any``: the same/different verdict even when the models or data sets differ."""
    run_a, run_b = Path(run_a), Path(run_b)
    name_a, name_b = run_a.name, run_b.name
    if name_a == name_b:
        name_a, name_b = f"{run_a.parent.name}/{name_a}", f"{run_b.parent.name}/{name_b}"
    views = []
    for run, name in ((run_a, name_a), (run_b, name_b)):
        metrics, _ = load_metrics_with_report(run)
        views.append(RunView(name, build_report(metrics, run_dir=run), metrics, trial_table(metrics)))
    stem = COMPARE_PAGE.format(run_b.name)
    md, page = run_a / f"{stem}.md", run_a / f"{stem}.html"
    write_file_safely(md, render_compare_md(views[0], views[1], allow_any), root=run_a)
    write_file_safely(page, render_compare_html(views[0], views[1], allow_any), root=run_a)
    return {"md": md, "html": page}
