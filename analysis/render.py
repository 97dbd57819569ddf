"""Renderers of a ``Report``: one self-contained HTML page (plotly.js inline) and a markdown
summary. They walk the sections generically; no section has code here."""
from __future__ import annotations

import html
import json
import math

from plotly.offline import get_plotlyjs

from typing import TYPE_CHECKING

from analysis.sections import Table, fmt

if TYPE_CHECKING:
    from analysis.report import Report


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
           # SVG traces, or WebGL ones (large sweeps): a GL canvas and no "WebGL not supported" notice
           "var nogl=/WebGL/.test((document.querySelector('.plotly-notifier')||{}).textContent||'');"
           "plots.forEach(function(p){var n=p.querySelectorAll('.main-svg .trace').length"
           "+(nogl?0:p.querySelectorAll('canvas.gl-canvas-context').length);if(n>0)drawn++;"
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
    ]
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

