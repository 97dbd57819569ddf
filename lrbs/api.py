"""What the ``lrbs`` command does, as functions for notebooks and scripts.

import lrbs
spec = lrbs.load("sweeps/quickstart.yaml")   # a spec file or a dict, checked like `lrbs validate`
run = lrbs.run(spec, storage="runs")         # every point trained through Ray Tune: a Run
run.trials().to_pandas()                     # one row per trial; run.epochs(): one per epoch
run.report()                                 # report.html, fits.json and report.md in the run
lrbs.open_run("s3://bucket/runs/quickstart") # any run directory, local or in a store
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from lrbs.analysis.report import FORMATS, write_reports
from lrbs.rundir.tables import load_metrics, load_trials
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.runner import run_sweep
from lrbs.sweeps.spec import SweepSpec
from lrbs.sweeps.spec_load import spec_from_dict
from lrbs.sweeps.storage import fetch_run_dir


@dataclass(frozen=True)
class Run:
    """A run directory on this machine (a store's is mirrored into the local cache first)."""

    path: Path

    def epochs(self) -> pa.Table:
        """One row per trial and epoch, with provenance (docs/metrics.md)."""
        return load_metrics(self.path)

    def trials(self) -> pa.Table:
        """One row per trial: its point, status and final metrics."""
        return load_trials(self.path)

    def report(self, formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
        """Write the report (html, json, md) into the run directory; returns the paths by format."""
        return write_reports(self.path, formats)


def load(source: str | Path | dict[str, Any], *, local_data: bool = True) -> SweepSpec:
    """A checked spec from a YAML file or a dict: read, validated and pre-flighted (the model built
    once, its data found) as ``lrbs validate`` does. ``local_data=False`` when the trials will run on
    a cluster's nodes, which have their own data."""
    spec = spec_from_dict(source) if isinstance(source, dict) else source
    return preflight(spec, local_data=local_data).spec


def run(spec: SweepSpec | str | Path | dict[str, Any], storage: str | None = None, address: str | None = None) -> Run:
    """Train every point of ``spec`` into ``<storage>/<name>/`` (default storage: ``runs``), on
    local Ray or the cluster at ``address``; as ``lrbs run --no-report``."""
    checked = spec if isinstance(spec, SweepSpec) else load(spec, local_data=address is None)
    return Run(run_sweep(checked, storage=storage, address=address))


def open_run(run_dir: str | Path) -> Run:
    """An existing run directory: a local path, or a store URI (``s3://``, ``gs://``) fetched into
    the local cache (only the files that changed since the last fetch)."""
    return Run(fetch_run_dir(run_dir))
