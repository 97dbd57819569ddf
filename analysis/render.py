"""A ``Report`` and its renderers: one self-contained HTML page (plotly.js inline) and a markdown
summary. They walk the sections generically; no section has code here."""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

from plotly.offline import get_plotlyjs

from lrbs.analysis.sections import Section, Table, fmt


@dataclass
class Report:
    """What ``lrbs report`` writes (``analysis/report.py`` builds it): a summary of the run, notes
    on how it was read, and the sections."""

    summary: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    @property
    def fits(self) -> dict[str, dict[str, Any]]:
        """The fits against eta/S (the overview section's), as plain dicts."""
        overview = next((s for s in self.sections if s.key == "overview"), None)
        return overview.data.get("fits", {}) if overview is not None else {}

    def fits_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "fits": self.fits,
            "notes": self.notes,
            "sections": {s.key: s.to_dict() for s in self.sections},
        }


def html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    return f"<p class='cap'>{html.escape(t.title)}</p><table><tr>{head}</tr>{body}</table>"


def status_words(counts: dict[str, int] | None) -> str:
    """Trial status counts as words: ``finished 12, diverged 2``."""
    return ", ".join(f"{k} {v}" for k, v in (counts or {}).items()) or "no trials"


def heading(sec: Section) -> str:
    """A section's heading: ``Fig. 3: <title>``; the title alone when the section answers no figure
    (``-``) or its title already starts with it (``Eq. 7: ...``)."""
    figure = (sec.figure or "").strip()
    if figure in ("", "-") or sec.title.startswith(figure):
        return sec.title
    return f"{figure}: {sec.title}"


# Console errors (uncaught exceptions, rejected promises, console.error) end up in the page
# (#lrbs-errors); after load, #lrbs-status says how many plots drew an SVG with traces and where
# each one lies on the page. The browser test (tests/analysis/test_analysis_browser.py) reads both from
# the dumped DOM and crops a screenshot at each plot.
_HOOK = (
    "<script>window.__lrbsErrors=[];window.addEventListener('error',function(e){window.__lrbsErrors.push("
    "String(e.message||e));});window.addEventListener('unhandledrejection',function(e){"
    "window.__lrbsErrors.push('unhandled rejection: '+String(e.reason));});"
    "(function(){var ce=console.error;console.error=function(){window.__lrbsErrors.push("
    "Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments);};})();</script>"
)
_STATUS = (
    "<script>window.addEventListener('load',function(){setTimeout(function(){"
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
    "document.getElementById('lrbs-errors').textContent=window.__lrbsErrors.join('\\n');},0);});</script>"
)


_STYLE = (
    "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "nav td,nav th,table.text td{text-align:left}.cap{font-style:italic;margin-bottom:.2em}"
    ".partial{background:#fff3cd;border:1px solid #e0b000;padding:.6em}"
    "pre.block{background:#f6f8fa;border:1px solid #ddd;padding:.6em;overflow-x:auto}"
    ".differs{background:#fde2e1}.verdict{background:#eef;border:1px solid #99c;padding:.6em}"
    ".skipped{color:#666}#lrbs-status{color:#999;font-size:small}</style>"
)


def html_page(title: str, body: list[str]) -> str:
    """A self-contained page around ``body`` (HTML fragments): plotly.js inline, so it opens
    offline; the console-error hook and the status line the browser test reads."""
    return "\n".join(
        [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            _HOOK,
            f"<script type='text/javascript'>{get_plotlyjs()}</script>",
            _STYLE,
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            *body,
            "<p id='lrbs-status'></p><pre id='lrbs-errors'></pre>",
            _STATUS,
            "</body></html>",
        ]
    )


def html_block(caption: str, text: str) -> str:
    """Preformatted text (the spec as YAML) under its caption."""
    return f"<p class='cap'>{html.escape(caption)}</p><pre class='block'>{html.escape(text)}</pre>"


def _anchor(key: str) -> str:
    return html.escape(key, quote=True)


def _contents(report: Report) -> str:
    """The table of contents: every section linked to its anchor, with its status and result
    (or why it was skipped)."""
    rows = "".join(
        f"<tr><td><a href='#{_anchor(s.key)}'>{html.escape(s.title)}</a></td><td>{html.escape(s.figure)}</td>"
        f"<td>{html.escape(s.status)}</td><td>{html.escape(s.headline if s.status == 'ok' else s.reason)}</td></tr>"
        for s in report.sections
    )
    return (
        "<nav id='contents'><h2>Contents</h2><p class='cap'>what the run's data supports (each section links "
        "to its place below)</p><table><tr><th>section</th><th>figure</th><th>status</th><th>result / reason"
        f"</th></tr>{rows}</table></nav>"
    )


def render_html(report: Report, title: str) -> str:
    """One HTML file with plotly.js inline: opens offline, no files beside it. A linked table of
    contents, then each section with results; skipped sections one line each at the end."""
    partial = report.summary.get("partial")
    parts = [
        "<p class='partial'><b>PARTIAL RUN</b>: trials are still running; everything below is computed from the "
        "epochs written so far.</p>"
        if partial
        else "",
        f"<p>{fmt(report.summary.get('trials'))} trials, {fmt(report.summary.get('epoch_rows'))} epoch rows; "
        f"status: {html.escape(status_words(report.summary.get('status_counts')))}</p>",
        *(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in report.notes),
        _contents(report),
    ]
    for sec in report.sections:
        if sec.status != "ok":
            continue
        parts.append(f"<h2 id='{_anchor(sec.key)}'>{html.escape(heading(sec))}</h2>")
        parts += [f"<p><b>Note:</b> {html.escape(n)}</p>" for n in sec.notes]
        parts += [html_table(t) for t in sec.tables]
        parts += [html_block(caption, text) for caption, _, text in sec.blocks]
        for name, fig in sec.figures:
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    skipped = [sec for sec in report.sections if sec.status != "ok"]
    if skipped:
        parts.append("<h2 id='skipped'>Skipped</h2><ul class='skipped'>")
        parts += [
            f"<li id='{_anchor(sec.key)}'><b>{html.escape(heading(sec))}</b>: {html.escape(sec.reason)}</li>"
            for sec in skipped
        ]
        parts.append("</ul>")
    return html_page(title, parts)


def _summary_table(report: Report) -> Table:
    return Table(
        "what the run's data supports",
        ["section", "figure", "status", "result / reason"],
        [[s.title, s.figure, s.status, s.headline if s.status == "ok" else s.reason] for s in report.sections],
    )


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    lines = [
        f"*{_md_cell(t.title)}*",
        "",
        "| " + " | ".join(_md_cell(h) for h in t.header) + " |",
        "|" + "|".join(" --- " for _ in t.header) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def md_block(caption: str, language: str, text: str) -> str:
    """Preformatted text as a fenced block (a fence longer than any run of backticks inside)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"*{_md_cell(caption)}*\n\n{fence}{language}\n{text.rstrip()}\n{fence}"


def render_md(report: Report, title: str) -> str:
    """A summary that reads in a terminal or a pull request: one table of sections, then theirs;
    skipped sections one line each at the end."""
    s = report.summary
    out = [f"# {title}", ""]
    if s.get("partial"):
        out += ["> **PARTIAL RUN**: trials are still running; values are from the epochs written so far.", ""]
    out += [
        f"{s.get('trials')} trials, {s.get('epoch_rows')} epoch rows; status: " + status_words(s.get("status_counts")),
        "",
    ]
    out += [f"- {n}" for n in report.notes] + ([""] if report.notes else [])
    out += [md_table(_summary_table(report)), ""]
    for sec in report.sections:
        if sec.status != "ok":
            continue
        out += [f"## {heading(sec)}", ""]
        out += [f"- {n}" for n in sec.notes] + ([""] if sec.notes else [])
        for t in sec.tables:
            out += [md_table(t), ""]
        for caption, language, text in sec.blocks:
            out += [md_block(caption, language, text), ""]
    skipped = [sec for sec in report.sections if sec.status != "ok"]
    if skipped:
        out += (
            ["## Skipped", ""] + [f"- **{_md_cell(heading(sec))}**: {_md_cell(sec.reason)}" for sec in skipped] + [""]
        )
    return "\n".join(out)


def json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: NaN and infinities as null, numpy scalars as Python's."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return json_safe(value.item())
    return value
