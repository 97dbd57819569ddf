"""``RUN_DIR/lock.json``: one driver (``lrbs run`` or ``lrbs resume``) per run directory.

Two drivers on one run directory both trained every unfinished trial, and one deleted the
other's checkpoints. The lock is a file created with ``O_EXCL`` (atomic on a local or NFSv3+
filesystem) holding who took it: host, pid, the process's start time (so a reused pid is not
mistaken for the holder), the command and when. A second driver is refused with one line naming
the holder. A lock whose holder is gone (same host, pid dead or reused) is stale: it is taken
over by renaming it away first, so of two drivers breaking the same stale lock one wins.
A lock held from another host cannot be checked from here; the message says how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from lrbs.rundir.layout import LOCK_FILE
from lrbs.rundir.location import RunDir, first_line
from lrbs.sweeps.errors import LrbsError


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder (on this host) still runs: its pid exists and started when it said."""
    try:
        pid = int(holder["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process: still check that it is the one that took the lock
    except (KeyError, TypeError, ValueError):
        return False  # not a lock lrbs wrote whole: nobody can hold it
    started = holder.get("started")
    return started is None or _process_start(pid) in (None, started)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def holder_alive(path: str | Path) -> bool:
    """Whether a driver holds the lock at ``path`` now (a holder on another host counts as alive:
    it cannot be checked from here)."""
    try:
        holder = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(holder, dict) and (holder.get("host") != socket.gethostname() or _alive(holder))


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _shown(value: object) -> str:
    """A field of a lock file as it goes into a one-line message: printable, at most 100 characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= 100 else text[:97] + "..."


def describe(holder: dict[str, Any]) -> str:
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("at", 0)))
    except (TypeError, ValueError, OverflowError, OSError):  # not a time lrbs wrote
        since = "?"
    return (
        f"{_shown(holder.get('command', '?'))} (pid {_shown(holder.get('pid', '?'))} on "
        f"{_shown(holder.get('host', '?'))}, since {since})"
    )


class RunLock:
    """Held from :meth:`acquire` to :meth:`release` (also a context manager)."""

    def __init__(self, run_dir: str | Path, command: str):
        self.path = Path(run_dir) / LOCK_FILE
        self.command = command
        self.held = False

    def _me(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": _process_start(os.getpid()),
            "command": self.command,
            "at": time.time(),
        }

    def _read(self) -> dict[str, Any]:
        return _read_json(self.path)  # half-written or garbage: {}, a lock with no live holder

    def _check_regular(self) -> None:
        """One line (exit 2) if ``lock.json`` is a folder, a link or anything but a file: no lock
        lrbs wrote, and not one to move away or delete."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LrbsError(f"RUN_DIR: cannot lock {self.path.parent} ({exc.strerror or exc})") from None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else "not a file"
            raise LrbsError(
                f"RUN_DIR: {self.path} is {kind}, not a lock lrbs wrote; if no driver runs on "
                f"{self.path.parent}, remove it"
            )

    def acquire(self) -> RunLock:
        for _ in range(8):
            try:
                # O_EXCL: fails if the name exists (a link included); O_NOFOLLOW: never through a link
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                self._check_regular()
                holder = self._read()
                if not holder and _age_s(self.path) < 2.0:  # just created, its holder still writing
                    time.sleep(0.5)
                    continue
                if holder.get("host") not in (None, socket.gethostname()):
                    raise LrbsError(
                        f"RUN_DIR: {self.path.parent} is locked by {describe(holder)}; if that "
                        f"driver is gone, delete {self.path}"
                    ) from None
                if _alive(holder):
                    raise LrbsError(
                        f"RUN_DIR: {self.path.parent} is in use by {describe(holder)}; wait for it or stop it first"
                    ) from None
                stale = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, stale)
                except FileNotFoundError:
                    continue  # another driver moved it first
                except OSError as exc:  # a read-only folder: the stale lock cannot be moved away
                    raise LrbsError(
                        f"RUN_DIR: cannot take over the stale lock {self.path} of {describe(holder)} "
                        f"({exc.strerror or exc})"
                    ) from None
                moved = _read_json(stale)
                if moved != holder and moved:
                    # Between our read and the move another driver broke the stale lock and took
                    # its own: put that live lock back (link fails if a third one exists) and retry.
                    try:
                        os.link(stale, self.path)
                    except OSError:
                        pass
                    stale.unlink(missing_ok=True)
                    continue
                print(f"[lrbs] took over a stale lock of {describe(holder)}", file=sys.stderr)
                stale.unlink(missing_ok=True)
                continue
            except OSError as exc:  # read-only folder, full disk, missing folder
                raise LrbsError(f"RUN_DIR: cannot lock {self.path.parent} ({exc.strerror or exc})") from None
            try:
                os.write(fd, json.dumps(self._me()).encode())
            except OSError as exc:  # a full disk: leave no empty lock behind
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise LrbsError(f"RUN_DIR: cannot lock {self.path.parent} ({exc.strerror or exc})") from None
            os.close(fd)
            self.held = True
            return self
        raise LrbsError(f"RUN_DIR: {self.path.parent}: could not take its lock (another driver keeps taking it)")

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._read().get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire() if not self.held else self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RemoteRunLock(RunLock):
    """``lock.json`` in a run directory in an object store (``lrbs.rundir.location``), same holder format.

    Object stores offer no exclusive create through pyarrow, so this lock is not atomic: two
    drivers started within the same moment can both take it. It does refuse a driver started
    while another holds the run, names a holder on another host, and takes over the lock of a
    dead driver on this host (a SIGKILLed ``lrbs run``)."""

    def __init__(self, run: RunDir, command: str):
        super().__init__(run.local, command)
        self.run = run

    def _read(self) -> dict[str, Any]:
        try:
            if self.run.info(LOCK_FILE).type != pafs.FileType.File:
                return {}
            data = json.loads(self.run.read_bytes(LOCK_FILE).decode())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> RemoteRunLock:
        where = f"{self.run.where}/{LOCK_FILE}"
        holder = self._read()
        if holder:
            if holder.get("host") != socket.gethostname():
                raise LrbsError(
                    f"RUN_DIR: {self.run.where} is locked by {describe(holder)}; if that driver is gone, delete {where}"
                )
            if _alive(holder):
                raise LrbsError(
                    f"RUN_DIR: {self.run.where} is in use by {describe(holder)}; wait for it or stop it first"
                )
            print(f"[lrbs] took over a stale lock of {describe(holder)}", file=sys.stderr)
        try:
            self.run.write_bytes(json.dumps(self._me()).encode(), LOCK_FILE)
        except OSError as exc:
            raise LrbsError(f"RUN_DIR: cannot lock {self.run.where} ({first_line(exc)[:300]})") from None
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._read().get("pid") == os.getpid():
                try:
                    self.run.delete(LOCK_FILE)
                except OSError:
                    pass  # the store went away: the next driver finds a dead holder and takes over


def lock_run(run: RunDir, command: str) -> RunLock:
    """The lock of the run directory ``run``: an exclusive file in a local folder, the lock file
    in a store otherwise."""
    return RunLock(run.local, command) if run.is_local else RemoteRunLock(run, command)
