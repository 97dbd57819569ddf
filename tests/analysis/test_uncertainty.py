"""Intervals and tests over the replication unit (a point (lr, S), not a seed), checked by
simulation, and the convergence filter in front of the sharpness fits.

Synthetic trial tables with a known slope against log10(eta/S), seed noise and point effects
(each point off the line by its own amount, as real points are for reasons other than eta/S):
the 95% slope interval must cover the true slope in 90-99% of data sets for 1, 2 and 5 seeds per
point, and the tests of no relation must reject at most 7% of null data sets.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from lrbs.analysis.collapse import collapse_test
from lrbs.analysis.convergence import DEFAULT_CONVERGED_TRAIN_ACC, converged
from lrbs.analysis.fits import CI_METHOD, ratio_fit, spearman
from lrbs.analysis.geometry import eq7_check, ratio_band_fit
from lrbs.analysis.sections import section_eq7, section_geometry, section_probes

LRS = (0.01, 0.02, 0.04, 0.08)
SIZES = (32, 64, 128)
SLOPE = 0.05  # per decade of eta/S
POINT_SD = 0.02  # each point's own offset from the line
SEED_SD = 0.03  # seed to seed, within a point


def synthetic(
    rng: np.random.Generator,
    seeds: int,
    slope: float = SLOPE,
    lrs=LRS,
    sizes=SIZES,
    point_sd: float = POINT_SD,
    seed_sd: float = SEED_SD,
    **extra,
) -> pa.Table:
    """A trial table: ``m`` = 0.5 + slope log10(eta/S) + point effect + seed noise, and
    ``lam`` = 10**m (a positive scale quantity, fitted on log10)."""
    rows = []
    for lr in lrs:
        for s in sizes:
            effect = rng.normal(0, point_sd)
            for seed in range(seeds):
                m = 0.5 + slope * math.log10(lr / s) + effect + rng.normal(0, seed_sd)
                rows.append(
                    dict(
                        trial_id=f"{lr}-{s}-{seed}",
                        lr=lr,
                        batch_size=s,
                        ratio=lr / s,
                        final_ratio=lr / s,
                        seed=seed,
                        status="finished",
                        n_train=1000,
                        m=m,
                        lam=10**m,
                        **extra,
                    )
                )
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("seeds", [1, 2, 5])
def test_slope_interval_covers_the_true_slope(seeds):
    rng = np.random.default_rng(seeds)
    hits = [ratio_fit(synthetic(rng, seeds), "m").slope_ci for _ in range(400)]
    coverage = np.mean([lo <= SLOPE <= hi for lo, hi in hits])
    assert 0.90 <= coverage <= 0.99, coverage
    # never a zero-width interval, whatever the seeds
    assert min(hi - lo for lo, hi in hits) > 0


@pytest.mark.parametrize("seeds", [2, 5])
def test_tests_of_no_relation_hold_their_level(seeds):
    """Null slope with point effects: Spearman (over point means), the geometry fit's p and the
    collapse test (b + c = 0 true: y depends on eta/S only) each reject <= 7% at nominal 5%."""
    rng = np.random.default_rng(10 + seeds)
    n = 2000  # the rejection rate to about +-0.5 points (one standard error)
    spearman = geometry = collapse = 0
    for _ in range(n):
        t = synthetic(rng, seeds, slope=0.0)
        spearman += ratio_fit(t, "m").spearman_p < 0.05
        geometry += ratio_band_fit(t, "lam", True).p < 0.05
        collapse += collapse_test(t, "m", False).p < 0.05
    assert spearman / n <= 0.07 and geometry / n <= 0.07 and collapse / n <= 0.07, (spearman, geometry, collapse)


def test_point_mean_fit_against_scipy():
    t = synthetic(np.random.default_rng(0), 3)
    f = ratio_fit(t, "m")
    rows = t.to_pylist()
    keys = sorted({(r["lr"], r["batch_size"]) for r in rows})
    x = np.array([math.log10(lr / s) for lr, s in keys])
    y = np.array([np.mean([r["m"] for r in rows if (r["lr"], r["batch_size"]) == k]) for k in keys])
    lr = stats.linregress(x, y)
    q = stats.t.ppf(0.975, len(x) - 2)
    assert (f.n, f.n_points, f.n_ratios) == (36, 12, len({round(v, 12) for v in x}))
    assert f.slope == pytest.approx(lr.slope) and f.p == pytest.approx(lr.pvalue)
    assert f.slope_ci == pytest.approx((lr.slope - q * lr.stderr, lr.slope + q * lr.stderr))
    assert f.spearman_rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert f.spearman_p == pytest.approx(stats.spearmanr(x, y).pvalue)
    assert f.ci_method == CI_METHOD and f.ci_note == ""


def test_no_interval_where_the_design_allows_none():
    rng = np.random.default_rng(3)
    # two eta/S values (one lr, two sizes), many seeds: a slope but no interval
    two = ratio_fit(synthetic(rng, 5, lrs=(0.1,), sizes=(32, 64)), "m")
    assert math.isfinite(two.slope) and all(math.isnan(v) for v in two.slope_ci)
    assert "2 distinct eta/S values" in two.ci_note
    # three points at three eta/S values, one seed each: one degree of freedom is too few
    three = ratio_fit(synthetic(rng, 1, lrs=(0.1,), sizes=(32, 64, 128)), "m")
    assert all(math.isnan(v) for v in three.slope_ci) and "3 points" in three.ci_note
    # equal-eta/S points stay separate points: 4 points over 3 values give an interval
    four = ratio_fit(synthetic(rng, 1, lrs=(0.1, 0.2), sizes=(32, 64)), "m")
    assert (four.n_points, four.n_ratios) == (4, 3) and four.ci_note == "" and four.slope_ci[0] < four.slope_ci[1]


def _with_convergence(table: pa.Table, accs: list[float | None], threshold: float | None = 0.99) -> pa.Table:
    table = table.append_column("final_train_eval_acc", pa.array(accs, type=pa.float64()))
    return table.append_column(
        "cfg.report.converged_train_acc", pa.array([threshold] * table.num_rows, type=pa.float64())
    )


def test_sharpness_fits_leave_out_unconverged_trials_and_name_them():
    """Unconverged trials (small eta/S, still descending) are left out of the sharpness fits and
    named; the validation-accuracy fit keeps every trial."""
    t = synthetic(np.random.default_rng(5), 2)
    t = t.append_column("lambda_max", t.column("lam")).append_column("hessian_fro", t.column("lam"))
    ratio = t.column("ratio").to_pylist()
    cut = sorted(set(ratio))[2]  # the smallest three eta/S values did not converge
    accs = [0.6 if r < cut else 0.995 for r in ratio]
    left = [tid for tid, r in zip(t.column("trial_id").to_pylist(), ratio) if r < cut]
    t = _with_convergence(t.append_column("final_val_acc", t.column("m")), accs)

    conv = converged(t)
    assert [t["trial_id"] for t in conv.left_out] == left and conv.kept.num_rows == t.num_rows - len(left)
    assert conv.many_left_out

    sec = section_geometry(t)
    assert sec.status == "ok"
    assert any(n.startswith("WARNING") and all(tid in n for tid in left) for n in sec.notes)
    assert sec.tables[0].title.startswith("WARNING")
    fits = {f["column"]: f for f in sec.data["fits"]}
    assert fits["lambda_max"]["n"] == t.num_rows - len(left)
    assert fits["final_val_acc"]["n"] == t.num_rows
    assert fits["lambda_max"]["slope"] == pytest.approx(ratio_band_fit(conv.kept, "lambda_max", True).slope)
    assert sec.data["convergence"]["left_out"][0]["trial_id"] == left[0]

    # the filter turned off (report.converged_train_acc: null) fits every trial
    off = section_geometry(
        _with_convergence(
            t.drop_columns(["final_train_eval_acc", "cfg.report.converged_train_acc"]), accs, threshold=None
        )
    )
    assert {f["column"]: f["n"] for f in off.data["fits"]}["lambda_max"] == t.num_rows


def test_runs_without_convergence_records_are_fitted_whole_with_a_note():
    t = synthetic(np.random.default_rng(6), 2)
    t = t.append_column("lambda_max", t.column("lam")).append_column("final_val_acc", t.column("m"))
    conv = converged(t)
    assert not conv.recorded and conv.kept.num_rows == t.num_rows and "not checked" in conv.note()
    sec = section_geometry(t)
    assert any("Convergence not checked" in n for n in sec.notes)
    assert DEFAULT_CONVERGED_TRAIN_ACC == pytest.approx(0.99)


def test_eq7_fits_converged_trials_over_point_means():
    t = synthetic(np.random.default_rng(7), 2)
    loss = [r / 4 * 100 * 10 ** (0.1 * i % 0.3) for i, r in enumerate(t.column("ratio").to_pylist())]
    t = t.append_column("hessian_trace", pa.array([100.0] * t.num_rows)).append_column("probe_loss", pa.array(loss))
    accs = [0.5 if i < 4 else 1.0 for i in range(t.num_rows)]
    t = _with_convergence(t, accs)
    sec = section_eq7(t)
    assert sec.status == "ok" and sec.data["n"] == t.num_rows - 4
    assert sec.data["n_points"] == 12 - 2
    assert sec.data["n_points"] == eq7_check(converged(t).kept).n_points


def test_trials_without_a_train_accuracy_are_left_out_and_counted():
    """In a run that records final_train_eval_acc, a trial without one (still running in a partial
    report, or finished under code that did not record it) is not fitted as if converged."""
    t = synthetic(np.random.default_rng(8), 2)
    t = t.append_column("lambda_max", t.column("lam"))
    accs = [None if i in (0, 1) else 1.0 for i in range(t.num_rows)]
    status = ["running" if i in (0, 1) else "finished" for i in range(t.num_rows)]
    t = _with_convergence(t.set_column(t.column_names.index("status"), "status", pa.array(status)), accs)
    conv = converged(t)
    ids = t.column("trial_id").to_pylist()
    assert conv.unmeasured == ids[:2] and not conv.left_out and conv.kept.num_rows == t.num_rows - 2
    assert "2 trial(s) without an eval-mode train accuracy" in conv.note()
    assert ratio_band_fit(conv.kept, "lambda_max", True).n == t.num_rows - 2


@pytest.mark.parametrize("n", [4, 5, 6])
def test_spearman_holds_its_level_with_few_points(n):
    """Few point means: Spearman's p is exact (every permutation), so a null relation is rejected
    at most at the nominal rate; a perfect order of 4 points has p = 1/12, not 0."""
    rng = np.random.default_rng(n)
    x = np.log10(np.array([0.01, 0.01, 0.04, 0.08, 0.16, 0.32])[:n] / 32)
    rejected = np.mean([spearman(x, rng.normal(size=n))[1] < 0.05 for _ in range(2000)])
    assert rejected <= 0.07, rejected
    assert spearman(np.arange(4.0), np.arange(4.0)) == (pytest.approx(1.0), pytest.approx(1 / 12))


def test_no_zero_width_interval_on_a_perfect_line():
    t = synthetic(np.random.default_rng(9), 2, point_sd=0.0, seed_sd=0.0)
    f = ratio_fit(t, "m")
    assert f.slope == pytest.approx(SLOPE) and all(math.isnan(v) for v in f.slope_ci) and "no scatter" in f.ci_note


def test_float_rounding_does_not_split_a_point():
    """0.1 * 3 and 0.3 are one learning rate: the seeds of that point stay one point."""
    t = synthetic(np.random.default_rng(10), 2, lrs=(0.3, 0.6, 1.2), sizes=(32, 64))
    lr = [0.1 * 3 if v == 0.3 and i % 2 else v for i, v in enumerate(t.column("lr").to_pylist())]
    assert 0.1 * 3 in lr and 0.3 in lr
    t = t.set_column(t.column_names.index("lr"), "lr", pa.array(lr))
    assert ratio_fit(t, "m").n_points == 6


def test_probe_section_flags_unbounded_standard_errors():
    """An infinite standard error (an interval without bound) is the least trustworthy estimate:
    it is flagged, not filtered out as if it were not there."""
    t = synthetic(np.random.default_rng(11), 1, lrs=(0.1,), sizes=(32, 64, 128))
    t = (
        t.append_column("lambda_max", t.column("lam"))
        .append_column("grad_noise_scale", pa.array([50.0, 60.0, 70.0]))
        .append_column("grad_noise_scale_stderr", pa.array([5.0, math.inf, 7.0]))
    )
    sec = section_probes(t)
    unbounded = t.column("trial_id")[1].as_py()
    assert sec.data["flagged"] == [f"{unbounded} (B_simple unbounded)"]
    assert sec.tables[0].rows[-1][2] == "max inf"
