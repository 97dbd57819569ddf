"""Run directories as the commands name them: a local path, a URI (``s3://``, ``gs://``,
``file://``) or a path in a ``pyarrow.fs`` filesystem, each a ``lrbs.rundir.location.RunDir``;
bad input and an unreachable store are one line (``LrbsError``).

Ray Tune needs storage that every node reaches (``s3://``, ``gs://``, a mounted NFS path) to keep
checkpoints of a run on more than one node; ``--storage`` takes such a URI and Tune gets it as
``storage_path`` + ``storage_filesystem``. A local directory (a plain path, ``file://``, a
mounted NFS path) takes the metric appends directly. An object store cannot be appended to, so
the driver writes a run that lives there into a local staging mirror (:func:`staging_dir`) and
``lrbs.sweeps.metrics_sink.MetricsUploader`` copies what changed up; each upload replaces the
whole remote file, so a remote reader sees a whole-record prefix of a stream, which
``lrbs.rundir.tables`` reads like any cut-off file.

The readers take local paths: :func:`fetch_run_dir` mirrors the data files of a run directory in
a store into a local cache first; checkpoints stay in the store (:func:`remote_checkpoints`),
and ``lrbs interpolate`` fetches the two trial folders it needs (:func:`fetch_trial_folders`).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import yaml

from lrbs.rundir.layout import LEDGER_DIR, METRIC_DIR, SPEC_COPY, TRIAL_PARAMS
from lrbs.rundir.location import RunDir, first_line
from lrbs.rundir.records import TrialRecord, read_ledger
from lrbs.sweeps.errors import LrbsError


def cache_dir() -> Path:
    """Local cache of lrbs (staging of remote runs, fetched run directories)."""
    return Path(os.environ.get("LRBS_CACHE_DIR") or "~/.cache/lrbs").expanduser()


def session_tag() -> str:
    """Sortable, unique per driver process: files of later sessions sort after earlier ones."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + f"-{os.getpid()}"


def resolve_storage(storage: str | os.PathLike[str] | None, filesystem: pafs.FileSystem | None = None) -> RunDir:
    """``--storage`` (default ``runs``) as a place (``RunDir.at``); one line if a URI cannot be opened."""
    try:
        return RunDir.at(storage or "runs", filesystem)
    except (OSError, ValueError, TypeError) as exc:
        raise LrbsError(f"--storage: cannot open {storage} ({first_line(exc)})") from None


def open_run(
    run_dir: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None, need: tuple[str, ...] = (METRIC_DIR,)
) -> RunDir | None:
    """The run directory in a store that ``run_dir`` names (None for a local path), after checking
    that it can be reached and holds ``need``: one line (LrbsError, exit 2) otherwise, nothing written."""
    run = resolve_storage(run_dir, filesystem)
    if run.is_local:
        return None
    try:
        missing = [name for name in need if run.info(name).type == pafs.FileType.NotFound]
    except OSError as exc:  # unreachable endpoint, bad credentials, no such bucket
        raise LrbsError(f"RUN_DIR: cannot read {run.where} ({first_line(exc)[:300]})") from None
    if missing:
        raise LrbsError(f"RUN_DIR: {run.where} is not an lrbs run directory (no {', '.join(missing)} inside)")
    return run


def mirror(run: RunDir, local: Path) -> Path:
    """``RunDir.mirror``: ``local`` brought up to date with the data files of ``run``."""
    try:
        return run.mirror(local)
    except OSError as exc:
        raise LrbsError(f"RUN_DIR: cannot read {run.where} ({first_line(exc)[:300]})") from None


def fetched_dir(run: RunDir, kind: str = "fetched") -> Path:
    """A local folder of a run directory in a store, the same in every session on this machine:
    ``<cache>/<kind>/<hash>/<name>/`` (kind ``fetched``: the readers' mirror; ``local``: the
    trackers' default folders, so ``lrbs resume`` re-attaches to them)."""
    where = f"{run.where}|{getattr(run.fs, 'base_path', '')}"  # subtrees: their root too
    return cache_dir() / kind / hashlib.sha1(where.encode()).hexdigest()[:12] / run.name


def fetch_run_dir(run_dir: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None) -> Path:
    """A local directory with the data files of ``run_dir``: a local run directory as it is, one
    in a store mirrored into the cache (only the files that changed since the last fetch)."""
    run = open_run(run_dir, filesystem)
    return resolve_storage(run_dir).local if run is None else mirror(run, fetched_dir(run))


def tracking_root(run: RunDir) -> Path:
    """Where the trackers' default folders go (``lrbs.sweeps.tracking``): the run directory, or
    for a run in a store a local folder that is the same in every session (``lrbs resume``
    re-attaches to it)."""
    return run.local if run.is_local else fetched_dir(run, "local")


def staging_dir(run: RunDir) -> Path:
    """The local folder a driver writes a run into: the run directory itself, or for a run in a
    store a new staging mirror of it (uploaded as it goes)."""
    return run.local if run.is_local else cache_dir() / "staging" / f"{run.name}-{session_tag()}"


def upload_files(
    run_dir: str | os.PathLike[str], files: list[Path], filesystem: pafs.FileSystem | None = None, sub: str = ""
) -> list[str]:
    """Copy ``files`` (e.g. report.html, fits.json) into a run directory in a store (into its
    folder ``sub``); no-op for a local one. Returns where they went."""
    run = resolve_storage(run_dir, filesystem)
    if run.is_local:
        return []
    copied = []
    for path in files:
        try:
            run.put(path, sub, path.name)
        except OSError as exc:
            raise LrbsError(f"cannot upload {path.name} to {run.where} ({first_line(exc)})") from None
        copied.append(run.child(sub, path.name).where)
    return copied


def check_new_run_dir(run: RunDir) -> None:
    """Refuse, before anything starts or is written, a run directory that exists already, or
    whose storage is a file, lies under a file, or cannot be created or written (the first
    existing folder above it decides)."""
    exists = f"run directory {run.where} already exists: pick another name or --storage (nothing was changed there)"
    if not run.is_local:
        try:
            if run.parent.info().type == pafs.FileType.File:
                raise LrbsError(f"--storage: {run.parent.where} is a file, not a directory")
            if run.info().type != pafs.FileType.NotFound:
                raise LrbsError(exists)
        except OSError as exc:
            raise LrbsError(f"--storage: cannot write to {run.parent.where} ({first_line(exc)})") from None
        return
    root = run.local.parent
    if root.exists() and not root.is_dir():
        raise LrbsError(f"--storage: {root} is a file, not a directory")
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LrbsError(f"--storage: {root} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LrbsError(f"--storage: cannot write under {existing} (read-only or not yours)")
    if run.local.exists():
        raise LrbsError(exists)


def create_run_dir(run: RunDir, spec: dict[str, Any]) -> None:
    """Create the run directory ``run`` with its ``metrics/`` and the spec copy (``spec`` as a
    dict); never reuse an existing one."""
    check_new_run_dir(run)
    spec_copy = yaml.safe_dump(spec, sort_keys=False).encode()
    if run.is_local:
        try:
            run.local.mkdir(parents=True)
        except OSError as exc:
            raise LrbsError(f"--storage: cannot create {run.local} ({exc.strerror or exc})") from None
        (run.local / METRIC_DIR).mkdir()
        (run.local / SPEC_COPY).write_bytes(spec_copy)
        return
    try:
        run.make_dirs(METRIC_DIR)
        run.make_dirs(LEDGER_DIR)
        run.write_bytes(spec_copy, SPEC_COPY)
    except OSError as exc:
        raise LrbsError(f"--storage: cannot write to {run.parent.where} ({first_line(exc)})") from None


def remote_checkpoints(run: RunDir, record: TrialRecord) -> list[str]:
    """URIs of ``record``'s kept checkpoint folders in ``run``, newest first (as
    ``TrialRecord.checkpoints`` orders local ones)."""
    try:
        return [run.uri_of(p) for logdir in reversed(record.logdirs) for p in run.checkpoints(logdir)]
    except OSError as exc:
        raise LrbsError(
            f"RUN_DIR: cannot list the checkpoints of trial {record.trial_id} in {run.where} ({first_line(exc)[:300]})"
        ) from None


def fetch_trial_folders(run: RunDir, local: Path, tune_ids: list[str]) -> None:
    """Copy, for each Tune trial id, its folders' ``params.json`` and newest checkpoint from
    ``run`` into the mirror ``local`` (``lrbs interpolate``'s inputs; the folders are those its
    record in the mirror names, else the one named after it), skipping what is already there."""
    records = read_ledger(local)[0]
    try:
        top = None
        for tune_id in tune_ids:
            logdirs = list(records[tune_id].logdirs) if tune_id in records else []
            if not logdirs:  # a run directory without records: the folder named after the trial
                top = run.entries() if top is None else top
                logdirs = [
                    i.base_name for i in top if i.type == pafs.FileType.Directory and f"_{tune_id}_" in i.base_name
                ]
            for logdir in logdirs:
                checkpoints = run.checkpoints(logdir)
                if not checkpoints:
                    continue
                run.get(run.join(logdir, TRIAL_PARAMS), local / logdir / TRIAL_PARAMS)
                dest = local / logdir / checkpoints[0].rsplit("/", 1)[-1]
                if not dest.is_dir():
                    run.get_checkpoint(checkpoints[0], dest)
    except OSError as exc:
        raise LrbsError(f"RUN_DIR: cannot read the trial folders of {run.where} ({first_line(exc)[:300]})") from None
