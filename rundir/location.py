"""Where a run directory lives: a local folder, or a path in a ``pyarrow.fs`` filesystem (an
object store named by a URI, ``s3://bucket/runs/name``, ``gs://...``, or a filesystem object such
as a ``SubTreeFileSystem``), behind one object, :class:`RunDir`.

Every reader works on local files, so a run directory in a store is read through a local mirror
of the files lrbs wrote as data (:meth:`RunDir.mirror`): ``spec.yaml``, the top-level JSON files
(provenance, plug-in folders, the lock), ``metrics/*.arrow|*.parquet`` and ``trials/*.json``.
Nothing pickled is ever fetched. Checkpoints stay in the store: they are listed
(:meth:`RunDir.checkpoints`) and the trials load them by URI. A store cannot be appended to, so a
driver writes a run that lives there into a local staging mirror and copies what changed up
(:meth:`RunDir.upload_changed`).

How to reach a store is said the standard ways, both kept in every URI derived from the one
given (:meth:`RunDir.uri_of`): pyarrow's URI query (``?endpoint_override=HOST:PORT&scheme=http``)
and the AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``), which Ray passes on to the trials of an
embedded cluster (on a real cluster, give the nodes the same variables or an instance role).

The methods raise ``OSError`` when the store cannot be reached or refuses; the caller words it.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import pyarrow.fs as pafs

from lrbs.rundir.layout import CHECKPOINT_GLOB, LEDGER_DIR, METRIC_DIR

# folder inside the run -> the names lrbs wrote there as data (never Tune's pickles)
MIRRORED = {"": ("*.json", "*.yaml"), METRIC_DIR: ("*.arrow", "*.parquet"), LEDGER_DIR: ("*.json",)}
GROWS_ONLY = {METRIC_DIR}  # stream files only grow, compacted files never change: same size, same content


def is_uri(where: str | os.PathLike[str] | None) -> bool:
    return "://" in str(where)


def join_path(*parts: str) -> str:
    """``parts`` joined by ``/`` (empty ones skipped), as paths inside a pyarrow filesystem are."""
    return "/".join(p.rstrip("/") for p in parts if p)


def join_uri(base: str, *parts: str) -> str:
    """``base`` (a path or URI, maybe with a ``?query``) with ``parts`` appended to its path."""
    head, sep, query = str(base).partition("?")
    if is_uri(head):  # a sweep name with ' ', '#' or '%' stays one path segment
        parts = tuple(quote(p, safe="/") for p in parts)
    return join_path(head, *parts) + sep + query


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (a store's errors carry whole responses), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _copy(src: str, dest: str, source: pafs.FileSystem, destination: pafs.FileSystem) -> None:
    pafs.copy_files(src, dest, source_filesystem=source, destination_filesystem=destination, use_threads=False)


def _mirrored(name: str, patterns: tuple[str, ...]) -> bool:
    return not name.startswith(".") and any(fnmatch.fnmatch(name, p) for p in patterns)


@dataclass(frozen=True)
class RunDir:
    """A folder in ``fs`` at ``path``: a run directory, or the storage root that holds them."""

    fs: pafs.FileSystem
    path: str
    is_local: bool  # a local folder: appends go straight into it
    uri: str = ""  # the URI it was named by ('' for a local path or a filesystem object)

    @classmethod
    def at(cls, where: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None) -> RunDir:
        """``where`` as a place: a path inside ``filesystem`` when one is given; a URI through
        ``pyarrow.fs.FileSystem.from_uri`` (OSError, ValueError or TypeError if it cannot be
        opened); anything else a local path."""
        if filesystem is not None and not isinstance(filesystem, pafs.LocalFileSystem):
            return cls(filesystem, str(where).rstrip("/") or "/", False)
        if not is_uri(where):  # a local path (also one given with a LocalFileSystem)
            return cls(pafs.LocalFileSystem(), str(Path(where).expanduser().resolve()), True)
        fs, path = pafs.FileSystem.from_uri(str(where))
        if isinstance(fs, pafs.LocalFileSystem):
            return cls(fs, str(Path(path).resolve()), True)
        return cls(fs, path.rstrip("/"), False, str(where))

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1] or "run"

    @property
    def local(self) -> Path:
        """The folder on this machine (a local run directory only)."""
        return Path(self.path)

    @property
    def where(self) -> str:
        """A readable name: the path, or a URI-like ``scheme://path`` in a store."""
        if self.is_local:
            return self.path
        scheme = {"gcs": "gs"}.get(self.fs.type_name, self.fs.type_name)  # as gcloud and users write it
        return f"{scheme}://{self.path.lstrip('/')}"

    def join(self, *parts: str) -> str:
        """The path of ``parts`` inside this folder, in its filesystem."""
        return join_path(self.path, *parts)

    def child(self, *parts: str) -> RunDir:
        return replace(self, path=self.join(*parts))

    @property
    def parent(self) -> RunDir:
        head, sep, _ = self.path.rstrip("/").rpartition("/")
        return replace(self, path=(head or "/") if sep else "")

    def uri_of(self, path: str) -> str:
        """A URI for ``path`` (in this filesystem) that reaches it as the given URI does: same
        scheme and query (endpoint, scheme, region), so a trial on any node can open it."""
        if not self.uri:
            raise ValueError(f"RUN_DIR: {self.where} has no URI (give the run directory as s3://..., gs://...)")
        scheme = self.uri.split("://", 1)[0]
        _, sep, query = self.uri.partition("?")
        # percent-encoded: a space, '#', '%' or '?' in a sweep name must not end the path
        return f"{scheme}://{quote(path.lstrip('/'), safe='/')}{sep}{query}"

    def info(self, *parts: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.join(*parts))

    def entries(self, *parts: str) -> list[pafs.FileInfo]:
        """What the folder ``parts`` holds ([] if it does not exist)."""
        return list(self.fs.get_file_info(pafs.FileSelector(self.join(*parts), allow_not_found=True)))

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.join(*parts)) as f:
            return bytes(f.read())

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with self.fs.open_output_stream(self.join(*parts)) as f:
            f.write(data)

    def delete(self, *parts: str) -> None:
        self.fs.delete_file(self.join(*parts))

    def make_dirs(self, *parts: str) -> None:
        self.fs.create_dir(self.join(*parts), recursive=True)

    def put(self, local: Path, *parts: str) -> None:
        """Copy the local file ``local`` to ``parts`` inside this folder."""
        _copy(str(local), self.join(*parts), pafs.LocalFileSystem(), self.fs)

    def get(self, path: str, dest: Path) -> None:
        """Copy the file or folder at ``path`` (in this filesystem) to the local ``dest``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        _copy(path, str(dest), self.fs, pafs.LocalFileSystem())

    def checkpoints(self, logdir: str) -> list[str]:
        """Paths of the checkpoint folders in the trial folder ``logdir``, newest first."""
        found = (i.path for i in self.entries(logdir) if i.type == pafs.FileType.Directory)
        return sorted((p for p in found if fnmatch.fnmatch(p.rsplit("/", 1)[-1], CHECKPOINT_GLOB)), reverse=True)

    def get_checkpoint(self, path: str, dest: Path) -> None:
        """Fetch the checkpoint folder ``path`` whole to ``dest`` (under a temporary name, then renamed)."""
        part = dest.with_name(f".{dest.name}.part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        _copy(path, str(part), self.fs, pafs.LocalFileSystem())
        part.rename(dest)

    def mirror(self, local: Path) -> Path:
        """Bring ``local`` up to date with the data files of this run directory (only what
        changed; a file the store no longer has, such as a released lock, is removed there too)
        and return it. A local run directory is its own mirror: returned as it is."""
        if self.is_local:
            return self.local
        for sub, patterns in MIRRORED.items():
            names = set()
            (local / sub).mkdir(parents=True, exist_ok=True)
            for info in self.entries(sub):
                if info.type != pafs.FileType.File or not _mirrored(info.base_name, patterns):
                    continue
                names.add(info.base_name)
                dest = local / sub / info.base_name
                if sub in GROWS_ONLY and dest.is_file() and dest.stat().st_size == info.size:
                    continue
                self.get(info.path, dest)
            for path in (local / sub).iterdir():  # gone from the store (a lock released, a run made anew)
                if path.is_file() and _mirrored(path.name, patterns) and path.name not in names:
                    path.unlink()
        return local

    def upload_changed(self, local_dir: Path, sub: str, sent: dict[str, tuple[int, int]], pattern: str) -> list[str]:
        """Copy the files of ``local_dir`` matching ``pattern`` that changed since ``sent`` (name ->
        (size, mtime)) into the folder ``sub``; returns their names."""
        copied = []
        for path in sorted(local_dir.glob(pattern)):
            if not path.is_file():
                continue
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
            if sent.get(path.name) == key:
                continue
            self.put(path, sub, path.name)
            sent[path.name] = key
            copied.append(path.name)
        return copied
