"""Driver-side Tune callbacks that write the run directory: every reported epoch to Arrow IPC
files (``ArrowMetricsSink``), each trial's record to ``trials/`` (``TrialLedger``,
``lrbs.rundir.records``), for a run directory in object storage their uploads (``MetricsUploader``), and
every point's epochs to the experiment trackers of ``tracking:`` (``TrackingCallback``, ``lrbs.sweeps.tracking``).

Rows are written by the driver (not the trial), so they reach the run directory whatever node
the trial ran on. Each driver session writes its own file per trial and never reopens an old
one: a crash can only cut off the tail of the newest file, and readers (``lrbs.rundir.tables``)
keep the last row written for each (trial_id, epoch).
"""

from __future__ import annotations

import json
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import SHOULD_CHECKPOINT

from lrbs.rundir.layout import LEDGER_DIR, METRIC_DIR
from lrbs.rundir.location import RunDir, first_line
from lrbs.rundir.points import members
from lrbs.rundir.records import ERROR, FINAL_ROW_STATUSES, RUNNING, TERMINATED, TrialRecord, lineage_id, write_record
from lrbs.rundir.schema import COMPACTED_SOURCES, METRIC_SCHEMA
from lrbs.sweeps.compaction import COMPACT_EVERY, compact_streams
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.storage import session_tag
from lrbs.sweeps.tracking import TRACKERS, metrics_of, params_of

DEFAULT_UPLOAD_INTERVAL_S = 30.0  # MetricsUploader: seconds of results between uploads


def row_from_result(result: dict[str, Any], config: dict[str, Any], trial_id: str) -> dict[str, Any]:
    # The trainable checked every key against the schema (analysis.schema.check_row).
    row = {f.name: result.get(f.name) for f in METRIC_SCHEMA}
    dataset = config.get("dataset", {})
    row.update(
        sweep=config.get("sweep"),
        trial_id=trial_id,
        code_version=config.get("code_version"),
        dataset=dataset.get("name"),
        n_train=result.get("n_train"),
        model=config.get("model", {}).get("name"),
        # Without lrbs resume's checkpoint map: a resumed trial's config equals its first attempt's.
        config_json=json.dumps({k: v for k, v in config.items() if k != "resume"}, sort_keys=True, default=str),
        written_at=time.time(),
    )
    return row


class ArrowMetricsSink(Callback):
    """Appends one record batch per reported epoch and flushes it to disk at once; compacts the
    files of ended trials into Parquet every ``compact_every`` files and at the end
    (``lrbs.sweeps.compaction``)."""

    def __init__(self, metrics_dir: str | Path, compact_every: int | None = None):
        self.metrics_dir = Path(metrics_dir)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.session = session_tag()
        self._writers: dict[str, tuple[Any, pa.ipc.RecordBatchStreamWriter, Path]] = {}
        self.compact_every = COMPACT_EVERY if compact_every is None else compact_every
        self._closed: list[Path] = []  # this session's closed stream files, not compacted yet
        self._used_names: set[str] = set()  # closed earlier in this session (compacted or not)
        self._compactions = 0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment state; open files stay with this process.
        return {**self.__dict__, "_writers": {}, "_closed": [], "_used_names": set()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # An unpickled sink (Ray's own Tuner.restore would reload it; lrbs resume builds a new
        # one) is a new driver session: it must never reopen the files of the session that pickled it.
        self.__dict__.update(state)
        self.session = session_tag()

    def _writer(self, trial_id: str) -> pa.ipc.RecordBatchStreamWriter:
        if trial_id not in self._writers:
            path = self.metrics_dir / f"{self.session}__{trial_id}.arrow"
            if path.name in self._used_names or path in self._closed:
                # Closed (maybe compacted and deleted): a file under that name again would be
                # skipped by readers as covered. Not reached today (a recovered trial keeps its file).
                raise RuntimeError(f"metric file {path.name} was closed in this session; not reopening it")
            # A new file only: O_EXCL fails on any existing name (a planted link included), never
            # truncating it; O_NOFOLLOW refuses a link even where O_EXCL would not be honoured
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            sink = os.fdopen(os.open(path, flags, 0o666), "wb")
            self._writers[trial_id] = (sink, pa.ipc.new_stream(sink, METRIC_SCHEMA), path)
        return self._writers[trial_id][1]

    def write_row(self, row: dict[str, Any]) -> None:
        writer = self._writer(row["trial_id"])
        writer.write_batch(pa.RecordBatch.from_pylist([row], schema=METRIC_SCHEMA))
        self._writers[row["trial_id"]][0].flush()  # readable while the sweep runs

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if "pack_rows" in result:  # one row per member still training, each under its own trial id
            ids = members(lineage_id(trial), trial.config)
            for r in result["pack_rows"].values():
                trial_id, config = ids[r["member"]]
                self.write_row(row_from_result(r, config, trial_id))

    def _close(self, trial_id: str) -> None:
        # Also the files of a pack's members (``<trial_id>-m<j>``).
        for key in [k for k in self._writers if k == trial_id or k.startswith(f"{trial_id}-m")]:
            sink, writer, path = self._writers.pop(key)
            writer.close()
            sink.close()
            self._closed.append(path)
        if self.compact_every and len(self._closed) >= self.compact_every:
            self.compact()

    def compact(self) -> None:
        """Rewrite this session's closed stream files into one Parquet file (``lrbs.sweeps.compaction``).
        A failure (a full disk) leaves them as they are: they read the same, only larger."""
        if not self._closed:
            return
        dest = self.metrics_dir / f"{self.session}__compacted-{self._compactions:04d}.parquet"
        try:
            compact_streams(self._closed, dest)
            self._compactions += 1
        except (OSError, pa.ArrowException, ValueError) as exc:  # a full disk, an Arrow write error
            print(
                f"[lrbs] warning: could not compact {len(self._closed)} metric files into {dest.name} "
                f"({getattr(exc, 'strerror', None) or exc}); they stay as stream files (read the same)",
                file=sys.stderr,
                flush=True,
            )
        self._used_names.update(p.name for p in self._closed)
        self._closed = []

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._close(lineage_id(trial))

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        for trial_id in list(self._writers):
            self._close(trial_id)
        if self.compact_every:  # 0: never compact (stream files only)
            self.compact()


def _last_error_line(trial: Trial) -> str:
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


class TrialLedger(Callback):
    """Keeps ``RUN_DIR/trials/`` up to date from the driver (start, failure, end of each trial).

    ``run_dir`` is where the records go and what trial folders are relative to."""

    def __init__(
        self, run_dir: str | Path, records: dict[str, TrialRecord] | None = None, trial_root: str | None = None
    ):
        self.run_dir = Path(run_dir)
        # Tune's trial paths are in the run's filesystem: a remote run's are under its remote path.
        self.trial_root = trial_root or str(self.run_dir)
        self.records = dict(records or {})
        self._failures_before: dict[str, int] = {}  # failures of earlier sessions, per trial id

    def _record(self, trial: Trial) -> TrialRecord:
        trial_id = lineage_id(trial)
        record = self.records.get(trial_id)
        if record is None:
            record = self.records[trial_id] = TrialRecord(trial_id, trial.config.get("point") or {})
        self._failures_before.setdefault(trial_id, record.failures)
        # trial.path: the trial folder in the storage (Ray's local_path is a staging copy).
        logdir = posixpath.relpath(trial.path, self.trial_root) if trial.path else None
        if logdir and logdir not in record.logdirs:
            record.logdirs.append(logdir)
        record.failures = self._failures_before[trial_id] + trial.num_failures
        return record

    def _update(self, trial: Trial, status: str | None = None) -> None:
        record = self._record(trial)
        if status is not None:
            record.status = status
        if status == ERROR:
            record.error = _last_error_line(trial)
        write_record(self.run_dir, record)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._update(trial, RUNNING)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._update(trial)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._update(trial, TERMINATED)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._update(trial, ERROR)


class MetricsUploader(Callback):
    """Copies what a driver writes into the local staging mirror of a run directory in a store
    (``lrbs.sweeps.storage.staging_dir``) up to the store: the metric files, the trial records and
    the top-level JSON files (provenance, plug-in folders). The files there when it is made are
    the store's already (a fresh mirror), except those in ``changed``.

    Put it after ``ArrowMetricsSink`` in the callback list: Tune calls callbacks in order, so a
    trial's file is closed (whole) before it is uploaded on the trial's completion.
    """

    def __init__(
        self, run: RunDir, local: Path, interval_s: float = DEFAULT_UPLOAD_INTERVAL_S, changed: tuple[Path, ...] = ()
    ):
        self.run, self.local, self.interval_s = run, local, interval_s
        # folder -> name -> (size, mtime) of what the store has
        self.sent: dict[str, dict[str, tuple[int, int]]] = {sub: {} for sub in (METRIC_DIR, LEDGER_DIR, "")}
        for sub, sent in self.sent.items():
            for path in (local / sub).glob("*"):
                if path.is_file() and path not in changed:
                    st = path.stat()
                    sent[path.name] = (st.st_size, st.st_mtime_ns)
        self.uploads = 0  # metric files copied (a file copied again after it grew counts again)
        self._last = time.monotonic()

    def upload(self, strict: bool = False) -> None:
        self._last = time.monotonic()
        metrics, sent = self.local / METRIC_DIR, self.sent[METRIC_DIR]
        try:
            self.uploads += len(self.run.upload_changed(metrics, METRIC_DIR, sent, "*.arrow"))
            compacted = self.run.upload_changed(metrics, METRIC_DIR, sent, "*.parquet")
            self.uploads += len(compacted)
            self._drop_covered(compacted)
            for sub in (LEDGER_DIR, ""):
                self.run.upload_changed(self.local / sub, sub, self.sent[sub], "*.json")
        except OSError as exc:
            if strict:
                raise LrbsError(
                    f"--storage: cannot upload metrics to {self.run.join(METRIC_DIR)} ({first_line(exc)}); "
                    f"they are kept in {metrics}"
                ) from None
            print(
                f"[lrbs] warning: metric upload to {self.run.join(METRIC_DIR)} failed ({first_line(exc)}); will retry",
                file=sys.stderr,
                flush=True,
            )

    def _drop_covered(self, compacted: list[str]) -> None:
        """Delete from the store the stream files a just-uploaded compacted file replaces (readers
        skip them anyway; this keeps the store at the compacted size)."""
        for name in compacted:
            try:
                meta = pq.read_schema(self.local / METRIC_DIR / name).metadata or {}
                sources = json.loads(meta.get(COMPACTED_SOURCES.encode(), b"[]"))
            except (OSError, ValueError, pa.ArrowException):
                continue
            for source in sources if isinstance(sources, list) else []:
                try:
                    self.run.delete(METRIC_DIR, source)
                except FileNotFoundError:
                    pass
                self.sent[METRIC_DIR].pop(source, None)

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if time.monotonic() - self._last >= self.interval_s:
            self.upload()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.upload()

    on_trial_error = on_trial_complete

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.upload()


class TrackingCallback(Callback):
    """Feeds every point's epoch rows to the trackers (one run per point, step = epoch).

    An epoch reaches the trackers once a checkpoint holds it, or when its trial completes. The rows
    held back are dropped when the trial fails or the driver stops: the trial restored from its
    checkpoint (a Tune retry, ``lrbs resume``) reports those epochs again. So each epoch is logged
    once, with the value the metric tables keep (their last row written). A tracker also skips the
    steps its run has already (``lrbs.sweeps.tracking.Tracker.log``), as after a restore from an older
    checkpoint (the newest did not load)."""

    def __init__(self, trackers: list[Any]):
        self.trackers = list(trackers)
        self.open: dict[str, list[Any]] = {}  # point's trial id -> trackers with its run open
        # point's trial id -> (epoch, status, parameters, metrics) of its rows no checkpoint holds yet
        self.pending: dict[str, list[tuple[int, str | None, dict[str, Any], dict[str, float]]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with its experiment state; clients and writers stay here.
        return {"trackers": [], "open": {}, "pending": {}}

    def _call(self, tracker: Any, method: str, *args: Any) -> bool:
        try:
            getattr(tracker, method)(*args)
            return True
        except Exception as exc:  # a tracker's server or disk failing must not stop the sweep
            name = next((n for n, c in TRACKERS.items() if isinstance(tracker, c)), type(tracker).__name__)
            print(
                f"[lrbs] warning: tracking.{name} failed ({type(exc).__name__}: {str(exc)[:200]}); it is switched "
                f"off for this session (the metric tables have every row)",
                file=sys.stderr,
                flush=True,
            )
            self.trackers = [t for t in self.trackers if t is not tracker]
            for key in self.open:
                self.open[key] = [t for t in self.open[key] if t is not tracker]
            return False

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        if "pack_rows" not in result or not self.trackers:
            return
        ids = members(lineage_id(trial), trial.config)
        for r in result["pack_rows"].values():
            key, config = ids[r["member"]]
            row = row_from_result(r, config, key)
            self.pending.setdefault(key, []).append(
                (int(row["epoch"]), row.get("status"), params_of(row), metrics_of(row))
            )
        if result.get(SHOULD_CHECKPOINT):  # Tune's flag: this report came with a checkpoint (stored by now)
            for key in self._points(trial, self.pending):
                self._flush(key)

    def _flush(self, key: str) -> None:
        """Log the point's held rows (starting its run at the first), and end its run at a final row."""
        for epoch, status, params, metrics in self.pending.pop(key, []):
            if key not in self.open:
                self.open[key] = [t for t in self.trackers if self._call(t, "start", key, params)]
            for tracker in list(self.open.get(key, [])):
                self._call(tracker, "log", key, epoch, metrics)
            if status in FINAL_ROW_STATUSES:
                self._finish(key, status)

    def _finish(self, key: str, status: str) -> None:
        for tracker in self.open.pop(key, []):
            self._call(tracker, "finish", key, status)

    @staticmethod
    def _points(trial: Trial, keys: list[str] | dict[str, Any]) -> list[str]:
        """Those of ``keys`` that are points of ``trial`` (its id, or a pack's ``<id>-m<j>``)."""
        base = lineage_id(trial)
        return [k for k in keys if k == base or k.startswith(f"{base}-m")]

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        for key in self._points(trial, list(self.pending)):  # the restored attempt reports them again
            self.pending.pop(key)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        for key in self._points(trial, list(self.pending)):
            self._flush(key)
        for key in self._points(trial, list(self.open)):
            self._finish(key, "stopped")  # points still open here stopped early (no final row)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # The rows after the last checkpoint are dropped: ``lrbs resume`` continues the trial from
        # that checkpoint and reports those epochs again.
        self.on_trial_recover(iteration, trials, trial)
        for key in self._points(trial, list(self.open)):
            self._finish(key, "error")

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.pending.clear()  # trials the driver stopped: ``lrbs resume`` reports these epochs again
        for key in list(self.open):
            self._finish(key, "stopped")
        for tracker in self.trackers:
            self._call(tracker, "close")
