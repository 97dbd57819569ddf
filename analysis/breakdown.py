"""Breakdown of eta/S scaling (Fig. 5): lr = lr0 beta, S = S0 beta, growing beta.

Per training-set size (``n_train``) and beta:

* mean +- sd (ddof = 1) over seeds of each trial's max validation accuracy; diverged seeds are
  kept (their best accuracy before diverging is data) and the row is marked ``*``;
* the learning-curve distance (``lrbs.analysis.curves``) of the val_acc curves from beta = 1;
* a one-sided Welch t-test of H1: mean max val acc at beta < at beta = 1, for every beta > 1,
  with Holm's step-down correction over the betas > 1 of that n_train, at alpha = 0.05.
  ``beta*`` is the smallest beta > 1 whose Holm-adjusted p is below alpha (None if none is).
  A beta with fewer than 2 seeds, or no variance in both groups, gets p = nan (not tested).
  With ``min_drop`` (``beta.min_drop``, accuracy points) the test is of H1: mean at beta = 1 minus
  mean at beta > min_drop / 100 (Welch on the beta's values shifted up by min_drop / 100), so
  beta* is the first beta whose drop is significantly larger than a drop that matters;
* the effect size beside each decision: the drop (mean at beta = 1 minus mean at beta, in
  accuracy points, x100) with its 95% Welch-Satterthwaite t interval (:func:`drop_interval`);
* the power behind each decision: the seeds on each side and the smallest true drop the test
  detects with 80% power at its level, taking the observed seed sds as the true ones (a Monte
  Carlo of the Welch test, :func:`detectable_drop`); for Holm the level is alpha / m, m the
  betas tested: a p below it is rejected whatever the other betas' p;
* where the beta = 1 trials measured ``grad_noise_scale`` (B_simple, in examples): the
  predicted critical batch size B_crit = mean over those trials of each one's median B_simple
  over its measured epochs (finite, positive estimates only: B_simple is noisy and its
  |G|^2 estimate can come out negative early in training), and the beta it corresponds to, B_crit / S0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from lrbs.analysis.curves import curve_distance, curves_of, index_rows
from lrbs.analysis.search_settings import ALPHA
from lrbs.analysis.stats import holm, mean_sd, welch_less, welch_se_df

POWER = 0.8  # the power the detectable drop is computed for
POWER_DRAWS = 20_000  # Monte Carlo draws behind a detectable drop (its 80% quantile to ~1%)
POINTS = 100.0  # accuracy points per unit of accuracy (drops are reported x100)
Values = Sequence[float] | np.ndarray  # one side of a test: a value (max val acc) per seed


def drop_interval(values: Values, reference: Values, level: float = 0.95) -> tuple[float, float, float]:
    """The drop mean(reference) - mean(values) in accuracy points (x100) and its ``level`` Welch-
    Satterthwaite t interval (lo, hi); the interval is nan where :func:`lrbs.analysis.stats.welch_se_df` is."""
    x, y = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if len(x) == 0 or len(y) == 0:
        return math.nan, math.nan, math.nan
    drop = float(y.mean() - x.mean()) * POINTS
    se, df = welch_se_df(x, y)
    if not math.isfinite(se):
        return drop, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se * POINTS
    return drop, drop - half, drop + half


def drop_test(values: Values, reference: Values, min_drop: float | None = None) -> tuple[float, float]:
    """One-sided Welch test (t, p) that mean(values) is below mean(reference), by more than
    ``min_drop`` accuracy points when given (the values shifted up by min_drop / 100)."""
    x = np.asarray(values, dtype=float) + (min_drop or 0.0) / POINTS
    return welch_less(x, np.asarray(reference, dtype=float))


def detectable_drop(
    values: Values,
    reference: Values,
    level: float,
    min_drop: float | None = None,
    power: float = POWER,
    draws: int = POWER_DRAWS,
) -> float:
    """The smallest true drop (accuracy points) the one-sided Welch test at ``level`` detects with
    probability ``power``, taking the observed seed sds as the true ones and the seeds as normal.

    Monte Carlo over the test as it runs (its estimated sds and Welch-Satterthwaite df included,
    which the shifted-t shortcut t_{1-level} + t_{power} leaves out: with 3 seeds a side at
    level 0.0125 the shortcut's drop has ~62% power, not 80%). The test rejects a true drop D
    when (D - min_drop) / 100 > c = mean(x) - mean(ref) + t_{1-level}(df) SE, c drawn under no
    drop, so D = min_drop + 100 x the ``power`` quantile of c over ``draws`` seeded draws
    (deterministic). nan where the test is undefined (fewer than 2 seeds a side, or no spread
    on either side)."""
    return _detectable_drop(
        tuple(float(v) for v in values),
        tuple(float(v) for v in reference),
        float(level),
        min_drop,
        float(power),
        int(draws),
    )


@functools.lru_cache(maxsize=4096)
def _detectable_drop(
    values: tuple[float, ...],
    reference: tuple[float, ...],
    level: float,
    min_drop: float | None,
    power: float,
    draws: int,
) -> float:
    """:func:`detectable_drop` on hashable arguments: the breakdown and beta-search sections ask
    for the same betas' figures, and each Monte Carlo takes 10-40 ms."""
    x, y = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    se, _ = welch_se_df(x, y)
    if not (math.isfinite(se) and 0 < level < power < 1):
        return math.nan
    rng = np.random.default_rng(0)
    nx, ny = len(x), len(y)
    dx = np.std(x, ddof=1) * rng.standard_normal((draws, nx))
    dy = np.std(y, ddof=1) * rng.standard_normal((draws, ny))
    vx, vy = dx.var(axis=1, ddof=1) / nx, dy.var(axis=1, ddof=1) / ny
    df = (vx + vy) ** 2 / (vx**2 / (nx - 1) + vy**2 / (ny - 1))
    c = dx.mean(axis=1) - dy.mean(axis=1) + stats.t.ppf(1 - level, df) * np.sqrt(vx + vy)
    return (min_drop or 0.0) + float(np.quantile(c, power)) * POINTS


def min_drop_of(trials: pa.Table) -> float | None:
    """``beta.min_drop`` of the run, from its trials' config: ``beta_test.min_drop`` (a fixed
    ladder) or ``beta_search.min_drop`` (a search); None where neither is set."""
    for column in ("cfg.beta_test.min_drop", "cfg.beta_search.min_drop"):
        if column in trials.column_names:
            found = [v for v in trials.column(column).to_pylist() if v is not None]
            if found:
                return float(found[0])
    return None


@dataclass
class BetaRow:
    beta: float
    lr: float
    batch_size: int
    n: int
    n_diverged: int
    n_running: int
    mean: float
    sd: float
    diverged_mark: str  # "*" when at least one seed diverged
    t: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    significant: bool = False
    curve_rms: float = math.nan
    curve_seed_rms_mean: float = math.nan
    curve_seed_rms_sd: float = math.nan
    values: list[float] = field(default_factory=list)
    n_ref: int = 0  # seeds at beta = 1 (the other side of the test)
    drop: float = math.nan  # mean at beta = 1 minus mean here, accuracy points
    drop_lo: float = math.nan  # its 95% Welch-Satterthwaite t interval, accuracy points
    drop_hi: float = math.nan
    detectable_drop: float = math.nan  # accuracy points the test detects with 80% power (at ``level``)
    level: float = math.nan  # alpha / (betas tested): the level the detectable drop is for


@dataclass
class BreakdownResult:
    n_train: int | None
    reference_beta: float
    s0: int | None
    lr0: float | None
    rows: list[BetaRow]
    beta_star: float | None
    alpha: float
    test: str
    b_crit: float | None = None
    b_crit_sd: float | None = None
    b_crit_n: int = 0
    beta_crit: float | None = None
    min_drop: float | None = None  # accuracy points a drop must significantly exceed (None: > 0)
    notes: list[str] = field(default_factory=list)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)  # beta -> CurveDistance.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _noise_scale(metrics: pa.Table, trial_ids: list[str]) -> list[float]:
    if "grad_noise_scale" not in metrics.column_names:
        return []
    per: dict[str, list[float]] = {}
    ids = set(trial_ids)
    for r in metrics.select(["trial_id", "grad_noise_scale"]).to_pylist():
        v = r["grad_noise_scale"]
        if r["trial_id"] in ids and v is not None and math.isfinite(v) and v > 0:
            per.setdefault(r["trial_id"], []).append(v)
    return [float(np.median(v)) for v in per.values()]


def breakdown(
    metrics: pa.Table,
    trials: pa.Table,
    alpha: float = ALPHA,
    metric: str = "max_val_acc",
    reference_beta: float = 1.0,
    min_drop: float | None = None,
) -> list[BreakdownResult] | str:
    """One BreakdownResult per n_train; a reason string when the data hold no usable beta family.
    ``min_drop``: accuracy points the drop must significantly exceed (None: any drop)."""
    if "beta" not in trials.column_names:
        return "no beta column (no trial belongs to a beta family)"
    rows = [r for r in trials.to_pylist() if r.get("beta") is not None]
    if not rows:
        return "no trial has a beta (no beta family in this run)"
    by_n: dict[int | None, list[dict[str, Any]]] = {}
    for r in rows:
        by_n.setdefault(r.get("n_train"), []).append(r)
    index = index_rows(metrics, "val_acc")
    out = []
    for n_train in sorted(by_n, key=lambda v: (v is None, v)):
        fam = by_n[n_train]
        betas = sorted({r["beta"] for r in fam})
        ref = [r for r in fam if math.isclose(r["beta"], reference_beta)]
        notes: list[str] = []
        beta_rows = []
        for beta in betas:
            members = [r for r in fam if r["beta"] == beta]
            vals = [r[metric] for r in members]
            m, sd, n = mean_sd(vals)
            n_div = sum(r["status"] == "diverged" for r in members)
            beta_rows.append(
                BetaRow(
                    beta=beta,
                    lr=members[0]["lr"],
                    batch_size=members[0]["batch_size"],
                    n=n,
                    n_diverged=n_div,
                    n_running=sum(r["status"] == "running" for r in members),
                    mean=m,
                    sd=sd,
                    diverged_mark="*" if n_div else "",
                    values=[float(v) for v in vals if v is not None],
                )
            )
        h1 = (
            f"mean {metric} at beta={reference_beta:g} minus at beta > {min_drop:g} accuracy points"
            if min_drop is not None
            else f"mean {metric} at beta < at beta={reference_beta:g}"
        )
        res = BreakdownResult(
            n_train=n_train,
            reference_beta=reference_beta,
            s0=None,
            lr0=None,
            rows=beta_rows,
            beta_star=None,
            alpha=alpha,
            min_drop=min_drop,
            test=f"one-sided Welch t-test (H1: {h1}), Holm over the betas > {reference_beta:g}, alpha={alpha:g}",
            notes=notes,
        )
        if not ref:
            notes.append(f"no beta={reference_beta:g} trials: no test and no curve distances")
            out.append(res)
            continue
        res.s0, res.lr0 = ref[0]["batch_size"], ref[0]["lr"]
        ref_vals = [r[metric] for r in ref if r[metric] is not None and math.isfinite(r[metric])]
        tested = [br for br in beta_rows if br.beta > reference_beta]
        for br in beta_rows:
            if br.beta != reference_beta:
                br.n_ref = len(ref_vals)
                br.drop, br.drop_lo, br.drop_hi = drop_interval(br.values, ref_vals)
        for br in tested:
            br.t, br.p = drop_test(br.values, ref_vals, min_drop)
        adj = holm([br.p for br in tested])
        # Holm rejects any p below alpha / m whatever the other betas' p: the detectable drop's level
        m = sum(math.isfinite(br.p) for br in tested)
        for br, pa_ in zip(tested, adj):
            br.p_holm = pa_
            br.significant = bool(math.isfinite(pa_) and pa_ < alpha)
            if m and math.isfinite(br.p):
                br.level = alpha / m
                br.detectable_drop = detectable_drop(br.values, ref_vals, br.level, min_drop)
        res.beta_star = next((br.beta for br in tested if br.significant), None)
        ref_curves = curves_of(index, [r["trial_id"] for r in ref], "val_acc")
        for br in beta_rows:
            ids = [r["trial_id"] for r in fam if r["beta"] == br.beta]
            if br.beta == reference_beta:
                continue
            d = curve_distance(
                curves_of(index, ids, "val_acc"), ref_curves, f"beta={br.beta:g}", f"beta={reference_beta:g}", "val_acc"
            )
            br.curve_rms, br.curve_seed_rms_mean, br.curve_seed_rms_sd = d.rms, d.seed_rms_mean, d.seed_rms_sd
            res.curves[f"{br.beta:g}"] = d.to_dict()
        gns = _noise_scale(metrics, [r["trial_id"] for r in ref])
        if gns:
            m, sd, n = mean_sd(gns)
            res.b_crit, res.b_crit_sd, res.b_crit_n = m, (None if math.isnan(sd) else sd), n
            res.beta_crit = m / res.s0
        else:
            notes.append("no grad_noise_scale measured at beta=1: no predicted critical batch size")
        out.append(res)
    return out
