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
    threshold: float | None                 # None: the filter is off, or the run did not record it
    recorded: bool                          # the run has final_train_eval_acc values
    left_out: list[tuple[str, float]] = field(default_factory=list)   # (trial_id, final_train_eval_acc)

    @property
    def n_total(self) -> int:
        return self.kept.num_rows + len(self.left_out)

    @property
    def many_left_out(self) -> bool:
        """More than a few trials left out: more than 2, and more than 10% of the trials."""
        return len(self.left_out) > max(2, 0.1 * self.n_total)

    def note(self) -> str:
        """One line for a section: what was fitted, and which trials were left out."""
        if not self.recorded:
            return ("Convergence not checked: this run has no final_train_eval_acc (written before it was "
                    "recorded); every trial's curvature is fitted, reached a minimum or not.")
        if self.threshold is None:
            return "Convergence filter off (report.converged_train_acc: null): every trial is fitted."
        if not self.left_out:
            return (f"Every trial reached the convergence threshold (eval-mode train accuracy >= "
                    f"{self.threshold:g} on the training subset).")
        names = ", ".join(f"{t} ({acc:.3f})" for t, acc in self.left_out)
        return (("WARNING: " if self.many_left_out else "")
                + f"{len(self.left_out)} of {self.n_total} trials left out as not converged (eval-mode train "
                f"accuracy of the final weights < {self.threshold:g}; report.converged_train_acc): "
                + (names if len(names) <= 600 else names[:600] + " ..."))

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "recorded": self.recorded, "n_fitted": self.kept.num_rows,
                "left_out": [{"trial_id": t, "final_train_eval_acc": a} for t, a in self.left_out]}


def threshold_of(trials: pa.Table) -> float | None:
    """The run's threshold: the trials' ``report.converged_train_acc``, the default for runs whose
    config has no such key, None when the spec set it to null."""
    if THRESHOLD_COLUMN not in trials.column_names:
        return DEFAULT_CONVERGED_TRAIN_ACC
    values = [v for v in trials.column(THRESHOLD_COLUMN).to_pylist() if v is not None]
    return float(values[0]) if values else None


def converged(trials: pa.Table) -> Convergence:
    """Split ``trials`` by the run's convergence threshold.

    Trials without a final_train_eval_acc (diverged, still running, or a run that never recorded
    it) are kept: the metric filters of each fit decide about them."""
    if ACC_COLUMN not in trials.column_names or trials.column(ACC_COLUMN).null_count == trials.num_rows:
        return Convergence(kept=trials, threshold=None, recorded=False)
    threshold = threshold_of(trials)
    if threshold is None:
        return Convergence(kept=trials, threshold=None, recorded=True)
    accs = trials.column(ACC_COLUMN).to_pylist()
    keep = [a is None or not math.isfinite(a) or a >= threshold for a in accs]
    ids = trials.column("trial_id").to_pylist()
    left = [(t, float(a)) for t, a, k in zip(ids, accs, keep) if not k]
    return Convergence(kept=trials.filter(pa.array(keep, type=pa.bool_())), threshold=threshold,
                       recorded=True, left_out=left)
