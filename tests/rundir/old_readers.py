"""Per-row Python metric readers: the unvectorized baseline for
benchmarks/metrics_scale.py, and a test oracle that the
vectorized readers of ``rundir/tables.py`` must equal on the frozen fixtures and on runs
written through the real sink (tests/rundir/test_compaction.py)."""

from __future__ import annotations

import json

import pyarrow as pa

# the same in both reader sets (dedupe_last is vectorized in both): shared, not copied
from lrbs.rundir.tables import (
    PROBE_COLUMNS,
    TRIAL_COLUMNS,
    attempt_key,
    dedupe_last,
    flatten,
    is_value,
    read_metric_files,
    trial_type,
)


def drop_superseded(table: pa.Table) -> pa.Table:
    """Drop the rows that a later attempt of the same trial point has superseded (table order = write order).

    - A trial restarted from scratch (``lrbs resume --restart-errored``) gets a new trial id from
      Tune: of the trials with the same config, only the one written last is kept.
    - Rows of a trial for epochs after the epoch of its last row written come from an attempt
      that a restart (from a checkpoint or from scratch) has not reached again, or that ended
      earlier (e.g. diverged sooner): they are dropped.
    Rows of the same (trial_id, epoch) are left for ``dedupe_last``.
    """
    if table.num_rows == 0:
        return table
    trial_ids = table.column("trial_id").to_pylist()
    epochs = table.column("epoch").to_pylist()
    raw = table.column("config_json").to_pylist() if "config_json" in table.column_names else [None] * table.num_rows
    same = {c: attempt_key(c) for c in set(raw)}  # parsed once per distinct config
    configs = [same[c] for c in raw]
    last: dict[str, int] = {}
    for i, trial_id in enumerate(trial_ids):
        last[trial_id] = i
    newest: dict[str, str] = {}  # config -> trial id written last
    for trial_id, i in last.items():
        config = configs[i]
        if config is not None and (config not in newest or last[newest[config]] < i):
            newest[config] = trial_id
    replaced = {t for t, i in last.items() if configs[i] is not None and newest[configs[i]] != t}
    keep = [i for i, (t, e) in enumerate(zip(trial_ids, epochs)) if t not in replaced and e <= epochs[last[t]]]
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


def load_metrics(run_dir) -> pa.Table:
    table, _ = read_metric_files(run_dir)
    table = dedupe_last(drop_superseded(table))
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])


def trials_from_metrics(metrics: pa.Table) -> pa.Table:
    rows = []
    by_trial: dict[str, list[dict]] = {}
    for row in metrics.to_pylist():
        by_trial.setdefault(row["trial_id"], []).append(row)
    for trial_id, epochs in sorted(by_trial.items()):
        epochs.sort(key=lambda r: r["epoch"])
        last = epochs[-1]
        config = json.loads(last["config_json"] or "{}")
        point = config.get("point", {})
        val_accs = [r["val_acc"] for r in epochs if is_value(r["val_acc"])]
        row = {
            "trial_id": trial_id,
            "sweep": last["sweep"],
            "lr": float(point.get("lr", last["lr"])),
            "batch_size": int(point.get("batch_size", last["batch_size"])),
            "seed": last["seed"],
            "status": last["status"],
            "epochs_done": last["epoch"],
            "final_val_acc": last["val_acc"],
            "max_val_acc": max(val_accs) if val_accs else None,
            "final_val_loss": last["val_loss"],
            "final_train_loss": last["train_loss"],
            "final_train_acc": last["train_acc"],
            "dataset": last["dataset"],
            "n_train": last["n_train"],
            "model": last["model"],
            "code_version": last["code_version"],
            # Family labels: the epoch column where written, else the config point.
            **{k: last.get(k) if last.get(k) is not None else point.get(k) for k in ("beta", "rescale", "variant")},
            "schedule": last.get("schedule") or (config.get("schedule") or {}).get("kind"),
        }
        # eval-mode train values at the final weights: from the last row that has them
        evaluated = [r for r in epochs if is_value(r.get("train_eval_acc"))]
        row["final_train_eval_loss"] = evaluated[-1].get("train_eval_loss") if evaluated else None
        row["final_train_eval_acc"] = evaluated[-1].get("train_eval_acc") if evaluated else None
        probed = [r for r in epochs if any(is_value(r.get(c)) for c in ("lambda_max", "hessian_trace", "hessian_fro"))]
        row["probe_epoch"] = probed[-1]["epoch"] if probed else None
        for col in PROBE_COLUMNS:
            row[col] = probed[-1].get(col) if probed else None
        row["ratio"] = row["lr"] / row["batch_size"]
        row.update(flatten(config, "cfg"))
        rows.append(row)
    if not rows:
        return pa.table({name: pa.array([], type=trial_type(name)) for name in TRIAL_COLUMNS})
    columns = list(TRIAL_COLUMNS) + sorted({k for r in rows for k in r} - set(TRIAL_COLUMNS))
    return pa.table(
        {c: pa.array([r.get(c) for r in rows], type=trial_type(c) if c in TRIAL_COLUMNS else None) for c in columns}
    )


def bootstrap_slopes(x, y, members, n_boot, rng):
    """The old slope interval of ``lrbs.analysis.fits``: a bootstrap over seeds within points, a Python
    loop per resample and per point (it also missed the scatter between points)."""
    import numpy as np

    slopes = []
    for _ in range(n_boot if members else 0):
        idx = np.concatenate([rng.choice(rows, size=len(rows), replace=True) for rows in members])
        if np.ptp(x[idx]) > 1e-9:
            slopes.append(float(np.polyfit(x[idx], y[idx], 1)[0]))
    return slopes
