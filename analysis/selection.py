"""Individual trials on demand: ``lrbs report RUN_DIR --trials SELECTOR`` picks trials from the
trial table and draws each one's learning curves on its own page (``trials-<selector>.html``).

Above ``lrbs.analysis.plots.MAX_TRIAL_CURVES`` trials the report draws one mean line and band per
point; a point's legend name (``lr=0.1 S=32 n_train=1000``) is itself a selector for its seeds.

A selector is ``key=value`` terms (all must hold; separated by commas or spaces; quote a value
with spaces: ``variant='big batch'``) or trial ids.
Keys are trial-table columns (``lr``, ``batch_size`` or ``S``, ``seed``, ``n_train``, ``beta``,
``status``, ...); numbers match to 5 significant digits (the legend prints 6). Several
selectors: a trial matching any of them.
"""

from __future__ import annotations

import math
import re
import shlex

import pyarrow as pa
import pyarrow.compute as pc

from lrbs.analysis.plots import learning_curves
from lrbs.analysis.sections import Section, section_trials
from lrbs.rundir.layout import TRIAL_PAGE

ALIASES = {"S": "batch_size", "eta": "lr", "trial": "trial_id"}
CURVE_METRICS = ("val_acc", "train_loss", "val_loss", "lambda_max", "hessian_trace")


def _terms(selector: str) -> list[str]:
    """Terms split at commas and spaces outside quotes (``variant='big batch'`` is one term); a
    legend name pasted whole keeps its "(eta/S=...)", which is a label, not a term."""
    lexer = shlex.shlex(re.sub(r"\(eta/S=[^)]*\)", " ", selector), posix=True)
    lexer.whitespace, lexer.whitespace_split = " ,\t\n", True
    try:
        return list(lexer)
    except ValueError as exc:  # an unclosed quote
        raise ValueError(f"--trials: {selector!r}: {exc}") from None


def _matches(value: object, wanted: str) -> bool:
    if value is None:
        return wanted.lower() in ("none", "null")
    if isinstance(value, bool):
        return str(value).lower() == wanted.lower()
    if isinstance(value, (int, float)):
        try:
            target = float(wanted)
        except ValueError:
            return False
        return math.isclose(float(value), target, rel_tol=1e-5, abs_tol=0.0) or value == target
    return str(value) == wanted


def select_trials(trials: pa.Table, selectors: list[str]) -> pa.Table:
    """The rows of ``trials`` any selector picks, in the table's order. Raises ValueError (one
    line naming the term) for an empty selector or an unknown key; a selector that picks no
    trial is an error too (a typo would otherwise draw an empty page)."""
    rows = trials.to_pylist()
    ids = {r["trial_id"] for r in rows}
    keep = [False] * len(rows)
    for selector in selectors:
        terms = _terms(selector)
        if not terms:
            raise ValueError("--trials: empty selector (give key=value terms, e.g. 'lr=0.1 S=32', or trial ids)")
        conditions, wanted_ids = [], []
        for term in terms:
            if "=" not in term:
                wanted_ids.append(term)
                continue
            key, _, value = term.partition("=")
            column = ALIASES.get(key, key)
            if column not in trials.column_names:
                known = ", ".join(sorted({*ALIASES, *trials.column_names} - {"config_json"}))
                raise ValueError(f"--trials: unknown key {key!r} in {selector!r} (known: {known})")
            conditions.append((column, value))
        if wanted_ids and conditions:
            raise ValueError(f"--trials: {selector!r} mixes trial ids and key=value terms; give them as two selectors")
        missing = [t for t in wanted_ids if t not in ids]
        if missing:
            raise ValueError(f"--trials: no trial {missing[0]!r} in this run (lrbs status lists them)")
        hit = 0
        for i, r in enumerate(rows):
            if (r["trial_id"] in wanted_ids) if wanted_ids else all(_matches(r[c], v) for c, v in conditions):
                keep[i] = True
                hit += 1
        if not hit:
            raise ValueError(f"--trials: no trial matches {selector!r}")
    return trials.filter(pa.array(keep, type=pa.bool_()))


def page_name(selectors: list[str]) -> str:
    """``trials-<selectors>.html``: the same selection writes the same file (shell-safe name)."""
    text = "_".join("-".join(_terms(s)) for s in selectors)
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("._")[:80] or "selection"
    return TRIAL_PAGE.format(slug)


def section_selected(metrics: pa.Table, trials: pa.Table, selectors: list[str]) -> Section:
    """The selected trials' table and one line per trial for each curve metric they have."""
    sec = Section("selected", f"Selected trials: {' | '.join(selectors)}", "-")
    picked = set(trials.column("trial_id").to_pylist())
    rows = metrics.filter(pc.is_in(metrics.column("trial_id"), value_set=pa.array(sorted(picked))))
    sec.tables = section_trials(trials).tables
    for metric in CURVE_METRICS:
        if metric not in rows.column_names:
            continue
        # only the epochs that measured it (probes run every few epochs: no gaps in the lines)
        measured = rows.filter(pc.fill_null(pc.is_valid(rows.column(metric)), False))
        if measured.num_rows:  # one line per trial, however many (the user asked for these trials)
            sec.figures.append(
                (f"{metric} per epoch", learning_curves(measured, metric, trials=trials, max_trials=trials.num_rows))
            )
    sec.headline = f"{trials.num_rows} trials"
    return sec
