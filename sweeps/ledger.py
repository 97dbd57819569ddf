"""``RUN_DIR/trials/<trial id>.json``: lrbs's own record of every trial, written by the driver.

``lrbs resume`` and ``lrbs status`` read these JSON files, the spec copy and the Arrow tables,
never Ray's experiment state (``tuner.pkl`` and parts of ``experiment_state-*.json`` are
cloudpickle, which runs code when loaded, and a damaged state made Ray start a bogus fresh
experiment). A record says which points a Tune trial trains, in which folders its checkpoints
are (one per driver session that ran it), and how it ended.

The trial id of a record is the id the metric rows carry: the Tune id of the trial's first
attempt. A trial continued by ``lrbs resume`` runs as a new Tune trial but keeps that id
(``config["resume"]``, see :func:`lineage_id`), so its rows continue the same series.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainables.config import point_key

LEDGER_DIR = "trials"
RUNNING, TERMINATED, ERROR = "RUNNING", "TERMINATED", "ERROR"
CHECKPOINT_GLOB = "checkpoint_*"


@dataclass
class TrialRecord:
    trial_id: str                      # the id in the metric rows (a pack's members add -m<j>)
    point: dict[str, Any]              # the Tune trial's ``point`` (``{"members": [...]}`` for a pack)
    logdirs: list[str] = field(default_factory=list)  # trial folders, relative to RUN_DIR, oldest first
    status: str = RUNNING              # RUNNING (or stopped with its driver), TERMINATED, ERROR
    failures: int = 0                  # Tune's failure count, summed over driver sessions
    error: str = ""                    # last line of the latest error
    updated_at: float = 0.0

    def checkpoints(self, run_dir: Path) -> list[Path]:
        """Kept checkpoint folders, newest first (later sessions first, then by index)."""
        found = []
        for logdir in reversed(self.logdirs):
            found += sorted((run_dir / logdir).glob(CHECKPOINT_GLOB), reverse=True)
        return found


def lineage_id(trial) -> str:
    """The id a Tune trial's rows and record carry: the first attempt's, kept across resumes."""
    entry = (trial.config.get("resume") or {}).get(point_key(trial.config.get("point") or {}))
    return entry["trial_id"] if entry else trial.trial_id


def _record_path(run_dir: Path, trial_id: str) -> Path:
    return run_dir / LEDGER_DIR / f"{trial_id}.json"


def write_record(run_dir: Path, record: TrialRecord) -> None:
    """Atomic (write a temporary file, then rename): a reader sees the old or the new record."""
    record.updated_at = time.time()
    path = _record_path(run_dir, record.trial_id)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(record), indent=1, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_ledger(run_dir: str | Path) -> tuple[dict[str, TrialRecord], dict[str, str]]:
    """Records by trial id, and the files that could not be read (name -> why)."""
    run_dir = Path(run_dir)
    records, damaged = {}, {}
    for path in sorted((run_dir / LEDGER_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            record = TrialRecord(**{k: data[k] for k in TrialRecord.__dataclass_fields__ if k in data})
            if not isinstance(record.point, dict) or not isinstance(record.logdirs, list):
                raise TypeError("point or logdirs of the wrong type")
        except (OSError, ValueError, TypeError, KeyError) as exc:
            damaged[path.name] = f"{type(exc).__name__}: {str(exc)[:100]}"
            continue
        records[record.trial_id] = record
    return records, damaged


_TRIAL_DIR_ID = re.compile(r"^[A-Za-z0-9]+_([0-9a-f]+_\d{5})_")
SESSION_GLOB = "resume-*"  # the Ray experiment of each `lrbs resume` session, inside RUN_DIR


def ledger_from_trial_dirs(run_dir: str | Path) -> dict[str, TrialRecord]:
    """Records rebuilt from the Tune trial folders, for a run directory written before the
    ledger existed or whose records were damaged: each folder holds ``params.json`` (its config,
    plain JSON; a resumed trial's names its first attempt in ``resume``) and its Tune id in its
    name. Statuses are left RUNNING: the metric rows tell which points finished."""
    run_dir = Path(run_dir)
    records: dict[str, TrialRecord] = {}
    folders = sorted(run_dir.glob("*/params.json")) + sorted(run_dir.glob(f"{SESSION_GLOB}/*/params.json"))
    for params in folders:
        match = _TRIAL_DIR_ID.match(params.parent.name)
        try:
            config = json.loads(params.read_text())
            point = config.get("point")
            entry = (config.get("resume") or {}).get(point_key(point)) if isinstance(point, dict) else None
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        if not match or not isinstance(point, dict):
            continue
        trial_id = entry["trial_id"] if isinstance(entry, dict) and "trial_id" in entry else match.group(1)
        record = records.setdefault(trial_id, TrialRecord(trial_id, point))
        record.logdirs.append(params.parent.relative_to(run_dir).as_posix())
    return records


def member_points(point: dict[str, Any]) -> list[dict[str, Any]]:
    """The points a Tune trial's ``point`` trains (one, or a pack's members)."""
    return list(point["members"]) if "members" in point else [point]


FINAL_ROW_STATUSES = ("finished", "diverged")


def last_rows(run_dir: str | Path) -> dict[str, tuple[int, str, str | None]]:
    """Per trial id of the rows (pack members ``-m<j>`` included): the epoch and status of its
    last row (after exactly-once reading) and its point's key."""
    from analysis.tables import load_metrics

    table = load_metrics(run_dir)  # exactly-once rows, sorted by trial then epoch
    last: dict[str, tuple[int, str, str | None]] = {}
    for trial_id, epoch, status, config in zip(
            table.column("trial_id").to_pylist(), table.column("epoch").to_pylist(),
            table.column("status").to_pylist(), table.column("config_json").to_pylist()):
        last[trial_id] = (epoch, status, config)
    out = {}
    for trial_id, (epoch, status, config) in last.items():
        try:
            point = json.loads(config or "{}").get("point")
        except ValueError:
            point = None
        out[trial_id] = (int(epoch), status, point_key(point) if isinstance(point, dict) else None)
    return out


def points_done(run_dir: str | Path, rows: dict | None = None) -> set[str]:
    """Keys (``point_key``) of the points whose newest trial wrote its last row: finished or diverged."""
    rows = last_rows(run_dir) if rows is None else rows
    return {key for _, status, key in rows.values() if status in FINAL_ROW_STATUSES and key is not None}


def resumable_epoch(record: TrialRecord, rows: dict[str, tuple[int, str, str | None]]) -> int:
    """The newest epoch a checkpoint of ``record``'s trial may be from: the last epoch every member
    still training has a row for. The driver writes an epoch's rows after Tune has stored its
    checkpoint, so a driver killed (or a disk filled) in between leaves a checkpoint one epoch
    ahead of the rows; continuing from it would leave that epoch without a row."""
    points = member_points(record.point)
    epochs = []
    for j in range(len(points)):
        trial_id = record.trial_id if len(points) == 1 else f"{record.trial_id}-m{j}"
        epoch, status, _ = rows.get(trial_id, (0, "running", None))
        if status not in FINAL_ROW_STATUSES:
            epochs.append(epoch)
    return min(epochs, default=0)


def sweep_outcome(run_dir: str | Path, points: list[dict[str, Any]]) -> dict[str, int]:
    """Per point of the sweep: finished (its rows end finished or diverged), errored (its trial's
    record says ERROR), else unfinished (never started, or stopped with its driver)."""
    done = points_done(run_dir)
    records, _ = read_ledger(run_dir)
    errored = {point_key(p) for r in records.values() if r.status == ERROR for p in member_points(r.point)}
    keys = [point_key(p) for p in points]
    n_ok = sum(k in done for k in keys)
    n_err = sum(k not in done and k in errored for k in keys)
    return {"finished": n_ok, "errored": n_err, "unfinished": len(keys) - n_ok - n_err}
