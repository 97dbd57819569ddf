"""Adaptive search for the breakdown point beta* (``beta.search`` in a spec; docs/experiments.md).

beta* is the smallest beta > 1 whose maximum validation accuracy is significantly below beta = 1's:
the one-sided Welch test the breakdown section applies to a fixed ladder (``lrbs.analysis.breakdown``),
at ``lrbs.analysis.search_settings.ALPHA`` family-wise. The ladder corrects with Holm over all its betas; a
bisection does not know in advance which betas it will test, only how many at most (m, see
below), so each test is held to alpha / m (Bonferroni): a decision never changes when later
betas are tested, and whatever the search calls significant, Holm over the betas it tested
(the breakdown section on the same trials) calls significant too.

The candidates are a ladder beta_k = resolution^k, k = 0..K (beta_0 = 1, the reference). Per
training-set size the search bisects the index range: lo (known not significantly below) starts
at k = 0, hi (significantly below) at K + 1, "beyond the ladder", so beta_K itself is only
trained if every beta below it held; it tests mid = (lo + hi) // 2 and moves lo or hi until
hi = lo + 1. Then beta* = beta_hi, bracketed by (beta_lo, beta_hi]: within one resolution step.
The level: m = ceil(log2(K + 1)), the most betas such a bisection tests, so alpha / m per test.
With ``max_seeds`` above the starting seeds, a test that is undecided (p in [level,
undecided_p)) gets more seeds, for that beta and for the reference, before it is called "holds";
extra seeds come only from budget the rest of the bisection does not need. Looking again after
adding seeds is another test of the same hypothesis (optional stopping inflates false
breakdowns), so then the level is alpha / (m L), L the looks a point can get. (The reference's
added seeds re-test every earlier point, so with added seeds the bound is approximate; without
them it is exact.) A point whose trials errored as many times as it has seeds stops its size's
search (``_Untestable``): replacing them forever would spend the budget on, e.g., an S that does
not fit in memory.

``min_drop`` (``beta.min_drop``, accuracy points): a beta is "below" only when its drop from
beta = 1 is significantly larger than min_drop (``lrbs.analysis.breakdown.drop_test``), so beta* is
defined by a drop that matters rather than by whatever the seeds can resolve. Each test also
carries its effect size (the drop with its 95% interval) and its power (the seeds on each side
and the drop it detects with 80% power at its level, ``lrbs.analysis.breakdown.detectable_drop``).

The policy is a pure function of the finished trials (``search_step``): the state is never kept
anywhere else, so a search resumed after a crash carries on from the trials that finished, and
the report replays it from the trial table. Nothing here imports Ray.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lrbs.analysis.breakdown import breakdown, detectable_drop, drop_interval, drop_test
from lrbs.analysis.search_settings import SearchSettings, settings_from_dict

DIVERGED_OR_DONE = ("finished", "diverged")


@dataclass
class Outcome:
    """One trial the search launched: its point and, once it ended, its max val acc."""

    n_train: int | None
    k: int
    seed: int
    value: float | None = None  # max val acc over its epochs (None: not ended, or errored)
    ended: bool = False  # finished or diverged (it has its value), or errored (no value)


@dataclass
class Proposal:
    n_train: int | None
    k: int
    seeds: list[int]
    why: str


@dataclass
class BetaTest:
    beta: float
    n: int
    mean: float
    p: float  # one-sided Welch: mean below beta = 1's (by more than min_drop)
    level: float  # what p must be under (alpha / (probes x looks))
    significant: bool
    n_ref: int = 0  # seeds at beta = 1
    drop: float = math.nan  # mean at beta = 1 minus mean here, accuracy points
    drop_lo: float = math.nan  # its 95% Welch-Satterthwaite t interval, accuracy points
    drop_hi: float = math.nan
    detectable_drop: float = math.nan  # accuracy points detected with 80% power at ``level`` (the report fills it)


@dataclass
class SearchState:
    """Where the search stands at one training-set size."""

    n_train: int | None
    status: str  # searching | found | none_below (no breakdown up to the top) | stopped (budget)
    lo: int = 0  # index of the largest beta known not significantly below
    hi: int | None = None  # index of beta*, the smallest significantly below (None: not found)
    waiting: bool = False  # trials of this size are still running
    tests: dict[int, BetaTest] = field(default_factory=dict)
    reference: list[float] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _values(outcomes: list[Outcome], k: int) -> list[float]:
    return [o.value for o in outcomes if o.k == k and o.ended and o.value is not None and math.isfinite(o.value)]


def _running(outcomes: list[Outcome], k: int) -> bool:
    return any(o.k == k and not o.ended for o in outcomes)


def _tests(outcomes: list[Outcome], settings: SearchSettings) -> dict[int, BetaTest]:
    """Welch against beta = 1 for every beta > 1 with >= 2 values and nothing still running."""
    ref = np.array(_values(outcomes, 0))
    out = {}
    for k in sorted({o.k for o in outcomes if o.k > 0}):
        vals = np.array(_values(outcomes, k))
        if len(vals) < 2 or _running(outcomes, k):
            continue
        _, p = drop_test(vals, ref, settings.min_drop)
        drop, lo, hi = drop_interval(vals, ref)
        out[k] = BetaTest(
            beta=settings.betas[k],
            n=len(vals),
            mean=float(vals.mean()),
            p=float(p),
            level=settings.level,
            significant=bool(math.isfinite(p) and p < settings.level),
            n_ref=len(ref),
            drop=drop,
            drop_lo=lo,
            drop_hi=hi,
        )
    return out


def _more_seeds(outcomes: list[Outcome], k: int, target: int) -> list[int]:
    """Seeds for point k until it has ``target`` launched that did not error (errored ones are replaced)."""
    mine = [o for o in outcomes if o.k == k]
    alive = [o for o in mine if not o.ended or o.value is not None]
    used = {o.seed for o in mine}
    free = (s for s in itertools.count() if s not in used)
    return [next(free) for _ in range(target - len(alive))]


class _Untestable(Exception):
    """A point's trials errored ``len(seeds)`` times: replacing them again would spend the budget on it."""

    def __init__(self, k: int):
        self.k = k


def _errored(outcomes: list[Outcome], k: int) -> int:
    return sum(o.k == k and o.ended and o.value is None for o in outcomes)


def bisection_need(state: SearchState, settings: SearchSettings) -> int:
    """Trials a size still needs, at worst, to finish a plain bisection from where it stands."""
    if state.status != "searching":
        return 0
    first, K = len(settings.seeds), len(settings.betas) - 1
    hi = state.hi if state.hi is not None else K + 1
    steps = math.ceil(math.log2(hi - state.lo)) if hi - state.lo > 1 else 0
    return (steps + (1 if len(state.reference) < first else 0)) * first


def search_step(
    n_train: int | None, outcomes: list[Outcome], settings: SearchSettings, budget_left: int, reserve: int = 0
) -> tuple[SearchState, list[Proposal]]:
    """The state of the search at ``n_train`` and what to launch next (nothing while waiting).

    ``outcomes``: every trial launched at this size (ended or not). ``budget_left``: trials
    that may still be launched (shared by all sizes; a proposal never exceeds it). ``reserve``:
    what the other sizes' bisections may still need; added seeds never take it."""
    K = len(settings.betas) - 1
    first = len(settings.seeds)
    state = SearchState(n_train=n_train, status="searching", hi=None)
    proposals: list[Proposal] = []

    def want(k: int, target: int, why: str) -> bool:
        """Launch seeds for point k up to ``target`` (within the budget); False if the budget is out."""
        seeds = _more_seeds(outcomes, k, target)
        if not seeds:
            return True
        if _errored(outcomes, k) >= first:  # e.g. out of memory at this S: no more replacements
            raise _Untestable(k)
        if len(seeds) > budget_left - sum(len(p.seeds) for p in proposals):
            return False
        proposals.append(Proposal(n_train, k, seeds, why))
        return True

    def stop(message: str) -> tuple[SearchState, list[Proposal]]:
        state.status, state.message = "stopped", message
        return state, []

    def walk() -> tuple[SearchState, list[Proposal]]:
        """The bisection from the reference up, to the first thing to launch or wait for."""
        ref_values = _values(outcomes, 0)
        state.reference = ref_values
        lo, hi = 0, K + 1
        mid0 = (lo + hi) // 2
        if len(ref_values) < first or _running(outcomes, 0):
            # The reference and the first probe do not depend on each other: both at once.
            if not want(0, first, "reference (beta = 1)"):
                return stop(f"not found below beta = 1 (the budget cannot pay for the reference's {first} seeds)")
            if not want(mid0, first, f"first probe: the middle of the ladder (beta {settings.betas[mid0]:g})"):
                return stop("not found below beta = 1 (the budget cannot pay for a first probe)")
            state.waiting = True
            return state, proposals
        if len(ref_values) < 2:
            return stop("fewer than 2 reference trials ended with a value (errored)")
        tests = state.tests = _tests(outcomes, settings)
        while hi - lo > 1:
            state.lo, state.hi = lo, (hi if hi <= K else None)  # where it stands (also for an early return)
            mid = (lo + hi) // 2
            test = tests.get(mid)
            if _running(outcomes, mid):
                state.waiting = True
                return state, proposals
            if test is None:  # not launched yet (or its seeds errored): launch / replace them
                span = f"beta {settings.betas[lo]:g} holds" + (
                    f", beta {settings.betas[hi]:g} is below" if hi <= K else ""
                )
                if not want(mid, first, f"bisect: {span}; try beta {settings.betas[mid]:g}"):
                    if hi <= K:
                        return stop(
                            f"budget spent: beta* in ({settings.betas[lo]:g}, {settings.betas[hi]:g}], "
                            f"not resolved to one step"
                        )
                    return stop(
                        f"not found below beta = {settings.betas[lo]:g} (budget spent; "
                        f"beta {settings.betas[lo + 1]:g} to {settings.betas[K]:g} untested)"
                    )
                state.waiting = True
                return state, proposals
            undecided = not test.significant and test.p < settings.undecided_p
            if undecided and (test.n < settings.max_seeds or len(ref_values) < settings.max_seeds):
                n_more = min(settings.max_seeds, max(test.n, len(ref_values)) + first)
                # only from budget the bisection after this point still needs (worst case)
                steps_after = math.ceil(math.log2(max(hi - mid, mid - lo, 1))) if max(hi - mid, mid - lo) > 1 else 0
                spare = budget_left - steps_after * first - reserve
                why = f"undecided at beta {test.beta:g} (p = {test.p:.3g}, level {settings.level:.3g}): more seeds"
                extra = len(_more_seeds(outcomes, mid, n_more)) + len(_more_seeds(outcomes, 0, n_more))
                if extra and extra <= spare:
                    want(mid, n_more, why)
                    want(0, n_more, why + " (the reference)")
                    state.waiting = True
                    return state, proposals
                # no spare budget (or seeds): it counts as holding
            if test.significant:
                hi = mid
            else:
                lo = mid
        state.lo, state.hi = lo, (hi if hi <= K else None)
        if hi <= K:
            state.status = "found"
            state.message = (
                f"beta* = {settings.betas[hi]:g} (bracket: beta {settings.betas[lo]:g} holds, "
                f"{settings.betas[hi]:g} is below)"
            )
        else:
            state.status = "none_below"
            state.message = f"not found below beta = {settings.betas[K]:g} (every beta tested holds)"
        return state, []

    try:
        return walk()
    except _Untestable as exc:
        b, n = settings.betas, _errored(outcomes, exc.k)
        where = (
            f"beta* in ({b[state.lo]:g}, {b[state.hi]:g}], not resolved"
            if state.hi is not None
            else f"not found below beta = {b[state.lo]:g}"
        )
        return stop(
            f"{where}: beta {b[exc.k]:g} errored {n} times (lrbs status shows why; the search does not retry it again)"
        )


def plan_search(
    outcomes: list[Outcome], settings: SearchSettings, sizes: list[int | None]
) -> tuple[dict[int | None, SearchState], list[Proposal]]:
    """Every size's state and the proposals for all of them, within the shared budget (sizes in
    order: the first gets the budget first)."""
    left = settings.budget - len(outcomes)
    mine_of = {n: [o for o in outcomes if o.n_train == n] for n in sizes}
    # What each size's plain bisection may still need: one size's added seeds never take another's
    need = {n: bisection_need(search_step(n, mine_of[n], settings, 10**9, 10**9)[0], settings) for n in sizes}
    states: dict[int | None, SearchState] = {}
    proposals: list[Proposal] = []
    for n in sizes:
        reserve = sum(v for m, v in need.items() if m != n)
        state, mine = search_step(n, mine_of[n], settings, left, reserve)
        left -= sum(len(p.seeds) for p in mine)
        need[n] = max(0, need[n] - sum(len(p.seeds) for p in mine))  # launched now: no longer to reserve
        states[n] = state
        proposals += mine
    return states, proposals


def beta_index(betas: tuple[float, ...], beta: float) -> int | None:
    """The index of ``beta`` in the candidate ladder ``betas`` (equal to 5 digits), or None."""
    return next((k for k, b in enumerate(betas) if math.isclose(b, beta, rel_tol=1e-5)), None)


def size_of(row: dict[str, Any]) -> int | None:
    """A trial-table row's size key for the policy: its point's own n_train (None where the
    spec's ``beta.n_train`` is empty, as the searcher keys it)."""
    n = row.get("cfg.point.n_train")
    return int(n) if n is not None else None


def outcomes_from_trials(
    trials: pa.Table, betas: tuple[float, ...], errored: list[dict[str, Any]] | None = None
) -> list[Outcome]:
    """The ended trials of a run's trial table (``lrbs.rundir.tables.load_trials``) as outcomes:
    finished or diverged, with their max val acc; and ``errored`` (points of trials whose record
    says ERROR, ``lrbs.rundir.records``) as ended without a value, as the searcher counted them. The
    size is the point's own ``n_train`` (None where the spec's ``beta.n_train`` is empty)."""
    out: list[Outcome] = []
    for r in trials.to_pylist() if trials.num_rows else []:
        k = beta_index(betas, r["beta"]) if r.get("beta") is not None else None
        if k is None or r.get("status") not in DIVERGED_OR_DONE or r.get("cfg.point.search_step") is None:
            continue
        value = r.get("max_val_acc")
        out.append(
            Outcome(
                size_of(r), k, int(r["seed"]), value if value is not None and math.isfinite(value) else None, ended=True
            )
        )
    ended = {(o.n_train, o.k, o.seed) for o in out}
    for p in errored or []:
        k = beta_index(betas, p["beta"]) if p.get("beta") is not None else None
        if k is not None and "search_step" in p and (key := (p.get("n_train"), k, int(p["seed"]))) not in ended:
            out.append(Outcome(*key, value=None, ended=True))
            ended.add(key)
    return out


def search_report(metrics: pa.Table, trials: pa.Table, errored: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The search replayed from a run's tables: per size its state, bracket, trials spent
    against the fixed ladder's (same candidates and seeds), the noise-scale prediction and the
    breakdown section's beta* on the same trials; and the trace, one entry per step."""
    search = trials.filter(trials.column("cfg.point.search_step").is_valid())
    # The settings, from a search trial's config (the run may hold other trials too)
    rows_of = metrics.filter(pc.is_in(metrics.column("trial_id"), value_set=search.column("trial_id")))
    configs = [c for c in rows_of.column("config_json").to_pylist() if c]
    settings = settings_from_dict(json.loads(configs[-1])["beta_search"])
    outcomes = outcomes_from_trials(search, settings.betas, errored)
    rows = search.to_pylist()

    sizes = sorted({size_of(r) for r in rows}, key=lambda n: (n is None, n))
    states, _ = plan_search(outcomes, settings, sizes)
    for n, st in states.items():  # the power behind each decision (a simulation: the report's, not the policy's)
        mine = [o for o in outcomes if o.n_train == n]
        for k, test in st.tests.items():
            test.detectable_drop = detectable_drop(_values(mine, k), _values(mine, 0), test.level, settings.min_drop)
    found = breakdown(metrics, search, min_drop=settings.min_drop)
    crit = {res.n_train: res for res in found} if not isinstance(found, str) else {}
    # every (size, beta, seed) launched: rows in the table, or errored without a row
    launched = {(size_of(r), beta_index(settings.betas, r["beta"]), int(r["seed"])) for r in rows} | {
        (o.n_train, o.k, o.seed) for o in outcomes
    }
    per_size = []
    for n in sizes:
        st = states[n]
        b = settings.betas
        res = crit.get(n) if n is not None else next(iter(crit.values()), None)
        bracket = f"({b[st.lo]:g}, {b[st.hi]:g}]" if st.hi is not None else f"> {b[st.lo]:g}"
        per_size.append(
            {
                "n_train": n if n is not None else (rows[0]["n_train"] if rows else None),
                "status": st.status,
                "message": st.message or ("still searching" if st.status == "searching" else ""),
                "beta_lo": b[st.lo],
                "beta_star": b[st.hi] if st.hi is not None else None,
                "bracket": bracket,
                "trials": len({k for k in launched if k[0] == n}),
                "ladder_trials": len(b) * len(settings.seeds),
                "beta_crit": res.beta_crit if res is not None else None,
                "breakdown_beta_star": res.beta_star if res is not None else None,
                "tests": {f"{st.tests[k].beta:g}": asdict(st.tests[k]) for k in sorted(st.tests)},
            }
        )
    trace: dict[int, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (r["cfg.point.search_step"], r["seed"])):
        step = int(r["cfg.point.search_step"])
        n = size_of(r)
        t = trace.setdefault(
            step,
            {
                "step": step,
                "n_train": r["n_train"],
                "beta": r["beta"],
                "batch_size": r["batch_size"],
                "seeds": [],
                "why": r.get("cfg.point.search_why"),
                "mean": None,
                "p": None,
                "drop": None,
                "drop_ci": None,
                "decision": "",
            },
        )
        t["seeds"].append(int(r["seed"]))
        index = beta_index(settings.betas, r["beta"])
        step_test = states[n].tests.get(index) if n in states and index is not None else None
        if index == 0:
            vals = [o.value for o in outcomes if o.n_train == n and o.k == 0 and o.value is not None]
            t["mean"] = float(np.mean(vals)) if vals else None
            t["decision"] = "reference"
        elif step_test is not None:
            t["mean"], t["p"], t["drop"] = step_test.mean, step_test.p, step_test.drop
            t["drop_ci"] = [step_test.drop_lo, step_test.drop_hi]
            t["decision"] = (
                "holds"
                if not step_test.significant
                else "below beta = 1"
                if settings.min_drop is None
                else f"below beta = 1 by > {settings.min_drop:g} points"
            )
        else:
            t["decision"] = (
                "running"
                if any(x.get("status") == "running" for x in rows if x["trial_id"] == r["trial_id"])
                else "no test (fewer than 2 values)"
            )
    return {
        "betas": list(settings.betas),
        "resolution": settings.betas[1] if len(settings.betas) > 1 else None,
        "alpha": settings.alpha,
        "level": settings.level,
        "probes": settings.probes,
        "looks": settings.looks,
        "budget": settings.budget,
        "min_drop": settings.min_drop,
        "sizes": per_size,
        "trace": [trace[k] for k in sorted(trace)],
    }
