"""``lrbs status RUN_DIR``: the table of a run's trials, read from its files (JSON, YAML, Arrow; no Ray)."""

from __future__ import annotations

import argparse

from lrbs.rundir.layout import METRIC_DIR
from lrbs.rundir.tables import load_metrics_with_report
from lrbs.sweeps.status import format_status, read_progress, read_status
from lrbs.sweeps.storage import fetch_run_dir


def add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory: a path or a URI (s3://, gs://, file://)")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = fetch_run_dir(args.run_dir)  # a URI: its data files mirrored into the local cache
    loaded = None
    if (run_dir / METRIC_DIR).is_dir():  # read once for the table and the summary line
        loaded = load_metrics_with_report(run_dir)
    print(
        format_status(
            read_status(run_dir, loaded),
            progress=read_progress(run_dir, loaded[0] if loaded is not None else None),
            damaged_files=loaded[1].damaged if loaded is not None else None,
        )
    )
    return 0
