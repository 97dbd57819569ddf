"""Progress lines while a sweep runs (Ray's own table is turned off: verbose=0)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ray.tune import Callback


@dataclass
class PhaseTimes:
    """Where a sweep's wall time went (seconds), printed at the end of ``lrbs run``/``resume``."""
    start: float = 0.0            # process start-up to the driver's first line: imports, spec, data check
    ray: float = 0.0              # starting (or joining) Ray
    worker_start: float = 0.0     # first trial: Tuner start to its first result, less that epoch's time
    trials: float = 0.0           # Tuner.fit(), start to end
    report: float = 0.0           # end-of-run report (html, json, md)

    def line(self, total: float) -> str:
        return (f"[lrbs] time: {total:.1f} s = start-up {self.start:.1f} s + Ray {self.ray:.1f} s + trials "
                f"{self.trials:.1f} s (first trial's worker start {self.worker_start:.1f} s) + report {self.report:.1f} s")


class ProgressPrinter(Callback):
    """Tune callback printing one line per change: points done/running/errored, best val acc.

    Counts are of points (the trials of the metric tables), so a pack of K points counts K."""

    def __init__(self, total: int, min_interval_s: float = 5.0):
        # No stream attribute: Tune pickles callbacks with the experiment state.
        self.total = total
        self.min_interval_s = min_interval_s
        self.done = self.errored = self.diverged = 0
        self.running: dict[str, int] = {}
        self.best: tuple[float, str] | None = None
        self._last_print = 0.0
        self.first_result: tuple[float, float] | None = None  # (monotonic time, that epoch's seconds)

    def _print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        best = f"best val_acc {self.best[0]:.4f} ({self.best[1]})" if self.best else "best val_acc -"
        print(f"[lrbs] {self.done}/{self.total} done ({self.diverged} diverged), {sum(self.running.values())} running, "
              f"{self.errored} errored | {best}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        from sweeps.packing import members

        self.running[trial.trial_id] = len(members(trial.trial_id, trial.config))
        self._print()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from sweeps.ledger import lineage_id
        from sweeps.packing import members

        ids = members(lineage_id(trial), trial.config)
        if self.first_result is None and result.get("pack_rows"):
            self.first_result = (time.monotonic(), next(iter(result["pack_rows"].values())).get("epoch_s") or 0.0)
        for row in result.get("pack_rows", {}).values():
            acc = row.get("val_acc")
            if acc is not None and math.isfinite(acc) and (self.best is None or acc > self.best[0]):
                self.best = (acc, ids[row["member"]][0])
            if row.get("status") == "diverged":
                self.diverged += 1
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += self.running.pop(trial.trial_id, 1)
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.errored += self.running.pop(trial.trial_id, 1)
        self._print(force=True)
