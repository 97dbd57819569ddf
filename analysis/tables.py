"""Read the Arrow metric tables of a run directory. Pure functions; analysis never parses logs.

``load_metrics`` gives one row per (trial_id, epoch); ``load_trials`` one row per trial.
Files cut off mid-write (a killed driver) are read up to their last whole record.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from analysis.schema import METRIC_SCHEMA, PROBES


@dataclass
class ReadReport:
    """What reading a run's files found: rows kept, and bytes dropped from cut-off files."""
    files: int = 0
    rows_read: int = 0
    dropped_bytes: dict[str, int] = field(default_factory=dict)  # file name -> bytes not readable
    superseded_rows: int = 0  # rows of earlier attempts replaced by later ones (see drop_superseded)
    # file name -> what is wrong: empty, an unreadable header, or bad bytes inside (not a cut-off)
    damaged: dict[str, str] = field(default_factory=dict)

    @property
    def truncated_files(self) -> list[str]:
        return sorted(self.dropped_bytes)


def read_stream_file(path: str | Path) -> tuple[pa.Table, int]:
    """All whole record batches of an Arrow IPC stream file and the number of bytes dropped.

    A stream that was never closed (the writer was killed) has no end-of-stream marker and may
    end inside a message; everything before the broken message is returned.
    """
    table, dropped, _ = read_stream_file_checked(path)
    return table, dropped


def read_stream_file_checked(path: str | Path) -> tuple[pa.Table, int, str | None]:
    """``read_stream_file`` plus what is wrong with the file, if it is damaged rather than cut off.

    Cut off (a killed writer): whole batches, then an incomplete message at the end. Damaged: a
    0-byte file, a header that is not an Arrow stream, or a batch whose bytes do not validate
    (e.g. flipped bytes: invalid UTF-8 in a string column); the batches before it are kept.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise IsADirectoryError(f"{path.name} is not a regular file")
        with pa.OSFile(str(path), "rb") as f:
            return _read_stream(f, size)
    except OSError as exc:  # a folder in its place, no permission to read, an I/O error
        return METRIC_SCHEMA.empty_table(), 0, f"unreadable ({exc.strerror or exc})"


END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # what a closed stream writer writes last


def _read_stream(f, size: int) -> tuple[pa.Table, int, str | None]:
    if size == 0:
        return METRIC_SCHEMA.empty_table(), 0, "empty file (0 bytes): no row was ever written to it"
    batches: list[pa.RecordBatch] = []
    good = 0  # offset just past the last whole message
    schema = None
    problem = None
    try:
        reader = pa.ipc.open_stream(f)
        schema = reader.schema
        good = f.tell()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, EOFError) as exc:
        reader = None
        problem = f"unreadable header ({str(exc).splitlines()[0][:120]}): not an Arrow stream"
    while reader is not None:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            good = f.tell()
            if size > good:  # the rows are whole; something wrote after the stream's end
                problem = f"{size - good} bytes after the end of the stream (the rows before are intact)"
            break
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError, EOFError) as exc:
            if _damaged_not_cut_off(f, good, size):
                problem = f"bad bytes in the record at byte {good} ({str(exc).splitlines()[0][:120]})"
            break  # else an incomplete message at the end: the writer was cut off
        try:
            batch.validate(full=True)
        except (pa.ArrowInvalid, ValueError) as exc:
            problem = f"bad bytes in the record at byte {good} ({str(exc).splitlines()[0][:120]})"
            break
        batches.append(batch)
        good = f.tell()
    table = pa.Table.from_batches(batches, schema=schema or METRIC_SCHEMA)
    return table, size - good, problem


def _damaged_not_cut_off(f, good: int, size: int) -> bool:
    """Whether a record that does not read at ``good`` is damage rather than a writer cut off
    mid-write: the file was closed (it ends with the end-of-stream marker), or the message at
    ``good`` is whole (its bytes are all there) and still does not read. (Damage in the last
    message of a file whose writer was killed looks like a cut-off: it is read the same way.)"""
    f.seek(max(0, size - len(END_OF_STREAM)))
    if size - good > len(END_OF_STREAM) and f.read(len(END_OF_STREAM)) == END_OF_STREAM:
        return True
    f.seek(good)
    try:
        pa.ipc.read_message(pa.BufferReader(f.read(size - good)))
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, EOFError, ValueError):
        return False  # not even a whole message: cut off
    return True


def read_metric_files(run_dir: str | Path) -> tuple[pa.Table, ReadReport]:
    """Every row of every metric file, in write order (files sort by driver session)."""
    report = ReadReport()
    tables = []
    for path in sorted(Path(run_dir, "metrics").glob("*.arrow")):
        table, dropped, problem = read_stream_file_checked(path)
        report.files += 1
        report.rows_read += table.num_rows
        if problem:
            report.damaged[path.name] = problem
        elif dropped:
            report.dropped_bytes[path.name] = dropped
        tables.append(table)
    if not tables:
        return METRIC_SCHEMA.empty_table(), report
    # Files from older code versions may lack newer columns: promote fills them with nulls.
    return pa.concat_tables(tables, promote_options="default"), report


def dedupe_last(table: pa.Table, keys: tuple[str, ...] = ("trial_id", "epoch")) -> pa.Table:
    """Keep the last row (in table order) of each key: a retried epoch replaces the lost attempt."""
    if table.num_rows == 0:
        return table
    order = pa.array(range(table.num_rows), pa.int64())
    indexed = table.select(list(keys)).append_column("__row", order)
    last = indexed.group_by(list(keys), use_threads=False).aggregate([("__row", "max")])
    keep = pc.sort_indices(last.column("__row_max"))
    return table.take(last.column("__row_max").take(keep))


def _attempt_key(config_json: str | None) -> str | None:
    """What makes two trials attempts of the same point: their config without ``code_version``
    (a resume after a commit restarts a trial under newer code; it still replaces the old one)."""
    if config_json is None:
        return None
    try:
        config = json.loads(config_json)
    except ValueError:
        return config_json
    if isinstance(config, dict):
        config.pop("code_version", None)
    return json.dumps(config, sort_keys=True)


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
    raw = (table.column("config_json").to_pylist() if "config_json" in table.column_names
           else [None] * table.num_rows)
    same = {c: _attempt_key(c) for c in set(raw)}  # parsed once per distinct config
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
    keep = [i for i, (t, e) in enumerate(zip(trial_ids, epochs))
            if t not in replaced and e <= epochs[last[t]]]
    return table if len(keep) == table.num_rows else table.take(pa.array(keep, pa.int64()))


def load_metrics(run_dir: str | Path) -> pa.Table:
    """One row per (trial_id, epoch), sorted by trial_id then epoch."""
    return load_metrics_with_report(run_dir)[0]


def load_metrics_with_report(run_dir: str | Path) -> tuple[pa.Table, ReadReport]:
    """``load_metrics`` and what reading found (files, rows, bytes dropped from cut-off files)."""
    table, report = read_metric_files(run_dir)
    table = dedupe_last(drop_superseded(table))
    report.superseded_rows = report.rows_read - table.num_rows
    return table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")]), report


PROBE_COLUMNS = tuple(f.name for f in PROBES)
TRIAL_COLUMNS = ("trial_id", "sweep", "lr", "batch_size", "ratio", "seed", "status", "epochs_done",
                 "final_val_acc", "max_val_acc", "final_val_loss", "final_train_loss", "final_train_acc",
                 "dataset", "n_train", "model", "code_version", "beta", "rescale", "variant", "schedule",
                 "probe_epoch", *PROBE_COLUMNS)


def load_trials(run_dir: str | Path, metrics: pa.Table | None = None) -> pa.Table:
    """One row per trial: its point, status, end-of-training values and the rest of its config.

    ``lr`` and ``batch_size`` are the trial's base values (the spec point); with schedules the
    per-epoch values stay in ``load_metrics``. Curvature columns hold the trial's latest probe
    (at ``probe_epoch``; the last epoch when probes ran at the end). Config keys become
    ``cfg.<section>.<key>`` columns.
    """
    metrics = load_metrics(run_dir) if metrics is None else metrics
    return trials_from_metrics(metrics)


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
        val_accs = [r["val_acc"] for r in epochs if _is_value(r["val_acc"])]
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
        probed = [r for r in epochs if any(_is_value(r.get(c)) for c in ("lambda_max", "hessian_trace", "hessian_fro"))]
        row["probe_epoch"] = probed[-1]["epoch"] if probed else None
        for col in PROBE_COLUMNS:
            row[col] = probed[-1].get(col) if probed else None
        row["ratio"] = row["lr"] / row["batch_size"]
        row.update(_flatten(config, "cfg"))
        rows.append(row)
    if not rows:
        return pa.table({name: pa.array([], type=_trial_type(name)) for name in TRIAL_COLUMNS})
    columns = list(TRIAL_COLUMNS) + sorted({k for r in rows for k in r} - set(TRIAL_COLUMNS))
    return pa.table({c: pa.array([r.get(c) for r in rows], type=_trial_type(c) if c in TRIAL_COLUMNS else None)
                     for c in columns})


def _is_value(v) -> bool:
    return v is not None and v == v  # not null, not NaN


def _trial_type(name: str) -> pa.DataType:
    if name in METRIC_SCHEMA.names:
        return METRIC_SCHEMA.field(name).type
    if name in ("trial_id", "sweep", "status", "rescale", "variant", "schedule"):
        return pa.string()
    return pa.int64() if name in ("epochs_done", "probe_epoch") else pa.float64()


def _flatten(data: dict, prefix: str) -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out
