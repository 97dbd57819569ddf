"""Progress lines while a sweep runs (Ray's own table is turned off: verbose=0)."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

from ray.tune import Callback

from sweeps.summary import Progress


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
    """Tune callback printing one summary line per change (at most every ``min_interval_s``):
    points done / total, epochs done / total, elapsed, ETA from the measured epoch rate, device-
    hours trained against ``lrbs validate``'s estimate, best val acc (``sweeps.summary``).

    Counts are of points (the trials of the metric tables), so a pack of K points counts K;
    epochs are point-epochs. ``out`` is where the line goes (kept out of pickles)."""

    def __init__(self, total: int, epochs: int = 0, estimate_hours: float | None = None, unit: str = "CPU",
                 min_interval_s: float = 5.0, out=None, done_before: int = 0, epochs_before: int = 0,
                 at_most: bool = False):
        self.total, self.epochs, self.estimate_hours, self.unit = total, epochs, estimate_hours, unit
        self.at_most = at_most  # a beta search: ``total`` is its budget
        self.min_interval_s = min_interval_s
        self.out = out
        self.done, self.errored, self.diverged = done_before, 0, 0
        self.epochs_before = epochs_before          # point-epochs done by earlier sessions (resume)
        self.running: dict[str, int] = {}           # Tune trial id -> members
        self.trained: dict[str, tuple[int, int, float]] = {}  # Tune trial id -> (members, epoch, wall_s)
        self.start_epoch: dict[str, int] = {}       # Tune trial id -> epoch it started this session from
        self.best: tuple[float, str] | None = None
        self._last_print = 0.0
        self._t0 = time.monotonic()
        self.first_result: tuple[float, float] | None = None  # (monotonic time, that epoch's seconds)

    def __getstate__(self):
        return {**self.__dict__, "out": None}  # Tune pickles callbacks; a stream stays with this process

    def progress(self) -> Progress:
        from sweeps.summary import eta_seconds

        now = time.monotonic()
        done_epochs = self.epochs_before + sum(k * e for k, e, _ in self.trained.values())
        session = sum(k * (e - self.start_epoch.get(t, 0)) for t, (k, e, _) in self.trained.items())
        window = now - self.first_result[0] + self.first_result[1] if self.first_result else 0.0
        eta = eta_seconds(self.epochs - done_epochs, session, window) if self.running or self.epochs <= done_epochs \
            else None
        used = sum(w for _, _, w in self.trained.values()) / 3600
        return Progress(self.done, self.total, done_epochs, self.epochs, now - self._t0, eta, used,
                        self.estimate_hours, self.unit, self.errored, self.diverged, sum(self.running.values()),
                        self.at_most)

    def _print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        best = f" | best val_acc {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"[lrbs] {self.progress().line()}{best}", file=self.out or sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        from sweeps.packing import members

        self.running[trial.trial_id] = len(members(trial.trial_id, trial.config))
        self._print()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from sweeps.ledger import lineage_id
        from sweeps.packing import members

        ids = members(lineage_id(trial), trial.config)
        rows = list(result.get("pack_rows", {}).values())
        if self.first_result is None and rows:
            self.first_result = (time.monotonic(), rows[0].get("epoch_s") or 0.0)
        if rows:
            epoch = max(int(r.get("epoch") or 0) for r in rows)
            self.start_epoch.setdefault(trial.trial_id, epoch - 1)
            wall = max(float(r.get("wall_s") or 0.0) for r in rows)
            self.trained[trial.trial_id] = (len(ids), epoch, wall)
        for row in rows:
            acc = row.get("val_acc")
            if acc is not None and math.isfinite(acc) and (self.best is None or acc > self.best[0]):
                self.best = (acc, ids[row["member"]][0])
            if row.get("status") == "diverged":
                self.diverged += 1
        self._print()

    def _ended(self, trial) -> tuple[int, float]:
        k = self.running.pop(trial.trial_id, 1)
        _, _, wall = self.trained.get(trial.trial_id, (k, 0, 0.0))
        return k, wall

    def on_trial_complete(self, iteration, trials, trial, **info):
        k, wall = self._ended(trial)
        self.done += k
        # every member's epochs count as done (diverged members stop early)
        epochs = (trial.config.get("train") or {}).get("epochs") or 0
        self.trained[trial.trial_id] = (k, epochs, wall)
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        k, _ = self._ended(trial)
        self.errored += k
        self._print(force=True)
