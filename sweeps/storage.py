"""Where run directories live: a local path, or a cloud / shared-filesystem URI through pyarrow.fs.

Ray Tune needs storage that every node reaches (``s3://``, ``gs://``, a mounted NFS path) to keep
checkpoints of a run on more than one node. ``--storage`` takes such a URI; Tune gets it as
``storage_path`` + ``storage_filesystem``.

The Arrow metric tables are appended to row by row (``sweeps.metrics_sink``). A local directory
(a plain path, ``file://``, a mounted NFS path) takes the appends directly. An object store cannot
be appended to, so for any other filesystem the sink writes into a local staging directory and
:class:`MetricsUploader` copies the changed files to ``<storage>/<name>/metrics/`` on each trial
completion or error, every ``upload_interval_s`` seconds of results, and at the end of the run.
Each upload replaces the whole remote file, so a remote reader sees a whole-record prefix of the
stream, which ``analysis.tables`` reads like any cut-off file.

The analysis functions take local paths: :func:`fetch_run_dir` downloads ``metrics/`` and
``spec.yaml`` of a remote run directory into a local cache first.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.fs as pafs
from ray.tune import Callback

from sweeps.errors import LrbsError
from sweeps.ledger import LEDGER_DIR

METRIC_DIR = "metrics"
SPEC_COPY = "spec.yaml"
DEFAULT_UPLOAD_INTERVAL_S = 30.0


class StorageTarget(NamedTuple):
    """``fs`` and ``path`` inside it; ``is_local``: a local directory that takes appends."""
    fs: pafs.FileSystem
    path: str
    is_local: bool


def is_uri(storage: str) -> bool:
    return "://" in str(storage)


def cache_dir() -> Path:
    """Local cache of lrbs (staging of remote runs, fetched run directories)."""
    return Path(os.environ.get("LRBS_CACHE_DIR") or "~/.cache/lrbs").expanduser()


def resolve_storage(storage: str | os.PathLike | None,
                    filesystem: pafs.FileSystem | None = None) -> StorageTarget:
    """``--storage`` as a filesystem and a path in it.

    ``filesystem`` given (Python API only, e.g. a ``SubTreeFileSystem``): ``storage`` is a path
    inside it. A URI (``s3://bucket/prefix``, ``gs://...``, ``file:///abs``) goes through
    ``pyarrow.fs.FileSystem.from_uri``; anything else is a local path.
    """
    if filesystem is not None:
        path = str(storage or "runs").rstrip("/") or "/"
        return StorageTarget(filesystem, path, isinstance(filesystem, pafs.LocalFileSystem))
    storage = str(storage or "runs")
    if not is_uri(storage):
        return StorageTarget(pafs.LocalFileSystem(), str(Path(storage).expanduser().resolve()), True)
    try:
        fs, path = pafs.FileSystem.from_uri(storage)
    except (OSError, ValueError, TypeError) as exc:
        raise LrbsError(f"--storage: cannot open {storage} ({_first_line(exc)})") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return StorageTarget(fs, str(Path(path).resolve()), True)
    return StorageTarget(fs, path.rstrip("/"), False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)


def display(target: StorageTarget, *parts: str) -> str:
    """A readable name for a place in ``target`` (a URI-like string for remote filesystems)."""
    path = _join(target.path, *parts)
    if target.is_local:
        return path
    return f"{target.fs.type_name}://{path.lstrip('/')}"


# ---------------------------------------------------------------------------------------------
# A run directory on a remote filesystem


def prepare_remote_run_dir(spec, target: StorageTarget) -> str:
    """Create ``<path>/<name>/metrics/`` and ``spec.yaml`` in ``target.fs``; never reuse a run dir."""
    import yaml

    fs = target.fs
    try:
        root_info = fs.get_file_info(target.path)
        if root_info.type == pafs.FileType.File:
            raise LrbsError(f"--storage: {display(target)} is a file, not a directory")
        run_path = _join(target.path, spec.name)
        if fs.get_file_info(run_path).type != pafs.FileType.NotFound:
            raise LrbsError(f"run directory {display(target, spec.name)} already exists: pick another name "
                            f"or --storage (nothing was changed there)")
        fs.create_dir(_join(run_path, METRIC_DIR), recursive=True)
        fs.create_dir(_join(run_path, LEDGER_DIR), recursive=True)
        with fs.open_output_stream(_join(run_path, SPEC_COPY)) as f:
            f.write(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
    except OSError as exc:
        raise LrbsError(f"--storage: cannot write to {display(target)} ({_first_line(exc)})") from None
    return run_path


def upload_changed(local_dir: Path, fs: pafs.FileSystem, remote_dir: str,
                   sent: dict[str, tuple[int, int]], pattern: str = "*") -> list[str]:
    """Copy the files of ``local_dir`` that changed since ``sent`` (name -> (size, mtime)) to ``remote_dir``."""
    copied = []
    local = pafs.LocalFileSystem()
    for path in sorted(Path(local_dir).glob(pattern)):
        if not path.is_file():
            continue
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        if sent.get(path.name) == key:
            continue
        pafs.copy_files(str(path), _join(remote_dir, path.name), source_filesystem=local,
                        destination_filesystem=fs, use_threads=False)
        sent[path.name] = key
        copied.append(path.name)
    return copied


class MetricsUploader(Callback):
    """Copies the staged metric files to the remote run directory (after ``ArrowMetricsSink``).

    Put it after the sink in the callback list: Tune calls callbacks in order, so a trial's file
    is closed (whole) before it is uploaded on the trial's completion.
    """

    def __init__(self, local_dir: str | Path, fs: pafs.FileSystem, remote_dir: str,
                 interval_s: float = DEFAULT_UPLOAD_INTERVAL_S,
                 also: list[tuple[str | Path, str, str]] | None = None):
        self.local_dir = Path(local_dir)
        self.fs = fs
        self.remote_dir = remote_dir
        self.interval_s = interval_s
        self.sent: dict[str, tuple[int, int]] = {}
        # (local folder, remote folder, pattern) also kept in step: the trial records (sweeps/ledger.py)
        self.also = [(Path(a), b, c, {}) for a, b, c in (also or [])]
        self.uploads = 0  # files copied (a file copied again after it grew counts again)
        self._last = time.monotonic()

    def upload(self, strict: bool = False) -> None:
        self._last = time.monotonic()
        try:
            self.uploads += len(upload_changed(self.local_dir, self.fs, self.remote_dir, self.sent, "*.arrow"))
            for local, remote, pattern, sent in self.also:
                upload_changed(local, self.fs, remote, sent, pattern)
        except OSError as exc:
            if strict:
                raise LrbsError(f"--storage: cannot upload metrics to {self.remote_dir} ({_first_line(exc)}); "
                                f"they are kept in {self.local_dir}") from None
            print(f"[lrbs] warning: metric upload to {self.remote_dir} failed ({_first_line(exc)}); "
                  f"will retry", file=sys.stderr, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if time.monotonic() - self._last >= self.interval_s:
            self.upload()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.upload()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.upload()

    def on_experiment_end(self, trials, **info):
        self.upload()


@dataclass
class Placement:
    """Where a run writes: ``run_dir`` is local (the run directory, or the staging mirror of a remote one);
    ``trial_root``: the run directory as Tune's trial paths name it (in the target filesystem)."""
    target: StorageTarget
    name: str
    run_dir: Path
    tune_kwargs: dict[str, Any]
    callbacks: list[Any] = field(default_factory=list)   # after the metric sink
    remote_run_path: str | None = None

    @property
    def trial_root(self) -> str:
        return self.remote_run_path if self.remote_run_path is not None else str(self.run_dir)

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / METRIC_DIR

    @property
    def where(self) -> str:
        return display(self.target, self.name)

    def finish(self) -> None:
        """Last upload of the staged metrics (raises LrbsError if the remote cannot be reached)."""
        for cb in self.callbacks:
            if isinstance(cb, MetricsUploader):
                cb.upload(strict=True)


def prepare_placement(spec, storage: str | None, filesystem: pafs.FileSystem | None = None,
                      upload_interval_s: float | None = None) -> Placement:
    """Create the run directory (refusing an existing one) and say how Tune and the sink reach it."""
    from sweeps.metrics_sink import session_tag
    from sweeps.runner import prepare_run_dir

    target = resolve_storage(storage, filesystem)
    if target.is_local:
        run_dir = prepare_run_dir(spec, target.path)
        return Placement(target, spec.name, run_dir, {"storage_path": str(run_dir.parent)})
    run_path = prepare_remote_run_dir(spec, target)
    staging = cache_dir() / "staging" / f"{spec.name}-{session_tag()}"
    (staging / METRIC_DIR).mkdir(parents=True)
    with target.fs.open_input_stream(_join(run_path, SPEC_COPY)) as f:
        (staging / SPEC_COPY).write_bytes(f.read())
    uploader = MetricsUploader(staging / METRIC_DIR, target.fs, _join(run_path, METRIC_DIR),
                               DEFAULT_UPLOAD_INTERVAL_S if upload_interval_s is None else upload_interval_s,
                               also=[(staging / LEDGER_DIR, _join(run_path, LEDGER_DIR), "*.json")])
    return Placement(target, spec.name, staging,
                     {"storage_path": target.path, "storage_filesystem": target.fs},
                     callbacks=[uploader], remote_run_path=run_path)


# ---------------------------------------------------------------------------------------------
# Reading and writing a run directory given as a URI


def fetch_run_dir(run_dir: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> Path:
    """A local directory holding ``metrics/`` and ``spec.yaml`` of ``run_dir``.

    A local run directory is returned as it is. A remote one is downloaded (only the files that
    changed since the last fetch) into ``<cache>/fetched/<hash>/<name>/``.
    """
    target = resolve_storage(run_dir, filesystem)
    if target.is_local:
        return Path(target.path)
    name = target.path.rstrip("/").rsplit("/", 1)[-1] or "run"
    where = f"{display(target)}|{getattr(target.fs, 'base_path', '')}"  # subtrees: their root too
    key = hashlib.sha1(where.encode()).hexdigest()[:12]
    local = cache_dir() / "fetched" / key / name
    try:
        infos = target.fs.get_file_info(pafs.FileSelector(_join(target.path, METRIC_DIR), allow_not_found=True))
        if not infos and target.fs.get_file_info(_join(target.path, METRIC_DIR)).type != pafs.FileType.Directory:
            raise LrbsError(f"RUN_DIR: {display(target)} is not an lrbs run directory (no metrics/ inside)")
        (local / METRIC_DIR).mkdir(parents=True, exist_ok=True)
        for info in infos:
            if info.type != pafs.FileType.File or not info.base_name.endswith(".arrow"):
                continue
            dest = local / METRIC_DIR / info.base_name
            if dest.is_file() and dest.stat().st_size == info.size:
                continue  # stream files only grow: same size, same content
            pafs.copy_files(info.path, str(dest), source_filesystem=target.fs,
                            destination_filesystem=pafs.LocalFileSystem(), use_threads=False)
        spec_path = _join(target.path, SPEC_COPY)
        if target.fs.get_file_info(spec_path).type == pafs.FileType.File:
            with target.fs.open_input_stream(spec_path) as f:
                (local / SPEC_COPY).write_bytes(f.read())
    except OSError as exc:
        raise LrbsError(f"RUN_DIR: cannot read {display(target)} ({_first_line(exc)})") from None
    return local


def upload_files(run_dir: str | os.PathLike, files: list[Path],
                 filesystem: pafs.FileSystem | None = None) -> list[str]:
    """Copy ``files`` (e.g. report.html, fits.json) into a remote run directory; no-op for a local one."""
    target = resolve_storage(run_dir, filesystem)
    if target.is_local:
        return []
    copied = []
    try:
        for path in files:
            dest = _join(target.path, Path(path).name)
            pafs.copy_files(str(path), dest, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=target.fs, use_threads=False)
            copied.append(display(target, Path(path).name))
    except OSError as exc:
        raise LrbsError(f"cannot upload {Path(path).name} to {display(target)} ({_first_line(exc)})") from None
    return copied
