"""Per-trial values the report sections need, on top of ``tables.trials_from_metrics``
(which already carries the end-of-training curvature and the family labels):

* ``final_ratio``: lr / batch_size of the trial's last epoch (differs from ``ratio``, the base
  point, under schedules); ``diverged``: status == diverged.

Pure functions over Arrow tables.
"""

from __future__ import annotations

import pyarrow as pa

from lrbs.rundir.tables import is_value, trials_from_metrics


def trial_table(metrics: pa.Table, trials: pa.Table | None = None) -> pa.Table:
    """``trials_from_metrics(metrics)`` plus ``final_ratio`` and ``diverged``."""
    trials = trials_from_metrics(metrics) if trials is None else trials
    if trials.num_rows == 0:
        return trials
    rows = sorted(metrics.select(["trial_id", "epoch", "ratio"]).to_pylist(), key=lambda r: (r["trial_id"], r["epoch"]))
    final_ratio = {r["trial_id"]: r["ratio"] for r in rows}  # of each trial's last epoch
    ids = trials.column("trial_id").to_pylist()
    out = trials.append_column("final_ratio", pa.array([final_ratio.get(t) for t in ids], type=pa.float64()))
    return out.append_column("diverged", pa.array([s == "diverged" for s in out.column("status").to_pylist()]))


def has_values(table: pa.Table, column: str) -> bool:
    """The column exists and holds at least one finite / non-null value."""
    if column not in table.column_names:
        return False
    return any(is_value(v) for v in table.column(column).to_pylist())
