"""``lrbs report A --compare B``: two runs side by side, with the differences that matter.

For every fit against eta/S both runs have (validation accuracy, loss, sharpness, generalization
gap), the slopes with their 95% CIs and whether the intervals overlap; beta* per training-set
size where both ran a beta family; then every section's headline (or its reason to skip) for
both runs. Pure functions over two ``Report`` objects (``analysis.report.build_report``), so a
section added to the registry appears here without code.
"""
from __future__ import annotations

import html
import math

from analysis.fits import slope_text
from analysis.render import _md_table
from analysis.sections import Table, fmt


def _slopes(report) -> dict[str, dict]:
    out = dict(report.fits)
    gap = next((s for s in report.sections if s.key == "gap" and s.status == "ok"), None)
    if gap is not None:
        out["generalization_gap"] = gap.data["fit"]
    return out


def _overlap(a: tuple, b: tuple) -> bool | None:
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (*a, *b)):
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def _slope(fit: dict) -> str:
    ci = tuple(math.nan if v is None else v for v in fit["slope_ci"])
    return slope_text(fit["slope"] if fit["slope"] is not None else math.nan, ci, fit.get("ci_note", ""))


def _beta_star(report) -> dict:
    sec = next((s for s in report.sections if s.key == "breakdown" and s.status == "ok"), None)
    if sec is None:
        return {}
    return {str(r.get("n_train")): r.get("beta_star") for r in sec.data.get("results", [])}


def compare_tables(a, b, name_a: str, name_b: str) -> list[Table]:
    """The comparison as tables (rendered to markdown and HTML by ``render_compare_*``)."""
    sa, sb = _slopes(a), _slopes(b)
    rows = []
    for metric in [m for m in sa if m in sb]:
        fa, fb = sa[metric], sb[metric]
        ov = _overlap(tuple(fa["slope_ci"]), tuple(fb["slope_ci"]))
        rows.append([fa.get("metric", metric), _slope(fa), _slope(fb), fmt(fb["slope"] - fa["slope"], 3),
                     "-" if ov is None else ("yes" if ov else "NO: the runs differ")])
    tables = []
    if rows:
        tables.append(Table("slopes against log10(eta/S) over point means [95% CI]", ["metric", name_a, name_b, "B - A", "CIs overlap"], rows))
    ba, bb = _beta_star(a), _beta_star(b)
    if ba and bb:
        keys = sorted(set(ba) | set(bb), key=str)
        tables.append(Table("beta* (the breakdown of eta/S scaling) per training-set size",
                            ["n_train", name_a, name_b], [[k, fmt(ba.get(k)), fmt(bb.get(k))] for k in keys]))
    heads = {s.key: s for s in a.sections}
    other = {s.key: s for s in b.sections}
    tables.append(Table("every section", ["section", name_a, name_b],
                        [[s.title, s.headline if s.status == "ok" else f"skipped: {s.reason}",
                          (other[k].headline if other[k].status == "ok" else f"skipped: {other[k].reason}")
                          if k in other else "-"] for k, s in heads.items()]))
    return tables


def render_compare_md(a, b, name_a: str, name_b: str) -> str:
    out = [f"# lrbs comparison: {name_a} (A) against {name_b} (B)", ""]
    for run, name in ((a, name_a), (b, name_b)):
        s = run.summary
        out.append(f"- {name}: {s.get('trials')} trials, status " + ", ".join(f"{k} {v}" for k, v in
                                                                          (s.get("status_counts") or {}).items())
                   + (" (PARTIAL)" if s.get("partial") else ""))
    out.append("")
    tables = compare_tables(a, b, name_a, name_b)
    if not any(t.title.startswith("slopes") for t in tables):
        out += ["No fit against eta/S is in both runs (no common metric).", ""]
    for t in tables:
        out += [_md_table(t), ""]
    return "\n".join(out)


def render_compare_html(a, b, name_a: str, name_b: str) -> str:
    from analysis.render import _html_table

    body = "".join(_html_table(t) for t in compare_tables(a, b, name_a, name_b))
    title = f"lrbs comparison: {name_a} (A) against {name_b} (B)"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:4px 8px}.cap{font-style:italic}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")
