"""``lrbs status RUN_DIR``: the trials of a run, read from files only (no Ray, no unpickling).

Trial status, failures and errors come from lrbs's trial records (``RUN_DIR/trials/``,
``lrbs.rundir.records``); a trial whose driver is gone (no live holder of the run directory's lock)
while its record says RUNNING is stopped.
Run directories written before the records existed are read from Ray Tune's newest
``experiment_state-*.json`` (plain JSON; its cloudpickled fields are never decoded) and the
trials' ``error.txt``. Epochs done and the last validation accuracy come from the Arrow tables.
What the table shows is one vocabulary (``STATES``, ``trial_state``), from the record and the
trial's last metric row together.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from lrbs.rundir.layout import LEDGER_DIR, LOCK_FILE, METRIC_DIR, PROVENANCE_FILE, SPEC_COPY
from lrbs.rundir.points import members, split_member_id
from lrbs.rundir.records import FINAL_ROW_STATUSES, RUNNING, current_records, read_ledger
from lrbs.rundir.tables import ReadReport, load_metrics, load_metrics_with_report
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.lock import holder_alive
from lrbs.sweeps.summary import Progress, eta_seconds, planned_seconds

EXPERIMENT_STATE_GLOB = "experiment_state-*.json"

# The states `lrbs status` shows (docs/resilience.md), in the order of its summary line:
#   running   a driver is training it now
#   finished  trained every epoch (its last row says finished)
#   diverged  stopped by its divergence check (its last row says diverged): a result, not a fault
#   errored   ended with an error (Tune's ERROR); `lrbs resume` continues it
#   stopped   ended unfinished without an error: its driver died or was interrupted, or it ended early
#   pending   not started yet (Tune's PENDING, or PAUSED waiting for resources)
#   unknown   its record is damaged and its rows do not say how it ended
STATES = ("running", "finished", "diverged", "errored", "stopped", "pending", "unknown")


def trial_state(status: str, row_status: str | None, driver_alive: bool) -> str:
    """The one state of a trial from its record's (or Tune's) status and its last metric row's
    status (running / finished / diverged, or damaged for a damaged metric file): the rows
    say how a trial that got to its end ended, the record how one that did not stopped."""
    if row_status in ("finished", "diverged"):
        return row_status
    if status == "ERROR":
        return "errored"
    if status in ("PENDING", "PAUSED"):
        return "pending"
    if status == "TERMINATED":  # ended without an error: its rows say whether it got to the end
        return "stopped" if row_status == "running" else "unknown"  # damaged or no rows: cannot tell
    if status == "STOPPED":
        return "stopped"
    if status == "RUNNING" or (status == "UNKNOWN" and row_status is not None):
        # a driver holds the run directory: it trains; none does: it stopped with its driver
        return "running" if driver_alive else "stopped"
    return "unknown"


@dataclass
class TrialStatus:
    trial_id: str
    lr: float | None
    batch_size: int | None
    seed: int | None
    status: str  # the record's (Tune's): PENDING, RUNNING, PAUSED, TERMINATED, ERROR; STOPPED, UNKNOWN
    epochs_done: int
    epochs: int | None
    last_val_acc: float | None
    row_status: str | None  # status column of the last metric row (running/finished/diverged)
    failures: int
    error: str  # last line of the trial's error.txt ('' if none)
    damaged_file: str = ""  # its metric file, when that is damaged
    state: str = "unknown"  # what `lrbs status` shows: one of STATES (trial_state)


def newest_experiment_state(run_dir: Path) -> Path | None:
    paths = sorted(run_dir.glob(EXPERIMENT_STATE_GLOB))  # names carry a sortable timestamp
    return paths[-1] if paths else None


def _error_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _trial(trial_id: str, status: str, config: dict[str, Any], failures: int = 0, error: str = "") -> dict[str, Any]:
    """A trial as the table's sources give it (experiment state, trial records, metric rows)."""
    return {"trial_id": trial_id, "status": status, "config": config, "failures": failures, "error": error}


def _tune_trials(run_dir: Path) -> list[dict[str, Any]]:
    """Per trial: id, Tune status, config, failures and error, from the newest experiment state."""
    path = newest_experiment_state(run_dir)
    if path is None:
        return []
    try:
        state = json.loads(path.read_text())
        trial_data = state["trial_data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LrbsError(f"RUN_DIR: cannot read {path.name} ({exc})") from None
    trials = []
    for trial_json, meta_json in trial_data:
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        meta = json.loads(meta_json) if isinstance(meta_json, str) else meta_json
        error = ""
        if meta.get("error_filename") and trial.get("relative_logdir"):
            error = _error_line(run_dir / trial["relative_logdir"] / meta["error_filename"])
        failures = int(meta.get("num_failures") or 0)
        trials.append(
            _trial(trial["trial_id"], trial.get("status", "UNKNOWN"), trial.get("config") or {}, failures, error)
        )
    return trials


def _ledger_trials(run_dir: Path) -> list[dict[str, Any]] | None:
    """Per Tune trial lineage, from ``RUN_DIR/trials/`` (None when the run has no records)."""
    if not (run_dir / LEDGER_DIR).is_dir():
        return None
    records, damaged = read_ledger(run_dir)
    try:
        spec = yaml.safe_load((run_dir / SPEC_COPY).read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):
        spec = {}
    shared = {"train": spec.get("train") or {}} if isinstance(spec, dict) else {}
    live = holder_alive(run_dir / LOCK_FILE)
    trials = []
    for record in current_records(records):  # a trial restarted under a new id supersedes its older record
        status = record.status if record.status != RUNNING or live else "STOPPED"
        trials.append(_trial(record.trial_id, status, {**shared, "point": record.point}, record.failures, record.error))
    for name, problem in sorted(damaged.items()):
        trials.append(_trial(name[: -len(".json")], "UNKNOWN", shared, error=f"trial record {name}: {problem}"))
    return trials


def _per_member(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A pack's Tune trial as the per-point trials of the tables (``lrbs.sweeps.packing.members``)."""
    return [
        {**t, "trial_id": trial_id, "config": config}
        for t in trials
        for trial_id, config in members(t["trial_id"], t["config"])
    ]


def read_progress(run_dir: str | Path, metrics: pa.Table | None = None) -> Progress | None:
    """The summary line's numbers from the run's files: totals from ``provenance.json`` (written
    by ``lrbs run``), epochs and training time from the rows, elapsed from the start to now (a
    driver holds the lock) or to the last row; None for a run without ``provenance.json``."""
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / PROVENANCE_FILE).read_text())
        total, epochs = int(info["points"]), int(info["epochs"])
        started = datetime.fromisoformat(info["started_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    metrics = load_metrics(run_dir) if metrics is None else metrics  # the caller's copy: read once
    table = metrics.select(["trial_id", "epoch", "status", "wall_s", "written_at"]).to_pylist()
    last = {row["trial_id"]: row for row in table}  # sorted by trial then epoch: the last one wins
    done = sum(r["status"] in FINAL_ROW_STATUSES for r in last.values())
    epochs_done = sum(epochs if r["status"] in FINAL_ROW_STATUSES else r["epoch"] for r in last.values())
    walls: dict[str, float] = {}  # a pack's members share its training time: count it once
    for trial_id, r in last.items():
        base = split_member_id(trial_id)[0]
        walls[base] = max(walls.get(base, 0.0), float(r["wall_s"] or 0.0))
    live = holder_alive(run_dir / LOCK_FILE)
    end = time.time() if live else max((r["written_at"] or started for r in last.values()), default=started)
    elapsed = max(0.0, end - started)
    estimate = (info.get("estimate") or {}).get("device_hours")
    eta = (
        eta_seconds(total * epochs - epochs_done, epochs_done, elapsed, planned_seconds(info), elapsed)
        if live
        else None
    )
    unit = "GPU" if (info.get("resources_per_trial") or {}).get("gpu") else "CPU"
    return Progress(
        done,
        total,
        epochs_done,
        total * epochs,
        elapsed,
        eta,
        sum(walls.values()) / 3600,
        estimate,
        unit,
        diverged=sum(r["status"] == "diverged" for r in last.values()),
        at_most=bool(info.get("beta_search")),
    )


def read_status(run_dir: str | Path, loaded: tuple[pa.Table, ReadReport] | None = None) -> list[TrialStatus]:
    """One entry per trial of the run (Tune's trials, plus any trial only the metrics know).
    ``loaded``: ``load_metrics_with_report(run_dir)`` if the caller has it already."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not ((run_dir / METRIC_DIR).is_dir() or newest_experiment_state(run_dir)):
        raise LrbsError(f"RUN_DIR: {run_dir} is not an lrbs run directory (no metrics/ or experiment state inside)")
    last_rows: dict[str, dict[str, Any]] = {}
    damaged: dict[str, str] = {}  # metric file name -> what is wrong with it
    if (run_dir / METRIC_DIR).is_dir():
        metrics, info = loaded if loaded is not None else load_metrics_with_report(run_dir)
        damaged.update(info.damaged)
        for row in metrics.select(["trial_id", "epoch", "val_acc", "status", "config_json"]).to_pylist():
            last_rows[row["trial_id"]] = row  # sorted by trial then epoch: the last one wins
    ledger = _ledger_trials(run_dir)
    trials = _per_member(ledger if ledger is not None else _tune_trials(run_dir))
    known = {t["trial_id"] for t in trials}
    for trial_id, row in last_rows.items():
        if trial_id not in known:  # no experiment state yet (driver killed early)
            trials.append(_trial(trial_id, "UNKNOWN", json.loads(row["config_json"] or "{}")))
    out = []
    live = holder_alive(run_dir / LOCK_FILE)

    def order(t: dict[str, Any]) -> tuple[str, int]:  # pack members in member order: ...-m2 before ...-m10
        base, j = split_member_id(t["trial_id"])
        return base, -1 if j is None else j

    for t in sorted(trials, key=order):
        point = t["config"].get("point") or {}
        row = last_rows.get(t["trial_id"])
        out.append(
            TrialStatus(
                trial_id=t["trial_id"],
                lr=point.get("lr"),
                batch_size=point.get("batch_size"),
                seed=point.get("seed"),
                status=t["status"],
                epochs_done=row["epoch"] if row else 0,
                epochs=(t["config"].get("train") or {}).get("epochs"),
                last_val_acc=row["val_acc"] if row else None,
                row_status=row["status"] if row else None,
                failures=t["failures"],
                error=t["error"],
            )
        )
    by_id = {t.trial_id: t for t in out}
    for name, problem in sorted(damaged.items()):
        # Metric files are named <session>__<trial id>.arrow (sweeps/metrics_sink.py).
        trial = by_id.get(name[: -len(".arrow")].rpartition("__")[2])
        if trial is not None:
            trial.row_status = "damaged"
            trial.error = f"{problem} (metric file {name})"  # the problem first: the table cuts long errors
            trial.damaged_file = name
    for status in out:
        status.state = trial_state(status.status, status.row_status, live)
    return out


def format_status(
    trials: list[TrialStatus],
    error_width: int = 60,
    progress: Progress | None = None,
    damaged_files: dict[str, str] | None = None,
) -> str:
    """A fixed-width table and a summary line."""
    header = (
        f"{'trial_id':<14} {'lr':>9} {'batch':>6} {'seed':>5} {'status':<9} {'epochs':>8} "
        f"{'val_acc':>8} {'fails':>5}  error"
    )
    lines = [header]
    for t in trials:
        epochs = f"{t.epochs_done}/{t.epochs if t.epochs is not None else '?'}"
        lr = f"{t.lr:.4g}" if t.lr is not None else "-"
        acc = f"{t.last_val_acc:.4f}" if t.last_val_acc is not None else "-"
        error = t.error if len(t.error) <= error_width else t.error[: error_width - 3] + "..."
        lines.append(
            f"{t.trial_id:<14} {lr:>9} {t.batch_size if t.batch_size is not None else '-':>6} "
            f"{t.seed if t.seed is not None else '-':>5} {t.state:<9} {epochs:>8} {acc:>8} "
            f"{t.failures:>5}  {error}".rstrip()
        )
    counts = Counter(t.state for t in trials)
    damaged = [t for t in trials if t.row_status == "damaged"]
    if damaged:
        names = ", ".join(t.damaged_file for t in damaged[:3]) + (", ..." if len(damaged) > 3 else "")
        lines.append(
            f"DAMAGED: {len(damaged)} trial(s) with a damaged metric file ({names}; rows before the "
            f"damage are kept; see the error column)"
        )
    # A compacted file holds many trials' rows (sweeps/compaction.py): named on its own line.
    for name, problem in sorted((damaged_files or {}).items()):
        if name.endswith(".parquet"):
            lines.append(
                f"DAMAGED: compacted metric file {name}: {problem}; its trials' rows are missing unless "
                f"their stream files are still there"
            )
    if progress is not None:  # the line `lrbs run` prints while it runs
        progress.errored = counts.get("errored", 0)
        progress.running = counts.get("running", 0)
        lines.append(progress.line())
    lines.append(f"{len(trials)} trials: " + ", ".join(f"{counts[s]} {s}" for s in STATES if s in counts))
    return "\n".join(lines)
