"""User code named by a run directory: imported only when the user passes ``--trust-code``.

A run directory names code to run when its model or data set is ``package.module:factory``
(``trainables/plugins.py``): ``lrbs resume`` reads the names from ``spec.yaml``, ``lrbs
interpolate`` from the trials' ``params.json``, and the modules are looked for on the usual path,
next to the spec (the run directory itself) and in the folders ``plugins.json`` lists. A run
directory copied from someone else (``cp -r``, a tar file, a bucket sync) can name code of
theirs, so both commands refuse such a run directory, with one line naming the code, unless
``--trust-code`` is given. Built-in models and data sets import no user code and need no flag.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from lrbs.sweeps.errors import LrbsError

TRUST_FLAG = "--trust-code"
_FIELDS = ("model", "dataset")


def code_names(config: Any) -> list[str]:
    """``model.name 'pkg.mod:factory'``, ... for each section of ``config`` (a spec or a trial's
    config, as a dict) whose name is an import path."""
    from lrbs.trainables.plugins import is_import_path

    found = []
    for field in _FIELDS:
        section = config.get(field) if isinstance(config, dict) else None
        name = section.get("name") if isinstance(section, dict) else None
        if isinstance(name, str) and is_import_path(name):
            found.append(f"{field}.name {name[:80]!r}")
    return found


def spec_code_names(path: Path) -> list[str]:
    """:func:`code_names` of the spec file at ``path``, read as ``load_spec`` reads it (a regular
    file of at most the spec size limit). A spec that does not read or parse names nothing here:
    ``load_spec`` then refuses it with its own line, before any code is imported."""
    from lrbs.sweeps.spec import MAX_SPEC_BYTES, parse_yaml

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return []
        # O_NONBLOCK: a FIFO swapped in after stat() opens without waiting for a writer
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return []
            raw = f.read(MAX_SPEC_BYTES + 1)
        return code_names(parse_yaml(raw.decode("utf-8"))) if len(raw) <= MAX_SPEC_BYTES else []
    except Exception:  # noqa: BLE001 - unreadable or malformed: load_spec says what is wrong
        return []


def require_trust(names: list[str], where: str, command: str, trusted: bool) -> None:
    """One line (LrbsError, exit 2) when ``names`` (from :func:`code_names`) is not empty and the
    user did not pass ``--trust-code``."""
    if names and not trusted:
        raise LrbsError(
            f"RUN_DIR: {where} names user code that lrbs {command} would import and run "
            f"({', '.join(names)}); pass {TRUST_FLAG} if you trust this run directory as you would "
            f"its spec (docs/resilience.md, Security)"
        )


def resume_command(run_dir) -> str:
    """``lrbs resume RUN_DIR``, with ``--trust-code`` when the run's spec copy names user code (the
    hint a stopped or errored run prints must be a command that works as given)."""
    spec = Path(str(run_dir)) / "spec.yaml" if "://" not in str(run_dir) else None
    return f"lrbs resume {run_dir}" + (f" {TRUST_FLAG}" if spec is not None and spec_code_names(spec) else "")
