"""``lrbs export RUN_DIR --format parquet|csv``: the run's tables as files pandas and polars read.

The metric files are Arrow IPC *streams* (appendable while the sweep runs), which
``pandas.read_feather``, ``pyarrow.dataset(format="ipc")`` and ``polars.read_ipc`` do not open.
Export writes what ``lrbs.rundir.tables`` reads, deduplicated (one row per (trial, epoch), each
trial's newest attempt): ``epochs.<ext>`` (``load_metrics``) and ``trials.<ext>``
(``load_trials``). As in ``load_metrics``, ``config_json`` is on each trial's last epoch row only;
``trials.<ext>`` has the whole config as ``cfg.*`` columns. Existing files are never overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lrbs.rundir.layout import EXPORT_DIR, METRIC_DIR
from lrbs.rundir.safe_write import UnsafePathError, make_dirs, open_for_write
from lrbs.rundir.tables import load_metrics, load_trials
from lrbs.sweeps.errors import LrbsError

FORMATS = ("parquet", "csv")


def export_run(run_dir: str | Path, fmt: str = "parquet", out: str | Path | None = None) -> list[Path]:
    """Write ``epochs.<fmt>`` and ``trials.<fmt>`` into ``out`` (default ``RUN_DIR/export/``)."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise LrbsError(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if not (run_dir / METRIC_DIR).is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not an lrbs run directory (no metrics/ inside)")
    # The folder lrbs writes into: RUN_DIR/export must not be a link out of the run directory;
    # a --out the user names is theirs, links and all.
    root = Path(out) if out is not None else run_dir
    out = Path(out) if out is not None else run_dir / EXPORT_DIR
    paths = [out / f"epochs.{fmt}", out / f"trials.{fmt}"]
    existing = [p for p in paths if os.path.lexists(p)]  # a link counts as existing too
    if existing:
        raise LrbsError(f"--out: {existing[0]} already exists (nothing was overwritten; pick another --out)")
    metrics = load_metrics(run_dir)
    tables = [metrics, load_trials(run_dir, metrics)]
    try:
        make_dirs(out, root)
        for table, path in zip(tables, paths):
            # A new file renamed into place: whole files only, and never written through a link
            with open_for_write(path, root) as f:
                if fmt == "parquet":
                    pq.write_table(table, f)
                else:
                    pacsv.write_csv(table, f)
    except UnsafePathError as exc:
        raise LrbsError(str(exc)) from None
    except OSError as exc:
        raise LrbsError(f"--out: cannot write into {out} ({exc.strerror or exc})") from None
    return paths
