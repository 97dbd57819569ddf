"""The ``lrbs`` command line. Bad input: one line on stderr naming the field or file, exit 2.

Each command lives in a module (``COMMANDS``) that adds its arguments (``add_<command>``) and runs
it; only the module of the command given is imported, so ``lrbs validate`` never loads Ray and
``lrbs status`` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from lrbs.rundir.safe_write import UnsafePathError
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.version import code_version

# The origin of `lrbs run`'s time line: this module's import, lrbs's first work in the process
# (the interpreter's own start is left out, and so is whatever a shell ran before it exec'd
# `lrbs`, e.g. a venv and a pip install).
STARTED = time.monotonic()

# name -> (the module with its ``add_<name>(parser)``, which adds the arguments and ``func``, what
# runs it; one-line help, description, examples: what `lrbs NAME --help` prints).
COMMANDS = {
    "validate": (
        "lrbs.sweeps.cli_validate",
        "check a spec and print its points, pack plan and cost estimate",
        "Check a sweep spec without running it: every key and value, the model built once on "
        "two examples, the limits. Prints the trial points, the pack plan and a time estimate. "
        "Bad input is one line naming the field, exit 2.",
        ["lrbs validate sweeps/quickstart.yaml"],
    ),
    "run": (
        "lrbs.sweeps.cli_sweep",
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
        "lrbs.sweeps.cli_report",
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
        "lrbs.sweeps.cli_sweep",
        "submit a sweep as a Ray job to a remote cluster",
        "Send this project and a spec to a Ray cluster's job API; the job runs `lrbs run` on the "
        "head node. Plain http:// to another host is refused when a token would be sent.",
        ["lrbs submit sweeps/fig3_grid.yaml --address http://127.0.0.1:8265 --storage s3://bucket/runs"],
    ),
    "interpolate": (
        "lrbs.sweeps.cli_sweep",
        "loss along the line between two trials' final weights (Fig. 4)",
        "Evaluate the loss and accuracy at weights (1 - alpha) A + alpha B between two trials' "
        "final checkpoints, batch-norm statistics re-estimated at each alpha. Writes "
        "RUN_DIR/interpolation/<A>__<B>.arrow and .html.",
        ["lrbs interpolate runs/fig4 1a2b3_00000 1a2b3_00001 --num 21"],
    ),
    "resume": (
        "lrbs.sweeps.cli_sweep",
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
        "lrbs.sweeps.cli_status",
        "table of a run's trials, read from its files (no Ray)",
        "One line per trial: status, epochs done, last validation accuracy, failures, last error; "
        "damaged metric files named. Reads JSON, YAML and Arrow only; never starts Ray.",
        ["lrbs status runs/quickstart", "lrbs status s3://bucket/runs/fig3"],
    ),
    "export": (
        "lrbs.sweeps.cli_report",
        "write a run's epoch and trial tables as Parquet or CSV",
        "Write epochs.<ext> (one row per trial and epoch, deduplicated as the report reads them) and "
        "trials.<ext> (one row per trial) for pandas, polars or a spreadsheet. Never overwrites.",
        ["lrbs export runs/quickstart", "lrbs export runs/quickstart --format csv --out /tmp/qs"],
    ),
}


class _Version(argparse.Action):
    """``--version``: the code version of the metric rows (asks git only when used)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"lrbs {code_version()}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command`` of that one only (the others, and all of
    them for a ``command`` that is none, get their help line, not their arguments: their modules
    are not imported)."""
    parser = argparse.ArgumentParser(
        prog="lrbs",
        description="Ray Tune sweeps of SGD's learning-rate to batch-size ratio (eta/S): run, resume, report.",
        epilog="start with: lrbs validate sweeps/quickstart.yaml && lrbs run sweeps/quickstart.yaml",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the code version (as recorded in every metric row) and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, short, description, examples) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=short,
            description=description,
            epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command in (None, name):
            getattr(importlib.import_module(module), f"add_{name}")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    own = argv is None  # the process's own command line (the `lrbs` script, python -m lrbs)
    argv = sys.argv[1:] if argv is None else argv
    # the command is the first word that is not an option (the top level takes no option values)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else "").parse_args(argv)
    try:
        code = int(args.func(args))
    except (LrbsError, UnsafePathError) as exc:  # UnsafePathError: a write refused (a link out of RUN_DIR)
        print(f"lrbs: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    if own and getattr(args, "exit_now", False):
        # The process's own command, which has closed everything it wrote and stopped Ray
        # (``exit_now``, set by the command): end the process without the interpreter's teardown
        # of torch, Ray, SciPy and pandas (1-3 s of module finalization after the last line).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
