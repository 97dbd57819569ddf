"""Progress lines while a sweep runs (Ray's own table is turned off: verbose=0).

On a terminal the progress line is redrawn in place (``LiveLine``: carriage return and clear to
the end of the line, a newline when the sweep ends); into a file or a pipe it is one plain line
per update. Other lines printed while it is shown go through ``say``, which puts them above it.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

from lrbs.rundir.points import members
from lrbs.rundir.records import lineage_id
from lrbs.sweeps.summary import Progress, eta_seconds


@dataclass
class PhaseTimes:
    """Where a sweep's wall time went (seconds), printed at the end of ``lrbs run``/``resume``."""

    start: float = 0.0  # process start-up to the driver's first line: imports, spec, data check
    ray: float = 0.0  # starting (or joining) Ray
    worker_start: float = 0.0  # first trial: Tuner start to its first result, less that epoch's time
    trials: float = 0.0  # Tuner.fit(), start to end
    report: float = 0.0  # end-of-run report (html, json, md)

    def line(self, total: float) -> str:
        return (
            f"[lrbs] time: {total:.1f} s = start-up {self.start:.1f} s + Ray {self.ray:.1f} s + trials "
            f"{self.trials:.1f} s (first trial's worker start {self.worker_start:.1f} s) + report {self.report:.1f} s"
        )


CLEAR_TO_EOL = "\x1b[K"  # ANSI: erase from the cursor to the end of the line
CLEAR_TO_END = "\x1b[J"  # ANSI: erase from the cursor to the end of the screen


def is_terminal(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _columns(out: TextIO) -> int:
    """The terminal's width in characters (80 when it cannot be told)."""
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size().columns or 80


class LiveLine:
    """One line redrawn in place on a terminal, a plain line per update elsewhere.

    ``draw(text)`` replaces the line shown (a carriage return, up over the rows a wrapped line
    took, and a clear), leaving the cursor after it; ``say(text)`` prints a lasting line above
    it; ``end()`` ends it with a newline. The stream is looked up per call when ``out`` is None
    (a swapped ``sys.stdout`` is followed)."""

    def __init__(self, out: TextIO | None = None):
        self.out = out
        self.shown = ""  # the text on the terminal now ("" when none is)

    def stream(self) -> TextIO:
        return self.out or sys.stdout

    def _erase(self, out: TextIO) -> str:
        rows = max(1, math.ceil(len(self.shown) / _columns(out))) if self.shown else 1
        return "\r" + CLEAR_TO_EOL if rows == 1 else f"\x1b[{rows - 1}A\r" + CLEAR_TO_END

    def draw(self, text: str) -> None:
        out = self.stream()
        if not is_terminal(out):
            print(text, file=out, flush=True)
            return
        out.write(self._erase(out) + text)
        out.flush()
        self.shown = text
        _LIVE[id(out)] = self

    def say(self, text: str) -> None:
        out = self.stream()
        if not (self.shown and is_terminal(out)):
            print(text, file=out, flush=True)
            return
        out.write(self._erase(out) + text + "\n" + self.shown)
        out.flush()

    def end(self) -> None:
        out = self.stream()
        if self.shown:
            out.write("\n")
            out.flush()
            self.shown = ""
        if _LIVE.get(id(out)) is self:
            del _LIVE[id(out)]


# The live line shown on each stream (by id), so that other lines printed meanwhile go above it.
_LIVE: dict[int, LiveLine] = {}


def say(text: str, out: TextIO | None = None) -> None:
    """Print a line on ``out`` (default: sys.stdout), above a progress line shown there."""
    out = out or sys.stdout
    live = _LIVE.get(id(out))
    if live is not None and live.stream() is out:
        live.say(text)
    else:
        print(text, file=out, flush=True)


class ProgressPrinter(Callback):
    """Tune callback printing one summary line per change (at most every ``min_interval_s``):
    points done / total, epochs done / total, elapsed, ETA from the measured epoch rate, device-
    hours trained against ``lrbs validate``'s estimate, best val acc (``lrbs.sweeps.summary``).

    Counts are of points (the trials of the metric tables), so a pack of K points counts K;
    epochs are point-epochs. ``out`` is where the line goes (kept out of pickles): on a terminal
    it is redrawn in place (``LiveLine``) and ended with a newline when the experiment ends."""

    def __init__(
        self,
        total: int,
        epochs: int = 0,
        estimate_hours: float | None = None,
        unit: str = "CPU",
        min_interval_s: float = 5.0,
        out: TextIO | None = None,
        at_most: bool = False,
        planned_s: float | None = None,
    ):
        self.total, self.epochs, self.estimate_hours, self.unit = total, epochs, estimate_hours, unit
        self.planned_s = planned_s  # the pre-flight's training time on the parallel slots: the first ETA
        self.at_most = at_most  # a beta search: ``total`` is its budget
        self.min_interval_s = min_interval_s
        self.out = out
        self.done, self.errored, self.diverged = 0, 0, 0
        self.running: dict[str, int] = {}  # Tune trial id -> members
        self.trained: dict[str, tuple[int, int, float]] = {}  # Tune trial id -> (members, epoch, wall_s)
        self.start_epoch: dict[str, int] = {}  # Tune trial id -> epoch it started this session from
        self.best: tuple[float, str] | None = None
        self._last_print = 0.0
        self._t0 = time.monotonic()
        self.first_result: tuple[float, float] | None = None  # (monotonic time, that epoch's seconds)
        self.line = LiveLine(out)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks; a stream stays with this process
        return {**self.__dict__, "out": None, "line": LiveLine()}

    def progress(self) -> Progress:
        now = time.monotonic()
        done_epochs = sum(k * e for k, e, _ in self.trained.values())
        session = sum(k * (e - self.start_epoch.get(t, 0)) for t, (k, e, _) in self.trained.items())
        window = now - self.first_result[0] + self.first_result[1] if self.first_result else 0.0
        eta = (
            eta_seconds(self.epochs - done_epochs, session, window, self.planned_s, now - self._t0)
            if self.running or self.epochs <= done_epochs
            else None
        )
        used = sum(w for _, _, w in self.trained.values()) / 3600
        return Progress(
            self.done,
            self.total,
            done_epochs,
            self.epochs,
            now - self._t0,
            eta,
            used,
            self.estimate_hours,
            self.unit,
            self.errored,
            self.diverged,
            sum(self.running.values()),
            self.at_most,
        )

    def _print(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval_s:
            return
        self._last_print = now
        best = f" | best val_acc {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self.line.draw(f"[lrbs] {self.progress().line()}{best}")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.line.end()  # the last line stays, and what follows starts on a line of its own

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.running[trial.trial_id] = len(members(trial.trial_id, trial.config))
        self._print()

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
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

    def _ended(self, trial: Trial) -> tuple[int, float]:
        k = self.running.pop(trial.trial_id, 1)
        _, _, wall = self.trained.get(trial.trial_id, (k, 0, 0.0))
        return k, wall

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        k, wall = self._ended(trial)
        self.done += k
        # every member's epochs count as done (diverged members stop early)
        epochs = (trial.config.get("train") or {}).get("epochs") or 0
        self.trained[trial.trial_id] = (k, epochs, wall)
        self._print(force=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        k, _ = self._ended(trial)
        self.errored += k
        self._print(force=True)
