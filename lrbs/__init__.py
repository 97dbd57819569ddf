"""lrbs: Ray Tune sweeps of how the learning-rate to batch-size ratio eta/S shapes SGD.

The Python face (``lrbs.api``): ``load`` a spec, ``run`` it, ``open_run`` a run directory and read
its ``epochs()`` and ``trials()`` as pyarrow tables, write its ``report()``. The ``lrbs`` command
line is ``lrbs.sweeps.cli``; the packages are ``lrbs.rundir`` (a run directory's layout, schema,
readers and records), ``lrbs.trainables`` (inside one trial), ``lrbs.analysis`` (fits and the
report) and ``lrbs.sweeps`` (specs and the Ray Tune driver); docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrbs.api import Run, load, open_run, run
    from lrbs.sweeps.spec import SweepSpec

__all__ = ["Run", "SweepSpec", "load", "open_run", "run"]

# Each public name's module, imported on first use: `import lrbs`, which every `lrbs` command does
# on its way to lrbs.sweeps.cli, then costs no torch or Ray import.
_HOME = {
    "Run": "lrbs.api",
    "load": "lrbs.api",
    "open_run": "lrbs.api",
    "run": "lrbs.api",
    "SweepSpec": "lrbs.sweeps.spec",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'lrbs' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
