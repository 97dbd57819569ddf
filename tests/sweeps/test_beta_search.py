"""Adaptive beta* search: the policy on synthetic accuracy curves with a known
breakdown (no training), the spec's bad input, and (slow) a small real search end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lrbs.analysis.beta_search import Outcome, plan_search
from lrbs.analysis.search_settings import SearchSettings, ladder, settings_from_dict, settings_to_dict

ROOT_SPECS = Path(__file__).resolve().parents[2] / "sweeps"
LADDER = ladder(2**0.5, 64.0)  # 1, 1.41, ..., 64: 13 candidates


def simulate(
    true_beta: float,
    settings: SearchSettings,
    sizes=(None,),
    noise: float = 0.004,
    drop: float = 0.05,
    seed: int = 0,
    fail_every: int = 0,
    curve=None,
):
    """Run the policy to the end against max val acc = 0.9 below ``true_beta`` and 0.9 - drop at or
    above it (per size: the size's own breakdown if ``true_beta`` is a dict; ``curve``: beta -> mean
    max val acc instead), Gaussian noise per seed. Launches run in rounds (everything proposed ends
    before the next call), as a cluster with room for all of them would; ``fail_every``: every n-th
    launch errors (no value)."""
    rng = np.random.default_rng(seed)
    outcomes: list[Outcome] = []
    rounds = 0
    while True:
        states, proposals = plan_search(outcomes, settings, list(sizes))
        if not proposals:
            return states, outcomes, rounds
        rounds += 1
        assert rounds < 100
        for p in proposals:
            for s in p.seeds:
                b = settings.betas[p.k]
                edge = true_beta[p.n_train] if isinstance(true_beta, dict) else true_beta
                errored = fail_every and (len(outcomes) + 1) % fail_every == 0
                mean = curve(b) if curve is not None else 0.9 - (drop if b >= edge else 0.0)
                value = None if errored else mean + noise * rng.standard_normal()
                outcomes.append(Outcome(p.n_train, p.k, s, value, ended=True))


def settings(**kw) -> SearchSettings:
    return SearchSettings(**{"betas": LADDER, "seeds": (0, 1, 2), "max_seeds": 3, "budget": 10_000, **kw})


REPEATS = 20  # searches per case, each with its own noise: the test is statistical (alpha = 0.05)


@pytest.mark.parametrize("true_k", range(1, len(LADDER)))
def test_search_brackets_a_known_breakdown_within_one_step_at_under_half_the_ladder(true_k):
    """A drop of 0.05 at candidate ``true_k`` (noise sd 0.004, 3 seeds): the bracket is exactly
    (beta_{k-1}, beta_k] unless a test of a beta that holds came out significant (a false
    breakdown: at most alpha per search, family-wise), never above the edge; every search uses at
    most half the trials of the ladder that resolves beta* to the same factor."""
    st = settings()
    ladder_trials = len(LADDER) * len(st.seeds)
    exact = 0
    for seed in range(REPEATS):
        states, outcomes, _ = simulate(LADDER[true_k] * 0.99, st, seed=seed)  # breaks at exactly true_k
        state = states[None]
        assert state.status == "found" and state.hi <= true_k and state.hi == state.lo + 1
        exact += state.hi == true_k
        assert len(outcomes) <= ladder_trials / 2, (len(outcomes), ladder_trials)
    assert exact >= REPEATS - 3, exact
    state = simulate(LADDER[true_k] * 0.99, st, noise=0.0001)[0][None]  # noise far below the drop
    assert (state.lo, state.hi) == (true_k - 1, true_k)
    assert LADDER[state.hi] / LADDER[state.lo] == pytest.approx(2**0.5, rel=1e-4)


def test_no_breakdown_up_to_the_top_says_so():
    states, outcomes, _ = simulate(1e9, settings(), noise=0.0001)
    assert states[None].status == "none_below" and states[None].lo == len(LADDER) - 1
    assert "not found below beta = 64" in states[None].message
    assert len(outcomes) <= len(LADDER) * 3 / 2


def test_sizes_search_in_parallel_and_share_the_budget():
    st = settings()
    edges = {400: LADDER[3] * 0.99, 1400: LADDER[9] * 0.99}
    states, outcomes, rounds = simulate(edges, st, sizes=(400, 1400), noise=0.0001)
    assert (states[400].hi, states[1400].hi) == (3, 9)
    assert rounds <= 6  # one point per size per round: log2(13) + 1 rounds, not one size after the other
    small = settings(budget=12)  # the reference and a first probe at each size, no more
    states, outcomes, _ = simulate(edges, small, sizes=(400, 1400), noise=0.0001)
    assert len(outcomes) <= 12 and {s.status for s in states.values()} == {"stopped"}
    assert [s.message for s in states.values()] == [
        "budget spent: beta* in (1, 8], not resolved to one step",
        "not found below beta = 8 (budget spent; beta 11.3137 to 64 untested)",
    ]


def test_undecided_tests_get_more_seeds_and_decide():
    """A drop of about three noise sd: with 3 seeds the test is often undecided; with max_seeds 9
    the search adds seeds (the point's and the reference's) and brackets the edge more often
    than without, every look at alpha / (4 probes x 3 looks)."""
    found = {}
    for max_seeds in (3, 9):
        st = settings(max_seeds=max_seeds)
        assert st.probes == 4 and st.level == pytest.approx(0.05 / 4 / (1 if max_seeds == 3 else 3))
        hits = 0
        grew = 0
        for seed in range(REPEATS):
            states, outcomes, _ = simulate(LADDER[6] * 0.99, st, noise=0.01, drop=0.03, seed=seed)
            hits += states[None].hi == 6 and states[None].lo == 5
            grew += max(sum(o.k == k for o in outcomes) for k in range(len(LADDER))) > 3
        found[max_seeds] = hits
        assert (grew > 0) == (max_seeds > 3)
    assert found[9] > found[3], found


def test_min_drop_makes_the_search_pass_a_small_significant_drop_and_stop_at_a_large_one():
    """A graded decline: 1 point below beta = 1 from beta 2.83 on, 8 points from beta 16 on, seeds
    0.1 point apart. By default the 1-point drop is a breakdown (beta* = 2.83); with min_drop = 3
    points the search brackets the 8-point drop (beta* = 16). Each test's drop and interval are
    scipy's Welch interval x100 on the seeds the policy saw, and its p the test of a drop > 3 points."""

    def curve(beta: float) -> float:
        return 0.9 - (0.01 if beta >= 2.8 else 0.0) - (0.07 if beta >= 15.9 else 0.0)

    found = {}
    for min_drop in (None, 3.0):
        st = settings(min_drop=min_drop)
        states, outcomes, _ = simulate(None, st, noise=0.001, curve=curve)
        state = states[None]
        found[min_drop] = (state.status, st.betas[state.lo], st.betas[state.hi])
        ref = [o.value for o in outcomes if o.k == 0]
        for k, test in state.tests.items():
            vals = [o.value for o in outcomes if o.k == k]
            ci = stats.ttest_ind(ref, vals, equal_var=False).confidence_interval(0.95)
            assert (test.drop_lo, test.drop_hi) == pytest.approx((100 * ci.low, 100 * ci.high), rel=1e-9)
            assert (test.n, test.n_ref) == (3, 3)
            shifted = np.array(vals) + (min_drop or 0) / 100
            assert test.p == pytest.approx(
                stats.ttest_ind(shifted, ref, equal_var=False, alternative="less").pvalue, rel=1e-9
            )
    assert found == {None: ("found", 2, 2.82843), 3.0: ("found", 11.3137, 16)}, found


def graded_beta_stars(
    n_seeds: int, min_drop: float | None, repeats: int, slope: float = 1.5, sd: float = 1.5
) -> list[float]:
    """beta* of ``repeats`` searches (inf: none found) on a graded decline: the drop from beta = 1
    is ``slope`` accuracy points per doubling of beta, seed sd ``sd`` points, ``n_seeds`` seeds per
    point. docs/experiments.md quotes the medians (200 searches per case)."""
    out = []
    for rep in range(repeats):
        st = settings(seeds=tuple(range(n_seeds)), max_seeds=n_seeds, min_drop=min_drop)
        states, _, _ = simulate(None, st, noise=sd / 100, seed=rep, curve=lambda b: 0.9 - slope / 100 * np.log2(b))
        out.append(LADDER[states[None].hi] if states[None].hi is not None else np.inf)
    return out


def test_min_drop_changes_what_beta_star_estimates_on_a_graded_decline():
    """No edge, a decline of 1.5 points per doubling (seed sd 1.5 points): plain beta* falls as
    seeds are added (it estimates the first beta with any drop); with min_drop = 3 points beta* is
    the first beta whose drop is significantly above 3 points, so it stays above beta = 4 (drop
    exactly 3) but for false breakdowns (each test at alpha / 4), approaching 5.66 from above."""
    plain = {n: np.median(graded_beta_stars(n, None, 30)) for n in (3, 10)}
    strict = graded_beta_stars(10, 3.0, 30)
    assert plain[10] < plain[3] and plain[10] < 4
    assert sum(b <= 4 for b in strict) <= 2 and np.median(strict) > plain[10]


def test_errored_trials_are_replaced_not_repeated():
    states, outcomes, _ = simulate(LADDER[4] * 0.99, settings(), fail_every=5, noise=0.0001)
    assert states[None].status == "found" and states[None].hi == 4
    keys = [(o.k, o.seed) for o in outcomes]
    assert len(keys) == len(set(keys))  # a (beta, seed) never twice: a new seed replaces an errored one
    assert any(o.value is None for o in outcomes)


BASE = {
    "name": "bs",
    "dataset": {"name": "digits", "val_fraction": 0.2},
    "model": {"name": "mlp", "options": {"depth": 2, "width": 16}},
    "train": {"epochs": 2},
    "beta": {"lr0": 0.05, "batch_size0": 8, "n_train": [400, 1400], "search": {}},
    "grid": {"seed": [0, 1]},
}


def with_beta(**beta) -> dict:
    search = beta.pop("search", {})
    return {**BASE, "beta": {**BASE["beta"], **beta, "search": {**BASE["beta"]["search"], **(search or {})}}}


@pytest.mark.parametrize(
    "data, needle",
    [
        (with_beta(values=[1, 2]), "beta.values: conflicts with beta.search"),
        ({**BASE, "beta": {"lr0": 0.05, "batch_size0": 8}}, "beta.values: required"),
        (
            with_beta(batch_size0=500),
            "beta.batch_size0: 500 is larger than the smallest training set (400 examples): "
            "the search would have no beta = 1 reference",
        ),
        (with_beta(search={"budget": 7}), "beta.search.budget: 7 trials cannot bracket beta* (needs >= 8"),
        (
            with_beta(search={"max_beta": 64}),
            "beta.search.max_beta: beta = 64 means S = 512, larger than the smallest training set (400 examples)",
        ),
        (with_beta(search={"max_beta": 1.2}), "beta.search.max_beta: must be >= the resolution"),
        (with_beta(search={"resolution": 1.0}), "beta.search.resolution: must be a factor > 1"),
        (
            with_beta(search={"resolution": 1.000001}),
            "beta.search.resolution: x1 up to beta 51 is 3,931,828 candidates",
        ),
        (
            with_beta(search={"max_beta": 1e308}),
            "beta.search.max_beta: beta = 1e+308 means S = 8 x 1e+308, larger than",
        ),
        (
            with_beta(batch_size0=2, search={"resolution": 1.1}),
            "beta.search.resolution: beta 1 and 1.1 both round to S = 2",
        ),
        ({**with_beta(), "grid": {"seed": [0]}}, "grid.seed: beta.search needs >= 2 seeds"),
        (with_beta(search={"max_seeds": 1}), "beta.search.max_seeds: must be >= the 2 seeds"),
        (with_beta(search={"alpha": 0.1}), "beta.search.alpha: unknown key"),
        (with_beta(min_drop=-1), "beta.min_drop: must be a drop in accuracy points, >= 0 and < 100 (got -1.0)"),
        (with_beta(min_drop=100), "beta.min_drop: must be a drop in accuracy points, >= 0 and < 100 (got 100.0)"),
        (with_beta(min_drop=float("nan")), "beta.min_drop: must be a finite number (got nan)"),
        (with_beta(min_drop="big"), "beta.min_drop: must be a number (got 'big')"),
        (
            {**BASE, "beta": {"lr0": 0.05, "batch_size0": 8, "values": [1, 2], "min_drop": -0.5}},
            "beta.min_drop: must be a drop in accuracy points, >= 0 and < 100 (got -0.5)",
        ),
    ],
)
def test_bad_search_specs_are_one_line_naming_the_field(tmp_path, capsys, data, needle):
    import yaml

    from lrbs.sweeps.cli import main

    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(data))
    assert main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and "bad.yaml" in err, err
    assert not (tmp_path / "runs").exists()


def test_search_spec_round_trips_and_its_ladder_is_the_comparison():
    from lrbs.sweeps.grid import count_points, expand_points, search_settings
    from lrbs.sweeps.spec_load import spec_from_dict

    spec = spec_from_dict(with_beta())
    st = search_settings(spec)
    assert st.betas[0] == 1 and st.betas[-1] == pytest.approx(45.2548) and len(st.betas) == 12  # S = 362 <= 400
    assert st.budget == count_points(spec) == len(expand_points(spec)) == 12 * 2 * 2  # the ladder's count
    assert spec_from_dict(spec.to_dict()) == spec and "values" not in spec.to_dict()["beta"]
    assert ladder(2**0.5, 45.2548)[-1] == 45.2548  # a max_beta copied from a printed label keeps that candidate


def test_min_drop_rides_in_the_spec_the_search_settings_and_the_trial_config():
    """``beta.min_drop`` round-trips through the spec copy (0 kept: it is a value), reaches the
    search's settings and every search trial's config (``beta_search``, what the report replays),
    or a ladder's config (``beta_test``, what the breakdown section reads); without it, configs
    carry no such key and old settings (no ``min_drop``) read back as None."""
    from lrbs.sweeps.grid import search_settings
    from lrbs.sweeps.param_space import to_param_space
    from lrbs.sweeps.spec_load import spec_from_dict

    for value in (0.0, 2.5):
        spec = spec_from_dict(with_beta(min_drop=value))
        assert spec.beta.min_drop == value and spec_from_dict(spec.to_dict()) == spec
        st = search_settings(spec)
        assert st.min_drop == value and settings_from_dict(settings_to_dict(st)) == st
        assert to_param_space(spec, "v")["beta_search"]["min_drop"] == value
    plain = spec_from_dict(with_beta())
    assert plain.beta.min_drop is None and "min_drop" not in plain.to_dict()["beta"]
    assert "min_drop" not in to_param_space(plain, "v")["beta_search"]
    old = settings_to_dict(search_settings(plain))
    assert settings_from_dict(old).min_drop is None
    ladder_spec = {**BASE, "beta": {"lr0": 0.05, "batch_size0": 8, "values": [1, 2], "n_train": [400]}}
    assert to_param_space(spec_from_dict({**ladder_spec, "beta": {**ladder_spec["beta"], "min_drop": 1}}), "v")[
        "beta_test"
    ] == {"min_drop": 1.0}
    assert "beta_test" not in to_param_space(spec_from_dict(ladder_spec), "v")


@pytest.mark.slow
def test_search_runs_end_to_end_and_resumes_after_sigkill_repeating_no_ended_trial(tmp_path):
    """A real search (Ray, digits MLP): SIGKILL the driver once its second round has started,
    ``lrbs resume``: the trials that had ended are not trained again (their rows untouched), no
    (beta, seed) is trained under two trial ids, the search ends with its bracket, and the
    report has the section, with the spec's ``min_drop`` carried through the run, the resume and
    the replay."""
    import os
    import subprocess
    import sys
    import time

    from lrbs.analysis.beta_search import search_report
    from lrbs.analysis.report import write_reports
    from lrbs.rundir.tables import load_metrics, load_trials
    from tests.conftest import ROOT, tiny_spec, write_yaml
    from tests.sweeps.test_remote import _kill_session

    spec = write_yaml(
        tmp_path / "bk.yaml",
        tiny_spec(
            "bk",
            train={"epochs": 6},
            resilience={"checkpoint_every": 1},
            grid={"seed": [0, 1, 2]},
            beta={"lr0": 0.1, "batch_size0": 8, "n_train": [400], "search": {"max_beta": 32}, "min_drop": 1},
        ),
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "lrbs", "run", str(spec), "--storage", str(tmp_path / "runs"), "--no-report"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while "beta search: step 2:" not in log.read_text():  # round 2: round 1's trials ended
                assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        finally:
            _kill_session(driver)
    run = tmp_path / "runs" / "bk"
    before = load_trials(run)
    ended = {r["trial_id"] for r in before.to_pylist() if r["status"] in ("finished", "diverged")}
    assert len(ended) >= 6  # the reference's and the first probe's seeds
    rows_before = {
        r["trial_id"] + f"/{r['epoch']}": r["written_at"]
        for r in load_metrics(run).to_pylist()
        if r["trial_id"] in ended
    }

    out = subprocess.run(
        [sys.executable, "-m", "lrbs", "resume", str(run), "--no-report"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "beta search: n_train=400: " in out.stdout, out.stdout

    metrics = load_metrics(run)
    trials = load_trials(run)
    rows_after = {
        r["trial_id"] + f"/{r['epoch']}": r["written_at"] for r in metrics.to_pylist() if r["trial_id"] in ended
    }
    assert rows_after == rows_before  # the ended trials were not trained again
    keys = [(r["beta"], r["seed"]) for r in trials.to_pylist()]
    assert len(keys) == len(set(keys)) and all(r["status"] in ("finished", "diverged") for r in trials.to_pylist())
    rep = search_report(metrics, trials)
    (size,) = rep["sizes"]
    assert size["status"] in ("found", "none_below") and size["trials"] == len(keys) <= size["ladder_trials"] / 2
    assert [t["step"] for t in rep["trace"]] == list(range(len(rep["trace"])))  # steps continue across the kill
    write_reports(run, ("md",))
    md = (run / "report.md").read_text()
    assert "Adaptive search for beta*" in md and size["message"] in md
    assert rep["min_drop"] == 1.0 and "against beta = 1 by more than 1 accuracy points" in md
    assert "detectable drop (80% power)" in md


@pytest.mark.parametrize("twin", ["small", "mnist1d"])
def test_fig5_search_twin_and_its_ladder_share_candidates_seeds_and_everything_else(twin):
    """docs/experiments.md compares these runs: each ladder must be exactly the candidates its
    search picks from, with the same seeds, model, data and schedule."""
    from lrbs.sweeps.grid import search_settings
    from lrbs.sweeps.spec_load import load_spec

    search = load_spec(ROOT_SPECS / f"fig5_search_{twin}.yaml")
    ladder = load_spec(ROOT_SPECS / f"fig5_ladder_{twin}.yaml")
    assert ladder.beta.values == search_settings(search).betas
    assert search_settings(search).seeds == ladder.grid.seed and search.beta.n_train == ladder.beta.n_train
    for part in ("dataset", "model", "train", "schedule", "curvature"):
        assert getattr(search, part) == getattr(ladder, part), part
    assert (search.beta.lr0, search.beta.batch_size0) == (ladder.beta.lr0, ladder.beta.batch_size0)


def test_report_replays_the_search_from_a_frozen_real_run():
    """tests/fixtures/search: the rows of a real `lrbs run sweeps/fig5_search_small.yaml`. The
    report's replay gives its bracket, trial counts and trace; each decision's p is scipy's
    one-sided Welch test on the trials' max val acc, against the level in the settings."""
    from scipy import stats

    from lrbs.analysis.beta_search import search_report
    from lrbs.rundir.tables import load_metrics, load_trials

    fixture = ROOT_SPECS.parent / "tests" / "fixtures" / "search"
    metrics, trials = load_metrics(fixture), load_trials(fixture)
    rep = search_report(metrics, trials)
    by_n = {s["n_train"]: s for s in rep["sizes"]}
    assert (by_n[400]["status"], by_n[400]["bracket"]) == ("found", "(16, 22.6274]")
    assert by_n[1400]["status"] == "none_below" and by_n[400]["breakdown_beta_star"] == pytest.approx(22.6274)
    assert [by_n[n]["trials"] for n in (400, 1400)] == [25, 25] and by_n[400]["ladder_trials"] == 60
    assert rep["level"] == pytest.approx(0.05 / 4) and len(rep["trace"]) == 10
    rows = trials.to_pylist()
    for step in rep["trace"]:
        if step["decision"] in ("holds", "below beta = 1"):
            vals = [r["max_val_acc"] for r in rows if r["n_train"] == step["n_train"] and r["beta"] == step["beta"]]
            ref = [r["max_val_acc"] for r in rows if r["n_train"] == step["n_train"] and r["beta"] == 1.0]
            p = stats.ttest_ind(vals, ref, equal_var=False, alternative="less").pvalue
            assert step["p"] == pytest.approx(p, rel=1e-9)
            assert (step["decision"] == "below beta = 1") == (p < rep["level"])
            ci = stats.ttest_ind(ref, vals, equal_var=False).confidence_interval(0.95)
            assert step["drop_ci"] == pytest.approx([100 * ci.low, 100 * ci.high], rel=1e-9)
    # no min_drop in this run's config: every test is of any drop, each with the drop it could detect
    assert rep["min_drop"] is None
    assert all(
        t["detectable_drop"] > 0 and t["n"] == t["n_ref"] == 5 for s in rep["sizes"] for t in s["tests"].values()
    )


def test_a_beta_that_always_errors_stops_its_search_without_spending_the_budget():
    """E.g. out of memory at large S: after len(seeds) errors at one beta the search stops there
    with a message naming it, instead of replacing its seeds until the budget is gone."""
    st = settings(budget=200)
    outcomes: list[Outcome] = []
    for _ in range(30):
        states, proposals = plan_search(outcomes, st, [None])
        if not proposals:
            break
        for p in proposals:
            for s in p.seeds:
                value = None if st.betas[p.k] >= 8 else 0.9 + 0.0001 * s  # beta >= 8 always errors
                outcomes.append(Outcome(None, p.k, s, value, ended=True))
    state = states[None]
    assert state.status == "stopped" and "beta 8 errored 3 times" in state.message, state.message
    assert len(outcomes) <= 3 * 4 + 3  # reference, the first probe (errored) once, replaced once: not 200


def test_added_seeds_never_take_another_sizes_bisection_budget():
    """Budget for exactly two plain bisections and max_seeds above the seeds: an undecided test at
    one size gets no added seeds the other size's bisection needs; both sizes still finish."""
    st = settings(max_seeds=9, budget=30)
    for seed in range(10):
        states, outcomes, _ = simulate(
            {400: LADDER[6] * 0.99, 1400: LADDER[9] * 0.99}, st, sizes=(400, 1400), noise=0.01, drop=0.03, seed=seed
        )
        assert len(outcomes) <= 30
        assert all(s.status in ("found", "none_below") for s in states.values()), [s.message for s in states.values()]


def test_errored_trials_count_as_ended_without_a_value_in_the_replay():
    """As the live searcher counts them (sweeps/beta_searcher.py): a trial whose record says
    ERROR is an ended (beta, seed) without a value, so a resumed search and the report's replay
    spend the same budget and replace the same seeds, and never continue it."""
    import pyarrow as pa

    from lrbs.analysis.beta_search import outcomes_from_trials

    trials = pa.table(
        {
            "trial_id": ["a", "b"],
            "beta": [1.0, 1.0],
            "seed": [0, 1],
            "status": ["finished"] * 2,
            "max_val_acc": [0.9, 0.91],
            "n_train": [400, 400],
            "cfg.point.n_train": [400, 400],
            "cfg.point.search_step": [0, 0],
        }
    )
    errored = [
        {"beta": 8.0, "seed": 0, "n_train": 400, "search_step": 1},
        {"beta": 1.0, "seed": 1, "n_train": 400, "search_step": 0},
    ]  # its pack-mate ended: stays ended
    got = outcomes_from_trials(trials, LADDER, errored)
    assert [(o.n_train, o.k, o.seed, o.value) for o in got] == [(400, 0, 0, 0.9), (400, 0, 1, 0.91), (400, 6, 0, None)]
    st = settings(seeds=(0, 1), max_seeds=2)
    _, proposals = plan_search(got, st, [400])
    assert [(p.k, p.seeds) for p in proposals] == [(6, [1, 2])]  # beta 8's errored seed 0 replaced by seed 2
