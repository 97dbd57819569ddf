"""Writing files into a run directory without following links planted in it.

A run directory may come from someone else (``cp -r``, a tar file, a bucket sync). A symbolic
link planted there (``report.html -> ~/.bashrc``) must not turn a write of lrbs into a write to
the link's target. Every file lrbs writes into an existing run directory goes through
:func:`open_for_write` (or :func:`write_file_safely`):

- the folders between the run directory and the file are checked first: a symbolic link among
  them whose target lies outside the run directory is refused with :class:`UnsafePathError`
  (one line); a link that stays inside the run directory is followed as usual;
- the data goes to a new file with a random name in the file's folder, created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` (so it cannot be a link someone planted), then renamed over
  the target: a rename replaces a link of that name instead of following it. A reader sees the
  old file or the whole new one, never half of it.

Local paths only: a run directory in object storage has no links (lrbs writes a local copy and
uploads it). Stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# Flags of the temporary file: a new file only (an existing name, a link included, fails),
# never through a link, not inherited by child processes.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class UnsafePathError(ValueError):
    """A write refused because a folder on its way is a link out of the run directory; ``str()``
    is one line naming the link. The CLI prints it and exits 2."""

    exit_code = 2


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Raise UnsafePathError if a folder between ``root`` and ``path``'s folder (both included,
    ``root`` itself excepted) is a symbolic link whose target is outside ``root``. ``path`` must
    lie under ``root`` as written."""
    root_abs = os.path.abspath(root)
    real_root = os.path.realpath(root_abs)
    rel = os.path.relpath(os.path.dirname(os.path.abspath(path)), root_abs)
    if rel == os.curdir:
        return
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{path} is not inside {root}")
    current = root_abs
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current):
            target = os.path.realpath(current)
            if not _inside(target, real_root):
                raise UnsafePathError(
                    f"RUN_DIR: {current} is a symbolic link to {target}, outside the run "
                    f"directory {root}; lrbs does not write through it (remove the link)"
                )


def make_dirs(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """``path`` (a folder under ``root``) created if missing, after :func:`check_inside` on it."""
    path = Path(path)
    check_inside(root, path / "_")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_for_write(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, text: bool = False, fsync: bool = False
) -> Iterator[IO[Any]]:
    """A new file object whose contents replace ``path`` when the block ends without an error
    (nothing changes at ``path`` otherwise). ``root``: the run directory ``path`` lies in (default
    its folder: no folder checked). ``text``: a UTF-8 text file, else binary. ``fsync``: the data
    and the rename reach the disk before the block ends. Raises UnsafePathError (see
    :func:`check_inside`) or OSError (the folder is missing or read-only, ``path`` is a folder)."""
    path = Path(path)
    check_inside(path.parent if root is None else root, path)
    for _ in range(16):  # a random name taken already (never in practice): draw another
        # '.'-prefixed and ending in .tmp: no reader of lrbs globs such a name
        tmp = path.with_name(f".{path.name[:200]}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, _CREATE, 0o666)  # the mode the umask allows, as for any new file
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name next to {path}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a file or a link named ``path``; never writes through it
        if fsync:
            _fsync_dir(str(path.parent))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file_safely(
    path: str | os.PathLike[str], data: str | bytes, root: str | os.PathLike[str] | None = None, fsync: bool = False
) -> Path:
    """Replace ``path`` with ``data`` (text is written as UTF-8) through :func:`open_for_write`."""
    with open_for_write(path, root, text=isinstance(data, str), fsync=fsync) as f:
        f.write(data)
    return Path(path)
