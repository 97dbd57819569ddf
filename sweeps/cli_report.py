"""``lrbs report`` and ``lrbs export``: files written from a run directory's tables."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from lrbs.analysis.report import FORMATS, write_comparison, write_reports, write_trial_page
from lrbs.rundir.layout import EXPORT_DIR, METRIC_DIR
from lrbs.rundir.location import is_uri
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.export import FORMATS as EXPORT_FORMATS
from lrbs.sweeps.export import export_run
from lrbs.sweeps.storage import fetch_run_dir, open_run, upload_files


def publish(run_uri: str, files: list[Path], prefix: str = "", sub: str = "") -> None:
    """Copy report files into a run directory given as a URI (no-op for a local one)."""
    if is_uri(run_uri):
        for where in upload_files(run_uri, files, sub=sub):
            print(f"{prefix}uploaded: {where}")


def _check_run_dir(run_dir: Path, arg: str) -> None:
    if not (run_dir / METRIC_DIR).is_dir():
        raise LrbsError(f"{arg}: {run_dir} is not an lrbs run directory (no {METRIC_DIR}/ inside)")


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory: a path or a URI (s3://, gs://, file://)")
    p.add_argument(
        "--format",
        action="append",
        metavar="FMT",
        help="html (report.html), json (fits.json) or md (report.md); repeat or comma-separate (default: all three)",
    )
    p.add_argument(
        "--compare",
        metavar="RUN_B",
        default=None,
        help="also compare with another run: writes compare-<RUN_B name>.md and .html in RUN_DIR "
        "(what differs between the runs, slopes with CIs, beta*, every section's headline, side "
        "by side; both runs' fits and learning curves on one figure)",
    )
    p.add_argument(
        "--compare-any",
        action="store_true",
        help="with --compare: say whether the slopes' CIs overlap even when the two runs train "
        "different models or on different data sets (withheld by default)",
    )
    p.add_argument(
        "--trials",
        action="append",
        metavar="SELECTOR",
        help="instead of the report, draw these trials' own learning curves in "
        "RUN_DIR/trials-<SELECTOR>.html: key=value terms ('lr=0.1 S=32'; a point's legend "
        "name in the report is one) or trial ids; repeat for more",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    formats = [f.strip() for item in (args.format or list(FORMATS)) for f in item.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise LrbsError(f"--format: unknown format {unknown[0]!r} (choose from {', '.join(FORMATS)})")
    if args.compare_any and not args.compare:
        raise LrbsError("--compare-any: only with --compare RUN_B")
    run_dir = fetch_run_dir(args.run_dir)  # a URI (s3://, gs://, file://) is fetched to a local cache
    _check_run_dir(run_dir, "RUN_DIR")
    if args.trials:  # individual trials on demand: their page only, not the whole report
        try:
            page = write_trial_page(run_dir, args.trials)
        except ValueError as exc:
            raise LrbsError(str(exc)) from None
        except OSError as exc:
            raise LrbsError(f"RUN_DIR: cannot write the trials page in {run_dir} ({exc.strerror or exc})") from None
        print(f"trials: {page}")
        publish(args.run_dir, [page])
        return 0
    try:
        paths = write_reports(run_dir, tuple(dict.fromkeys(formats)))
    except OSError as exc:  # a read-only run directory (or a full disk): say where
        raise LrbsError(
            f"RUN_DIR: cannot write the report in {run_dir} ({exc.strerror or exc}; "
            f"{getattr(exc, 'filename', '') or ''})"
        ) from None
    labels = {"html": "report", "json": "fits", "md": "summary"}
    print("\n".join(f"{labels[f]}: {p}" for f, p in paths.items()))
    publish(args.run_dir, list(paths.values()))
    if args.compare:
        other = fetch_run_dir(args.compare)
        _check_run_dir(other, "--compare")
        cmp_paths = write_comparison(run_dir, other, allow_any=args.compare_any)
        print(f"comparison: {cmp_paths['html']}\ncomparison summary: {cmp_paths['md']}")
        publish(args.run_dir, list(cmp_paths.values()))
    return 0


def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run_dir",
        help="the run directory: a path or a URI (s3://, gs://, file://; then uploaded to "
        "RUN_DIR/export/ unless --out)",
    )
    p.add_argument("--format", choices=EXPORT_FORMATS, default="parquet", help="file format (default parquet)")
    p.add_argument("--out", default=None, help="folder for epochs.<ext> and trials.<ext> (default RUN_DIR/export)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if args.out is not None and is_uri(args.out):
        raise LrbsError(
            f"--out: a local folder (got {args.out}); without --out, a URI run directory gets "
            f"the files in RUN_DIR/{EXPORT_DIR}/"
        )
    remote = open_run(args.run_dir)  # a URI: read from the local mirror; without --out, the files go next to the run
    if remote is not None and args.out is None:
        try:
            taken = [
                f"{EXPORT_DIR}/{n}.{args.format}"
                for n in ("epochs", "trials")
                if remote.info(EXPORT_DIR, f"{n}.{args.format}").type.name != "NotFound"
            ]
        except OSError as exc:
            raise LrbsError(f"RUN_DIR: cannot read {remote.where} ({str(exc).strip().splitlines()[0][:300]})") from None
        if taken:
            raise LrbsError(f"--out: {remote.where}/{taken[0]} already exists (nothing was overwritten; pick --out)")
    run_dir = fetch_run_dir(args.run_dir)
    if remote is not None and args.out is None:
        shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)  # the cache's copy of an earlier export
    paths = export_run(run_dir, args.format, args.out)
    for path in paths:
        print(f"exported: {path}")
    if remote is not None and args.out is None:
        publish(args.run_dir, paths, sub=EXPORT_DIR)
    return 0
