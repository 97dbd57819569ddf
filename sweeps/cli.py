"""The ``lrbs`` command line. Bad input: one line on stderr naming the field or file, exit 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sweeps.errors import LrbsError

EXIT_BAD_INPUT = 2


def cmd_validate(args: argparse.Namespace) -> int:
    from sweeps.spec import expand_points, load_spec

    spec = load_spec(args.spec)
    points = expand_points(spec)
    print(f"{spec.name}: {len(points)} trials ({spec.dataset.name}, {spec.model.name}, "
          f"{spec.train.epochs} epochs)")
    print(f"{'#':>4} {'lr':>10} {'batch_size':>10} {'eta/S':>11} {'seed':>5}")
    for i, p in enumerate(points):
        print(f"{i:>4} {p['lr']:>10.4g} {p['batch_size']:>10d} {p['lr'] / p['batch_size']:>11.4g} {p['seed']:>5d}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep
    from sweeps.spec import load_spec

    spec = load_spec(args.spec)
    run_dir = run_sweep(spec, storage=args.storage, address=args.address)
    if not args.no_report:
        from analysis.report import write_report

        html_path, json_path = write_report(run_dir)
        print(f"[lrbs] report: {html_path}\n[lrbs] fits: {json_path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics").is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not an lrbs run directory (no metrics/ inside)")
    html_path, json_path = write_report(run_dir)
    print(f"report: {html_path}\nfits: {json_path}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from sweeps.resume import resume_sweep

    run_dir = resume_sweep(args.run_dir, restart_errored=args.restart_errored, address=args.address)
    if not args.no_report:
        from analysis.report import write_report

        html_path, json_path = write_report(run_dir)
        print(f"[lrbs] report: {html_path}\n[lrbs] fits: {json_path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from sweeps.status import format_status, read_status

    print(format_status(read_status(args.run_dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrbs", description="Ray Tune sweeps of SGD's eta/S ratio.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a spec and print its expanded grid")
    p.add_argument("spec")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("run", help="run a sweep (embedded local Ray unless --address)")
    p.add_argument("spec")
    p.add_argument("--storage", default="runs", help="directory holding run directories (default: ./runs)")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster (e.g. auto, HOST:6379)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="write report.html and fits.json for a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("resume", help="continue an interrupted sweep (unfinished and errored trials)")
    p.add_argument("run_dir")
    p.add_argument("--restart-errored", action="store_true",
                   help="restart errored trials from scratch instead of from their last checkpoint")
    p.add_argument("--address", default=None, help="address of an existing Ray cluster (e.g. auto, HOST:6379)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("status", help="table of a run's trials, read from its files (no Ray)")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LrbsError as exc:
        print(f"lrbs: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
