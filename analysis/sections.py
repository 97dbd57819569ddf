"""The report's sections: one builder per question of the paper, registered in ``SECTIONS``.

A builder is ``builder(metrics, trials, run_dir) -> Section``: a pure function of the Arrow
tables (and, for interpolation and provenance, files of the run directory), which returns either
an ``ok`` section (tables, plotly figures, JSON-safe ``data``) or ``Section(...).skip(reason)``.
The renderers (``analysis/render.py``) know nothing of any one section: adding a section is a
builder and a registry entry here (docs/extending.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.compute as pc

from lrbs.analysis import plots
from lrbs.analysis.beta_search import search_report
from lrbs.analysis.breakdown import breakdown, min_drop_of
from lrbs.analysis.collapse import COLLAPSE_METRICS, CollapseResult, collapse_test
from lrbs.analysis.convergence import converged
from lrbs.analysis.curves import CurveDistance, equal_ratio_pairs, rescale_distances
from lrbs.analysis.fits import CI_METHOD, RatioFit, ratio_fit, slope_text
from lrbs.analysis.geometry import GEOMETRY_METRICS, BandFit, eq7_check, ratio_band_fit
from lrbs.analysis.interpolation import load_interpolations, summarize
from lrbs.analysis.trialinfo import has_values
from lrbs.rundir.layout import PROVENANCE_FILE, SPEC_COPY
from lrbs.rundir.points import from_config, split_member_id
from lrbs.rundir.records import ERROR, current_records, read_ledger

# (column, fit on log10 of the value?) for the eta/S fits.
FIT_METRICS = (("final_val_acc", False), ("max_val_acc", False), ("final_train_loss", True))
# Sharpness fits (Fig. 3), on log axes; only for runs that measured it.
CURVATURE_FIT_METRICS = (("lambda_max", True), ("hessian_fro", True), ("hessian_trace", True))


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    key: str
    title: str
    figure: str  # the paper's figure / equation it answers
    status: str = "ok"  # ok | skipped
    reason: str = ""  # why skipped
    headline: str = ""  # one line for the summary table
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    # preformatted text, as (caption, language, text): the spec as YAML
    blocks: list[tuple[str, str, str]] = field(default_factory=list)

    def skip(self, reason: str) -> Section:
        self.status, self.reason = "skipped", reason
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figure": self.figure,
            "status": self.status,
            "reason": self.reason,
            "headline": self.headline,
            "notes": self.notes,
            "data": self.data,
        }


def fmt(v: object, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    return str(v)


def pm(mean: float, sd: float | None) -> str:
    return fmt(mean) if sd is None or math.isnan(sd) else f"{fmt(mean)} +- {fmt(sd, 2)}"


FIT_HEADER = ["n points (trials)", "slope [95% CI]", "p", "R^2", "Spearman rho (p)"]


def _fit_cells(f: RatioFit | BandFit) -> list[str]:
    """A fit against eta/S as table cells, under ``FIT_HEADER``."""
    return [
        f"{f.n_points} ({f.n})",
        slope_text(f.slope, f.slope_ci, f.ci_note),
        fmt(f.p, 3),
        fmt(f.r2, 3),
        f"{fmt(f.spearman_rho, 3)} ({fmt(f.spearman_p, 2)})",
    ]


# ----------------------------------------------------------------------------- sections


def section_collapse(trials: pa.Table) -> Section:
    sec = Section("collapse", "Collapse test: do eta and S act only through eta/S?", "Fig. 3 / Sec. 3")
    conv = converged(trials)
    trials = conv.kept
    groups = {}
    n_trains = sorted({v for v in trials.column("n_train").to_pylist()}, key=lambda v: (v is None, v))
    for n in n_trains:
        groups["all" if len(n_trains) == 1 else f"n_train={n}"] = (
            trials.filter(pc.equal(trials.column("n_train"), n)) if n is not None else trials
        )
    results: list[CollapseResult] = []
    why: dict[str, list[str]] = {}
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
    sec.notes.append(conv.note())
    sec.notes += skipped
    if not results:
        return sec.skip("; ".join(skipped) or "no trials")
    warn = "WARNING: many trials not converged (notes); " if conv.many_left_out else ""
    sec.tables.append(
        Table(
            f"{warn}y = a + b log10(eta) + c log10(S), OLS over point means (seeds averaged; n = points, "
            "n_points - 3 dof) with classical SEs; H0: b + c = 0 (two-sided t-test)",
            [
                "metric",
                "group",
                "n points (trials)",
                "b [95% CI]",
                "c [95% CI]",
                "b + c [95% CI]",
                "p (b+c=0)",
                "R^2 full",
                "R^2 ratio-only",
                "equal and opposite",
            ],
            [
                [
                    r.metric,
                    r.group,
                    f"{r.n} ({r.n_trials})",
                    f"{fmt(r.b)} {fmt(r.b_ci, 3)}",
                    f"{fmt(r.c)} {fmt(r.c_ci, 3)}",
                    f"{fmt(r.b_plus_c)} {fmt(r.b_plus_c_ci, 3)}",
                    fmt(r.p, 3),
                    fmt(r.r2_full, 3),
                    fmt(r.r2_ratio, 3),
                    fmt(r.equal_and_opposite),
                ]
                for r in results
            ],
        )
    )
    sec.figures.append(("Collapse test coefficients", plots.collapse_coefficients(results)))
    sec.data = {"results": [r.to_dict() for r in results], "skipped": skipped, "convergence": conv.to_dict()}
    held = [r for r in results if r.equal_and_opposite]
    sec.headline = (
        f"b = -c not rejected for {len(held)}/{len(results)} fits ("
        + ", ".join(f"{r.metric}: b+c={fmt(r.b_plus_c, 3)} p={fmt(r.p, 2)}" for r in results[:3])
        + ")"
    )
    return sec


def _distance_table(title: str, distances: list[CurveDistance]) -> Table:
    return Table(
        title,
        [
            "A",
            "B",
            "epochs",
            "rms(mean curves)",
            "mean |diff|",
            "per-seed rms (mean +- sd)",
            "seed-noise rms",
            "seeds A/B",
        ],
        [
            [
                d.a,
                d.b,
                str(len(d.epochs)),
                fmt(d.rms, 3),
                fmt(d.mean_abs, 3),
                pm(d.seed_rms_mean, d.seed_rms_sd),
                fmt(d.noise_rms, 3),
                f"{d.n_a}/{d.n_b}",
            ]
            for d in distances
        ],
    )


# A 20 x 20 grid has thousands of equal-eta/S pairs: the page shows those that disagree most
# (rms of the mean curves over the seed noise), all of them are in fits.json.
MAX_PAIR_ROWS = 200
MAX_PAIR_LINES = 24


def _most_apart(distances: list[CurveDistance], n: int) -> list[CurveDistance]:
    """At most ``n`` of ``distances``, those with the largest rms over seed noise, in their order."""
    if len(distances) <= n:
        return list(distances)

    def apart(d: CurveDistance) -> float:
        value = d.rms / d.noise_rms if d.noise_rms and math.isfinite(d.noise_rms) and d.noise_rms > 0 else d.rms
        return value if math.isfinite(value) else -math.inf

    keep = set(sorted(range(len(distances)), key=lambda i: -apart(distances[i]))[:n])
    return [d for i, d in enumerate(distances) if i in keep]


def section_equal_ratio(metrics: pa.Table, trials: pa.Table) -> Section:
    sec = Section("equal_ratio", "Learning curves of runs with equal eta/S", "Fig. 1")
    pairs = equal_ratio_pairs(metrics, trials, "val_acc")
    if not pairs:
        return sec.skip(
            "no two configurations share their eta/S sequence (same n_train and model) "
            "outside beta and rescaling families"
        )
    loss = equal_ratio_pairs(metrics, trials, "train_loss")
    some = f" ({{}} of {len(pairs)} pairs: the largest rms over seed noise; all in fits.json)"
    for metric, dists in (("val acc", pairs), ("train loss", loss)):
        rows = _most_apart(dists, MAX_PAIR_ROWS)
        sec.tables.append(
            _distance_table(
                f"{metric}: distance between configurations with equal eta/S"
                + (some.format(len(rows)) if len(rows) < len(dists) else ""),
                rows,
            )
        )
    for metric, dists in (("val acc", pairs), ("train loss", loss)):
        lines = _most_apart(dists, MAX_PAIR_LINES)
        title = f"Equal eta/S pairs: {metric} difference per epoch (+-2 SE)"
        sec.figures.append(
            (
                f"Equal eta/S: {metric} difference per epoch",
                plots.curve_differences(lines, title + (some.format(len(lines)) if len(lines) < len(dists) else "")),
            )
        )
    sec.data = {"val_acc": [d.to_dict() for d in pairs], "train_loss": [d.to_dict() for d in loss]}
    sec.headline = "; ".join(
        f"{d.a} vs {d.b}: val acc rms {fmt(d.rms, 2)} (seed noise {fmt(d.noise_rms, 2)})" for d in pairs[:3]
    )
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
    sec.figures.append(
        (
            "Rescaling rules: val acc difference from the reference",
            plots.curve_differences(dists, "Rescaling rules: val acc minus reference, per epoch (+-2 SE)"),
        )
    )
    sec.data = {"val_acc": [d.to_dict() for d in dists], "train_loss": [d.to_dict() for d in loss]}
    sec.headline = "; ".join(f"{d.a}: rms {fmt(d.rms, 2)}" for d in dists)
    return sec


def section_geometry(trials: pa.Table) -> Section:
    sec = Section("geometry", "Sharpness and generalization against eta/S", "Fig. 3")
    conv = converged(trials)
    fits, skipped = [], []
    for column, log_y in GEOMETRY_METRICS:
        if not has_values(trials, column):
            skipped.append(f"{column}: column absent or all null")
            continue
        # Curvature is a property of a minimum: fitted over the converged trials only.
        f = ratio_band_fit(trials if column == "final_val_acc" else conv.kept, column, log_y)
        if isinstance(f, str):
            skipped.append(f"{column}: {f}")
        else:
            fits.append(f)
    sec.notes.append(conv.note())
    sec.notes += skipped
    if not [f for f in fits if f.column != "final_val_acc"]:
        return sec.skip("; ".join([conv.note()] * bool(conv.left_out) + skipped) or "no curvature values")
    warn = "WARNING: many trials not converged, sharpness fitted without them (notes); " if conv.many_left_out else ""
    sec.tables.append(
        Table(
            f"{warn}y = a + slope log10(eta/S), OLS over point means (seeds averaged); 95% t-interval "
            "with n_points - 2 dof; p of slope = 0; Spearman over point means",
            ["y", *FIT_HEADER],
            [[f.metric, *_fit_cells(f)] for f in fits],
        )
    )
    for f in fits:
        sec.figures.append(
            (f"{f.column} against eta/S", plots.band_fit_plot(trials if f.column == "final_val_acc" else conv.kept, f))
        )
    sec.data = {
        "fits": [f.to_dict() for f in fits],
        "skipped": skipped,
        "convergence": conv.to_dict(),
        "ci_method": CI_METHOD,
    }
    sec.headline = ", ".join(f"{f.metric} slope {slope_text(f.slope, f.slope_ci, f.ci_note, 2)}" for f in fits)
    return sec


def section_eq7(trials: pa.Table) -> Section:
    sec = Section("eq7", "Eq. 7: final loss against (eta/4S) Tr(H)", "Eq. 7")
    if not has_values(trials, "hessian_trace"):
        return sec.skip("no hessian_trace values (curvature probes not run)")
    conv = converged(trials)  # Eq. 7 describes the loss at a minimum: converged trials only
    r = eq7_check(conv.kept)
    if isinstance(r, str):
        return sec.skip(r + ("; " + conv.note() if conv.left_out else ""))
    sec.notes.append(conv.note())
    what = (
        "the loss on the probe subset in eval mode, at the probed weights (the loss whose Hessian Tr(H) is)"
        if r.loss_column == "probe_loss"
        else "final train loss, the train-mode epoch mean (this run predates probe_loss; it is not the loss "
        "whose Hessian Tr(H) is, and differs from it most at large eta/S)"
    )
    if r.loss_column != "probe_loss":
        sec.notes.append("Eq. 7 uses final_train_loss: this run has no probe_loss column (written before it existed).")
    warn = "WARNING: many trials not converged (notes); " if conv.many_left_out else ""
    sec.tables.append(
        Table(
            f"{warn}x = (eta/4S) Tr(H) at the last epoch, y = {what}; median over trials, log-log "
            "slope and Spearman over point means (logs averaged per point, n_points - 2 dof)",
            ["n points (trials)", "median y/x [IQR]", "log-log slope [95% CI]", "R^2", "Spearman rho (p)"],
            [
                [
                    f"{r.n_points} ({r.n})",
                    f"{fmt(r.ratio_median, 3)} [{fmt(r.ratio_q25, 3)}, {fmt(r.ratio_q75, 3)}]",
                    slope_text(r.slope, r.slope_ci, r.ci_note),
                    fmt(r.r2, 3),
                    f"{fmt(r.spearman_rho, 3)} ({fmt(r.spearman_p, 2)})",
                ]
            ],
        )
    )
    sec.figures.append(("Eq. 7 check", plots.eq7_plot(r)))
    sec.data = {**r.to_dict(), "convergence": conv.to_dict()}
    sec.headline = (
        f"median loss/((eta/4S)TrH) = {fmt(r.ratio_median, 3)}, log-log slope "
        f"{slope_text(r.slope, r.slope_ci, r.ci_note, 2)}"
    )
    return sec


def section_interpolation(run_dir: Path | None) -> Section:
    sec = Section("interpolation", "Interpolation between minima", "Fig. 4")
    if run_dir is None:
        return sec.skip("no run directory given")
    curves, problems = load_interpolations(run_dir)
    sec.notes += problems
    if not curves:
        return sec.skip(
            "no interpolation/*.arrow files (make them with `lrbs interpolate RUN_DIR A B`)"
            + (f"; unreadable: {'; '.join(problems)}" if problems else "")
        )
    sums = [summarize(name, t) for name, t in sorted(curves.items())]
    # Files written before batch norm was re-estimated per alpha have no batch_norm column.
    modes = {
        name: (t.column("batch_norm")[0].as_py() if "batch_norm" in t.column_names else "interpolated")
        for name, t in curves.items()
    }
    sec.tables.append(
        Table(
            "train loss along the line; barrier = max loss on [0, 1] - max(loss at A, loss at B); "
            "batch norm: statistics re-estimated at each alpha (recomputed) or interpolated",
            ["A", "B", "batch norm", "alphas", "loss A", "loss B", "barrier", "val acc A", "val acc B"],
            [
                [
                    s.trial_a,
                    s.trial_b,
                    modes[s.name],
                    f"{s.n_alpha} in [{fmt(s.alpha_min, 3)}, {fmt(s.alpha_max, 3)}]",
                    fmt(s.loss_a, 3),
                    fmt(s.loss_b, 3),
                    fmt(s.barrier, 3),
                    fmt(s.val_acc_a, 3),
                    fmt(s.val_acc_b, 3),
                ]
                for s in sums
            ],
        )
    )
    if "interpolated" in modes.values():
        sec.notes.append(
            "Curves with interpolated batch-norm statistics can go NaN past an endpoint and are not the "
            "statistics of the interpolated weights (docs/curvature.md); `lrbs interpolate` re-estimates them."
        )
    sec.figures.append(("Interpolation: train loss", plots.interpolation_plot(curves, "train_loss")))
    sec.figures.append(("Interpolation: val acc", plots.interpolation_plot(curves, "val_acc")))
    sec.data = {"curves": [{**s.to_dict(), "batch_norm": modes[s.name]} for s in sums]}
    sec.headline = "; ".join(f"{s.trial_a}->{s.trial_b} barrier {fmt(s.barrier, 3)}" for s in sums[:3])
    return sec


def _drop_ci(drop: float, lo: float, hi: float) -> str:
    """A drop in accuracy points with its 95% interval ("no CI" under 2 seeds a side or no spread)."""
    if drop is None or math.isnan(drop):
        return "-"
    return f"{drop:.3g} " + ("(no CI)" if lo is None or math.isnan(lo) else f"[{lo:.3g}, {hi:.3g}]")


def section_breakdown(metrics: pa.Table, trials: pa.Table) -> Section:
    sec = Section("breakdown", "Breakdown of eta/S scaling at large beta", "Fig. 5")
    min_drop = min_drop_of(trials)
    res = breakdown(metrics, trials, min_drop=min_drop)
    if isinstance(res, str):
        return sec.skip(res)
    below = "below beta=1" + (f" by > {min_drop:g} points" if min_drop is not None else "")
    for r in res:
        sec.notes += [f"n_train={r.n_train}: {n}" for n in r.notes]
        pred = (
            "-"
            if r.b_crit is None
            else f"B_crit = {fmt(r.b_crit, 3)}"
            + (f" +- {fmt(r.b_crit_sd, 2)}" if r.b_crit_sd else "")
            + f" (n={r.b_crit_n}) -> beta_crit = {fmt(r.beta_crit, 3)}"
        )
        sec.tables.append(
            Table(
                f"n_train={r.n_train}: S0={r.s0}, lr0={fmt(r.lr0)}; beta* = {fmt(r.beta_star)}; "
                f"noise-scale prediction: {pred}. Test: {r.test}. Drop: mean at beta=1 minus mean at beta, accuracy "
                f"points, 95% Welch t interval; detectable drop: the true drop this test finds with 80% power at "
                f"level alpha / (betas tested), given the seeds and their observed sd",
                [
                    "beta",
                    "lr",
                    "S",
                    "seeds",
                    "max val acc (mean +- sd)",
                    "",
                    "drop (points) [95% CI]",
                    "p (Welch)",
                    "p (Holm)",
                    below,
                    "seeds (beta / beta=1)",
                    "detectable drop (80% power)",
                    "curve rms vs beta=1",
                    "per-seed rms",
                ],
                [
                    [
                        fmt(b.beta),
                        fmt(b.lr),
                        str(b.batch_size),
                        str(b.n) + (f" ({b.n_running} running)" if b.n_running else ""),
                        pm(b.mean, b.sd),
                        b.diverged_mark,
                        _drop_ci(b.drop, b.drop_lo, b.drop_hi) if b.n_ref else "",
                        fmt(b.p, 3),
                        fmt(b.p_holm, 3),
                        fmt(b.significant) if b.beta > 1 else "",
                        f"{b.n} / {b.n_ref}" if b.beta > 1 else "",
                        fmt(b.detectable_drop, 3) if b.beta > 1 else "",
                        fmt(b.curve_rms, 3),
                        pm(b.curve_seed_rms_mean, b.curve_seed_rms_sd),
                    ]
                    for b in r.rows
                ],
            )
        )
    sec.figures.append(("Breakdown: max val acc against beta", plots.breakdown_plot(res)))
    sec.data = {"results": [r.to_dict() for r in res]}
    sec.headline = "; ".join(
        f"n_train={r.n_train}: beta*={fmt(r.beta_star)}"
        + (f", B_crit/S0={fmt(r.beta_crit, 3)}" if r.beta_crit is not None else "")
        for r in res
    )
    return sec


def section_beta_search(metrics: pa.Table, trials: pa.Table, run_dir: Path | None = None) -> Section:
    """``beta.search`` runs: beta* with its bracket per training-set size, the search's trace,
    its trials against the fixed ladder's, the noise-scale prediction beside it."""
    sec = Section("beta_search", "Adaptive search for beta*", "Fig. 5")
    if "cfg.point.search_step" not in trials.column_names or not has_values(trials, "cfg.point.search_step"):
        return sec.skip("no beta.search in this run (its betas were a fixed ladder, if any)")
    errored = []
    if run_dir is not None:  # trials that ended in ERROR: the search counted them (ended, no value)
        records, _ = read_ledger(run_dir)
        errored = [p for r in current_records(records) if r.status == ERROR for p in from_config(r.point)]
    rep = search_report(metrics, trials, errored)
    rows = [
        [
            fmt(r["n_train"]),
            r["status"],
            r["bracket"],
            r["message"],
            f"{r['trials']} / {r['ladder_trials']}",
            fmt(r["beta_crit"], 3),
            fmt(r["breakdown_beta_star"]),
        ]
        for r in rep["sizes"]
    ]
    by = f" by more than {rep['min_drop']:g} accuracy points" if rep.get("min_drop") is not None else ""
    below = "below beta = 1" + (f" by > {rep['min_drop']:g} points" if rep.get("min_drop") is not None else "")
    sec.tables.append(
        Table(
            f"beta* per training-set size (candidates 1 to {rep['betas'][-1]:g}, step x{rep['resolution']:.4g}; "
            f"one-sided Welch against beta = 1{by} at level {rep['level']:.3g} = alpha {rep['alpha']:g} / "
            f"({rep['probes']} probes x {rep['looks']} looks))",
            [
                "n_train",
                "status",
                "bracket",
                "result",
                "trials (search / fixed ladder)",
                "noise-scale prediction B_crit/S0",
                "beta* (breakdown section: Holm over the tested betas)",
            ],
            rows,
        )
    )
    tests = [(r["n_train"], t) for r in rep["sizes"] for t in sorted(r["tests"].values(), key=lambda t: t["beta"])]
    sec.tables.append(
        Table(
            "tests: each beta the search tested against beta = 1 (drop: mean at beta = 1 minus mean at beta, accuracy "
            "points, 95% Welch t interval; detectable drop: the true drop the test finds with 80% power at its level, "
            "given the seeds and their observed sd)",
            [
                "n_train",
                "beta",
                "seeds (beta / beta=1)",
                "max val acc (mean)",
                "drop (points) [95% CI]",
                "p",
                "level",
                "decision",
                "detectable drop (80% power)",
            ],
            [
                [
                    fmt(n),
                    fmt(t["beta"]),
                    f"{t['n']} / {t['n_ref']}",
                    fmt(t["mean"], 4),
                    _drop_ci(t["drop"], t["drop_lo"], t["drop_hi"]),
                    fmt(t["p"], 3),
                    fmt(t["level"], 3),
                    below if t["significant"] else "holds",
                    fmt(t["detectable_drop"], 3),
                ]
                for n, t in tests
            ],
        )
    )
    sec.tables.append(
        Table(
            "trace: which beta when, and why (decision from the trials that ended)",
            ["step", "n_train", "beta", "S", "seeds", "why", "max val acc (mean)", "p", "decision"],
            [
                [
                    str(t["step"]),
                    fmt(t["n_train"]),
                    fmt(t["beta"]),
                    fmt(t["batch_size"]),
                    ",".join(str(x) for x in t["seeds"]),
                    t["why"],
                    fmt(t["mean"], 4),
                    fmt(t["p"], 3),
                    t["decision"],
                ]
                for t in rep["trace"]
            ],
        )
    )
    for r in rep["sizes"]:
        a, b = r["beta_star"], r["breakdown_beta_star"]
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-5)):
            sec.notes.append(
                f"n_train={r['n_train']}: the breakdown section (Holm over the betas the search tested, "
                f"at alpha {rep['alpha']:g}) gives beta* = {fmt(b)}, the search {fmt(a)}: the search "
                f"holds each test to level {rep['level']:.3g} and decides along its bisection path"
            )
    sec.figures.append(("Beta search: tested betas and brackets", plots.beta_search_plot(rep)))
    sec.data = rep
    sec.headline = "; ".join(
        f"n_train={r['n_train']}: {r['message']} ({r['trials']} of {r['ladder_trials']} ladder trials)"
        for r in rep["sizes"]
    )
    return sec


def _n_ratios(trials: pa.Table) -> int:
    """Distinct values of eta/S among the trials (15 significant digits)."""
    return len({round(r, 15) for r in trials.column("ratio").to_pylist() if r})


def section_overview(metrics: pa.Table, trials: pa.Table) -> Section:
    """Fits of the end-of-training quantities against log10(eta/S), and the learning curves."""
    sec = Section("overview", "Fits against eta/S and learning curves", "Fig. 3")
    measured = [
        (m, log_y)
        for m, log_y in CURVATURE_FIT_METRICS
        if m in trials.column_names and trials.column(m).null_count < trials.num_rows
    ]
    n_ratios = _n_ratios(trials)
    fit_ok = trials.num_rows >= 3 and n_ratios >= 2
    conv = converged(trials)  # curvature is fitted over the trials that reached a minimum
    fits = {}
    for metric, log_y in FIT_METRICS + tuple(measured):
        source = conv.kept if (metric, log_y) in measured else trials
        if fit_ok:
            fits[metric] = ratio_fit(source, metric, log_y=log_y)
        sec.figures.append(
            (f"{metric} against eta/S", plots.metric_vs_ratio(source, metric, fits.get(metric), log_y=log_y))
        )
    if trials.num_rows < 3:
        sec.notes.append("Fits skipped: fewer than 3 trials with data.")
    elif n_ratios < 2:
        sec.notes.append("Fits against eta/S skipped: every trial has the same eta/S (e.g. a beta family).")
    if measured:
        sec.notes.append(conv.note())
    if fits:
        sec.tables.append(
            Table(
                (
                    "WARNING: many trials not converged, curvature fitted without them (notes); "
                    if measured and conv.many_left_out
                    else ""
                )
                + "fits against log10(eta/S) over point means (seeds averaged; the point is the unit): "
                "95% CI " + CI_METHOD + "; p of slope = 0; Spearman over point means",
                ["metric", *FIT_HEADER],
                [[f.metric, *_fit_cells(f)] for f in fits.values()],
            )
        )
    sec.figures.append(("Validation accuracy per epoch", plots.learning_curves(metrics, "val_acc", trials=trials)))
    sec.figures.append(("Training loss per epoch", plots.learning_curves(metrics, "train_loss", trials=trials)))
    sec.data = {
        "fits": {k: v.to_dict() for k, v in fits.items()},
        "ci_method": CI_METHOD,
        "convergence": conv.to_dict(),
    }
    sec.headline = (
        ", ".join(
            f"{k} slope {slope_text(v.slope, v.slope_ci, v.ci_note, 2)}"
            for k, v in fits.items()
            if k in ("final_val_acc", "lambda_max")
        )
        or "no fits"
    )
    return sec


def _cells(trials: pa.Table, value: str) -> list[dict[str, Any]]:
    """Mean of ``value`` over the seeds of each (lr, S) point (finite values of non-diverged trials)."""
    groups: dict[tuple[float, int], list[float]] = {}
    for r in trials.select(["lr", "batch_size", "status", value]).to_pylist():
        v = r[value]
        key = (r["lr"], r["batch_size"])
        groups.setdefault(key, [])
        if v is not None and r["status"] != "diverged" and math.isfinite(v):
            groups[key].append(float(v))
    return [
        {"lr": lr, "batch_size": s, value: (sum(v) / len(v) if v else None), "n": len(v)}
        for (lr, s), v in sorted(groups.items())
    ]


def section_grid(trials: pa.Table) -> Section:
    """Heat maps of validation accuracy and lambda_max over (lr, S), iso-eta/S lines, edge warning."""
    sec = Section("grid", "(lr, S) grid: validation accuracy and sharpness", "Fig. 3")
    lrs = sorted(set(trials.column("lr").to_pylist()))
    sizes = sorted(set(trials.column("batch_size").to_pylist()))
    n_ratios = _n_ratios(trials)
    if len(lrs) < 2 or len(sizes) < 2 or n_ratios < 2:
        return sec.skip(
            f"needs >= 2 learning rates, >= 2 batch sizes and >= 2 values of eta/S (has {len(lrs)}, "
            f"{len(sizes)} and {n_ratios}; a beta family keeps eta/S fixed)"
        )
    cells = _cells(trials, "final_val_acc")
    filled = [c for c in cells if c["final_val_acc"] is not None]
    if not filled:
        return sec.skip("no finite final_val_acc")
    best = max(filled, key=lambda c: c["final_val_acc"])
    sec.figures.append(("Final validation accuracy over (lr, S)", plots.grid_map(cells, "final_val_acc")))
    if has_values(trials, "lambda_max"):
        sec.figures.append(
            ("lambda_max over (lr, S)", plots.grid_map(_cells(trials, "lambda_max"), "lambda_max", log_color=True))
        )
    edges = []
    for axis, values, v in (("lr", lrs, best["lr"]), ("batch size", sizes, best["batch_size"])):
        if len(values) >= 3 and v in (values[0], values[-1]):
            edges.append(f"{axis} = {fmt(v)} is the {'smallest' if v == values[0] else 'largest'} in the grid")
        elif len(values) < 3:
            sec.notes.append(f"Only {len(values)} values of {axis}: whether the best point is interior cannot be told.")
    if edges:
        sec.notes.insert(
            0,
            "WARNING: the best point sits on the grid's edge ("
            + "; ".join(edges)
            + "): the optimum may lie outside the grid; extend it in that direction.",
        )
    sec.tables.append(
        Table(
            "final validation accuracy, mean over seeds (rows: lr, columns: S)",
            ["lr \\ S", *[str(s) for s in sizes]],
            [
                [
                    fmt(lr),
                    *[
                        fmt(
                            next((c["final_val_acc"] for c in cells if c["lr"] == lr and c["batch_size"] == s), None), 3
                        )
                        for s in sizes
                    ],
                ]
                for lr in lrs
            ],
        )
    )
    sec.data = {"best": best, "on_edge": bool(edges), "cells": cells}
    sec.headline = (
        f"best final val acc {fmt(best['final_val_acc'], 3)} at lr {fmt(best['lr'])}, S {best['batch_size']}"
        + (" (ON THE GRID'S EDGE)" if edges else "")
    )
    return sec


def section_gap(trials: pa.Table) -> Section:
    """Generalization gap (final train accuracy - final validation accuracy) against eta/S.

    The train accuracy is ``final_train_eval_acc``: the final weights in eval mode on the fixed
    train-eval subset of the training set, measured as the validation accuracy is. Runs written
    without it fall back to ``final_train_acc``, the train-mode running mean over the last epoch
    (earlier weights, batch-norm batch statistics, augmented inputs when ``train.augment`` is
    on): not the final weights' accuracy and usually below it, so that gap is biased (usually
    understated), and a note says so. In a run with eval-mode values, trials without one
    (diverged, still running, or finished by older code) are left out of the fit and counted in
    a note."""
    sec = Section("gap", "Generalization gap against eta/S", "Fig. 3")
    # Code that records the eval-mode value writes train.train_eval_samples into every config.
    eval_mode = has_values(trials, "final_train_eval_acc") or has_values(trials, "cfg.train.train_eval_samples")
    train_col = "final_train_eval_acc" if eval_mode else "final_train_acc"
    if eval_mode and not has_values(trials, train_col):
        return sec.skip("no eval-mode train accuracy yet (measured at the last epoch of trials that did not diverge)")
    if not (has_values(trials, train_col) and has_values(trials, "final_val_acc")):
        return sec.skip("no final train and validation accuracy")
    gap = [
        None if a is None or b is None else a - b
        for a, b in zip(trials.column(train_col).to_pylist(), trials.column("final_val_acc").to_pylist())
    ]
    table = trials.append_column("generalization_gap", pa.array(gap, type=pa.float64()))
    n_ratios = _n_ratios(trials)
    if trials.num_rows < 3 or n_ratios < 2:
        return sec.skip(f"needs >= 3 trials over >= 2 values of eta/S (has {trials.num_rows}, {n_ratios})")
    fit = ratio_fit(table, "generalization_gap")
    sec.figures.append(("Generalization gap against eta/S", plots.metric_vs_ratio(table, "generalization_gap", fit)))
    if eval_mode:
        title = (
            "gap = final train accuracy (eval mode, final weights, fixed train-eval subset) - final "
            "validation accuracy, fitted on log10(eta/S) over point means (seeds averaged; 95% CI " + CI_METHOD + ")"
        )
        missing: dict[str, list[str]] = {}
        for t, g, st in zip(trials.column("trial_id").to_pylist(), gap, trials.column("status").to_pylist()):
            if g is None and st != "diverged":
                missing.setdefault(
                    "still running"
                    if st == "running"
                    else "finished by code that did not record it"
                    if st == "finished"
                    else st,
                    [],
                ).append(t)
        for why, ids in missing.items():
            sec.notes.append(
                f"{len(ids)} trial(s) without an eval-mode train accuracy ({why}) are left out: "
                f"{', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"
            )
    else:
        title = (
            "gap = final train accuracy (TRAIN-MODE mean over the last epoch) - final validation accuracy, "
            "fitted on log10(eta/S) over point means (seeds averaged; 95% CI " + CI_METHOD + ")"
        )
        sec.notes.append(
            "This run has no eval-mode train accuracy (written by older code): the gap uses the "
            "train-mode running mean over the last epoch, which is not the final weights' accuracy "
            "(earlier weights, batch-norm batch statistics, augmented inputs) and usually below it, "
            "so the gap is biased (usually understated) and so is its slope; runs from current code "
            "measure the final weights in eval mode."
        )
    sec.tables.append(Table(title, FIT_HEADER, [_fit_cells(fit)]))
    sec.data = {"fit": fit.to_dict(), "train_accuracy": "eval_mode" if eval_mode else "train_mode_epoch_mean"}
    sec.headline = f"gap slope {slope_text(fit.slope, fit.slope_ci, fit.ci_note, 2)} per decade of eta/S" + (
        "" if eval_mode else " (train-mode train accuracy: biased)"
    )
    return sec


def _rel(values: list[float | None], errors: list[float | None]) -> list[float]:
    """|error / value| per finite non-zero value; an infinite error (an unbounded interval, e.g.
    Fieller's for a noise scale whose |G|^2 cannot be told from 0) is an infinite relative error."""
    return [
        abs(e / v) if math.isfinite(e) else math.inf
        for v, e in zip(values, errors)
        if v is not None and e is not None and v != 0 and math.isfinite(v) and not math.isnan(e)
    ]


def section_probes(trials: pa.Table) -> Section:
    """How far the probes' numbers can be trusted: Lanczos convergence and relative standard
    errors; and the trials whose last probe failed (``probe_error``), grouped by error."""
    sec = Section("probes", "Probe reliability", "Sec. 4")
    # trial ids per error of a failed last probe (its values are null: not in the fits)
    failed: dict[str, list[str]] = {}
    if "probe_error" in trials.column_names:
        for trial_id, error in zip(trials.column("trial_id").to_pylist(), trials.column("probe_error").to_pylist()):
            if error:
                failed.setdefault(error, []).append(trial_id)
    n_failed = sum(len(ids) for ids in failed.values())
    if failed:
        sec.tables.append(
            Table(
                "trials whose last probe failed (the failed probe's columns null)",
                ["error", "trials", "which"],
                [[error, str(len(ids)), ", ".join(ids)[:300]] for error, ids in failed.items()],
            )
        )
        sec.notes.append(
            f"Probes failed in {n_failed} of {trials.num_rows} trial(s) at their last probe: the failed "
            f"probe's columns are null there, so those trials are left out of its fits (the error is "
            f"in the row's probe_error; docs/extending.md lists ops without a double backward): "
            + "; ".join(f"{', '.join(ids)[:200]}: {error}" for error, ids in failed.items())[:500]
        )
    if not has_values(trials, "lambda_max"):
        if not failed:
            return sec.skip("no lambda_max values (curvature probes not run)")
        sec.data = {"n": 0, "probe_failed": {t: e for e, ids in failed.items() for t in ids}}
        sec.headline = f"probes failed in {n_failed}/{trials.num_rows} trials: {next(iter(failed))}"[:300]
        return sec
    rows = [r for r in trials.to_pylist() if r.get("lambda_max") is not None]
    conv = [r for r in rows if r.get("lambda_max_converged")]
    out = [["lambda_max converged (Lanczos)", f"{len(conv)}/{len(rows)}", "-"]]
    flagged: list[str] = []
    for col, name in (("hessian_trace", "Tr(H)"), ("hessian_fro", "||H||_F"), ("grad_noise_scale", "B_simple")):
        err = f"{col}_stderr"
        if col not in trials.column_names or err not in trials.column_names or not has_values(trials, col):
            continue
        rel = _rel([r.get(col) for r in rows], [r.get(err) for r in rows])
        if not rel:
            continue
        rel_sorted = sorted(rel)
        out.append(
            [
                f"{name} relative standard error",
                f"median {fmt(rel_sorted[len(rel) // 2], 2)}",
                f"max {fmt(rel_sorted[-1], 2)}",
            ]
        )
        flagged += [
            f"{r['trial_id']} ({name} "
            + (f"+-{fmt(abs(r[err] / r[col]), 2)})" if math.isfinite(r[err]) else "unbounded)")
            for r in rows
            if r.get(col) and r.get(err) is not None and not math.isnan(r[err]) and abs(r[err] / r[col]) > 0.5
        ]
    sec.tables.insert(0, Table("per trial, at its last probe", ["quantity", "value", "worst"], out))
    # The two-batch estimator on the probe subset (a config without noise_method, or noise_method:
    # two_batch) cannot see a noise scale beyond about the subset size: flag those near it.
    method = (
        trials.column("cfg.curvature.noise_method").to_pylist()
        if "cfg.curvature.noise_method" in trials.column_names
        else [None] * trials.num_rows
    )
    capped = [
        r["trial_id"]
        for r, m in zip(trials.to_pylist(), method)
        if m in (None, "two_batch")
        and r.get("grad_noise_scale") is not None
        and r.get("probe_n_samples")
        and r["grad_noise_scale"] > 0.25 * r["probe_n_samples"]
    ]
    if capped:
        sec.notes.append(
            f"B_simple of {len(capped)} trial(s) was estimated on the {rows[0].get('probe_n_samples')}-example "
            "probe subset (two-batch) and is above a quarter of it: the subset caps it (use "
            "curvature.noise_method: full): " + ", ".join(capped)[:500]
        )
    if len(conv) < len(rows):
        sec.notes.append(
            f"{len(rows) - len(conv)} trial(s) stopped Lanczos before it converged (raise "
            f"curvature.lanczos_iters): "
            + ", ".join(r["trial_id"] for r in rows if not r.get("lambda_max_converged"))[:500]
        )
    if flagged:
        sec.notes.append(
            "Relative standard error above 50% (more probes or pairs would help): " + ", ".join(flagged)[:500]
        )
    sec.data = {
        "n": len(rows),
        "lambda_max_converged": len(conv),
        "flagged": flagged,
        "noise_scale_capped": capped,
        "probe_failed": {t: e for e, ids in failed.items() for t in ids},
    }
    sec.headline = (
        f"lambda_max converged in {len(conv)}/{len(rows)} trials; {len(flagged)} estimate(s) with > 50% error"
    )
    if failed:
        sec.headline += f"; probes failed in {n_failed} trial(s)"
    return sec


MAX_TRIAL_ROWS = 500  # the per-trial table of a 10,000-trial sweep is the Arrow file's job


def section_trials(trials: pa.Table) -> Section:
    sec = Section("trials", "Per-trial table", "-")
    cols = [
        c
        for c in (
            "trial_id",
            "lr",
            "batch_size",
            "ratio",
            "seed",
            "status",
            "epochs_done",
            "final_val_acc",
            "max_val_acc",
            "final_train_eval_acc",
            "final_train_loss",
            "lambda_max",
            "hessian_trace",
            "grad_noise_scale",
        )
        if c in trials.column_names
    ]
    rows = sorted(trials.select(cols).to_pylist(), key=lambda r: (r["ratio"] or 0, r["lr"] or 0, r["seed"] or 0))
    sec.tables.append(
        Table(
            f"every trial, by eta/S{f' (first {MAX_TRIAL_ROWS} of {len(rows)})' if len(rows) > MAX_TRIAL_ROWS else ''}",
            cols,
            [[fmt(r[c], 4) for c in cols] for r in rows[:MAX_TRIAL_ROWS]],
        )
    )
    if len(rows) > MAX_TRIAL_ROWS:
        sec.notes.append(f"{len(rows) - MAX_TRIAL_ROWS} more trials: load_trials(run_dir) has them all.")
    sec.headline = f"{len(rows)} trials"
    return sec


def section_provenance(metrics: pa.Table, trials: pa.Table, run_dir: Path | None) -> Section:
    """What ran, where, with which code, and the device time used against the estimate."""
    sec = Section("provenance", "Provenance", "-")
    if run_dir is None:
        return sec.skip("no run directory")
    info: dict[str, Any] = {}
    try:
        info = json.loads((run_dir / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        sec.notes.append(
            "No provenance.json (lrbs run writes it as a run starts; older runs lack it): packages and device unknown."
        )
    versions = sorted({v for v in metrics.column("code_version").to_pylist() if v})
    rows = [
        ["sweep", fmt(trials.column("sweep")[0].as_py())],
        ["code version(s) in the rows", ", ".join(versions) or "-"],
    ]
    rows += [[k, fmt(v)] for k, v in info.items() if k not in ("packages", "estimate")]
    rows += [[f"package {k}", str(v)] for k, v in sorted((info.get("packages") or {}).items())]
    # Device time used: each Tune trial (a pack counts once) held its resources for its wall time.
    wall: dict[str, float] = {}
    for r in metrics.select(["trial_id", "wall_s"]).to_pylist():
        if r["wall_s"] is not None:
            t = split_member_id(r["trial_id"])[0]
            wall[t] = max(wall.get(t, 0.0), float(r["wall_s"]))
    gpu = trials.column("cfg.resources.gpu")[0].as_py() if "cfg.resources.gpu" in trials.column_names else 0
    cpu = trials.column("cfg.resources.cpu")[0].as_py() if "cfg.resources.cpu" in trials.column_names else 1
    unit, per = ("GPU-hours", gpu) if gpu else ("CPU-hours", cpu or 1)
    used = sum(wall.values()) * float(per or 1) / 3600
    est = (info.get("estimate") or {}).get("device_hours")
    rows.append(
        [f"{unit} used (training time x resources)", f"{used:.3g}" + (f" against {est:.3g} estimated" if est else "")]
    )
    sec.tables.append(Table("run", ["what", "value"], rows))
    try:  # the spec as run, as the YAML it is (nesting kept)
        sec.blocks.append(("the spec (spec.yaml in the run directory)", "yaml", (run_dir / SPEC_COPY).read_text()))
    except (OSError, UnicodeDecodeError):
        pass
    sec.data = {"code_versions": versions, "device_hours_used": used, "device_hours_estimated": est, **info}
    sec.headline = f"code {', '.join(versions) or '-'}; {used:.3g} {unit} used" + (
        f" of {est:.3g} estimated" if est else ""
    )
    return sec


# The one registry of report sections, in report order: key -> builder(metrics, trials, run_dir).
# A section is a pure function of the tables returning a Section (docs/extending.md); one that
# does not apply to a run returns ``Section(...).skip(reason)``.
SECTIONS: dict[str, Callable[[pa.Table, pa.Table, Path | None], Section]] = {
    "overview": lambda metrics, trials, run_dir: section_overview(metrics, trials),
    "collapse": lambda metrics, trials, run_dir: section_collapse(trials),
    "equal_ratio": lambda metrics, trials, run_dir: section_equal_ratio(metrics, trials),
    "rescaling": lambda metrics, trials, run_dir: section_rescaling(metrics, trials),
    "geometry": lambda metrics, trials, run_dir: section_geometry(trials),
    "interpolation": lambda metrics, trials, run_dir: section_interpolation(run_dir),
    "breakdown": lambda metrics, trials, run_dir: section_breakdown(metrics, trials),
    "beta_search": lambda metrics, trials, run_dir: section_beta_search(metrics, trials, run_dir),
    "eq7": lambda metrics, trials, run_dir: section_eq7(trials),
    "grid": lambda metrics, trials, run_dir: section_grid(trials),
    "gap": lambda metrics, trials, run_dir: section_gap(trials),
    "probes": lambda metrics, trials, run_dir: section_probes(trials),
    "provenance": section_provenance,
    "trials": lambda metrics, trials, run_dir: section_trials(trials),
}
