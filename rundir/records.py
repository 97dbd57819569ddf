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

import functools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow.fs as pafs

from lrbs.rundir.layout import CHECKPOINT_GLOB, LEDGER_DIR, SESSION_GLOB, TRIAL_PARAMS
from lrbs.rundir.points import from_config, member_trial_id, point_key
from lrbs.rundir.safe_write import make_dirs, write_file_safely
from lrbs.rundir.tables import load_metrics

RUNNING, TERMINATED, ERROR = "RUNNING", "TERMINATED", "ERROR"


@dataclass
class TrialRecord:
    trial_id: str  # the id in the metric rows (a pack's members add -m<j>)
    point: dict[str, Any]  # the Tune trial's ``point`` (``{"members": [...]}`` for a pack)
    logdirs: list[str] = field(default_factory=list)  # trial folders, relative to RUN_DIR, oldest first
    status: str = RUNNING  # RUNNING (or stopped with its driver), TERMINATED, ERROR
    failures: int = 0  # Tune's failure count, summed over driver sessions
    error: str = ""  # last line of the latest error
    updated_at: float = 0.0

    def checkpoints(self, run_dir: Path) -> list[Path]:
        """Kept checkpoint folders, newest first (later sessions first, then by index)."""
        found = []
        for logdir in reversed(self.logdirs):
            found += sorted((run_dir / logdir).glob(CHECKPOINT_GLOB), reverse=True)
        return found


def resume_entry(config: dict[str, Any]) -> dict[str, Any] | None:
    """What ``lrbs resume`` planned for this trial (``config["resume"]``: the path of the session's
    plan, a JSON map of point key -> trial id, checkpoints, max_epoch), or None. Each trial's
    config holds only the path, so configs stay small however many trials a resume continues."""
    plan = config.get("resume")
    if not isinstance(plan, str):
        return None
    return resume_plan(plan).get(point_key(config.get("point") or {}))


@functools.lru_cache(maxsize=8)
def resume_plan(path: str) -> dict[str, dict[str, Any]]:
    if "://" in path:  # the plan of a resume in object storage, read where the trial runs
        # An unreachable store raises (not cached): the trial fails and Tune retries it, rather
        # than starting it from scratch under a new id.
        fs, inner = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as f:
            text = f.read().decode()
    else:
        try:
            text = Path(path).read_text()
        except OSError:
            return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class TuneTrial(Protocol):
    """What :func:`lineage_id` reads of a Tune trial (``ray.tune.experiment.Trial``)."""

    trial_id: str
    config: dict[str, Any]


def lineage_id(trial: TuneTrial) -> str:
    """The id a Tune trial's rows and record carry: the first attempt's, kept across resumes."""
    entry = resume_entry(trial.config)
    return str(entry["trial_id"]) if entry else trial.trial_id


def _record_path(run_dir: Path, trial_id: str) -> Path:
    return run_dir / LEDGER_DIR / f"{trial_id}.json"


def write_record(run_dir: Path, record: TrialRecord) -> None:
    """Atomic (write a temporary file, then rename): a reader sees the old or the new record.
    Never written through a link planted in the run directory (``lrbs.rundir.safe_write``)."""
    record.updated_at = time.time()
    path = _record_path(run_dir, record.trial_id)
    make_dirs(path.parent, run_dir)
    write_file_safely(path, json.dumps(asdict(record), indent=1, default=str), root=run_dir)


# Tune's trial ids, the only ids lrbs writes records for: a grid's (``<5 hex>_<index>``) and a
# search algorithm's (8 hex; ``beta.search``)
_TRIAL_ID = re.compile(r"^(?:[0-9a-f]{5}_\d{5}|[0-9a-f]{8})$")


def _check_record(record: TrialRecord, path: Path) -> None:
    """Every field of the type lrbs writes; the id is a Tune trial id equal to the file's name
    (so a record cannot name a file elsewhere); folders are relative and inside the run."""
    if not (isinstance(record.trial_id, str) and _TRIAL_ID.match(record.trial_id) and path.stem == record.trial_id):
        raise ValueError("trial_id is not a Tune trial id matching the file name")
    if not isinstance(record.point, dict) or (
        "members" in record.point
        and not (
            isinstance(record.point["members"], list) and all(isinstance(m, dict) for m in record.point["members"])
        )
    ):
        raise TypeError("point is not a point or a pack of points")
    if not isinstance(record.logdirs, list) or not all(
        isinstance(d, str) and not d.startswith("/") and ".." not in Path(d).parts for d in record.logdirs
    ):
        raise ValueError("logdirs are not folders inside the run directory")
    if record.status not in (RUNNING, TERMINATED, ERROR):
        raise ValueError(f"unknown status {str(record.status)[:20]!r}")
    for key in ("failures", "updated_at"):
        if isinstance(getattr(record, key), bool) or not isinstance(getattr(record, key), (int, float)):
            raise TypeError(f"{key} is not a number")
    if not isinstance(record.error, str):
        raise TypeError("error is not text")


def read_ledger(run_dir: str | Path) -> tuple[dict[str, TrialRecord], dict[str, str]]:
    """Records by trial id, and the files that could not be read (name -> why)."""
    run_dir = Path(run_dir)
    records, damaged = {}, {}
    for path in sorted((run_dir / LEDGER_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            record = TrialRecord(**{k: data[k] for k in TrialRecord.__dataclass_fields__ if k in data})
            _check_record(record, path)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            damaged[path.name] = f"{type(exc).__name__}: {str(exc)[:100]}"
            continue
        records[record.trial_id] = record
    return records, damaged


# Tune's trial folder: <trainable>_<trial id>_<index>_...
_TRIAL_DIR_ID = re.compile(r"_([0-9a-f]{5}_\d{5}|[0-9a-f]{8})_\d+_")


def ledger_from_trial_dirs(run_dir: str | Path) -> dict[str, TrialRecord]:
    """Records rebuilt from the Tune trial folders, for a run directory written before the
    ledger existed or whose records were damaged: each folder holds ``params.json`` (its config,
    plain JSON; a resumed trial's names its first attempt in ``resume``) and its Tune id in its
    name. Statuses are left RUNNING: the metric rows tell which points finished."""
    run_dir = Path(run_dir)
    records: dict[str, TrialRecord] = {}
    folders = sorted(run_dir.glob(f"*/{TRIAL_PARAMS}")) + sorted(run_dir.glob(f"{SESSION_GLOB}/*/{TRIAL_PARAMS}"))
    for params in folders:
        match = _TRIAL_DIR_ID.search(params.parent.name)
        try:
            config = json.loads(params.read_text())
            point = config.get("point")
            entry = resume_entry(config) if isinstance(point, dict) else None
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        if not match or not isinstance(point, dict):
            continue
        trial_id = entry["trial_id"] if isinstance(entry, dict) and "trial_id" in entry else match.group(1)
        record = records.setdefault(trial_id, TrialRecord(trial_id, point))
        record.logdirs.append(params.parent.relative_to(run_dir).as_posix())
    return records


FINAL_ROW_STATUSES = ("finished", "diverged")


def last_rows(run_dir: str | Path) -> dict[str, tuple[int, str, str | None]]:
    """Per trial id of the rows (pack members ``-m<j>`` included): the epoch and status of its
    last row (after exactly-once reading) and its point's key."""
    table = load_metrics(run_dir)  # exactly-once rows, sorted by trial then epoch
    last: dict[str, tuple[int, str, str | None]] = {}
    for trial_id, epoch, status, config in zip(
        table.column("trial_id").to_pylist(),
        table.column("epoch").to_pylist(),
        table.column("status").to_pylist(),
        table.column("config_json").to_pylist(),
    ):
        last[trial_id] = (epoch, status, config)
    out: dict[str, tuple[int, str, str | None]] = {}
    for trial_id, (epoch, status, config) in last.items():
        try:
            point = json.loads(config or "{}").get("point")
        except ValueError:
            point = None
        out[trial_id] = (int(epoch), status, point_key(point) if isinstance(point, dict) else None)
    return out


def points_done(run_dir: str | Path, rows: dict[str, tuple[int, str, str | None]] | None = None) -> set[str]:
    """Keys (``point_key``) of the points whose newest trial wrote its last row: finished or diverged."""
    rows = last_rows(run_dir) if rows is None else rows
    return {key for _, status, key in rows.values() if status in FINAL_ROW_STATUSES and key is not None}


def resumable_epoch(record: TrialRecord, rows: dict[str, tuple[int, str, str | None]]) -> int:
    """The newest epoch a checkpoint of ``record``'s trial may be from: the last epoch every member
    still training has a row for. The driver writes an epoch's rows after Tune has stored its
    checkpoint, so a driver killed (or a disk filled) in between leaves a checkpoint one epoch
    ahead of the rows; continuing from it would leave that epoch without a row."""
    points = from_config(record.point)
    epochs = []
    for j in range(len(points)):
        epoch, status, _ = rows.get(member_trial_id(record.trial_id, j, len(points)), (0, "running", None))
        if status not in FINAL_ROW_STATUSES:
            epochs.append(epoch)
    return min(epochs, default=0)


def current_records(records: dict[str, TrialRecord]) -> list[TrialRecord]:
    """Per trial point (a pack's points), its newest attempt: a trial restarted from scratch
    under a new id (``--restart-errored``) supersedes the older record."""
    newest: dict[str, TrialRecord] = {}
    for record in records.values():
        key = point_key(record.point)
        if key not in newest or newest[key].updated_at < record.updated_at:
            newest[key] = record
    return list(newest.values())


def sweep_outcome(run_dir: str | Path, points: list[dict[str, Any]]) -> dict[str, int]:
    """Per point of the sweep: finished (its rows end finished or diverged), errored (its trial's
    record says ERROR), else unfinished (never started, or stopped with its driver)."""
    done = points_done(run_dir)
    records, _ = read_ledger(run_dir)
    errored = {point_key(p) for r in current_records(records) if r.status == ERROR for p in from_config(r.point)}
    keys = [point_key(p) for p in points]
    n_ok = sum(k in done for k in keys)
    n_err = sum(k not in done and k in errored for k in keys)
    return {"finished": n_ok, "errored": n_err, "unfinished": len(keys) - n_ok - n_err}
