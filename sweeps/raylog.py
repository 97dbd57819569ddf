"""Ray's own output goes to ``RUN_DIR/ray.log``; the terminal keeps lrbs's lines and errors.

Ray's loggers print INFO and WARNING lines (the local instance starting, Tune's experiment
state snapshot warning a dozen times per run, where results are written) and Tune prints a
configuration box, between lrbs's progress lines. While a driver runs, :class:`RayOutput`
lowers Ray's terminal handlers to ERROR, sends Ray's log records (INFO and up) to the log, and
sends what is printed to stdout/stderr during ``tuner.fit`` (Tune's box) there too. Errors
still reach the terminal. Before the run directory exists (Ray starting), the lines are kept in
memory and written to the log once it does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import ray  # noqa: F401 - Ray installs its logging handlers on import: RayOutput finds them

from lrbs.rundir.layout import RAY_LOG


def _ray_stream_handlers() -> list[logging.Handler]:
    names = ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray."))]
    found: list[logging.Handler] = []
    for name in names:
        logger = logging.getLogger(name)
        found += [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
    return found


class _QuietHandler(logging.StreamHandler[TextIO]):
    """A log line that cannot be written (a full disk) is dropped, never a traceback on the
    terminal: the sweep's own error says what happened."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class RayOutput:
    """``start()`` before ``ray.init``, ``to_file(run_dir)`` once it exists, ``stop()`` at the end."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.file: TextIO | None = None
        self.handler = _QuietHandler(self.buffer)
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s")
        )
        self.saved: list[tuple[logging.Handler, int]] = []
        self.path: Path | None = None

    def start(self) -> RayOutput:
        logger = logging.getLogger("ray")
        self.saved = [(h, h.level) for h in _ray_stream_handlers() if h is not self.handler]
        for handler, _ in self.saved:
            handler.setLevel(logging.ERROR)
        logger.addHandler(self.handler)
        self._level = logger.level
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        return self

    def to_file(self, run_dir: str | Path) -> Path | str:
        """The log's path; if it cannot be written, Ray's lines stay in memory and say why."""
        self.path = Path(run_dir) / RAY_LOG
        try:
            # Appended to, never through a link planted in the run directory (O_NOFOLLOW: ELOOP)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            file = open(fd, "a", encoding="utf-8", buffering=1)  # line-buffered: readable as it runs
            file.write(self.buffer.getvalue())
        except OSError as exc:
            return f"not written ({exc.strerror or exc})"
        self.file = file
        self.handler.setStream(file)
        return self.path

    @contextlib.contextmanager
    def printed(self) -> Iterator[None]:
        """What Ray prints to stdout/stderr meanwhile goes to the log too."""
        target = self.file or self.buffer
        with contextlib.redirect_stdout(target), contextlib.redirect_stderr(target):
            yield

    def stop(self) -> None:
        logger = logging.getLogger("ray")
        logger.removeHandler(self.handler)
        logger.setLevel(self._level if hasattr(self, "_level") else logger.level)
        for handler, level in self.saved:
            handler.setLevel(level)
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # a full disk: the log's tail is lost, the sweep's own error stands
                pass
