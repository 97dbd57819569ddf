"""The one-line progress summary of a sweep, shared by the live progress line of ``lrbs run`` /
``lrbs resume`` (``lrbs.sweeps.progress``) and ``lrbs status`` (no Ray, no torch imported here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class Progress:
    points_done: int  # finished or diverged
    points_total: int
    epochs_done: int  # point-epochs (a pack of K at epoch e: K * e)
    epochs_total: int
    elapsed_s: float
    eta_s: float | None  # None: no rate measured yet (or nothing is running)
    used_hours: float  # device-hours the trials have trained (sum of their training time)
    estimate_hours: float | None  # `lrbs validate`'s estimate for the whole sweep
    unit: str = "CPU"  # CPU or GPU
    errored: int = 0
    diverged: int = 0
    running: int = 0
    at_most: bool = False  # a beta search: the total is its budget, the most it may train

    def line(self) -> str:
        est = f" of ~{self.estimate_hours:.3g} estimated" if self.estimate_hours else ""
        eta = f", ETA {duration(self.eta_s)}" if self.eta_s is not None and not self.at_most else ""
        most = "at most " if self.at_most else ""
        return (
            f"{self.points_done}/{most}{self.points_total} points done ({self.diverged} diverged, {self.errored} "
            f"errored, {self.running} running) | epochs {self.epochs_done}/{most}{self.epochs_total} | "
            f"{duration(self.elapsed_s)} elapsed{eta} | {self.unit}-hours {self.used_hours:.3g}{est}"
        )


def eta_seconds(
    epochs_left: int, epochs_in_window: int, window_s: float, planned_s: float | None = None, elapsed_s: float = 0.0
) -> float | None:
    """Time left at the rate measured so far (point-epochs per second over the whole sweep's
    running time, so parallel trials count); before any epoch is measured, the planned training
    time (``planned_s``: the pre-flight's calibrated packs on the parallel trial slots) less
    ``elapsed_s``."""
    if epochs_left <= 0:
        return 0.0
    if epochs_in_window <= 0 or window_s <= 0:  # no rate yet: the plan, while it still holds
        return planned_s - elapsed_s if planned_s is not None and planned_s > elapsed_s else None
    return epochs_left * window_s / epochs_in_window


def planned_seconds(provenance: dict[str, Any]) -> float | None:
    """The training time the pre-flight planned for a sweep (``provenance.json``'s estimate: its
    packs on the parallel trial slots, from step costs measured on this machine); None for a beta
    search (its trials are not planned) and without measured costs (GPU or cluster trials: the
    fitted fallback knows neither their device's speed nor how many run side by side)."""
    estimate = provenance.get("estimate") or {}
    if provenance.get("beta_search") or "step_s" not in (estimate.get("costs") or {}):
        return None
    wall = estimate.get("wall_hours")
    return None if wall is None else float(wall) * 3600
