"""Progress lines while a sweep runs (Ray's own table is turned off: verbose=0)."""
from __future__ import annotations

import math
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    """Tune callback printing one line per change: trials done/running/errored, best val acc."""

    def __init__(self, total: int, min_interval_s: float = 5.0):
        # No stream attribute: Tune pickles callbacks with the experiment state.
        self.total = total
        self.min_interval_s = min_interval_s
        self.done = self.errored = self.diverged = 0
        self.running: set[str] = set()
        self.best: tuple[float, str] | None = None
        self._last_print = 0.0

    def _print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        best = f"best val_acc {self.best[0]:.4f} ({self.best[1]})" if self.best else "best val_acc -"
        print(f"[lrbs] {self.done}/{self.total} done ({self.diverged} diverged), {len(self.running)} running, "
              f"{self.errored} errored | {best}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._print()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        acc = result.get("val_acc")
        if acc is not None and math.isfinite(acc) and (self.best is None or acc > self.best[0]):
            self.best = (acc, trial.trial_id)
        if result.get("status") == "diverged":
            self.diverged += 1
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.errored += 1
        self._print(force=True)
