"""Driver-side Tune callbacks that write the run directory: every reported epoch to Arrow IPC
files (``ArrowMetricsSink``), and each trial's record to ``trials/`` (``TrialLedger``,
``sweeps.ledger``).

Rows are written by the driver (not the trial), so they reach the run directory whatever node
the trial ran on. Each driver session writes its own file per trial and never reopens an old
one: a crash can only cut off the tail of the newest file, and readers (``analysis.tables``)
keep the last row written for each (trial_id, epoch).
"""
from __future__ import annotations

import json
import os
import posixpath
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.tune import Callback

from analysis.schema import METRIC_SCHEMA
from sweeps.ledger import ERROR, RUNNING, TERMINATED, TrialRecord, lineage_id, write_record


def session_tag() -> str:
    """Sortable, unique per driver process: files of later sessions sort after earlier ones."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + f"-{os.getpid()}"


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
    """Appends one record batch per reported epoch and flushes it to disk at once."""

    def __init__(self, metrics_dir: str | Path):
        self.metrics_dir = Path(metrics_dir)
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.session = session_tag()
        self._writers: dict[str, tuple[Any, pa.ipc.RecordBatchStreamWriter]] = {}

    def __getstate__(self):
        # Tune pickles callbacks with the experiment state; open files stay with this process.
        return {**self.__dict__, "_writers": {}}

    def __setstate__(self, state):
        # An unpickled sink (Ray's own Tuner.restore would reload it; lrbs resume builds a new
        # one) is a new driver session: it must never reopen the files of the session that pickled it.
        self.__dict__.update(state)
        self.session = session_tag()

    def _writer(self, trial_id: str) -> pa.ipc.RecordBatchStreamWriter:
        if trial_id not in self._writers:
            path = self.metrics_dir / f"{self.session}__{trial_id}.arrow"
            sink = open(path, "xb")  # 'x': never truncate an existing file
            self._writers[trial_id] = (sink, pa.ipc.new_stream(sink, METRIC_SCHEMA))
        return self._writers[trial_id][1]

    def write_row(self, row: dict[str, Any]) -> None:
        writer = self._writer(row["trial_id"])
        writer.write_batch(pa.RecordBatch.from_pylist([row], schema=METRIC_SCHEMA))
        self._writers[row["trial_id"]][0].flush()  # readable while the sweep runs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from sweeps.packing import members

        if "pack_rows" in result:  # one row per member still training, each under its own trial id
            ids = members(lineage_id(trial), trial.config)
            for r in result["pack_rows"].values():
                trial_id, config = ids[r["member"]]
                self.write_row(row_from_result(r, config, trial_id))

    def _close(self, trial_id: str) -> None:
        # Also the files of a pack's members (``<trial_id>-m<j>``).
        for key in [k for k in self._writers if k == trial_id or k.startswith(f"{trial_id}-m")]:
            sink, writer = self._writers.pop(key)
            writer.close()
            sink.close()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(lineage_id(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(lineage_id(trial))

    def on_experiment_end(self, trials, **info):
        for trial_id in list(self._writers):
            self._close(trial_id)


def _last_error_line(trial) -> str:
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


class TrialLedger(Callback):
    """Keeps ``RUN_DIR/trials/`` up to date from the driver (start, failure, end of each trial).

    ``run_dir`` is where the records go and what trial folders are relative to."""

    def __init__(self, run_dir: str | Path, records: dict[str, TrialRecord] | None = None,
                 trial_root: str | None = None):
        self.run_dir = Path(run_dir)
        # Tune's trial paths are in the run's filesystem: a remote run's are under its remote path.
        self.trial_root = trial_root or str(self.run_dir)
        self.records = dict(records or {})
        self._failures_before: dict[str, int] = {}  # failures of earlier sessions, per trial id

    def _record(self, trial) -> TrialRecord:
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

    def _update(self, trial, status: str | None = None) -> None:
        record = self._record(trial)
        if status is not None:
            record.status = status
        if status == ERROR:
            record.error = _last_error_line(trial)
        write_record(self.run_dir, record)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial, RUNNING)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._update(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial, TERMINATED)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, ERROR)
