"""Report statistics on frozen fixtures from real runs (tests/fixtures, made by make_fixtures.py).

Every statistic is recomputed here independently, from the raw Arrow rows with numpy/scipy,
and compared with what analysis/ reports.
"""

from __future__ import annotations

import html as html_lib
import itertools
import json
import math
import re
import shutil
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
import yaml
from scipy import stats

from lrbs.analysis import plots, sections
from lrbs.analysis.breakdown import breakdown, drop_interval, drop_test
from lrbs.analysis.collapse import collapse_test
from lrbs.analysis.compare import RunView, compare_figures
from lrbs.analysis.curves import curve_distance, equal_ratio_pairs, rescale_distances
from lrbs.analysis.geometry import eq7_check, ratio_band_fit
from lrbs.analysis.interpolation import load_interpolations, summarize
from lrbs.analysis.plots import learning_curves, point_label
from lrbs.analysis.report import build_report, write_reports
from lrbs.analysis.sections import section_breakdown, section_gap, section_probes
from lrbs.analysis.selection import select_trials
from lrbs.analysis.stats import holm, welch_less
from lrbs.analysis.trialinfo import trial_table
from lrbs.rundir.points import members, to_config
from lrbs.rundir.tables import load_metrics, load_trials
from lrbs.sweeps.cli import main
from lrbs.sweeps.grid import expand_points
from lrbs.sweeps.metrics_sink import ArrowMetricsSink, row_from_result
from lrbs.sweeps.packing import plan_packs
from lrbs.sweeps.param_space import to_param_space
from lrbs.sweeps.spec_load import spec_from_dict
from lrbs.trainables.train_loop import TrialPoint, run_pack
from tests.conftest import ROOT, tiny_spec, write_yaml

FIX = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def grid():
    m = load_metrics(FIX / "grid")
    return m, trial_table(m)


@pytest.fixture(scope="module")
def bd():
    m = load_metrics(FIX / "breakdown")
    return m, trial_table(m)


def _rows(table):
    return table.to_pylist()


def _by_trial(metrics):
    out = {}
    for r in metrics.to_pylist():
        out.setdefault(r["trial_id"], []).append(r)
    return {k: sorted(v, key=lambda r: r["epoch"]) for k, v in out.items()}


def test_fixtures_are_small_and_real():
    size = sum(p.stat().st_size for p in FIX.rglob("*.arrow"))
    assert size < 400_000
    m = load_metrics(FIX / "grid")
    assert set(m.column("status").to_pylist()) == {"running", "finished"}
    assert m.column("code_version")[0].as_py() == "fixture"


def test_trial_table_takes_last_measured_curvature(grid):
    metrics, trials = grid
    by = _by_trial(metrics)
    for t in _rows(trials):
        measured = [r for r in by[t["trial_id"]] if r["lambda_max"] is not None]
        assert measured and t["lambda_max"] == measured[-1]["lambda_max"]
        assert t["hessian_trace"] == measured[-1]["hessian_trace"]
        assert t["final_ratio"] == pytest.approx(by[t["trial_id"]][-1]["lr"] / by[t["trial_id"]][-1]["batch_size"])
        assert t["schedule"] == "constant" and t["beta"] is None and t["rescale"] is None
    # epochs without a probe are null in the epoch table
    assert 0 < metrics.column("lambda_max").null_count < metrics.num_rows


# ----------------------------------------------------------------------------- collapse


@pytest.mark.parametrize(
    "metric, log_y",
    [("final_train_loss", False), ("final_train_loss", True), ("lambda_max", True), ("final_val_acc", False)],
)
def test_collapse_against_lstsq_and_nested_f_test(grid, metric, log_y):
    """The collapse test over point means (each (lr, S)'s seeds averaged), recomputed with numpy."""
    _, trials = grid
    res = collapse_test(trials, metric, log_y)
    rows = [r for r in _rows(trials) if r["status"] != "diverged"]
    points: dict[tuple, list[float]] = {}
    for r in rows:
        points.setdefault((r["lr"], r["batch_size"]), []).append(math.log10(r[metric]) if log_y else r[metric])
    y = np.array([np.mean(v) for v in points.values()])
    le = np.log10([k[0] for k in points])
    ls = np.log10([k[1] for k in points])
    n = len(y)
    assert res.n == n < len(rows) == res.n_trials
    X = np.column_stack([np.ones(n), le, ls])
    beta, rss_full, *_ = np.linalg.lstsq(X, y, rcond=None)
    rss_full = float(rss_full[0])
    assert (res.b, res.c) == pytest.approx((beta[1], beta[2]), rel=1e-9, abs=1e-12)
    # restricted model: y = a + k log10(eta/S)
    lr_fit = stats.linregress(le - ls, y)
    rss_r = float(np.sum((y - lr_fit.intercept - lr_fit.slope * (le - ls)) ** 2))
    F = (rss_r - rss_full) / (rss_full / (n - 3))
    assert res.t**2 == pytest.approx(F, rel=1e-7)
    assert res.p == pytest.approx(stats.f.sf(F, 1, n - 3), rel=1e-6)
    assert res.r2_ratio == pytest.approx(lr_fit.rvalue**2, rel=1e-9)
    tss = np.sum((y - y.mean()) ** 2)
    assert res.r2_full == pytest.approx(1 - rss_full / tss, rel=1e-9)
    assert res.r2_full >= res.r2_ratio
    # CI of b: t quantile times the classical standard error
    s2 = rss_full / (n - 3)
    se_b = math.sqrt(s2 * np.linalg.inv(X.T @ X)[1, 1])
    q = stats.t.ppf(0.975, n - 3)
    assert res.b_ci == pytest.approx((beta[1] - q * se_b, beta[1] + q * se_b), rel=1e-7)
    assert res.equal_and_opposite == (res.b_plus_c_ci[0] <= 0 <= res.b_plus_c_ci[1])
    assert res.equal_and_opposite == (res.p >= 0.05)


def test_collapse_skips_a_pure_beta_family(bd):
    _, trials = bd
    one = trials.filter(pc.equal(trials.column("n_train"), 360))
    reason = collapse_test(one, "final_train_loss", True)
    assert isinstance(reason, str) and "collinear" in reason


# ----------------------------------------------------------------------------- curve distances


def _curve_arrays(metrics, ids, metric):
    by = _by_trial(metrics)
    return {by[i][0]["seed"]: {r["epoch"]: r[metric] for r in by[i]} for i in ids}


def test_equal_ratio_pairs_against_numpy(grid):
    metrics, trials = grid
    pairs = equal_ratio_pairs(metrics, trials, "val_acc")
    assert sorted((d.a, d.b) for d in pairs) == [("lr=0.01 S=16", "lr=0.04 S=64"), ("lr=0.04 S=16", "lr=0.16 S=64")]
    rows = _rows(trials)
    for d in pairs:
        ids_a = [r["trial_id"] for r in rows if f"lr={r['lr']:g} S={r['batch_size']}" == d.a]
        ids_b = [r["trial_id"] for r in rows if f"lr={r['lr']:g} S={r['batch_size']}" == d.b]
        A = np.array([[c[e] for e in sorted(c)] for c in _curve_arrays(metrics, ids_a, "val_acc").values()])
        B = np.array([[c[e] for e in sorted(c)] for c in _curve_arrays(metrics, ids_b, "val_acc").values()])
        diff = A.mean(0) - B.mean(0)
        assert d.diff == pytest.approx(diff.tolist())
        assert d.rms == pytest.approx(np.sqrt(np.mean(diff**2)))
        se = np.sqrt(A.var(0, ddof=1) / len(A) + B.var(0, ddof=1) / len(B))
        assert d.diff_se == pytest.approx(se.tolist())
        per_seed = [np.sqrt(np.mean((A[i] - B[i]) ** 2)) for i in range(len(A))]  # seeds 0,1,2 in both
        assert d.seed_rms_mean == pytest.approx(np.mean(per_seed))
        assert d.seed_rms_sd == pytest.approx(np.std(per_seed, ddof=1))
        noise = [
            np.sqrt(np.mean((M[i] - M[j]) ** 2)) for M in (A, B) for i, j in itertools.combinations(range(len(M)), 2)
        ]
        assert d.noise_rms == pytest.approx(np.mean(noise))


def test_curve_distance_uses_common_epochs_only():
    a = {0: {1: 0.5, 2: 0.6, 3: 0.7}}
    b = {0: {1: 0.4, 2: 0.5}, 1: {1: 0.6, 2: 0.7}}
    d = curve_distance(a, b)
    assert d.epochs == [1, 2]
    assert d.diff == pytest.approx([0.0, 0.0])
    assert math.isnan(d.diff_se[0])  # one seed in A: no standard error
    assert d.noise_rms == pytest.approx(0.2)


def test_rescale_distances_against_numpy():
    metrics = load_metrics(FIX / "rescale")
    trials = trial_table(metrics)
    dists = rescale_distances(metrics, trials, "val_acc")
    assert sorted((d.extra["rule"], d.extra["batch_size"]) for d in dists) == [
        ("linear", 64),
        ("linear", 256),
        ("none", 64),
        ("none", 256),
        ("sqrt", 64),
        ("sqrt", 256),
    ]
    rows = _rows(trials)
    ref = [r["trial_id"] for r in rows if r["batch_size"] == 16]
    R = np.array([[c[e] for e in sorted(c)] for c in _curve_arrays(metrics, ref, "val_acc").values()])
    for d in dists:
        ids = [
            r["trial_id"] for r in rows if r["rescale"] == d.extra["rule"] and r["batch_size"] == d.extra["batch_size"]
        ]
        A = np.array([[c[e] for e in sorted(c)] for c in _curve_arrays(metrics, ids, "val_acc").values()])
        assert d.rms == pytest.approx(np.sqrt(np.mean((A.mean(0) - R.mean(0)) ** 2)))
    by = {(d.extra["rule"], d.extra["batch_size"]): d.rms for d in dists}
    # The paper's Fig. 2: linear rescaling stays closest to the small-batch reference.
    assert by[("linear", 256)] < by[("sqrt", 256)] < by[("none", 256)]


# ----------------------------------------------------------------------------- breakdown


def _welch_less_p(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    t = (x.mean() - y.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return stats.t.cdf(t, df)


def test_breakdown_against_scipy(bd):
    metrics, trials = bd
    res = breakdown(metrics, trials)
    assert [r.n_train for r in res] == [360, 1437]
    rows = _rows(trials)
    by = _by_trial(metrics)
    for r in res:
        fam = [t for t in rows if t["n_train"] == r.n_train]
        ref = [max(x["val_acc"] for x in by[t["trial_id"]]) for t in fam if t["beta"] == 1.0]
        ps = []
        for br in r.rows:
            members = [t for t in fam if t["beta"] == br.beta]
            vals = [max(x["val_acc"] for x in by[t["trial_id"]]) for t in members]
            assert br.mean == pytest.approx(np.mean(vals)) and br.sd == pytest.approx(np.std(vals, ddof=1))
            assert br.diverged_mark == ("*" if any(t["status"] == "diverged" for t in members) else "")
            if br.beta > 1:
                assert br.p == pytest.approx(_welch_less_p(vals, ref), rel=1e-6)
                ps.append(br.p)
        # Holm, step-down by hand
        order = np.argsort(ps)
        adj = np.empty(len(ps))
        running = 0.0
        for k, i in enumerate(order):
            running = max(running, min(1.0, (len(ps) - k) * ps[i]))
            adj[i] = running
        tested = [br for br in r.rows if br.beta > 1]
        assert [br.p_holm for br in tested] == pytest.approx(adj.tolist())
        first = next((br.beta for br, a in zip(tested, adj) if a < 0.05), None)
        assert r.beta_star == first
        # predicted critical batch size: mean over beta=1 trials of each one's median B_simple
        med = [
            np.median(
                [g for x in by[t["trial_id"]] if (g := x["grad_noise_scale"]) is not None and np.isfinite(g) and g > 0]
            )
            for t in fam
            if t["beta"] == 1.0
        ]
        assert r.b_crit == pytest.approx(np.mean(med))
        assert r.beta_crit == pytest.approx(np.mean(med) / 8)
    # what the Fig. 5 twin shows: the small set breaks down at a smaller beta, and only the
    # largest beta of the full set diverged
    assert res[0].beta_star == 32 and res[1].beta_star == 64
    assert [b.beta for b in res[1].rows if b.diverged_mark] == [64.0]


def test_holm_matches_definition():
    p = [0.01, 0.04, 0.03, math.nan, 0.5]
    assert holm(p)[:3] == pytest.approx([0.04, 0.09, 0.09]) and math.isnan(holm(p)[3])
    assert holm(p)[4] == pytest.approx(0.5)


def test_welch_less_matches_scipy_and_takes_a_constant_side_quietly():
    rng = np.random.default_rng(3)
    for nx, ny in [(2, 2), (3, 5), (6, 4)]:
        x, y = rng.normal(0.90, 0.01, nx), rng.normal(0.91, 0.02, ny)
        ref = stats.ttest_ind(x, y, equal_var=False, alternative="less")
        assert welch_less(x, y) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
    # every seed of one side at the same accuracy (the Fig. 5 twin has this): the test is that side's
    # mean against the other side's spread alone, with no warning
    x, y = np.array([0.9721448467966574] * 2), np.array([0.958217270194986, 0.9610027855153204])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, p = welch_less(x, y)
    se = np.std(y, ddof=1) / math.sqrt(2)
    assert t == pytest.approx((x.mean() - y.mean()) / se) and p == pytest.approx(stats.t.cdf(t, 1))
    assert all(math.isnan(v) for v in welch_less(x, x)) and all(math.isnan(v) for v in welch_less(x[:1], y))


def test_breakdown_skipped_without_beta(grid):
    metrics, trials = grid
    assert "no trial has a beta" in breakdown(metrics, trials)


def _beta_family(values: dict[float, list[float]], n_train: int = 400, **columns) -> tuple[pa.Table, pa.Table]:
    """A synthetic Fig. 5 family: one finished trial per (beta, seed) whose max val acc is the given
    value (one epoch row each: the breakdown's curve distances have something to read);
    ``columns``: extra trial-table columns, one value for every trial (e.g. a config key)."""
    rows = [(beta, seed, v) for beta, vs in values.items() for seed, v in enumerate(vs)]
    ids = [f"b{beta:g}-s{seed}" for beta, seed, _ in rows]
    metrics = pa.table(
        {
            "trial_id": ids,
            "seed": [s for _, s, _ in rows],
            "epoch": [1] * len(rows),
            "ratio": [0.05 / 8] * len(rows),
            "val_acc": [v for *_, v in rows],
        }
    )
    trials = pa.table(
        {
            "trial_id": ids,
            "beta": [b for b, *_ in rows],
            "seed": [s for _, s, _ in rows],
            "n_train": [n_train] * len(rows),
            "lr": [0.05 * b for b, *_ in rows],
            "batch_size": [round(8 * b) for b, *_ in rows],
            "status": ["finished"] * len(rows),
            "max_val_acc": [v for *_, v in rows],
            **{k: [v] * len(rows) for k, v in columns.items()},
        }
    )
    return metrics, trials


def test_breakdown_drop_and_its_interval_match_scipy():
    """Each beta's drop (mean at beta = 1 minus mean at beta, accuracy points) and its 95% interval
    are scipy's Welch interval x100, unequal seeds and sds included; beside it the seeds on each side."""
    rng = np.random.default_rng(3)
    values = {
        1.0: list(0.9 + 0.004 * rng.standard_normal(4)),
        2.0: list(0.895 + 0.01 * rng.standard_normal(6)),
        4.0: list(0.85 + 0.002 * rng.standard_normal(3)),
    }
    (res,) = breakdown(*_beta_family(values))
    for row in res.rows[1:]:
        ci = stats.ttest_ind(values[1.0], values[row.beta], equal_var=False).confidence_interval(0.95)
        assert row.drop == pytest.approx(100 * (np.mean(values[1.0]) - np.mean(values[row.beta])), rel=1e-12)
        assert (row.drop_lo, row.drop_hi) == pytest.approx((100 * ci.low, 100 * ci.high), rel=1e-9)
        assert (row.n, row.n_ref) == (len(values[row.beta]), 4)


def test_min_drop_makes_a_small_significant_drop_hold_and_a_large_one_count():
    """A 1-point drop with tight seeds is significant, so by default it is beta*; with
    min_drop = 3 points only the 8-point drop counts, its p scipy's Welch test of the drop > 3
    points. The section reads min_drop from the trials' config (``beta_test``) and says so."""
    rng = np.random.default_rng(5)
    values = {
        beta: list(mean + 0.002 * rng.standard_normal(5)) for beta, mean in ((1.0, 0.90), (2.0, 0.89), (4.0, 0.82))
    }
    (plain,) = breakdown(*_beta_family(values))
    assert [r.significant for r in plain.rows] == [False, True, True] and plain.beta_star == 2.0
    (strict,) = breakdown(*_beta_family(values), min_drop=3.0)
    assert [r.significant for r in strict.rows] == [False, False, True] and strict.beta_star == 4.0
    for row in strict.rows[1:]:
        p = stats.ttest_ind(np.array(values[row.beta]) + 0.03, values[1.0], equal_var=False, alternative="less").pvalue
        assert row.p == pytest.approx(p, rel=1e-9)
    assert plain.rows[1].drop == strict.rows[1].drop and plain.rows[1].drop_lo > 0  # same effect size, another bar
    sec = section_breakdown(*_beta_family(values, **{"cfg.beta_test.min_drop": 3.0}))
    assert sec.data["results"][0]["min_drop"] == 3.0 and sec.data["results"][0]["beta_star"] == 4.0
    assert "below beta=1 by > 3 points" in sec.tables[0].header
    assert "minus at beta > 3 accuracy points" in sec.tables[0].title


def test_detectable_drop_has_80_percent_power_and_shrinks_with_more_seeds():
    """The detectable drop is the true drop the test (one-sided Welch at alpha / m) rejects 80% of
    the time when the seeds' sds are the observed ones: checked by simulating scipy's test at
    it; with the same sd, 10 seeds a side detect a smaller drop than 3."""

    def exact_sd(n: int, sd: float, seed: int) -> list[float]:
        z = np.random.default_rng(seed).standard_normal(n)
        return list(0.9 + sd * (z - z.mean()) / z.std(ddof=1))

    drops = {}
    for n in (3, 10):
        values = {1.0: exact_sd(n, 0.01, 1), 2.0: exact_sd(n, 0.01, 2), 4.0: exact_sd(n, 0.004, 3)}
        (res,) = breakdown(*_beta_family(values))
        row = res.rows[1]
        assert row.level == pytest.approx(0.05 / 2) and (row.n, row.n_ref) == (n, n)
        drops[n] = row.detectable_drop
        rng = np.random.default_rng(11)
        reps = 8000
        x = 0.9 - row.detectable_drop / 100 + 0.01 * rng.standard_normal((reps, n))
        ref = 0.9 + 0.01 * rng.standard_normal((reps, n))
        p = stats.ttest_ind(x, ref, axis=1, equal_var=False, alternative="less").pvalue
        assert 0.77 <= np.mean(p < row.level) <= 0.83, (n, np.mean(p < row.level))
    assert drops[10] < drops[3] / 2, drops


# ----------------------------------------------------------------------------- Fig. 3 and Eq. 7


def _point_mean_xy(rows, column, log_y):
    """log10(eta/S) and the metric (log10 with ``log_y``) averaged over each (lr, S)'s seeds."""
    points: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        v = math.log10(r[column]) if log_y else r[column]
        points.setdefault((r["lr"], r["batch_size"]), []).append((math.log10(r["ratio"]), v))
    return (
        np.array([np.mean([a for a, _ in v]) for v in points.values()]),
        np.array([np.mean([b for _, b in v]) for v in points.values()]),
    )


def test_band_fit_against_linregress(grid):
    """The Fig. 3 fit over point means (seeds averaged), recomputed with scipy."""
    _, trials = grid
    f = ratio_band_fit(trials, "lambda_max", True)
    rows = _rows(trials)
    x, y = _point_mean_xy(rows, "lambda_max", True)
    assert f.n_points == len(x) < f.n == len(rows)
    lr = stats.linregress(x, y)
    q = stats.t.ppf(0.975, len(x) - 2)
    assert f.slope == pytest.approx(lr.slope) and f.p == pytest.approx(lr.pvalue, rel=1e-6)
    assert f.slope_ci == pytest.approx((lr.slope - q * lr.stderr, lr.slope + q * lr.stderr))
    assert f.r2 == pytest.approx(lr.rvalue**2)
    assert f.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic)
    # band at the smallest x: yhat +- t s sqrt(1/n + (x - xbar)^2 / Sxx), back on the metric's scale
    s = math.sqrt(np.sum((y - lr.intercept - lr.slope * x) ** 2) / (len(x) - 2))
    x0 = x.min()
    half = q * s * math.sqrt(1 / len(x) + (x0 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
    y0 = lr.intercept + lr.slope * x0
    assert f.band_lo[0] == pytest.approx(10 ** (y0 - half)) and f.band_hi[0] == pytest.approx(10 ** (y0 + half))
    # Fig. 3: larger eta/S, flatter minimum
    assert f.slope_ci[1] < 0


def test_eq7_against_numpy(grid):
    metrics, trials = grid
    r = eq7_check(trials)
    by = _by_trial(metrics)
    pred, loss = [], []
    for tid, rows in by.items():
        tr = [x["hessian_trace"] for x in rows if x["hessian_trace"] is not None][-1]
        pred.append(rows[-1]["lr"] / (4 * rows[-1]["batch_size"]) * tr)
        loss.append(rows[-1]["train_loss"])
    pred, loss = np.array(pred), np.array(loss)
    ok = pred > 0
    assert r.n == ok.sum()
    assert r.ratio_median == pytest.approx(np.median(loss[ok] / pred[ok]))
    # the log-log slope over point means: logs averaged over each (lr, S)'s seeds
    points: dict[tuple, list[tuple[float, float]]] = {}
    for (tid, rows), p, l, good in zip(by.items(), pred, loss, ok):
        if good:
            points.setdefault((rows[0]["lr"], rows[0]["batch_size"]), []).append((math.log10(p), math.log10(l)))
    px = [np.mean([a for a, _ in v]) for v in points.values()]
    py = [np.mean([b for _, b in v]) for v in points.values()]
    assert r.n_points == len(points)
    assert r.slope == pytest.approx(stats.linregress(px, py).slope)
    assert r.spearman_rho == pytest.approx(stats.spearmanr(px, py).statistic)


def test_eq7_uses_the_probe_loss_when_the_run_has_it(grid):
    """E(l) in Eq. 7 is the eval-mode loss on the probe subset (``probe_loss``), not the train-mode
    epoch mean: a run with the column is fitted on it; the frozen fixture (older) falls back."""
    _, trials = grid
    old = eq7_check(trials)
    assert old.loss_column == "final_train_loss"
    probe_loss = pa.array([None if v is None else v / 7.0 for v in trials.column("final_train_loss").to_pylist()])
    assert trials.column("probe_loss").null_count == trials.num_rows  # the reader fills the old files' gap
    new = eq7_check(trials.set_column(trials.column_names.index("probe_loss"), "probe_loss", probe_loss))
    assert new.loss_column == "probe_loss" and new.n == old.n
    assert new.ratio_median == pytest.approx(old.ratio_median / 7.0)
    assert [p["loss"] for p in new.points] == pytest.approx([p["loss"] / 7.0 for p in old.points])


def test_interpolation_reader_and_barrier():
    curves, problems = load_interpolations(FIX / "grid")
    assert not problems and len(curves) == 2
    for name, t in curves.items():
        s = summarize(name, t)
        a = np.array(t.column("alpha").to_pylist())
        loss = np.array(t.column("train_loss").to_pylist())
        inside = (a >= 0) & (a <= 1)
        end = max(loss[np.argmin(abs(a))], loss[np.argmin(abs(a - 1))])
        assert s.barrier == pytest.approx(loss[inside].max() - end)
        assert name == f"{s.trial_a}__{s.trial_b}"
        assert s.alpha_min == -1 and s.alpha_max == 2


# ----------------------------------------------------------------------------- the report


def _copy(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(FIX / name, dst)
    return dst


def test_report_on_grid_fixture(tmp_path):
    run = _copy("grid", tmp_path)
    paths = write_reports(run)
    assert sorted(p.name for p in paths.values()) == ["fits.json", "report.html", "report.md"]
    fits = json.loads((run / "fits.json").read_text())
    assert set(fits) >= {"summary", "fits", "notes", "sections"}
    # The grid fixture measured sharpness, so its fits are there too.
    assert set(fits["fits"]) == {
        "final_val_acc",
        "max_val_acc",
        "final_train_loss",
        "lambda_max",
        "hessian_fro",
        "hessian_trace",
    }
    sec = fits["sections"]
    assert {k for k, v in sec.items() if v["status"] == "ok"} == {
        "overview",
        "collapse",
        "equal_ratio",
        "geometry",
        "interpolation",
        "eq7",
        "grid",
        "gap",
        "probes",
        "provenance",
        "trials",
    }
    # The best point of the fixture's grid (lr 0.16, S 16) is on two edges: the report says so.
    assert (
        sec["grid"]["data"]["on_edge"] and "WARNING: the best point sits on the grid's edge" in sec["grid"]["notes"][0]
    )
    assert sec["probes"]["data"]["lambda_max_converged"] == 18
    assert sec["probes"]["data"]["noise_scale_capped"] == []  # the fixture measured no noise scale
    assert sec["provenance"]["data"]["code_versions"] == ["fixture"]
    assert sec["gap"]["data"]["fit"]["n"] == 18
    assert "no trial has a beta" in sec["breakdown"]["reason"]
    assert "rescale" in sec["rescaling"]["reason"]
    md = (run / "report.md").read_text()
    assert "| section | figure | status | result / reason |" in md and "## Skipped" in md
    assert "PARTIAL" not in md and fits["summary"]["partial"] is False
    html = (run / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 5 + 1 + 2 + 3 + 2 + 1


def test_report_on_breakdown_fixture(tmp_path):
    run = _copy("breakdown", tmp_path)
    assert main(["report", str(run), "--format", "json,md"]) == 0
    assert not (run / "report.html").exists()
    sec = json.loads((run / "fits.json").read_text())["sections"]
    assert sec["breakdown"]["status"] == "ok"
    assert [r["beta_star"] for r in sec["breakdown"]["data"]["results"]] == [32.0, 64.0]
    assert "collinear" in sec["collapse"]["reason"]
    md = (run / "report.md").read_text()
    assert "beta* = 32" in md and "| * |" in md and "Holm" in md


def _partial(metrics: pa.Table) -> pa.Table:
    """The grid run as it looked mid-sweep: half the trials stopped at epoch 5, still running."""
    ids = sorted(set(metrics.column("trial_id").to_pylist()))[::2]
    keep = pc.invert(
        pc.and_(pc.is_in(metrics.column("trial_id"), pa.array(ids)), pc.greater(metrics.column("epoch"), 5))
    )
    return metrics.filter(keep)


def test_report_on_a_running_sweep(tmp_path, grid):
    metrics, _ = grid
    part = _partial(metrics)
    run = tmp_path / "partial"
    (run / "metrics").mkdir(parents=True)
    with pa.OSFile(str(run / "metrics" / "x.arrow"), "wb") as f, pa.ipc.new_stream(f, part.schema) as w:
        w.write_table(part)
    paths = write_reports(run)
    fits = json.loads(paths["json"].read_text())
    assert fits["summary"]["partial"] is True and fits["summary"]["status_counts"]["running"] == 9
    assert any("PARTIAL" in n for n in fits["notes"])
    assert any("PARTIAL" in n for n in fits["sections"]["collapse"]["notes"])
    assert "PARTIAL RUN" in paths["md"].read_text() and "PARTIAL RUN" in paths["html"].read_text()


def test_sections_skip_when_curvature_columns_are_absent_or_null(grid):
    metrics, _ = grid
    curv = [
        "lambda_max",
        "lambda_max_converged",
        "hessian_fro",
        "hessian_fro_stderr",
        "hessian_trace",
        "hessian_trace_stderr",
        "grad_noise_scale",
        "probe_n_samples",
    ]
    dropped = metrics.drop_columns(curv)
    nulls = metrics
    for c in curv:
        i = nulls.column_names.index(c)
        nulls = nulls.set_column(i, c, pa.nulls(nulls.num_rows, nulls.schema.field(c).type))
    for table in (dropped, nulls):
        rep = build_report(table)
        sec = {s.key: s for s in rep.sections}
        assert sec["geometry"].status == "skipped" and "lambda_max" in sec["geometry"].reason
        assert sec["eq7"].status == "skipped" and "hessian_trace" in sec["eq7"].reason
        assert sec["collapse"].status == "ok"  # still has final_val_acc / final_train_loss
        assert sec["interpolation"].status == "skipped"  # no run directory given
        assert sec["probes"].status == "skipped" and "lambda_max" in sec["probes"].reason
        assert sec["provenance"].status == "skipped" and sec["grid"].status == "ok"


def test_probe_reliability_flags_subset_capped_noise_scales(grid):
    """Two-batch B_simple on the probe subset (runs before noise_method: full) cannot exceed ~the
    subset size: values above a quarter of it are flagged, as are large relative errors."""
    _, trials = grid
    n = trials.num_rows
    b = [10.0 * (i + 1) for i in range(n)]  # 10 .. 180 examples, probe subset of 512
    se = [0.9 * v if i == 0 else 0.1 * v for i, v in enumerate(b)]
    t = trials.set_column(trials.column_names.index("grad_noise_scale"), "grad_noise_scale", pa.array(b))
    t = t.set_column(t.column_names.index("grad_noise_scale_stderr"), "grad_noise_scale_stderr", pa.array(se))
    sec = section_probes(t)
    ids = t.column("trial_id").to_pylist()
    assert sec.data["noise_scale_capped"] == [i for i, v in zip(ids, b) if v > 128]
    assert any("caps it" in note for note in sec.notes)
    assert [f.split(" ")[0] for f in sec.data["flagged"]] == [ids[0]]  # +-90%
    full = t.append_column("cfg.curvature.noise_method", pa.array(["full"] * n))
    assert section_probes(full).data["noise_scale_capped"] == []  # the whole-set estimator has no such cap


def test_compare_two_runs(tmp_path):
    """lrbs report A --compare B: slopes with CIs side by side; no common metric is said, not a crash."""
    a, b = _copy("grid", tmp_path / "a"), _copy("grid", tmp_path / "b")
    assert main(["report", str(a), "--format", "md", "--compare", str(b)]) == 0
    md = (a / "compare-grid.md").read_text()
    assert "slopes against log10(eta/S)" in md and "| yes |" in md and "NO:" not in md  # a run against itself
    assert (a / "compare-grid.html").read_text().count("<table>") >= 2
    c = _copy("breakdown", tmp_path)
    assert main(["report", str(a), "--format", "md", "--compare", str(c)]) == 0
    md = (a / "compare-breakdown.md").read_text()
    assert "No fit against eta/S is in both runs" in md and "beta*=32" in md
    assert main(["report", str(a), "--compare", str(tmp_path / "nothing")]) == 2


def test_cli_report_format_errors(tmp_path):
    run = _copy("rescale", tmp_path)
    assert main(["report", str(run), "--format", "md"]) == 0
    assert (run / "report.md").exists() and not (run / "fits.json").exists()
    assert main(["report", str(run), "--format", "pdf"]) == 2


def test_learning_curves_aggregate_over_seeds_for_large_sweeps():
    """Above plots.MAX_TRIAL_CURVES trials: one mean line and one min-max band per point (seeds
    pooled), equal to numpy over the trials' rows."""
    metrics = load_metrics(FIX / "grid")
    trials = trial_table(metrics)
    per_trial = learning_curves(metrics, "val_acc", trials=trials, max_trials=10_000)
    assert len(per_trial.data) == trials.num_rows
    fig = learning_curves(metrics, "val_acc", trials=trials, max_trials=1)
    rows = metrics.select(["trial_id", "epoch", "val_acc"]).to_pylist()
    point_of = {t["trial_id"]: (t["lr"], t["batch_size"]) for t in trials.to_pylist()}
    points = sorted(set(point_of.values()))
    assert len(fig.data) == 2 * len(points) < len(per_trial.data)
    means = [tr for tr in fig.data if tr.name is not None]  # band, mean, band, mean, ...
    bands = [tr for tr in fig.data if tr.fillcolor is not None]
    assert [d.fill for d in fig.layout.template.data.scattergl] == ["toself", None]  # shared, said once
    assert len(means) == len(bands) == len(points)
    for mean, band in zip(means, bands):
        lr, s = next(p for p in points if f"lr={p[0]:g} S={p[1]}" in mean.name)
        for k, epoch in enumerate(mean.x):
            vals = [
                r["val_acc"]
                for r in rows
                if point_of[r["trial_id"]] == (lr, s)
                and r["epoch"] == epoch
                and r["val_acc"] is not None
                and math.isfinite(r["val_acc"])
            ]
            assert mean.y[k] == pytest.approx(np.mean(vals))
            assert mean.customdata[k] == len(vals)
            assert band.y[k] == pytest.approx(min(vals)) and band.y[len(band.y) - 1 - k] == pytest.approx(max(vals))


def test_individual_trials_on_demand(tmp_path, capsys):
    """Each aggregated curve's legend name selects exactly its point's seeds; ``lrbs report
    --trials`` draws those trials one line each on their own page (and nothing else); bad
    selectors are one line, exit 2."""
    metrics = load_metrics(FIX / "grid")
    trials = trial_table(metrics)
    fig = learning_curves(metrics, "val_acc", trials=trials, max_trials=1)
    point_of = {t["trial_id"]: (t["lr"], t["batch_size"]) for t in trials.to_pylist()}
    for mean in (tr for tr in fig.data if tr.name is not None):
        picked = select_trials(trials, [mean.name]).column("trial_id").to_pylist()
        points = {point_of[t] for t in picked}
        assert len(points) == 1 and len(picked) == sum(p in points for p in point_of.values()) >= 2
        assert max(mean.customdata) == len(picked)  # the seeds its mean was over

    run = _copy("grid", tmp_path)
    lr, s = next(iter(point_of.values()))
    ids = sorted(t for t, p in point_of.items() if p == (lr, s))
    assert main(["report", str(run), "--trials", f"lr={lr:g},S={s}", "--trials", ids[0]]) == 0
    out = capsys.readouterr().out
    page = run / f"trials-lr={lr:g}-S={s}_{ids[0]}.html"
    assert f"trials: {page}" in out and page.exists() and not (run / "report.html").exists()
    text = page.read_text()
    assert all(t in text for t in ids) and text.count('class="plotly-graph-div"') >= 2
    for bad, why in [
        ("lr=0.1 color=red", "unknown key 'color'"),
        (f"lr={lr * 7:g}", "no trial matches"),
        ("nosuchtrial_00000", "no trial 'nosuchtrial_00000'"),
        (f"lr={lr:g} {ids[0]}", "mixes"),
    ]:
        assert main(["report", str(run), "--trials", bad]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err


def test_equal_ratio_section_shows_the_pairs_most_apart_when_there_are_many(monkeypatch):
    """Thousands of equal-eta/S pairs (a big grid): the page's tables and lines keep those with the
    largest rms over seed noise; fits.json keeps every pair."""
    metrics = load_metrics(FIX / "grid")
    trials = trial_table(metrics)
    full = sections.section_equal_ratio(metrics, trials)
    n = len(full.data["val_acc"])
    assert n >= 2 and len(full.tables[0].rows) == n and "pairs:" not in full.tables[0].title
    monkeypatch.setattr(sections, "MAX_PAIR_ROWS", 1)
    monkeypatch.setattr(sections, "MAX_PAIR_LINES", 1)
    sec = sections.section_equal_ratio(metrics, trials)
    assert len(sec.data["val_acc"]) == n  # all pairs in the data
    assert len(sec.tables[0].rows) == 1 and f"(1 of {n} pairs" in sec.tables[0].title
    apart = sorted(full.data["val_acc"], key=lambda d: -d["rms"] / d["noise_rms"])
    shown = {(r[0], r[1]) for r in sec.tables[0].rows}
    assert shown == {(d["a"], d["b"]) for d in apart[:1]}
    fig = sec.figures[0][1]
    assert len([t for t in fig.data if t.name]) == 1 and f"(1 of {n} pairs" in fig.layout.title.text
    assert fig.data[0].name.startswith(f"{apart[0]['a']} vs {apart[0]['b']}")


def test_legend_names_with_odd_labels_select_their_trials():
    """Variant labels are any string: a point's legend name quotes them, and is still a selector."""
    labels = ["big batch", "x (warm)", "y=1", "a,b", "it's"]
    trials = pa.table(
        {
            "trial_id": [f"t{i}" for i in range(10)],
            "lr": [0.1] * 10,
            "batch_size": [32] * 10,
            "variant": labels * 2,
            "seed": [0] * 5 + [1] * 5,
        }
    )
    for label in labels:
        name = point_label({"lr": 0.1, "batch_size": 32, "variant": label}) + " (eta/S=0.00313)"
        picked = select_trials(trials, [name]).column("trial_id").to_pylist()
        assert sorted(picked) == sorted(r["trial_id"] for r in trials.to_pylist() if r["variant"] == label), name
    with pytest.raises(ValueError, match="--trials: .*No closing quotation"):
        select_trials(trials, ["variant='big"])


# ----------------------------------------------------------------------------- eval-mode train accuracy


def _write_trained_run(run_dir, report_section):
    """A real pack of four points (one diverges) trained and written as a sweep writes it: each
    member's rows under its own trial id with its own config (``to_param_space`` and
    ``lrbs.sweeps.packing.members``), through the real metric sink."""
    torch.set_num_threads(1)
    spec = spec_from_dict(
        tiny_spec(
            name="te",
            train={"epochs": 2, "momentum": 0.9, "train_eval_samples": 300},
            grid={"lr": [0.02, 0.08, 0.3, 1e4], "batch_size": [32], "seed": [0]},
            report=report_section,
        )
    )
    points = expand_points(spec)
    config = {**{k: v for k, v in to_param_space(spec, "test").items() if k != "point"}, "point": to_config(points)}
    ids = members("te_00000", config)
    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=0)
    run_pack(
        [TrialPoint.from_dict(p) for p in points],
        spec.dataset,
        spec.model,
        spec.train,
        lambda rows, state: [
            sink.write_row(row_from_result(r, ids[r["member"]][1], ids[r["member"]][0])) for r in rows
        ],
    )
    sink.on_experiment_end([])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    run = tmp_path_factory.mktemp("evaluated")
    _write_trained_run(run, {"converged_train_acc": 0.9})
    return run


def test_trial_table_has_each_trials_final_eval_mode_train_values(evaluated):

    metrics, trials = load_metrics(evaluated), load_trials(evaluated)
    by = _by_trial(metrics)
    assert trials.num_rows == 4
    for t in _rows(trials):
        rows = by[t["trial_id"]]
        assert all(r["train_eval_acc"] is None and r["train_eval_loss"] is None for r in rows[:-1])
        if t["status"] == "diverged":
            assert t["final_train_eval_acc"] is None and t["final_train_eval_loss"] is None
            continue
        assert t["status"] == "finished"
        assert t["final_train_eval_acc"] == rows[-1]["train_eval_acc"] and 0 < t["final_train_eval_acc"] <= 1
        assert t["final_train_eval_loss"] == rows[-1]["train_eval_loss"] > 0
        assert t["cfg.report.converged_train_acc"] == 0.9 and t["cfg.train.train_eval_samples"] == 300
    assert sorted(trials.column("status").to_pylist()) == ["diverged", "finished", "finished", "finished"]
    assert trials.schema.field("final_train_eval_acc").type == pa.float64()


def test_trial_table_of_a_run_written_without_eval_mode_columns():
    """The frozen fixtures predate the columns: they still load, with the trial columns null."""

    for name in ("grid", "rescale", "breakdown"):
        trials = load_trials(FIX / name)
        assert trials.num_rows > 0
        for col in ("final_train_eval_acc", "final_train_eval_loss"):
            assert trials.schema.field(col).type == pa.float64() and trials.column(col).null_count == trials.num_rows
        assert "cfg.report.converged_train_acc" not in trials.column_names


def test_report_threshold_null_reaches_the_trial_table(tmp_path):

    _write_trained_run(tmp_path, {"converged_train_acc": None})
    trials = load_trials(tmp_path)
    assert "cfg.report.converged_train_acc" in trials.column_names
    assert trials.column("cfg.report.converged_train_acc").null_count == trials.num_rows


def _gap_fit(x_ratio, train, val):
    """OLS slope of (train - val) on log10(eta/S) over the finite pairs, with numpy."""
    pairs = [(math.log10(r), a - b) for r, a, b in zip(x_ratio, train, val) if a is not None and b is not None]
    x, y = np.array(pairs).T
    return len(x), np.polyfit(x, y, 1)[0]


def test_gap_uses_the_eval_mode_train_accuracy_of_the_final_weights(evaluated):

    trials = trial_table(load_metrics(evaluated))
    sec = section_gap(trials)
    assert sec.status == "ok" and sec.data["train_accuracy"] == "eval_mode"
    n, slope = _gap_fit(
        trials.column("ratio").to_pylist(),
        trials.column("final_train_eval_acc").to_pylist(),
        trials.column("final_val_acc").to_pylist(),
    )
    assert n == 3 and sec.data["fit"]["n"] == 3  # the diverged trial has no eval-mode value
    # 3 points: a slope, and no interval (the table says why instead of printing one)
    assert sec.data["fit"]["n_points"] == 3 and "no CI: 3 points" in sec.tables[0].rows[0][1]
    assert sec.data["fit"]["slope"] == pytest.approx(slope)
    assert "eval mode, final weights" in sec.tables[0].title and not sec.notes
    assert "biased" not in sec.headline
    # a trial without the value that did not diverge (finished by older code) is named in a note
    first = trials.column("final_train_eval_acc").to_pylist()
    finished = [i for i, v in enumerate(first) if v is not None]
    dropped = first[: finished[0]] + [None] + first[finished[0] + 1 :]
    mixed = trials.set_column(
        trials.column_names.index("final_train_eval_acc"), "final_train_eval_acc", pa.array(dropped, pa.float64())
    )
    sec = section_gap(mixed)
    assert sec.data["fit"]["n"] == 2 and len(sec.notes) == 1
    assert (
        "finished by code that did not record it" in sec.notes[0]
        and trials.column("trial_id")[finished[0]].as_py() in sec.notes[0]
    )


def test_gap_of_an_older_run_is_the_train_mode_gap_and_says_so(grid):

    _, trials = grid
    sec = section_gap(trials)
    assert sec.status == "ok" and sec.data["train_accuracy"] == "train_mode_epoch_mean"
    n, slope = _gap_fit(
        trials.column("ratio").to_pylist(),
        trials.column("final_train_acc").to_pylist(),
        trials.column("final_val_acc").to_pylist(),
    )
    assert sec.data["fit"]["n"] == n == 18 and sec.data["fit"]["slope"] == pytest.approx(slope)
    assert "TRAIN-MODE" in sec.tables[0].title and "biased" in sec.headline
    assert any("train-mode running mean" in note for note in sec.notes)


def test_equal_accuracies_are_no_evidence_of_a_drop():
    """Accuracies are discrete, so seeds tie: two groups of 3 equal values have no spread, and the
    Welch test and the drop interval say 'undefined', not p ~ 1e-30 (np.var of equal floats can
    be ~1e-33 instead of 0)."""
    ref, lower = [0.7] * 3, [0.69] * 3
    assert all(math.isnan(v) for v in drop_test(lower, ref))
    drop, lo, hi = drop_interval(lower, ref)
    assert drop == pytest.approx(1.0) and math.isnan(lo) and math.isnan(hi)


# ----------------------------------------------------------------------------- comparing runs honestly


def _train_run(run_dir, spec_dict) -> None:
    """A real run without Ray: each pack of the spec trained by ``run_pack``, its members' rows
    under their own trial ids and configs through the real metric sink, the spec copied in."""
    torch.set_num_threads(1)
    spec = spec_from_dict(spec_dict)
    run_dir.mkdir(parents=True)
    write_yaml(run_dir / "spec.yaml", spec_dict)
    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=0)
    for k, pack in enumerate(plan_packs(spec)):
        config = {
            **{key: v for key, v in to_param_space(spec, "test").items() if key != "point"},
            "point": to_config(pack),
        }
        ids = members(f"{spec.name}_{k:05d}", config)
        run_pack(
            [TrialPoint.from_dict(p) for p in pack],
            spec.dataset,
            spec.model,
            spec.train,
            lambda rows, state, ids=ids: [
                sink.write_row(row_from_result(r, ids[r["member"]][1], ids[r["member"]][0])) for r in rows
            ],
        )
    sink.on_experiment_end([])


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """The grid fixture's data set (digits) and model family with half its width: 4 points (lr
    0.05, 0.2 x S 32, 128; three values of eta/S), 2 epochs, one seed."""
    run = tmp_path_factory.mktemp("narrow") / "narrow"
    _train_run(run, tiny_spec("narrow", model={"options": {"width": 32}}, train={"epochs": 2}))
    return run


def _md_row(md: str, first: str) -> list[str]:
    (line,) = [line for line in md.splitlines() if line.startswith(f"| {first} |")]
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_compare_says_what_differs_and_withholds_the_verdict_across_models(tmp_path, narrow, capsys):
    """Different models (width 64 against 32): the comparison says so at the top, with both
    runs' values, and gives no "CIs overlap" verdict, saying why in one line; --compare-any
    gives it, with what else differs. The same model: the verdict, and the differences named."""
    a = _copy("grid", tmp_path)
    assert main(["report", str(a), "--format", "md", "--compare", str(narrow)]) == 0
    md = (a / "compare-narrow.md").read_text()
    assert md.index("## What differs") < md.index("slopes against log10(eta/S)")
    assert _md_row(md, "model") == [
        "model",
        "mlp (batch_norm=yes, depth=3, width=64)",
        "mlp (batch_norm=yes, depth=3, width=32)",
        "DIFFERS",
    ]
    assert _md_row(md, "data set")[-1] == "yes" and _md_row(md, "data set")[1] == _md_row(md, "data set")[2]
    assert _md_row(md, "epochs")[1:] == ["12", "2", "DIFFERS"] and _md_row(md, "seeds")[1:] == [
        "0, 1, 2",
        "0",
        "DIFFERS",
    ]
    assert _md_row(md, "code version")[1:] == ["fixture", "test", "DIFFERS"]
    assert "The runs differ in: model, epochs," in md
    (refusal,) = [line for line in md.splitlines() if "No same/different verdict" in line]
    assert "the runs have different models" in refusal and "--compare-any" in refusal
    assert (
        "| metric | grid | narrow | B - A |\n" in md and "| CIs overlap |" not in md and "NO: the runs differ" not in md
    )
    assert _md_row(md, "final_val_acc")[0] == "final_val_acc" and len(_md_row(md, "final_val_acc")) == 4
    html_page = (a / "compare-narrow.html").read_text()
    assert html_page.index("What differs") < html_page.index("Side by side")
    assert "No same/different verdict" in html_page and "<tr class='differs'><td>model</td>" in html_page

    assert main(["report", str(a), "--format", "md", "--compare", str(narrow), "--compare-any"]) == 0
    md = (a / "compare-narrow.md").read_text()
    assert "No same/different verdict" not in md and "| metric | grid | narrow | B - A | CIs overlap |" in md
    assert "the runs also differ in model, epochs" in md
    # --compare-any alone is bad input: one line, exit 2
    capsys.readouterr()
    assert main(["report", str(a), "--compare-any"]) == 2
    assert capsys.readouterr().err.strip().startswith("lrbs: error: --compare-any: only with --compare")

    # the same model and data set (the rescale fixture): the verdict, and what else differs
    b = _copy("rescale", tmp_path)
    assert main(["report", str(a), "--format", "md", "--compare", str(b)]) == 0
    md = (a / "compare-rescale.md").read_text()
    assert _md_row(md, "model")[-1] == "yes" and "No same/different verdict" not in md and "CIs overlap" in md
    assert "The runs differ in: epochs, learning rates, batch sizes, seeds." in md


def test_compare_overlays_both_runs_fits_and_learning_curves(tmp_path, narrow):
    """The comparison page draws, per fit both runs have, each run's point means (equal to numpy
    over its trials) with its fit line, and both runs' validation accuracy curves (a line per
    point, the mean of its seeds per epoch, equal to numpy over the rows)."""
    views = []
    for name, run in (("grid", FIX / "grid"), ("narrow", narrow)):
        m = load_metrics(run)
        views.append(RunView(name, build_report(m), m, trial_table(m)))
    figures = dict(compare_figures(*views))
    common = [k for k in views[0].report.fits if k in views[1].report.fits] + ["generalization_gap"]
    assert len(figures) == len(common) + 1 and "Validation accuracy per epoch" in figures
    fig = figures["final_val_acc against eta/S"]
    for view in views:
        pts = next(t for t in fig.data if t.name == f"{view.name}: point means")
        by_point: dict = {}
        for r in _rows(view.trials):
            by_point.setdefault((r["lr"], r["batch_size"]), []).append(r["final_val_acc"])
        expected = sorted((lr / s, np.mean(v)) for (lr, s), v in by_point.items())
        got = sorted(zip(np.asarray(pts.x, float), np.asarray(pts.y, float)))
        assert np.allclose(got, expected, rtol=1e-6)
        fit = view.report.fits["final_val_acc"]
        line = next(t for t in fig.data if t.name.startswith(f"{view.name}: fit over {fit['n_points']} points"))
        x = np.log10(np.asarray(line.x, float))
        assert np.allclose(np.asarray(line.y, float), fit["intercept"] + fit["slope"] * x)
        assert min(line.x) == pytest.approx(min(p[0] for p in expected), rel=1e-6)
    log_fig = figures["log10 final_train_loss against eta/S"]  # fitted on log10: points are 10 ** mean log10
    assert log_fig.layout.yaxis.type == "log"
    pts = next(t for t in log_fig.data if t.name == "narrow: point means")  # one seed: each trial's own loss
    assert np.allclose(
        sorted(np.asarray(pts.y, float)), sorted(views[1].trials.column("final_train_loss").to_pylist()), rtol=1e-5
    )
    curves = figures["Validation accuracy per epoch"]
    assert len(curves.data) == 6 + 4  # the grid's 6 points and narrow's 4, a line each
    by_trial = _by_trial(views[1].metrics)
    lr, s = 0.05, 32
    ids = [t for t, rows in by_trial.items() if rows[0]["lr"] == lr and rows[0]["batch_size"] == s]
    line = next(t for t in curves.data if t.name.startswith(f"narrow: lr={lr:g} S={s} "))
    assert np.allclose(
        np.asarray(line.y, float), np.mean([[r["val_acc"] for r in by_trial[t]] for t in ids], axis=0), rtol=1e-6
    )
    # in the page: a plotly figure per overlay, under its own heading
    a = _copy("grid", tmp_path)
    assert main(["report", str(a), "--format", "md", "--compare", str(narrow)]) == 0
    page = (a / "compare-narrow.html").read_text()
    assert page.count("Plotly.newPlot") == len(figures) and "both runs (point means and fit lines)" in page
    assert all(f"<h3>{name}</h3>" in page for name in figures)


def test_compare_curves_of_many_points_are_one_mean_line_per_run(grid):
    """Past plots.COMPARE_MAX_POINTS points a run draws one line (the mean over its points' seed
    means per epoch) and a band from its lowest to highest point, equal to numpy over the rows."""
    metrics, trials = grid
    fig = plots.compare_curves([("A", metrics, trials), ("B", metrics, trials)], max_points=4)
    names = [t.name for t in fig.data]
    assert names == [
        "A: lowest to highest point",
        "A: mean over its 6 points",
        "B: lowest to highest point",
        "B: mean over its 6 points",
    ]
    by_trial = _by_trial(metrics)
    points: dict = {}
    for t, rows in by_trial.items():
        points.setdefault((rows[0]["lr"], rows[0]["batch_size"]), []).append([r["val_acc"] for r in rows])
    point_means = np.array([np.mean(v, axis=0) for v in points.values()])
    assert np.allclose(np.asarray(fig.data[1].y, float), point_means.mean(axis=0), rtol=1e-6)
    band = np.asarray(fig.data[0].y, float)
    n = point_means.shape[1]
    assert np.allclose(band[:n], point_means.min(axis=0), rtol=1e-6)
    assert np.allclose(band[n:], point_means.max(axis=0)[::-1], rtol=1e-6)


# ----------------------------------------------------------------------------- the report's layout


def test_report_layout_contents_spec_yaml_skipped_lines_and_headings(tmp_path):
    """report.html: a table of contents linking every section to an anchor that exists; the
    spec as the YAML it is (a <pre> block; a ```yaml block in report.md), not a table of lines;
    each skipped section one line (title and reason), not a heading of its own; headings
    without a "-: " prefix or a doubled "Eq. 7"; the status counts in words."""
    run = _copy("grid", tmp_path)
    spec = tiny_spec(
        "grid",
        model={"options": {"width": 64}},
        train={"epochs": 12},
        grid={"lr": [0.01, 0.04, 0.16], "batch_size": [16, 64], "seed": [0, 1, 2]},
    )
    write_yaml(run / "spec.yaml", spec)
    paths = write_reports(run)
    page, md = paths["html"].read_text(), paths["md"].read_text()
    by_key = json.loads(paths["json"].read_text())["sections"]
    skipped = {k: v for k, v in by_key.items() if v["status"] == "skipped"}
    assert skipped and len(skipped) < len(by_key)

    nav = re.search(r"<nav id='contents'>(.*?)</nav>", page, re.S).group(1)
    links = re.findall(r"<a href='#([^']+)'>", nav)
    ids = re.findall(r"\sid='([^']+)'", page)
    assert links == list(by_key) and all(ids.count(link) == 1 for link in links)
    assert page.index("<nav id='contents'>") < min(page.index(f"id='{k}'") for k in by_key)

    for key, sec in by_key.items():
        if key in skipped:  # one line: its title and its reason, no heading of its own
            (line,) = [line for line in page.splitlines() if f"<li id='{key}'>" in line]
            assert html_lib.escape(sec["title"]) in line and html_lib.escape(sec["reason"]) in line
            assert f"<h2 id='{key}'>" not in page
            (md_line,) = [line for line in md.splitlines() if line.startswith("- **") and sec["title"] in line]
            assert md_line.endswith(f": {sec['reason']}")
        else:
            assert f"<h2 id='{key}'>" in page
    headings = re.findall(r"<h2[^>]*>(.*?)</h2>", page) + [line for line in md.splitlines() if line.startswith("#")]
    assert "Provenance" in headings and "## Provenance" in md
    assert not [h for h in headings if h.lstrip("# ").startswith("-") or h.count("Eq. 7") > 1], headings
    assert "Eq. 7: final loss against (eta/4S) Tr(H)" in headings and "- **-**" not in md

    text = (run / "spec.yaml").read_text()
    block = re.search(
        r"<p class='cap'>the spec \(spec.yaml in the run directory\)</p><pre class='block'>(.*?)</pre>", page, re.S
    ).group(1)
    assert html_lib.unescape(block) == text and yaml.safe_load(html_lib.unescape(block)) == spec
    assert f"```yaml\n{text.rstrip()}\n```" in md
    assert "| spec.yaml |" not in md and "<th>spec.yaml</th>" not in page

    counts = json.loads(paths["json"].read_text())["summary"]["status_counts"]
    words = ", ".join(f"{k} {v}" for k, v in counts.items())
    assert f"status: {words}</p>" in page and f"status: {words}\n" in md and "{&quot;" not in page
