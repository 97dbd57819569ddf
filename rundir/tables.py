"""Read the Arrow metric tables of a run directory. Pure functions; analysis never parses logs.

``load_metrics`` gives one row per (trial_id, epoch); ``load_trials`` one row per trial.
Files cut off mid-write (a killed driver) are read up to their last whole record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lrbs.rundir.layout import METRIC_DIR
from lrbs.rundir.schema import COMPACTED_SOURCES, METRIC_SCHEMA, PROBES


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


def _read_stream(f: pa.NativeFile, size: int) -> tuple[pa.Table, int, str | None]:
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


def _damaged_not_cut_off(f: pa.NativeFile, good: int, size: int) -> bool:
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


def read_compacted_file(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, list[str], str | None]:
    """The rows of a compacted metric file (Parquet, ``lrbs.sweeps.compaction``), the stream files it
    replaces, and what is wrong with it if it does not read (then no rows and no sources: the
    streams it would replace, if still there, are read instead)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise IsADirectoryError(f"{path.name} is not a regular file")
        # config_json dictionary-encoded: a config once per trial in memory too; ``columns``: only those read
        if columns is not None:  # a file from before a column existed: read what it has (concat fills nulls)
            names = set(pq.read_schema(path).names)
            columns = [c for c in columns if c in names]
        table = pq.read_table(path, columns=columns, read_dictionary=["config_json"])
        sources = json.loads((table.schema.metadata or {}).get(COMPACTED_SOURCES.encode(), b"[]"))
        if not isinstance(sources, list) or not all(isinstance(n, str) for n in sources):
            raise ValueError("its list of source files is not a list of names")
    except (OSError, pa.ArrowException, ValueError) as exc:
        return METRIC_SCHEMA.empty_table(), [], f"unreadable compacted file ({str(exc).splitlines()[0][:120]})"
    return table.replace_schema_metadata(None), sources, None


def read_metric_files(run_dir: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, ReadReport]:
    """Every row of every metric file, in write order (files sort by driver session): the
    compacted Parquet files, and the stream files no compacted file replaces. ``columns``: only
    these (a compacted file reads only their bytes)."""
    report = ReadReport()
    pieces: list[tuple[str, pa.Table]] = []
    covered: set[str] = set()
    folder = Path(run_dir, METRIC_DIR)
    for path in sorted(folder.glob("*.parquet")):
        table, sources, problem = read_compacted_file(path, columns)
        report.files += 1
        report.rows_read += table.num_rows
        if problem:
            report.damaged[path.name] = problem
        covered.update(sources)
        pieces.append((path.name, table))
    for path in sorted(folder.glob("*.arrow")):
        if path.name in covered:
            continue  # its rows are in a compacted file (the driver stopped before deleting it)
        table, dropped, problem = read_stream_file_checked(path)
        report.files += 1
        report.rows_read += table.num_rows
        if problem:
            report.damaged[path.name] = problem
        elif dropped:
            report.dropped_bytes[path.name] = dropped
        pieces.append((path.name, table.select([c for c in columns if c in table.column_names]) if columns else table))
    tables = [_config_as_dictionary(t) for _, t in sorted(pieces, key=lambda p: p[0])]
    if not tables:
        return _config_as_dictionary(METRIC_SCHEMA.empty_table()), report
    # Files from older code versions may lack newer columns: promote fills them with nulls.
    return pa.concat_tables(tables, promote_options="default"), report


CONFIG_TYPE = pa.dictionary(pa.int32(), pa.string())


def _config_as_dictionary(table: pa.Table) -> pa.Table:
    """``config_json`` dictionary-encoded: every row of a trial repeats its config (~1 KB), so a
    million rows would hold a gigabyte of copies; encoded, each distinct config is held once."""
    if "config_json" not in table.column_names:
        return table
    i = table.column_names.index("config_json")
    column = table.column(i)
    if column.type != CONFIG_TYPE:
        column = pc.dictionary_encode(column.cast(pa.string())).cast(CONFIG_TYPE)
    return table.set_column(i, pa.field("config_json", CONFIG_TYPE), column)


def dedupe_last(table: pa.Table, keys: tuple[str, ...] = ("trial_id", "epoch")) -> pa.Table:
    """Keep the last row (in table order) of each key: a retried epoch replaces the lost attempt."""
    if table.num_rows == 0:
        return table
    order = pa.array(np.arange(table.num_rows, dtype=np.int64))
    indexed = table.select(list(keys)).append_column("__row", order)
    last = indexed.group_by(list(keys), use_threads=False).aggregate([("__row", "max")])
    keep = pc.sort_indices(last.column("__row_max"))
    return table.take(last.column("__row_max").take(keep))


# Config keys that do not tell two attempts of a point apart: the code version, analysis settings
# and measurements that change no training step. A resume under newer code (which writes keys
# the older attempt's config lacks) still replaces the older attempt.
NOT_ATTEMPT_KEYS = (("code_version",), ("report",), ("train", "train_eval_samples"))


def attempt_key(config_json: str | None) -> str | None:
    """What makes two trials attempts of the same point: their config without ``NOT_ATTEMPT_KEYS``."""
    if config_json is None:
        return None
    try:
        config = json.loads(config_json)
    except ValueError:
        return config_json
    if isinstance(config, dict):
        for *parents, key in NOT_ATTEMPT_KEYS:
            node: Any = config
            for parent in parents:
                node = node.get(parent) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(key, None)
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
    n = table.num_rows
    if n == 0:
        return table
    rows = pa.array(np.arange(n, dtype=np.int64))
    trial_col = table.column("trial_id")
    last = pa.table({"t": trial_col, "r": rows}).group_by("t", use_threads=False).aggregate([("r", "max")])
    trials = last.column("t").to_pylist()  # one entry per trial (not per row)
    last_row = last.column("r_max").to_numpy()
    epochs = table.column("epoch").to_numpy()
    if "config_json" in table.column_names:
        raw = table.column("config_json").take(pa.array(last_row)).to_pylist()
    else:
        raw = [None] * len(trials)
    same = {c: attempt_key(c) for c in set(raw)}  # parsed once per distinct config
    newest: dict[str, int] = {}  # attempt key -> index (in trials) of the trial written last
    for k, config in enumerate(same[c] for c in raw):
        if config is not None and (config not in newest or last_row[newest[config]] < last_row[k]):
            newest[config] = k
    replaced = np.array([(key := same[c]) is not None and newest[key] != k for k, c in enumerate(raw)], dtype=np.bool_)
    # per row: its trial's position in ``trials`` (vectorized lookup), then the two rules
    which = pc.index_in(trial_col, value_set=last.column("t")).to_numpy(zero_copy_only=False)
    keep = ~replaced[which] & (epochs <= epochs[last_row][which])
    return table if keep.all() else table.filter(pa.array(keep))


def load_metrics(run_dir: str | Path) -> pa.Table:
    """One row per (trial_id, epoch), sorted by trial_id then epoch."""
    return load_metrics_with_report(run_dir)[0]


def load_metrics_with_report(run_dir: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, ReadReport]:
    """``load_metrics`` and what reading found (files, rows, bytes dropped from cut-off files).
    ``columns``: only these (``trial_id``, ``epoch`` and ``config_json`` are always read: the
    exactly-once rules need them)."""
    if columns is not None:
        columns = list(dict.fromkeys(["trial_id", "epoch", "config_json", *columns]))
    table, report = read_metric_files(run_dir, columns)
    table = dedupe_last(drop_superseded(table))
    report.superseded_rows = report.rows_read - table.num_rows
    table = table.sort_by([("trial_id", "ascending"), ("epoch", "ascending")])
    return _config_on_last_rows(table), report


def _config_on_last_rows(table: pa.Table) -> pa.Table:
    """``config_json`` (plain strings again) on each trial's last row only, null on the others:
    the config once per trial, as every reader takes it from the last row."""
    if "config_json" not in table.column_names:
        return table
    n = table.num_rows
    is_last = np.ones(n, dtype=bool)
    if n > 1:  # sorted by trial: a last row is one whose next row is another trial's
        trial = table.column("trial_id").combine_chunks()
        is_last[:-1] = pc.not_equal(trial.slice(0, n - 1), trial.slice(1)).to_numpy(zero_copy_only=False)
    index = pa.array(np.arange(n, dtype=np.int64), mask=~is_last)
    column = table.column("config_json").take(index).cast(pa.string())
    i = table.column_names.index("config_json")
    return table.set_column(i, pa.field("config_json", pa.string()), column)


PROBE_COLUMNS = tuple(f.name for f in PROBES)
TRIAL_COLUMNS = (
    "trial_id",
    "sweep",
    "lr",
    "batch_size",
    "ratio",
    "seed",
    "status",
    "epochs_done",
    "final_val_acc",
    "max_val_acc",
    "final_val_loss",
    "final_train_loss",
    "final_train_acc",
    "final_train_eval_loss",
    "final_train_eval_acc",
    "dataset",
    "n_train",
    "model",
    "code_version",
    "beta",
    "rescale",
    "variant",
    "schedule",
    "probe_epoch",
    *PROBE_COLUMNS,
)


TRIAL_SOURCE_COLUMNS = [
    "sweep",
    "lr",
    "batch_size",
    "seed",
    "status",
    "val_acc",
    "val_loss",
    "train_loss",
    "train_acc",
    "train_eval_loss",
    "train_eval_acc",
    "dataset",
    "n_train",
    "model",
    "code_version",
    "beta",
    "rescale",
    "variant",
    "schedule",
    *PROBE_COLUMNS,
]


def load_trials(run_dir: str | Path, metrics: pa.Table | None = None) -> pa.Table:
    """One row per trial: its point, status, end-of-training values and the rest of its config.

    ``lr`` and ``batch_size`` are the trial's base values (the spec point); with schedules the
    per-epoch values stay in ``load_metrics``. Curvature columns hold the trial's latest probe
    (at ``probe_epoch``; the last epoch when probes ran at the end; one that failed has null
    values and its ``probe_error``). ``final_train_eval_loss`` /
    ``final_train_eval_acc`` are the trial's last ``train_eval_loss`` / ``train_eval_acc`` (its
    final weights in eval mode on the train-eval subset; null for runs written without them and
    for diverged trials). Config keys become ``cfg.<section>.<key>`` columns.
    """
    if metrics is None:  # only the columns a trial row is made of
        metrics = load_metrics_with_report(run_dir, TRIAL_SOURCE_COLUMNS)[0]
    return trials_from_metrics(metrics)


def _valid(column: pa.ChunkedArray) -> np.ndarray:
    """Where ``column`` is not null and not NaN (``is_value``), vectorized: a numpy mask."""
    valid = pc.is_valid(column)
    if pa.types.is_floating(column.type):
        valid = pc.and_(valid, pc.invert(pc.fill_null(pc.is_nan(column), True)))
    mask: np.ndarray = valid.to_numpy(zero_copy_only=False)
    return mask


def _max_per_trial(trial_ids: pa.ChunkedArray, values: pa.Array | pa.ChunkedArray, where: np.ndarray) -> dict[str, Any]:
    """trial id -> the largest of ``values`` over that trial's rows where ``where`` holds."""
    if not where.any():
        return {}
    keep = pa.array(where)
    table = pa.table({"t": trial_ids.filter(keep), "v": values.filter(keep)})
    grouped = table.group_by("t", use_threads=False).aggregate([("v", "max")])
    return dict(zip(grouped.column("t").to_pylist(), grouped.column("v_max").to_pylist()))


def trials_from_metrics(metrics: pa.Table) -> pa.Table:
    """One row per trial from epoch rows (vectorized: per-row work in Arrow, per-trial work in Python)."""
    rows = []
    m = metrics.sort_by([("trial_id", "ascending"), ("epoch", "ascending")]) if metrics.num_rows else metrics
    n = m.num_rows
    every = pa.array(np.arange(n, dtype=np.int64))
    trial_col = m.column("trial_id")
    last_of = _max_per_trial(trial_col, every, np.ones(n, dtype=bool))
    max_val = _max_per_trial(trial_col, m.column("val_acc"), _valid(m.column("val_acc")))
    # The latest probe attempt: one that failed (probe_error, null values) replaces earlier values.
    any_probe = np.zeros(n, dtype=bool)
    for c in ("lambda_max", "hessian_trace", "hessian_fro", "probe_error"):
        if c in m.column_names:
            any_probe |= _valid(m.column(c))
    probed_of = _max_per_trial(trial_col, every, any_probe)
    # The last row of each trial with an eval-mode train accuracy (only the last epoch has one).
    train_eval: dict[str, tuple[float | None, float | None]] = {}
    if "train_eval_acc" in m.column_names:
        rows_of = _max_per_trial(trial_col, every, _valid(m.column("train_eval_acc")))
        taken = m.select(["train_eval_loss", "train_eval_acc"]).take(pa.array(list(rows_of.values()), pa.int64()))
        train_eval = dict(zip(rows_of, zip(taken.column(0).to_pylist(), taken.column(1).to_pylist())))
    order = sorted(last_of)
    lasts = m.take(pa.array([last_of[t] for t in order], pa.int64())).to_pylist() if order else []
    probed_ids = [t for t in order if t in probed_of]
    probed_rows = (
        dict(zip(probed_ids, m.take(pa.array([probed_of[t] for t in probed_ids], pa.int64())).to_pylist()))
        if probed_ids
        else {}
    )
    for trial_id, last in zip(order, lasts):
        config = json.loads(last["config_json"] or "{}")
        point = config.get("point", {})
        row = {
            "trial_id": trial_id,
            "sweep": last["sweep"],
            "lr": float(point.get("lr", last["lr"])),
            "batch_size": int(point.get("batch_size", last["batch_size"])),
            "seed": last["seed"],
            "status": last["status"],
            "epochs_done": last["epoch"],
            "final_val_acc": last["val_acc"],
            "max_val_acc": max_val.get(trial_id),
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
        row["final_train_eval_loss"], row["final_train_eval_acc"] = train_eval.get(trial_id, (None, None))
        probe = probed_rows.get(trial_id)
        row["probe_epoch"] = probe["epoch"] if probe else None
        for col in PROBE_COLUMNS:
            row[col] = probe.get(col) if probe else None
        row["ratio"] = row["lr"] / row["batch_size"]
        row.update(flatten(config, "cfg"))
        rows.append(row)
    if not rows:
        return pa.table({name: pa.array([], type=trial_type(name)) for name in TRIAL_COLUMNS})
    columns = list(TRIAL_COLUMNS) + sorted({k for r in rows for k in r} - set(TRIAL_COLUMNS))
    return pa.table(
        {c: pa.array([r.get(c) for r in rows], type=trial_type(c) if c in TRIAL_COLUMNS else None) for c in columns}
    )


def is_value(v: object) -> bool:
    """Not null and not NaN."""
    return v is not None and v == v


def trial_type(name: str) -> pa.DataType:
    """The Arrow type of a trial-table column."""
    if name in METRIC_SCHEMA.names:
        return METRIC_SCHEMA.field(name).type
    if name in ("trial_id", "sweep", "status", "rescale", "variant", "schedule"):
        return pa.string()
    return pa.int64() if name in ("epochs_done", "probe_epoch") else pa.float64()


def flatten(data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Nested config keys as ``<prefix>.<section>.<key>`` columns; lists and tuples as JSON."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out
