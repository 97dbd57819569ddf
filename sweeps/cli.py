"""The ``lrbs`` command line. Bad input: one line on stderr naming the field or file, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lrbs.rundir.safe_write import UnsafePathError
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.export import FORMATS as EXPORT_FORMATS


def _process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): interpreter and imports."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, clock ticks after boot
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return 0.0


# Wall-clock origin of `lrbs run`'s time line: the process's start.
_PROCESS_START = time.monotonic() - _process_age()


def cmd_validate(args: argparse.Namespace) -> int:
    from lrbs.sweeps.packing import plan_packs
    from lrbs.sweeps.spec import load_spec

    spec = load_spec(args.spec, local_data=True)  # validate answers for a run on this machine
    packs = plan_packs(spec)
    points = [(i, p) for i, pack in enumerate(packs) for p in pack]
    from lrbs.sweeps.spec import is_search, search_settings

    if is_search(spec):  # the points below are the ladder the search picks from, not its trials
        st = search_settings(spec)
        sizes = len(spec.beta.n_train) or 1
        print(
            f"{spec.name}: beta search over {len(st.betas)} betas (1 to {st.betas[-1]:g}, "
            f"x{spec.beta.search.resolution:.4g}) at {sizes} training-set size(s): at most {st.budget} trials; "
            f"a bisection trains about {(1 + st.probes) * len(st.seeds) * sizes} (beta = 1 and up to {st.probes} "
            f"probes per size, {len(st.seeds)} seeds each, tests at level {st.level:.3g}). The fixed ladder it "
            f"replaces, and the estimate below: {len(points)} trials ({spec.dataset.name}, {spec.model.name}, "
            f"{spec.train.epochs} epochs) in {len(packs)} packs"
        )
    else:
        print(
            f"{spec.name}: {len(points)} trials ({spec.dataset.name}, {spec.model.name}, "
            f"{spec.train.epochs} epochs) in {len(packs)} packs (train.pack: {spec.train.pack})"
        )
    extra = [k for k in ("variant", "rescale", "beta", "n_train") if any(k in p for _, p in points)]
    print(
        f"{'#':>4} {'pack':>5} {'lr':>10} {'batch_size':>10} {'eta/S':>11} {'seed':>5}"
        + "".join(f" {k:>10}" for k in extra)
    )
    for n, (i, p) in enumerate(points):
        print(
            f"{n:>4} {i:>5} {p['lr']:>10.4g} {p['batch_size']:>10d} {p['lr'] / p['batch_size']:>11.4g} "
            f"{p['seed']:>5}" + "".join(f" {str(p.get(k, '-')):>10}" for k in extra)
        )
    from lrbs.sweeps.estimate import describe, estimate_cost, model_profile

    prof = model_profile(spec.model, spec.dataset)
    print(
        f"model: {spec.model.name} {_options(spec.model.options)}: {prof.n_params:,} parameters, "
        f"{prof.forward_flops_per_example / 1e6:.3g} MFLOP forward per example; data: {spec.dataset.name} "
        f"{_options(spec.dataset.options)}: input {prof.input_shape}, {prof.n_classes} classes"
    )
    print(describe(estimate_cost(spec)))
    if spec.tracking:  # each tracker's package installed (one line naming the extra otherwise)
        from lrbs.sweeps.tracking import build_trackers

        build_trackers(spec.tracking, spec.name, Path("runs") / spec.name)
        print(f"tracking: {', '.join(spec.tracking)} (one run per point)")
    return 0


def _options(options: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in options.items()) + "}"


def cmd_run(args: argparse.Namespace) -> int:
    from lrbs.sweeps.progress import PhaseTimes
    from lrbs.sweeps.runner import run_sweep
    from lrbs.sweeps.spec import load_spec
    from lrbs.sweeps.tracking import with_tracks

    # --address: the trials load their data on the cluster's nodes, not from this machine's disk
    spec = load_spec(args.spec, local_data=args.address is None)
    spec = with_tracks(spec, args.track)  # kept in the spec copy: lrbs resume re-attaches
    times = PhaseTimes()
    outcome: dict = {}
    run_dir = run_sweep(
        spec,
        storage=args.storage,
        address=args.address,
        times=times,
        outcome=outcome,
        upload_interval_s=args.upload_interval,
    )
    if not args.no_report:
        t = time.monotonic()
        from lrbs.sweeps.storage import join_uri

        _final_report(run_dir, join_uri(args.storage, spec.name))
        times.report = time.monotonic() - t
    total = time.monotonic() - _PROCESS_START
    times.start = max(0.0, total - times.ray - times.trials - times.report)
    print(times.line(total), flush=True)
    return _exit_code(outcome, run_dir)


def _exit_code(outcome: dict, run_dir) -> int:
    """0 when every trial finished or diverged; EXIT_TRIALS_ERRORED (3) when any ended in ERROR,
    said in the last line, so scripts can tell a failed sweep from a good one."""
    from lrbs.sweeps.runner import EXIT_TRIALS_ERRORED
    from lrbs.sweeps.trust import resume_command

    n_err, n_left = outcome.get("errored", 0), outcome.get("unfinished", 0)
    total = n_err + n_left + outcome.get("finished", 0)
    if n_left and not n_err:  # stopped early (Ctrl-C, SIGUSR1): not a finished sweep
        from lrbs.sweeps.errors import SweepStopped

        print(
            f"[lrbs] {n_left} of {total} trials unfinished (exit {SweepStopped.exit_code}): "
            f"{resume_command(run_dir)} finishes them",
            flush=True,
        )
        return SweepStopped.exit_code
    if not n_err:
        return 0
    left = f" and {n_left} unfinished" if n_left else ""
    print(
        f"[lrbs] {n_err} of {total} trials errored{left} (exit {EXIT_TRIALS_ERRORED}): see lrbs status {run_dir}; "
        f"{resume_command(run_dir)} --restart-errored retries them",
        flush=True,
    )
    return EXIT_TRIALS_ERRORED


def _final_report(run_dir: Path, publish_to: str | None = None) -> None:
    """The report at the end of ``run``/``resume`` (all formats), copied to a URI run dir if any."""
    from lrbs.analysis.report import write_reports

    paths = write_reports(run_dir)
    print(f"[lrbs] report: {paths['html']}\n[lrbs] fits: {paths['json']}\n[lrbs] summary: {paths['md']}")
    if publish_to:
        _publish(publish_to, list(paths.values()), "[lrbs] ")


def _publish(run_uri: str, files: list[Path], prefix: str = "", sub: str = "") -> None:
    """Copy report files into a run directory given as a URI (no-op for a local one)."""
    from lrbs.sweeps.remote import upload_files
    from lrbs.sweeps.storage import is_uri

    if is_uri(run_uri):
        for where in upload_files(run_uri, files, sub=sub):
            print(f"{prefix}uploaded: {where}")


def cmd_report(args: argparse.Namespace) -> int:
    from lrbs.analysis.report import FORMATS, write_reports
    from lrbs.sweeps.remote import fetch_run_dir

    formats = [f.strip() for item in (args.format or list(FORMATS)) for f in item.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise LrbsError(f"--format: unknown format {unknown[0]!r} (choose from {', '.join(FORMATS)})")
    if args.compare_any and not args.compare:
        raise LrbsError("--compare-any: only with --compare RUN_B")
    run_dir = fetch_run_dir(args.run_dir)  # a URI (s3://, gs://, file://) is fetched to a local cache
    if not (run_dir / "metrics").is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not an lrbs run directory (no metrics/ inside)")
    if args.trials:  # individual trials on demand: their page only, not the whole report
        from lrbs.analysis.report import write_trial_page

        try:
            page = write_trial_page(run_dir, args.trials)
        except ValueError as exc:
            raise LrbsError(str(exc)) from None
        except OSError as exc:
            raise LrbsError(f"RUN_DIR: cannot write the trials page in {run_dir} ({exc.strerror or exc})") from None
        print(f"trials: {page}")
        _publish(args.run_dir, [page])
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
    _publish(args.run_dir, list(paths.values()))
    if args.compare:
        from lrbs.analysis.report import write_comparison

        other = fetch_run_dir(args.compare)
        if not (other / "metrics").is_dir():
            raise LrbsError(f"--compare: {other} is not an lrbs run directory (no metrics/ inside)")
        cmp_paths = write_comparison(run_dir, other, allow_any=args.compare_any)
        print(f"comparison: {cmp_paths['html']}\ncomparison summary: {cmp_paths['md']}")
        _publish(args.run_dir, list(cmp_paths.values()))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from lrbs.sweeps.submit import submit_sweep

    submit_sweep(args.spec, args.address, args.storage, job_id=args.job_id, insecure=args.insecure)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from lrbs.rundir.points import split_member_id
    from lrbs.sweeps.interpolate import INTERP_DIR, write_interpolation
    from lrbs.sweeps.remote import fetch_run_dir, fetch_trial_folders, open_run

    if args.num < 2 or args.alpha_min >= args.alpha_max:
        raise LrbsError("--alphas: need --alpha-min < --alpha-max and --num >= 2")
    remote = open_run(args.run_dir)  # a URI: the two trials' folders are fetched into the local cache
    run_dir = fetch_run_dir(args.run_dir)
    if remote is not None:
        fetch_trial_folders(remote, run_dir, [split_member_id(t)[0] for t in (args.trial_a, args.trial_b)])
    if not (run_dir / "metrics").is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not an lrbs run directory (no metrics/ inside)")
    step = (args.alpha_max - args.alpha_min) / (args.num - 1)
    alphas = [args.alpha_min + i * step for i in range(args.num)]
    arrow_path, html_path = write_interpolation(
        run_dir, args.trial_a, args.trial_b, alphas, args.batch_norm, trust_code=args.trust_code
    )
    print(f"interpolation: {arrow_path}\nplot: {html_path}")
    if remote is not None:
        from lrbs.sweeps.remote import upload_files

        for where in upload_files(args.run_dir, [arrow_path, html_path], sub=INTERP_DIR):
            print(f"uploaded: {where}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from lrbs.sweeps.resume import resume_sweep

    outcome: dict = {}
    run_dir = resume_sweep(
        args.run_dir,
        restart_errored=args.restart_errored,
        address=args.address,
        outcome=outcome,
        upload_interval_s=args.upload_interval,
        track=args.track,
        trust_code=args.trust_code,
    )
    if not args.no_report:
        _final_report(run_dir, args.run_dir)
    return _exit_code(outcome, run_dir)


def cmd_status(args: argparse.Namespace) -> int:
    from lrbs.sweeps.remote import fetch_run_dir
    from lrbs.sweeps.status import format_status, read_progress, read_status

    run_dir = fetch_run_dir(args.run_dir)  # a URI: its data files mirrored into the local cache
    loaded = None
    if (run_dir / "metrics").is_dir():  # read once for the table and the summary line
        from lrbs.rundir.tables import load_metrics_with_report

        loaded = load_metrics_with_report(run_dir)
    print(
        format_status(
            read_status(run_dir, loaded),
            progress=read_progress(run_dir, loaded[0] if loaded is not None else None),
            damaged_files=loaded[1].damaged if loaded is not None else None,
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lrbs.sweeps.export import export_run
    from lrbs.sweeps.remote import fetch_run_dir, open_run
    from lrbs.sweeps.storage import is_uri

    if args.out is not None and is_uri(args.out):
        raise LrbsError(
            f"--out: a local folder (got {args.out}); without --out, a URI run directory gets "
            f"the files in RUN_DIR/export/"
        )
    remote = open_run(args.run_dir)  # a URI: read from the local mirror; without --out, the files go next to the run
    if remote is not None and args.out is None:
        try:
            taken = [
                f"export/{n}.{args.format}"
                for n in ("epochs", "trials")
                if remote.info("export", f"{n}.{args.format}").type.name != "NotFound"
            ]
        except OSError as exc:
            raise LrbsError(f"RUN_DIR: cannot read {remote.where} ({str(exc).strip().splitlines()[0][:300]})") from None
        if taken:
            raise LrbsError(f"--out: {remote.where}/{taken[0]} already exists (nothing was overwritten; pick --out)")
    run_dir = fetch_run_dir(args.run_dir)
    if remote is not None and args.out is None:
        import shutil

        shutil.rmtree(run_dir / "export", ignore_errors=True)  # the cache's copy of an earlier export
    paths = export_run(run_dir, args.format, args.out)
    for path in paths:
        print(f"exported: {path}")
    if remote is not None and args.out is None:
        _publish(args.run_dir, paths, sub="export")
    return 0


def _add_trust_arg(p: argparse.ArgumentParser) -> None:
    """``--trust-code`` of the commands that import the code a run directory names (resume, interpolate)."""
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="import and run the user code (package.module:factory) the run directory names; "
        "without it such a run directory is refused (a copied one may name someone else's code)",
    )


def _add_driver_args(p: argparse.ArgumentParser) -> None:
    """Options of the commands that drive a sweep (run, resume)."""
    p.add_argument(
        "--address",
        default=None,
        help="address of an existing Ray cluster (auto, HOST:6379); default: start a local one on "
        "this machine (loopback only)",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument(
        "--track",
        action="append",
        metavar="TRACKER",
        default=None,
        help="also log every point to tensorboard, mlflow or wandb (repeatable; defaults as in the "
        "spec's tracking: section; run keeps it in the spec copy, so resume re-attaches)",
    )
    p.add_argument(
        "--upload-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with a URI run directory: upload new metric rows and trial records at least this often "
        "while trials run (default 30; always at each trial's end)",
    )


# name -> (one-line help, description, examples): what `lrbs NAME --help` prints.
COMMANDS = {
    "validate": (
        "check a spec and print its points, pack plan and cost estimate",
        "Check a sweep spec without running it: every key and value, the model built once on "
        "two examples, the limits. Prints the trial points, the pack plan and a time estimate. "
        "Bad input is one line naming the field, exit 2.",
        ["lrbs validate sweeps/quickstart.yaml"],
    ),
    "run": (
        "run a sweep (embedded local Ray unless --address)",
        "Run every trial of a spec and write the run directory STORAGE/<name>/: the spec copy, the "
        "Arrow metric tables, the trial records, checkpoints and (unless --no-report) the report. "
        "Exit 0 when every trial finished or diverged, 3 when some errored, 4 when the sweep had to "
        "stop (full disk), 2 for bad input.",
        [
            "lrbs run sweeps/quickstart.yaml",
            "lrbs run sweeps/quickstart.yaml --track tensorboard --track mlflow",
            "lrbs run sweeps/fig3_grid.yaml --storage s3://bucket/runs --address auto",
        ],
    ),
    "report": (
        "write report.html, fits.json and report.md for a run directory",
        "(Re)write the report of a run: fits of validation accuracy and sharpness against eta/S, "
        "the breakdown, every figure. Works mid-sweep (partial data, marked) and on a URI.",
        [
            "lrbs report runs/quickstart",
            "lrbs report runs/a --compare runs/b --format md",
            "lrbs report runs/fig3_grid --trials 'lr=0.1 S=128'",
        ],
    ),
    "submit": (
        "submit a sweep as a Ray job to a remote cluster",
        "Send this project and a spec to a Ray cluster's job API; the job runs `lrbs run` on the "
        "head node. Plain http:// to another host is refused when a token would be sent.",
        ["lrbs submit sweeps/fig3_grid.yaml --address http://127.0.0.1:8265 --storage s3://bucket/runs"],
    ),
    "interpolate": (
        "loss along the line between two trials' final weights (Fig. 4)",
        "Evaluate the loss and accuracy at weights (1 - alpha) A + alpha B between two trials' "
        "final checkpoints, batch-norm statistics re-estimated at each alpha. Writes "
        "RUN_DIR/interpolation/<A>__<B>.arrow and .html.",
        ["lrbs interpolate runs/fig4 1a2b3_00000 1a2b3_00001 --num 21"],
    ),
    "resume": (
        "continue an interrupted sweep (unfinished and errored trials)",
        "Finish a sweep whose driver died, whose disk filled up or whose trials errored, rebuilt from "
        "the spec copy, the metric rows and the trial records (never Ray's pickled state). Finished "
        "trials are left alone; the others continue from their newest checkpoint that loads.",
        [
            "lrbs resume runs/quickstart",
            "lrbs resume runs/fig3 --restart-errored --address auto",
            "lrbs resume s3://bucket/runs/fig3 --track tensorboard",
        ],
    ),
    "status": (
        "table of a run's trials, read from its files (no Ray)",
        "One line per trial: status, epochs done, last validation accuracy, failures, last error; "
        "damaged metric files named. Reads JSON, YAML and Arrow only; never starts Ray.",
        ["lrbs status runs/quickstart", "lrbs status s3://bucket/runs/fig3"],
    ),
    "export": (
        "write a run's epoch and trial tables as Parquet or CSV",
        "Write epochs.<ext> (one row per trial and epoch, deduplicated as the report reads them) and "
        "trials.<ext> (one row per trial) for pandas, polars or a spreadsheet. Never overwrites.",
        ["lrbs export runs/quickstart", "lrbs export runs/quickstart --format csv --out /tmp/qs"],
    ),
}


def _sub(sub, name: str) -> argparse.ArgumentParser:
    short, description, examples = COMMANDS[name]
    return sub.add_parser(
        name,
        help=short,
        description=description,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class _Version(argparse.Action):
    """``--version``: the code version of the metric rows (asks git only when used)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from lrbs.sweeps.version import code_version

        print(f"lrbs {code_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrbs",
        description="Ray Tune sweeps of SGD's learning-rate to batch-size ratio (eta/S): run, resume, report.",
        epilog="start with: lrbs validate sweeps/quickstart.yaml && lrbs run sweeps/quickstart.yaml",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the code version (as recorded in every metric row) and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _sub(sub, "validate")
    p.add_argument("spec", help="the sweep spec (YAML)")
    p.set_defaults(func=cmd_validate)
    p = _sub(sub, "run")
    p.add_argument("spec", help="the sweep spec (YAML)")
    p.add_argument(
        "--storage",
        default="runs",
        help="directory or URI (s3://, gs://, file://) holding run directories (default: ./runs)",
    )
    _add_driver_args(p)
    p.set_defaults(func=cmd_run)
    p = _sub(sub, "report")
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
    p = _sub(sub, "submit")
    p.add_argument("spec", help="spec file inside this project (it travels with the job's working dir)")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    p.add_argument(
        "--storage",
        default=None,
        help="storage as the head node sees it: a URI (s3://, gs://) or a path there "
        "(default: ~/lrbs-runs on the head node)",
    )
    p.add_argument("--job-id", default=None, help="submission id (default: Ray picks one)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="send the auth token over plain http:// to a non-loopback address anyway (refused otherwise)",
    )
    p.set_defaults(func=cmd_submit)
    p = _sub(sub, "interpolate")
    p.add_argument("run_dir", help="the run directory: a path or a URI (s3://, gs://, file://)")
    p.add_argument("trial_a", help="trial id of the alpha = 0 end (see lrbs status)")
    p.add_argument("trial_b", help="trial id of the alpha = 1 end")
    p.add_argument("--alpha-min", type=float, default=-1.0, help="first alpha (default -1)")
    p.add_argument("--alpha-max", type=float, default=2.0, help="last alpha (default 2)")
    p.add_argument("--num", type=int, default=31, help="number of alphas (default 31)")
    p.add_argument(
        "--batch-norm",
        choices=("recompute", "interpolate"),
        default="recompute",
        help="batch-norm running statistics at each alpha: re-estimated on a fixed subset of "
        "4,096 training examples (default), or interpolated like the weights (the old way; "
        "written to <A>__<B>__bn-interpolated.*)",
    )
    _add_trust_arg(p)
    p.set_defaults(func=cmd_interpolate)
    p = _sub(sub, "resume")
    p.add_argument("run_dir", help="the run directory to finish: a path or a URI (s3://, gs://, file://)")
    p.add_argument(
        "--restart-errored",
        action="store_true",
        help="restart errored trials from scratch instead of from their last checkpoint",
    )
    _add_trust_arg(p)
    _add_driver_args(p)
    p.set_defaults(func=cmd_resume)
    p = _sub(sub, "status")
    p.add_argument("run_dir", help="the run directory: a path or a URI (s3://, gs://, file://)")
    p.set_defaults(func=cmd_status)
    p = _sub(sub, "export")
    p.add_argument(
        "run_dir",
        help="the run directory: a path or a URI (s3://, gs://, file://; then uploaded to "
        "RUN_DIR/export/ unless --out)",
    )
    p.add_argument("--format", choices=EXPORT_FORMATS, default="parquet", help="file format (default parquet)")
    p.add_argument("--out", default=None, help="folder for epochs.<ext> and trials.<ext> (default RUN_DIR/export)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (LrbsError, UnsafePathError) as exc:  # UnsafePathError: a write refused (a link out of RUN_DIR)
        print(f"lrbs: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
