"""A run directory given as a URI (``s3://bucket/runs/name``, ``gs://...``, ``file://...``).

Every reader of lrbs works on local files, so a remote run directory is read through a local
mirror of the files lrbs wrote as data (:func:`mirror`): ``spec.yaml``, the top-level JSON files
(provenance, plug-in folders, the lock), ``metrics/*.arrow`` and ``trials/*.json``. Nothing
pickled is ever fetched. Checkpoints stay remote: ``lrbs resume`` lists them
(:func:`remote_checkpoints`) and the trials load them by URI (``lrbs.trainables.train_loop.load_state``), and
``lrbs interpolate`` fetches the two trial folders it needs (:func:`fetch_trial_folders`).

How to reach the store is said the standard ways, both kept in every URI lrbs derives from the
one given (:meth:`RemoteRun.uri_of`): pyarrow's URI query (``?endpoint_override=HOST:PORT&scheme=http``)
and the AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), which Ray passes on to the trials of an
embedded cluster (on a real cluster, give the nodes the same variables or an instance role).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pyarrow.fs as pafs

from lrbs.rundir.layout import CHECKPOINT_GLOB, LEDGER_DIR, METRIC_DIR
from lrbs.rundir.records import TrialRecord
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.storage import StorageTarget, _first_line, _join, cache_dir, display, resolve_storage

# folder inside the run -> the names lrbs wrote there as data (never Tune's pickles)
MIRRORED = {"": ("*.json", "*.yaml"), METRIC_DIR: ("*.arrow", "*.parquet"), LEDGER_DIR: ("*.json",)}
GROWS_ONLY = {METRIC_DIR}  # stream files only grow, compacted files never change: same size, same content


@dataclass
class RemoteRun:
    """A run directory in a remote filesystem: ``target.path`` is the run's path in ``target.fs``."""

    target: StorageTarget
    uri: str = ""  # as the user gave it ('' when reached through a filesystem object)

    @property
    def name(self) -> str:
        return self.target.path.rstrip("/").rsplit("/", 1)[-1] or "run"

    @property
    def where(self) -> str:
        return display(self.target)

    def path(self, *parts: str) -> str:
        return _join(self.target.path, *parts)

    def uri_of(self, path: str) -> str:
        """A URI for ``path`` (in this run's filesystem) that reaches it as the given URI does:
        same scheme and query (endpoint, scheme, region), so a trial on any node can open it."""
        if not self.uri:
            raise LrbsError(f"RUN_DIR: {self.where} has no URI (give the run directory as s3://..., gs://...)")
        scheme = self.uri.split("://", 1)[0]
        _, sep, query = self.uri.partition("?")
        # percent-encoded: a space, '#', '%' or '?' in a sweep name must not end the path
        return f"{scheme}://{quote(path.lstrip('/'), safe='/')}{sep}{query}"

    def info(self, *parts: str) -> pafs.FileInfo:
        return self.target.fs.get_file_info(self.path(*parts))

    def put(self, local: Path, *parts: str) -> None:
        """Copy the local file ``local`` to ``parts`` inside the run (one line if the store refuses)."""
        try:
            pafs.copy_files(
                str(local),
                self.path(*parts),
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.target.fs,
                use_threads=False,
            )
        except OSError as exc:
            raise LrbsError(
                f"RUN_DIR: cannot write {self.where}/{'/'.join(parts)} ({_first_line(exc)[:300]})"
            ) from None


def open_run(
    run_dir: str | os.PathLike, filesystem: pafs.FileSystem | None = None, need: tuple[str, ...] = (METRIC_DIR,)
) -> RemoteRun | None:
    """The remote run directory ``run_dir`` names (None for a local path), after checking that it
    can be reached and holds ``need``: one line (LrbsError, exit 2) otherwise, nothing written."""
    target = resolve_storage(run_dir, filesystem)
    if target.is_local:
        return None
    run = RemoteRun(target, str(run_dir) if filesystem is None else "")
    try:
        missing = [name for name in need if run.info(name).type == pafs.FileType.NotFound]
    except OSError as exc:  # unreachable endpoint, bad credentials, no such bucket
        raise LrbsError(f"RUN_DIR: cannot read {run.where} ({_first_line(exc)[:300]})") from None
    if missing:
        raise LrbsError(f"RUN_DIR: {run.where} is not an lrbs run directory (no {', '.join(missing)} inside)")
    return run


def _mirrored(name: str, patterns: tuple[str, ...]) -> bool:
    return not name.startswith(".") and any(fnmatch.fnmatch(name, p) for p in patterns)


def _fetch(run: RemoteRun, src: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        src,
        str(dest),
        source_filesystem=run.target.fs,
        destination_filesystem=pafs.LocalFileSystem(),
        use_threads=False,
    )


def mirror(run: RemoteRun, local: Path) -> Path:
    """Bring ``local`` up to date with the data files of ``run`` (only what changed; a lock the
    remote no longer has is removed here too). Returns ``local``."""
    fs = run.target.fs
    try:
        for sub, patterns in MIRRORED.items():
            infos = fs.get_file_info(pafs.FileSelector(run.path(sub), allow_not_found=True))
            names = set()
            (local / sub).mkdir(parents=True, exist_ok=True)
            for info in infos:
                if info.type != pafs.FileType.File or not _mirrored(info.base_name, patterns):
                    continue
                names.add(info.base_name)
                dest = local / sub / info.base_name
                if sub in GROWS_ONLY and dest.is_file() and dest.stat().st_size == info.size:
                    continue
                _fetch(run, info.path, dest)
            for path in (local / sub).iterdir():  # gone from the store (a lock released, a run made anew)
                if path.is_file() and _mirrored(path.name, patterns) and path.name not in names:
                    path.unlink()
    except OSError as exc:
        raise LrbsError(f"RUN_DIR: cannot read {run.where} ({_first_line(exc)[:300]})") from None
    return local


def fetched_dir(run: RemoteRun, kind: str = "fetched") -> Path:
    """A local folder of a remote run directory, the same in every session on this machine:
    ``<cache>/<kind>/<hash>/<name>/`` (kind ``fetched``: the readers' mirror; ``local``: the
    trackers' default folders, so ``lrbs resume`` re-attaches to them)."""
    where = f"{run.where}|{getattr(run.target.fs, 'base_path', '')}"  # subtrees: their root too
    return cache_dir() / kind / hashlib.sha1(where.encode()).hexdigest()[:12] / run.name


def fetch_run_dir(run_dir: str | os.PathLike, filesystem: pafs.FileSystem | None = None) -> Path:
    """A local directory with the data files of ``run_dir``: a local run directory as it is, a
    remote one mirrored into the cache (only the files that changed since the last fetch)."""
    run = open_run(run_dir, filesystem)
    if run is None:
        return Path(resolve_storage(run_dir).path)
    return mirror(run, fetched_dir(run))


def upload_files(
    run_dir: str | os.PathLike, files: list[Path], filesystem: pafs.FileSystem | None = None, sub: str = ""
) -> list[str]:
    """Copy ``files`` (e.g. report.html, fits.json) into a remote run directory (into its folder
    ``sub``); no-op for a local one. Returns where they went."""
    target = resolve_storage(run_dir, filesystem)
    if target.is_local:
        return []
    copied = []
    path = None
    try:
        for path in files:
            dest = _join(target.path, sub, Path(path).name)
            pafs.copy_files(
                str(path),
                dest,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=target.fs,
                use_threads=False,
            )
            copied.append(display(target, sub, Path(path).name))
    except OSError as exc:
        raise LrbsError(f"cannot upload {Path(path).name} to {display(target)} ({_first_line(exc)})") from None
    return copied


# ---------------------------------------------------------------------------------------------
# Checkpoints and trial folders


def remote_checkpoints(run: RemoteRun, record: TrialRecord) -> list[str]:
    """URIs of ``record``'s kept checkpoint folders in ``run``, newest first (as
    ``TrialRecord.checkpoints`` orders local ones)."""
    found = []
    try:
        for logdir in reversed(record.logdirs):
            infos = run.target.fs.get_file_info(pafs.FileSelector(run.path(logdir), allow_not_found=True))
            names = sorted(
                (
                    i.path
                    for i in infos
                    if i.type == pafs.FileType.Directory and fnmatch.fnmatch(i.base_name, CHECKPOINT_GLOB)
                ),
                reverse=True,
            )
            found += [run.uri_of(p) for p in names]
    except OSError as exc:
        raise LrbsError(
            f"RUN_DIR: cannot list the checkpoints of trial {record.trial_id} in {run.where} ({_first_line(exc)[:300]})"
        ) from None
    return found


def fetch_trial_folders(run: RemoteRun, local: Path, tune_ids: list[str]) -> None:
    """Copy, for each Tune trial id, its folders' ``params.json`` and newest checkpoint from
    ``run`` into the mirror ``local`` (``lrbs interpolate``'s inputs; the folders are those its
    record in the mirror names, else the one named after it), skipping what is already there."""
    from lrbs.sweeps.interpolate import trial_logdirs

    fs = run.target.fs
    try:
        top = None
        for tune_id in tune_ids:
            logdirs = trial_logdirs(local, tune_id)
            if not logdirs:  # a run directory without records: the folder named after the trial
                if top is None:
                    top = fs.get_file_info(pafs.FileSelector(run.path(""), allow_not_found=True))
                logdirs = [
                    i.base_name for i in top if i.type == pafs.FileType.Directory and f"_{tune_id}_" in i.base_name
                ]
            for logdir in logdirs:
                infos = fs.get_file_info(pafs.FileSelector(run.path(logdir), allow_not_found=True))
                ckpts = sorted(
                    i.base_name
                    for i in infos
                    if i.type == pafs.FileType.Directory and fnmatch.fnmatch(i.base_name, CHECKPOINT_GLOB)
                )
                if not ckpts:
                    continue
                _fetch(run, run.path(logdir, "params.json"), local / logdir / "params.json")
                dest = local / logdir / ckpts[-1]
                if not dest.is_dir():  # fetched whole into a temporary name, then renamed
                    part = dest.with_name(f".{dest.name}.part")
                    shutil.rmtree(part, ignore_errors=True)
                    part.mkdir(parents=True)
                    pafs.copy_files(
                        run.path(logdir, ckpts[-1]),
                        str(part),
                        source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem(),
                        use_threads=False,
                    )
                    part.rename(dest)
    except OSError as exc:
        raise LrbsError(f"RUN_DIR: cannot read the trial folders of {run.where} ({_first_line(exc)[:300]})") from None
