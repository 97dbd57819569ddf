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

import json
import os
import stat
from pathlib import Path
from typing import Any

from lrbs.rundir.layout import PLUGIN_ROOTS, SPEC_COPY
from lrbs.rundir.location import is_uri
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.spec import SweepSpec
from lrbs.sweeps.spec_load import MAX_SPEC_BYTES, parse_yaml
from lrbs.trainables.plugins import add_search_root, is_import_path, ship_path

TRUST_FLAG = "--trust-code"
_FIELDS = ("model", "dataset")


def code_names(config: Any) -> list[str]:
    """``model.name 'pkg.mod:factory'``, ... for each section of ``config`` (a spec or a trial's
    config, as a dict) whose name is an import path."""
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


def resume_command(run_dir: str | Path) -> str:
    """``lrbs resume RUN_DIR``, with ``--trust-code`` when the run's spec copy names user code (the
    hint a stopped or errored run prints must be a command that works as given)."""
    trust = not is_uri(run_dir) and spec_code_names(Path(run_dir) / SPEC_COPY)
    return f"lrbs resume {run_dir}" + (f" {TRUST_FLAG}" if trust else "")


def ship_paths(spec: SweepSpec) -> list[str]:
    """The local package folders or single-file modules of the spec's user factories (installed
    packages and lrbs itself excluded: ``lrbs.trainables.plugins.ship_path``)."""
    paths = [ship_path(name) for name in (spec.model.name, spec.dataset.name) if is_import_path(name)]
    return list(dict.fromkeys(p for p in paths if p))


def record_plugin_folders(spec: SweepSpec, run_dir: Path) -> None:
    """Write the folders the spec's user modules were imported from (their ``sys.path`` entries),
    so ``lrbs resume`` and ``lrbs interpolate`` find them again from any folder (plain JSON data;
    nothing in it is executed)."""
    folders = list(dict.fromkeys(str(Path(p).parent) for p in ship_paths(spec)))
    if folders:
        (run_dir / PLUGIN_ROOTS).write_text(json.dumps({"search_roots": folders}, indent=1))


def restore_plugin_folders(run_dir: Path) -> None:
    """Add the folders ``record_plugin_folders`` wrote to the plug-in search path (if they exist)."""
    try:
        roots = json.loads((run_dir / PLUGIN_ROOTS).read_text())["search_roots"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no user modules, or an unreadable file: the usual search path applies
    for folder in roots if isinstance(roots, list) else []:
        if isinstance(folder, str) and Path(folder).is_dir():
            add_search_root(folder)
