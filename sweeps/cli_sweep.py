"""``lrbs run``, ``resume``, ``submit`` and ``interpolate``: the commands that train or evaluate models."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import ray

from lrbs.analysis.report import write_reports
from lrbs.rundir.layout import INTERPOLATION_DIR, METRIC_DIR
from lrbs.rundir.location import join_uri
from lrbs.rundir.points import split_member_id
from lrbs.sweeps.cli import STARTED
from lrbs.sweeps.cli_report import publish
from lrbs.sweeps.errors import LrbsError, SweepStopped
from lrbs.sweeps.interpolate import write_interpolation
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.progress import PhaseTimes
from lrbs.sweeps.resume import resume_sweep
from lrbs.sweeps.runner import EXIT_TRIALS_ERRORED, run_sweep
from lrbs.sweeps.storage import (
    fetch_run_dir,
    fetch_trial_folders,
    open_run,
)
from lrbs.sweeps.submit import submit_sweep
from lrbs.sweeps.tracking import with_tracks
from lrbs.sweeps.trust import resume_command


def add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the sweep spec (YAML)")
    p.add_argument(
        "--storage",
        default="runs",
        help="directory or URI (s3://, gs://, file://) holding run directories (default: ./runs)",
    )
    _add_driver_args(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    # --address: the trials load their data on the cluster's nodes, not from this machine's disk
    spec = preflight(args.spec, local_data=args.address is None).spec
    spec = with_tracks(spec, args.track)  # kept in the spec copy: lrbs resume re-attaches
    times = PhaseTimes()
    outcome: dict[str, int] = {}
    ray_was_up = ray.is_initialized()  # a Ray this process joined before (a notebook, a test) stays up
    run_dir = run_sweep(
        spec,
        storage=args.storage,
        address=args.address,
        times=times,
        outcome=outcome,
        upload_interval_s=args.upload_interval,
    )
    # The sweep is over: Ray shuts down on a thread while the report is written (rather than in
    # Ray's exit hook, after the time line); the report's time includes waiting for it.
    t = time.monotonic()
    stopping = threading.Thread(target=ray.shutdown, name="lrbs-ray-stop")
    if not ray_was_up:
        stopping.start()
    if not args.no_report:
        _final_report(run_dir, join_uri(args.storage, spec.name))
    if not ray_was_up:
        stopping.join()
    times.report = time.monotonic() - t
    # Rows, records, report and ray.log are closed and Ray is down: the process may end at once
    # (cli.main). Trackers may still hand work to their own exit hooks (W&B, MLflow): not then.
    args.exit_now = not spec.tracking and not ray_was_up
    total = time.monotonic() - STARTED
    times.start = max(0.0, total - times.ray - times.trials - times.report)
    print(times.line(total), flush=True)
    return _exit_code(outcome, run_dir)


def add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the run directory to finish: a path or a URI (s3://, gs://, file://)")
    p.add_argument(
        "--restart-errored",
        action="store_true",
        help="restart errored trials from scratch instead of from their last checkpoint",
    )
    _add_trust_arg(p)
    _add_driver_args(p)
    p.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    outcome: dict[str, int] = {}
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


def _exit_code(outcome: dict[str, int], run_dir: Path) -> int:
    """0 when every trial finished or diverged; EXIT_TRIALS_ERRORED (3) when any ended in ERROR,
    said in the last line, so scripts can tell a failed sweep from a good one."""
    n_err, n_left = outcome.get("errored", 0), outcome.get("unfinished", 0)
    total = n_err + n_left + outcome.get("finished", 0)
    if n_left and not n_err:  # stopped early (Ctrl-C, SIGUSR1): not a finished sweep
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
    paths = write_reports(run_dir)
    print(f"[lrbs] report: {paths['html']}\n[lrbs] fits: {paths['json']}\n[lrbs] summary: {paths['md']}")
    if publish_to:
        publish(publish_to, list(paths.values()), "[lrbs] ")


def add_submit(p: argparse.ArgumentParser) -> None:
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


def cmd_submit(args: argparse.Namespace) -> int:
    submit_sweep(args.spec, args.address, args.storage, job_id=args.job_id, insecure=args.insecure)
    return 0


def add_interpolate(p: argparse.ArgumentParser) -> None:
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


def cmd_interpolate(args: argparse.Namespace) -> int:
    if args.num < 2 or args.alpha_min >= args.alpha_max:
        raise LrbsError("--alphas: need --alpha-min < --alpha-max and --num >= 2")
    remote = open_run(args.run_dir)  # a URI: the two trials' folders are fetched into the local cache
    run_dir = fetch_run_dir(args.run_dir)
    if remote is not None:
        fetch_trial_folders(remote, run_dir, [split_member_id(t)[0] for t in (args.trial_a, args.trial_b)])
    if not (run_dir / METRIC_DIR).is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not an lrbs run directory (no {METRIC_DIR}/ inside)")
    step = (args.alpha_max - args.alpha_min) / (args.num - 1)
    alphas = [args.alpha_min + i * step for i in range(args.num)]
    arrow_path, html_path = write_interpolation(
        run_dir, args.trial_a, args.trial_b, alphas, args.batch_norm, trust_code=args.trust_code
    )
    print(f"interpolation: {arrow_path}\nplot: {html_path}")
    if remote is not None:
        publish(args.run_dir, [arrow_path, html_path], sub=INTERPOLATION_DIR)
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
