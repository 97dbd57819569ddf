"""Where run directories live: a local path, or a cloud / shared-filesystem URI through pyarrow.fs.

Ray Tune needs storage that every node reaches (``s3://``, ``gs://``, a mounted NFS path) to keep
checkpoints of a run on more than one node. ``--storage`` takes such a URI; Tune gets it as
``storage_path`` + ``storage_filesystem``.

The Arrow metric tables are appended to row by row (``lrbs.sweeps.metrics_sink``). A local directory
(a plain path, ``file://``, a mounted NFS path) takes the appends directly. An object store cannot
be appended to, so for any other filesystem the sink writes into a local staging directory and
:class:`lrbs.sweeps.metrics_sink.MetricsUploader` copies the changed files to ``<storage>/<name>/metrics/`` on each trial
completion or error, every ``upload_interval_s`` seconds of results, and at the end of the run.
Each upload replaces the whole remote file, so a remote reader sees a whole-record prefix of the
stream, which ``lrbs.rundir.tables`` reads like any cut-off file.

The analysis functions take local paths: ``lrbs.sweeps.remote`` mirrors the data files of a remote
run directory into a local cache first, and lets ``lrbs resume`` continue one in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.fs as pafs

from lrbs.rundir.layout import LEDGER_DIR, METRIC_DIR, SPEC_COPY
from lrbs.sweeps.errors import LrbsError

DEFAULT_UPLOAD_INTERVAL_S = 30.0


class StorageTarget(NamedTuple):
    """``fs`` and ``path`` inside it; ``is_local``: a local directory that takes appends."""

    fs: pafs.FileSystem
    path: str
    is_local: bool


def is_uri(storage: str) -> bool:
    return "://" in str(storage)


def join_uri(base: str, *parts: str) -> str:
    """``base`` (a path or URI, maybe with a ``?query``) with ``parts`` appended to its path."""
    head, sep, query = str(base).partition("?")
    if is_uri(head):  # a sweep name with ' ', '#' or '%' stays one path segment
        from urllib.parse import quote

        parts = tuple(quote(p, safe="/") for p in parts)
    return _join(head, *parts) + sep + query


def cache_dir() -> Path:
    """Local cache of lrbs (staging of remote runs, fetched run directories)."""
    return Path(os.environ.get("LRBS_CACHE_DIR") or "~/.cache/lrbs").expanduser()


def resolve_storage(storage: str | os.PathLike | None, filesystem: pafs.FileSystem | None = None) -> StorageTarget:
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
    scheme = {"gcs": "gs"}.get(target.fs.type_name, target.fs.type_name)  # as gcloud and users write it
    return f"{scheme}://{path.lstrip('/')}"


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
            raise LrbsError(
                f"run directory {display(target, spec.name)} already exists: pick another name "
                f"or --storage (nothing was changed there)"
            )
        fs.create_dir(_join(run_path, METRIC_DIR), recursive=True)
        fs.create_dir(_join(run_path, LEDGER_DIR), recursive=True)
        with fs.open_output_stream(_join(run_path, SPEC_COPY)) as f:
            f.write(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
    except OSError as exc:
        raise LrbsError(f"--storage: cannot write to {display(target)} ({_first_line(exc)})") from None
    return run_path


def upload_changed(
    local_dir: Path, fs: pafs.FileSystem, remote_dir: str, sent: dict[str, tuple[int, int]], pattern: str = "*"
) -> list[str]:
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
        pafs.copy_files(
            str(path),
            _join(remote_dir, path.name),
            source_filesystem=local,
            destination_filesystem=fs,
            use_threads=False,
        )
        sent[path.name] = key
        copied.append(path.name)
    return copied


@dataclass
class Placement:
    """Where a run writes: ``run_dir`` is local (the run directory, or the staging mirror of a remote one);
    ``trial_root``: the run directory as Tune's trial paths name it (in the target filesystem)."""

    target: StorageTarget
    name: str
    run_dir: Path
    tune_kwargs: dict[str, Any]
    callbacks: list[Any] = field(default_factory=list)  # after the metric sink
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
        from lrbs.sweeps.metrics_sink import MetricsUploader

        for cb in self.callbacks:
            if isinstance(cb, MetricsUploader):
                cb.upload(strict=True)


def prepare_placement(
    spec, storage: str | None, filesystem: pafs.FileSystem | None = None, upload_interval_s: float | None = None
) -> Placement:
    """Create the run directory (refusing an existing one) and say how Tune and the sink reach it."""
    from lrbs.sweeps.metrics_sink import MetricsUploader, session_tag
    from lrbs.sweeps.runner import prepare_run_dir

    target = resolve_storage(storage, filesystem)
    if target.is_local:
        run_dir = prepare_run_dir(spec, target.path)
        return Placement(target, spec.name, run_dir, {"storage_path": str(run_dir.parent)})
    run_path = prepare_remote_run_dir(spec, target)
    staging = cache_dir() / "staging" / f"{spec.name}-{session_tag()}"
    (staging / METRIC_DIR).mkdir(parents=True)
    with target.fs.open_input_stream(_join(run_path, SPEC_COPY)) as f:
        (staging / SPEC_COPY).write_bytes(f.read())
    uploader = MetricsUploader(
        staging / METRIC_DIR,
        target.fs,
        _join(run_path, METRIC_DIR),
        DEFAULT_UPLOAD_INTERVAL_S if upload_interval_s is None else upload_interval_s,
        also=[(staging / LEDGER_DIR, _join(run_path, LEDGER_DIR), "*.json"), (staging, run_path, "*.json")],
    )  # provenance.json, plugins.json
    return Placement(
        target,
        spec.name,
        staging,
        {"storage_path": target.path, "storage_filesystem": target.fs},
        callbacks=[uploader],
        remote_run_path=run_path,
    )
