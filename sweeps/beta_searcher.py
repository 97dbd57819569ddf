"""``beta.search`` as a Ray Tune search algorithm: the policy of ``analysis/beta_search.py``
proposes the next betas from the trials that ended, this ``Searcher`` turns them into packs
(the seeds of one beta share lr and S: one Tune trial, ``lrbs.sweeps.packing``) and hands Tune one
pack per ``suggest``.

It runs in the driver (Tune's controller) like any searcher, so a search runs on a cluster as
any sweep does. Its state is only what the trials wrote: ``lrbs resume`` builds a new searcher
from the run directory's trial table (ended trials) and the trials it continues (queued first),
so a resumed search repeats no trial that ended. Every point it launches carries
``search_step`` and ``search_why`` (in its config, hence in every metric row's provenance and
the trial table): the report's trace of which beta when, and why.
"""

from __future__ import annotations

import math
from typing import Any, TextIO

import pyarrow as pa
from ray.tune.search import Searcher

from lrbs.analysis.beta_search import Outcome, SearchState, beta_index, outcomes_from_trials, plan_search
from lrbs.rundir.points import from_config, to_config
from lrbs.rundir.records import ERROR, TrialRecord, current_records
from lrbs.rundir.records import FINAL_ROW_STATUSES as ENDED
from lrbs.sweeps.grid import beta_point, search_settings
from lrbs.sweeps.packing import pack_cap, plan_packs
from lrbs.sweeps.progress import say
from lrbs.sweeps.spec import SweepSpec


def _member_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member's row of a trial's result. Tune hands searchers the result flattened
    (``pack_rows/<j>/val_acc``); callbacks get it nested (``pack_rows: {j: row}``)."""
    if isinstance(result.get("pack_rows"), dict):
        return list(result["pack_rows"].values())
    rows: dict[str, dict[str, Any]] = {}
    for key, value in result.items():
        if key.startswith("pack_rows/"):
            _, j, name = key.split("/", 2)
            rows.setdefault(j, {})[name] = value
    return list(rows.values())


class BetaSearcher(Searcher):
    """Proposes packs until every training-set size's search has ended (``Searcher.FINISHED``):
    the point source of a ``beta.search`` spec (``lrbs.sweeps.runner.PointSource``). ``total``:
    the points it may train (default its budget)."""

    at_most = True

    def __init__(
        self,
        spec: SweepSpec,
        done: list[Outcome] | None = None,
        queued: list[list[dict[str, Any]]] | None = None,
        first_step: int = 0,
        total: int | None = None,
    ):
        super().__init__()
        assert spec.beta is not None and spec.beta.search is not None  # a beta.search spec
        self.spec, self.beta, self.resolution = spec, spec.beta, spec.beta.search.resolution
        self.settings = search_settings(spec)
        self.sizes: list[int | None] = [*self.beta.n_train] or [None]
        self.outcomes: list[Outcome] = list(done or [])
        self.queue: list[list[dict[str, Any]]] = [list(p) for p in queued or []]  # continued by lrbs resume: first
        ended = {(o.n_train, o.k, o.seed) for o in self.outcomes}
        for pack in self.queue:  # members that ended already (a pack's other member did not) stay ended
            self.outcomes += [self._outcome(p) for p in pack if self._key(p) not in ended]
        self.live: dict[str, list[Outcome | None]] = {}  # Tune trial id -> its members' outcomes
        self.best: dict[str, dict[int, float]] = {}  # Tune trial id -> member -> max val acc so far
        self.final: dict[str, dict[int, str | None]] = {}  # Tune trial id -> member -> last status
        self.step = first_step
        self.out: TextIO | None = None
        self.states: dict[int | None, SearchState] = {}
        self.packs: list[list[dict[str, Any]]] = []  # none in the param space: suggest() hands out each pack
        self.total = self.settings.budget if total is None else total

    def describe(self) -> str:
        st, sizes = self.settings, len(self.sizes)
        return (
            f"beta search over {len(st.betas)} betas (1 to {st.betas[-1]:g}, x{self.resolution:.4g}) "
            f"at {sizes} training-set size(s), at most {self.total} trials"
        )

    def tune_config(self, out: TextIO) -> dict[str, Any]:
        """Tune asks for trials until the search says FINISHED (``num_samples`` -1). Tune keeps
        only one trial of a plain Searcher pending (one placement group asked of an autoscaler at
        a time); a bound on live trials lifts that: at most a point and the reference per size at
        once, each in ceil(seeds / pack size) packs."""
        self.out = out
        packs_per_point = math.ceil(self.settings.max_seeds / max(1, pack_cap(self.spec)))
        return {
            "num_samples": -1,
            "reuse_actors": True,  # as a grid's (lrbs.sweeps.runner.GridPoints)
            "search_alg": self,
            "max_concurrent_trials": 2 * len(self.sizes) * packs_per_point,
        }

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any) -> bool:
        return True  # no metric to optimize: the policy reads val_acc from every result

    def _key(self, point: dict[str, Any]) -> tuple[Any, ...]:
        return point.get("n_train"), beta_index(self.settings.betas, point["beta"]), int(point["seed"])

    def _outcome(self, point: dict[str, Any]) -> Outcome:
        return Outcome(*self._key(point))

    def _say(self, text: str) -> None:
        say(f"[lrbs] beta search: {text}", self.out)  # above the progress line, on a terminal

    def _propose(self) -> None:
        self.states, proposals = plan_search(self.outcomes, self.settings, self.sizes)
        for prop in proposals:
            beta = self.settings.betas[prop.k]
            points = [
                {
                    **beta_point(self.beta, beta, seed, prop.n_train),
                    "search_step": self.step,
                    "search_why": prop.why,
                }
                for seed in prop.seeds
            ]
            where = f"n_train={prop.n_train} " if prop.n_train is not None else ""
            self._say(
                f"step {self.step}: {where}beta {beta:g} (S={points[0]['batch_size']}), seeds {prop.seeds}: {prop.why}"
            )
            self.step += 1
            self.outcomes += [self._outcome(p) for p in points]
            self.queue += plan_packs(self.spec, points)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.queue:
            self._propose()
        if not self.queue:
            if any(not o.ended for o in self.outcomes):
                return None  # waiting for running trials
            for n, state in self.states.items():
                self._say(f"{'n_train=' + str(n) + ': ' if n is not None else ''}{state.message}")
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's sentinel, a str
        pack = self.queue.pop(0)
        running = {(o.n_train, o.k, o.seed): o for o in self.outcomes if not o.ended}
        self.live[trial_id] = [running.get(self._key(p)) for p in pack]  # None: a member that ended already
        return {"point": to_config(pack)}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        best = self.best.setdefault(trial_id, {})
        final = self.final.setdefault(trial_id, {})
        for r in _member_rows(result):
            j, acc = r.get("member", 0), r.get("val_acc")
            if acc is not None and math.isfinite(acc):
                best[j] = max(acc, best.get(j, -math.inf))
            final[j] = r.get("status")

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result:
            self.on_trial_result(trial_id, result)
        best, final = self.best.pop(trial_id, {}), self.final.pop(trial_id, {})
        for j, outcome in enumerate(self.live.pop(trial_id, [])):
            if outcome is None:
                continue
            outcome.ended = True
            if final.get(j) in ENDED:  # an errored member has no value: the policy replaces its seed
                outcome.value = best.get(j)


def search_resumption(
    spec: SweepSpec,
    trials: pa.Table,
    packs: list[list[dict[str, Any]]],
    records: dict[str, TrialRecord],
    restart_errored: bool = False,
) -> BetaSearcher:
    """The searcher of ``lrbs resume``: the ended trials (from the trial table) done, the packs the
    resume continues queued first, steps numbered on; its ``total`` is how many trials the session
    may still train (0: the search has ended, nothing to start)."""
    settings = search_settings(spec)
    errored = (
        []
        if restart_errored
        else [p for r in current_records(records) if r.status == ERROR for p in from_config(r.point)]
    )
    done = outcomes_from_trials(trials, settings.betas, errored)
    steps = [p.get("search_step", -1) for r in records.values() for p in from_config(r.point)]
    searcher = BetaSearcher(spec, done, packs, max(steps, default=-1) + 1)
    ended = not packs and not plan_search(done, settings, searcher.sizes)[1]
    searcher.total = 0 if ended else max(sum(len(pack) for pack in packs), 1, settings.budget - len(done))
    return searcher
