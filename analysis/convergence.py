"""Which trials reached a minimum: the filter in front of every fit of sharpness.

The paper compares the curvature of minima (near-zero training loss). A trial that ended at 60%
train accuracy is still descending, and its lambda_max says where it was on the way, not how
wide a minimum is; fitting it beside converged trials bends the curve (an inverted U against
eta/S is what a 40-epoch MNIST-1D run showed). So the sharpness, Eq. 7 and collapse sections
fit only trials whose eval-mode accuracy of the final weights on the fixed training subset
(``final_train_eval_acc``, trainables/train_loop.py) reached ``report.converged_train_acc``,
and name the trials they left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

# A trial counts as converged at this eval-mode train accuracy (fraction) unless the spec's
# ``report.converged_train_acc`` says otherwise (null there turns the filter off).
DEFAULT_CONVERGED_TRAIN_ACC = 0.99
ACC_COLUMN = "final_train_eval_acc"
THRESHOLD_COLUMN = "cfg.report.converged_train_acc"


@dataclass(frozen=True)
class Convergence:
    """The converged trials (``kept``) and the ones left out, with their final train accuracy."""

    kept: pa.Table
    threshold: float | None  # None: the filter is off, or the run did not record it
    recorded: bool  # the run has final_train_eval_acc values
    # the trials left out below the threshold: trial_id, lr, batch_size, seed and final_train_eval_acc
    left_out: list[dict[str, Any]] = field(default_factory=list)
    # trials left out without a final_train_eval_acc (still running; trained by older code)
    unmeasured: list[str] = field(default_factory=list)

    @property
    def n_total(self) -> int:
        return int(self.kept.num_rows) + len(self.left_out) + len(self.unmeasured)

    @property
    def many_left_out(self) -> bool:
        """More than a few trials left out: more than 2, and more than 10% of the trials."""
        out = len(self.left_out) + len(self.unmeasured)
        return out > max(2, 0.1 * self.n_total)

    def note(self) -> str:
        """One line for a section: what was fitted, and which trials were left out."""
        if not self.recorded:
            return (
                "Convergence not checked: this run has no final_train_eval_acc (written before it was "
                "recorded); every trial's curvature is fitted, reached a minimum or not."
            )
        if self.threshold is None:
            return "Convergence filter off (report.converged_train_acc: null): every trial is fitted."
        unmeasured = (
            f" {len(self.unmeasured)} trial(s) without an eval-mode train accuracy (still running, "
            f"or trained by code that did not record it) left out too: " + ", ".join(self.unmeasured)[:300] + "."
            if self.unmeasured
            else ""
        )
        if not self.left_out:
            return (
                ("WARNING: " if self.many_left_out else "")
                + f"Every trial with an eval-mode train accuracy reached the convergence threshold (>= "
                f"{self.threshold:g} on the training subset)." + unmeasured
            )
        names = ", ".join(
            f"{t['trial_id']} (lr={t['lr']:g} S={t['batch_size']} seed={t['seed']}: {t['final_train_eval_acc']:.3f})"
            for t in self.left_out
        )
        return (
            ("WARNING: " if self.many_left_out else "")
            + f"{len(self.left_out)} of {self.n_total} trials left out as not converged (eval-mode train "
            f"accuracy of the final weights < {self.threshold:g}; report.converged_train_acc): "
            + (names if len(names) <= 600 else names[:600] + " ...")
            + "."
            + unmeasured
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "recorded": self.recorded,
            "n_fitted": self.kept.num_rows,
            "left_out": list(self.left_out),
            "unmeasured": list(self.unmeasured),
        }


def threshold_of(trials: pa.Table) -> float | None:
    """The run's threshold: the trials' ``report.converged_train_acc``, the default for runs whose
    config has no such key, None when the spec set it to null."""
    if THRESHOLD_COLUMN not in trials.column_names:
        return DEFAULT_CONVERGED_TRAIN_ACC
    values = [v for v in trials.column(THRESHOLD_COLUMN).to_pylist() if v is not None]
    return float(values[0]) if values else None


def converged(trials: pa.Table) -> Convergence:
    """Split ``trials`` by the run's convergence threshold.

    Kept: trials at or above it, and diverged trials (every fit leaves those out by its own rule
    and counts them). Left out: trials below it, and trials without a final_train_eval_acc in a
    run that records it (still running, or finished under code that did not record it). A run
    with no value at all (written before the measurement existed) is kept whole."""
    if ACC_COLUMN not in trials.column_names or trials.column(ACC_COLUMN).null_count == trials.num_rows:
        return Convergence(kept=trials, threshold=None, recorded=False)
    threshold = threshold_of(trials)
    if threshold is None:
        return Convergence(kept=trials, threshold=None, recorded=True)
    accs = trials.column(ACC_COLUMN).to_pylist()
    rows = trials.select(["trial_id", "lr", "batch_size", "seed", "status"]).to_pylist()
    measured = [a is not None and math.isfinite(a) for a in accs]
    keep = [r["status"] == "diverged" or (m and a >= threshold) for r, a, m in zip(rows, accs, measured)]
    left = [
        {k: r[k] for k in ("trial_id", "lr", "batch_size", "seed")} | {"final_train_eval_acc": float(a)}
        for r, a, m, k in zip(rows, accs, measured, keep)
        if m and not k
    ]
    unmeasured = [r["trial_id"] for r, m, k in zip(rows, measured, keep) if not m and not k]
    return Convergence(
        kept=trials.filter(pa.array(keep, type=pa.bool_())),
        threshold=threshold,
        recorded=True,
        left_out=left,
        unmeasured=unmeasured,
    )
