"""Per-trial values the report sections need, on top of ``tables.trials_from_metrics``.

* End-of-training curvature (``lambda_max``, ``hessian_fro``, ``hessian_trace``, their standard
  errors, ``grad_noise_scale``): the trial table's column when it has one, otherwise the value
  of the trial's LAST epoch row where the column is not null (probes need not run every epoch).
* Family labels ``beta``, ``rescale``, ``schedule``: the epoch column when present and not null,
  else the config point (``cfg.point.<key>``), else for ``schedule`` ``cfg.schedule.kind``.
* ``final_ratio``: lr / batch_size of the trial's last epoch (differs from ``ratio``, the base
  point, under schedules); ``diverged``: status == diverged.

Pure functions over Arrow tables.
"""
from __future__ import annotations

import math

import pyarrow as pa

from analysis.tables import trials_from_metrics

CURVATURE_COLUMNS = ("lambda_max", "lambda_max_converged", "hessian_fro", "hessian_fro_stderr", "hessian_trace",
                     "hessian_trace_stderr", "grad_noise_scale", "probe_n_samples")
FAMILY_COLUMNS = ("beta", "rescale", "schedule")


def _is_value(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def trial_table(metrics: pa.Table, trials: pa.Table | None = None) -> pa.Table:
    """``trials_from_metrics(metrics)`` plus the columns described in the module docstring."""
    trials = trials_from_metrics(metrics) if trials is None else trials
    if trials.num_rows == 0:
        return trials
    ids = trials.column("trial_id").to_pylist()
    present = [c for c in CURVATURE_COLUMNS + FAMILY_COLUMNS + ("ratio", "status") if c in metrics.column_names]
    rows = metrics.select(["trial_id", "epoch"] + [c for c in present if c not in ("trial_id", "epoch")]).to_pylist()
    last: dict[str, dict] = {}
    final_ratio: dict[str, float] = {}
    for r in sorted(rows, key=lambda r: (r["trial_id"], r["epoch"])):
        d = last.setdefault(r["trial_id"], {})
        for c in present:
            if c in ("ratio", "status"):
                continue
            if _is_value(r.get(c)):
                d[c] = r[c]
        final_ratio[r["trial_id"]] = r.get("ratio")
    out = trials
    for c in CURVATURE_COLUMNS:
        if c in out.column_names or c not in metrics.column_names:
            continue
        typ = metrics.schema.field(c).type
        out = out.append_column(c, pa.array([last.get(t, {}).get(c) for t in ids], type=typ))
    for c in FAMILY_COLUMNS:
        vals = []
        cfg = out.column(f"cfg.point.{c}").to_pylist() if f"cfg.point.{c}" in out.column_names else [None] * len(ids)
        kind = (out.column("cfg.schedule.kind").to_pylist() if c == "schedule" and "cfg.schedule.kind" in out.column_names
                else [None] * len(ids))
        for t, pc, kc in zip(ids, cfg, kind):
            v = last.get(t, {}).get(c)
            vals.append(v if _is_value(v) else (pc if _is_value(pc) else kc))
        typ = pa.float64() if c == "beta" else pa.string()
        vals = [None if v is None else (float(v) if c == "beta" else str(v)) for v in vals]
        if c in out.column_names:
            out = out.drop_columns([c])
        out = out.append_column(c, pa.array(vals, type=typ))
    out = out.append_column("final_ratio", pa.array([final_ratio.get(t) for t in ids], type=pa.float64()))
    out = out.append_column("diverged", pa.array([s == "diverged" for s in out.column("status").to_pylist()]))
    return out


def has_values(table: pa.Table, column: str) -> bool:
    """The column exists and holds at least one finite / non-null value."""
    if column not in table.column_names:
        return False
    return any(_is_value(v) for v in table.column(column).to_pylist())
