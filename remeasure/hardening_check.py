"""Re-measure the bad-input figures (docs/resilience.md, "Hardening against bad and
hostile input"), without starting Ray.

    PYTHONPATH=$PWD .venv/bin/python -m remeasure.hardening_check     # from the repository root

Every check runs the real command line (``python -m lrbs.sweeps.cli ...``) in a subprocess, with
cwd at the repository root, ``PYTHONPATH`` set to it and a 120 s timeout; at most two run at
once (a thread pool of 2 workers, each waiting on one subprocess). Three categories:

1. **Bad specs** (about 100, generated here into a temporary folder): wrong types, unknown keys in
   every section, missing and bad names, negative / zero / non-finite numbers, out-of-range
   seeds, duplicate YAML keys, an alias bomb, 100k-deep nesting, non-UTF-8 bytes, a > 1 MB
   spec, malformed YAML, size limits (a 10^6-point grid, ``width: 100000``, ``depth: 100000``,
   ``num: 10^9``, synthetic ``n_train: 10^10``), bad resources, unknown or broken model and
   data-set names, bad schedule / curvature / rescale / beta / variants / limits /
   resilience values. ``lrbs validate FILE`` is HANDLED when it exits 2 within 30 s with
   exactly one stderr line, starting ``lrbs: error:`` and at most 500 characters.
2. **Damaged metric files and trial records**: a one-trial run directory written through
   ``ArrowMetricsSink`` and ``write_record`` (as ``tests/sweeps/test_resilience.py``'s
   ``_finished_run_dir``), then copies damaged one way each. ``lrbs status RUN`` and
   ``lrbs report RUN --format md`` are HANDLED when both exit 0 or 2 without a traceback and the
   damage is named where it is one (status output, and report.md or stderr); a file cut off
   mid-record must read as "writer killed" in the report.
3. **Read-only commands on things that are not run directories**: ``status``, ``report``,
   ``resume`` and ``interpolate RUN A B`` on a missing path, a file, an empty folder, a folder
   with only ``metrics/`` and a run directory without ``spec.yaml``. HANDLED: exit 2 with one
   stderr line. ``resume`` is only ever run where it cannot start Ray (no spec.yaml, or a run
   whose trials all finished: checked in this process first).

Rows marked "control" are valid inputs that must be accepted (the valid base spec, an
undamaged run directory, status and report of a run directory without its spec, resume of a
finished run); they guard the harness against judging everything "handled" and are not
counted in the handled figures. Prints a markdown summary and writes it to
``benchmarks/results/hardening_check.md``. Nothing is asserted. About 4 minutes on 2 cores.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "hardening_check.md"
TIMEOUT_S = 120  # a command still running then is killed (and NOT HANDLED)
HANDLED_WITHIN_S = 30  # a refusal must come this fast
MAX_ERROR_CHARS = 500  # the one stderr line, at most
WORKERS = 2
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # 1 thread: two runs share 2 cores

HANDLED, NOT_HANDLED, OK, FAIL = "HANDLED", "NOT HANDLED", "ok (control)", "FAIL (control)"


# ---------------------------------------------------------------------------------------------
# Running commands and judging them


@dataclass
class Run:
    args: list[str]
    rc: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    wall_s: float

    @property
    def last_err(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def lrbs(args: list[str]) -> Run:
    """``lrbs ARGS`` in a subprocess at the repository root."""
    t = time.monotonic()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "lrbs", *args], cwd=ROOT, env=ENV, capture_output=True, timeout=TIMEOUT_S
        )
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, exc.stdout or b"", exc.stderr or b""
    return Run(args, rc, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t)


Judge = Callable[[list[Run]], "str | None"]  # None: as expected; else why not


@dataclass
class Case:
    category: str
    name: str
    commands: list[list[str]]
    judge: Judge
    control: bool = False  # a valid input that must be accepted (not counted as bad input)
    describe: Callable[[list[Run]], str] | None = None  # what to show (default: stderr's last line)
    runs: list[Run] = field(default_factory=list)
    verdict: str = ""
    reason: str = ""

    def execute(self) -> Case:
        self.runs = [lrbs(c) for c in self.commands]
        self.reason = self.judge(self.runs) or ""
        if self.control:
            self.verdict = FAIL if self.reason else OK
        else:
            self.verdict = NOT_HANDLED if self.reason else HANDLED
        return self

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.runs)

    @property
    def detail(self) -> str:
        """``describe``'s text, or the last stderr line of the last command that wrote one (else
        its first stdout line)."""
        if self.describe is not None and self.runs:
            return self.describe(self.runs)
        for r in reversed(self.runs):
            if r.last_err:
                return r.last_err
        first = (self.runs[-1].stdout.strip().splitlines() or [""])[0] if self.runs else ""
        return f"(stdout) {first}" if first else ""


def refused_one_line(run: Run) -> str | None:
    """Bad input handled: exit 2 within HANDLED_WITHIN_S, one stderr line 'lrbs: error: ...'."""
    if run.rc is None:
        return f"killed after {TIMEOUT_S} s"
    if "Traceback (most recent call last)" in run.stderr:
        return f"traceback, exit {run.rc}"
    if run.rc != 2:
        return "accepted (exit 0)" if run.rc == 0 else f"exit {run.rc}"
    lines = run.stderr.strip().splitlines()
    if len(lines) != 1:
        return f"{len(lines)} stderr lines"
    if not lines[0].startswith("lrbs: error:"):
        return "stderr line does not start with 'lrbs: error:'"
    if len(lines[0]) > MAX_ERROR_CHARS:
        return f"error line of {len(lines[0]):,} characters"
    if run.wall_s > HANDLED_WITHIN_S:
        return f"took {run.wall_s:.0f} s"
    return None


def refused(runs: list[Run]) -> str | None:
    return refused_one_line(runs[0])


def no_crash(run: Run) -> str | None:
    if run.rc is None:
        return f"`{run.args[0]}` killed after {TIMEOUT_S} s"
    if "Traceback (most recent call last)" in run.stderr:
        return f"`{run.args[0]}`: traceback, exit {run.rc}"
    if run.rc not in (0, 2):
        return f"`{run.args[0]}`: exit {run.rc}"
    return None


def accepted(needle: str | None = None) -> Judge:
    """A control: exit 0, no traceback (and ``needle`` in stdout)."""

    def judge(runs: list[Run]) -> str | None:
        for r in runs:
            if r.rc != 0 or "Traceback" in r.stderr:
                return f"`{r.args[0]}` exit {r.rc}" + (" with a traceback" if "Traceback" in r.stderr else "")
            if needle and needle not in r.stdout:
                return f"`{r.args[0]}`: {needle!r} not in its output"
        return None

    return judge


# ---------------------------------------------------------------------------------------------
# 1. Bad specs

DROP = object()  # in ``spec(...)``: remove this key
PLUGIN = '''\
"""Model factories for remeasure/hardening_check.py: each is broken in its own way."""
import torch


def boom(input_shape, n_classes):
    raise RuntimeError("this factory fails on purpose")


def wrong_shape(input_shape, n_classes):
    return torch.nn.Linear(64, n_classes + 1)
'''


def base_spec() -> dict:
    """A valid spec (tests/conftest.py's ``tiny_spec``): 4 points of a small MLP on digits."""
    return {
        "name": "hc",
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "mlp", "options": {"depth": 3, "width": 32, "batch_norm": True}},
        "train": {"epochs": 3},
        "grid": {"lr": [0.05, 0.2], "batch_size": [32, 128], "seed": [0]},
        "resources": {"cpu": 1},
    }


def _merge(base: Any, extra: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(extra, dict)):
        return extra
    out = dict(base)
    for key, value in extra.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def spec(**changes) -> dict:
    """The base spec with ``changes`` merged in (nested mappings merged; DROP removes a key)."""
    return _merge(base_spec(), changes)


FAMILY = {"lr": DROP, "batch_size": DROP}  # rescale, beta and variants replace grid.lr and batch_size
RESCALE = {"lr0": 0.1, "batch_size0": 32, "batch_sizes": [32, 64]}
BETA = {"lr0": 0.1, "batch_size0": 32, "values": [0.5, 1.0, 2.0]}
VARIANT = {"label": "a", "lr": 0.1, "batch_size": 32}


def family(key: str, value: Any) -> dict:
    return spec(grid=FAMILY, **{key: value})


def alias_bomb() -> str:
    """The classic 'billion laughs' in YAML: 9 levels of 9 aliases (~500 bytes, 9^9 values)."""
    lines = ["name: bomb", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def bad_specs() -> list[tuple[str, Any]]:
    """(case, content): a dict (dumped as YAML), or the file's exact text or bytes."""
    dump = lambda data: yaml.safe_dump(data, sort_keys=False)  # noqa: E731
    text = dump(base_spec())
    return [
        # Wrong types
        ("type: name is a number", spec(name=123)),
        ("type: train.epochs is a string", spec(train={"epochs": "ten"})),
        ("type: grid.lr is a string, not a list", spec(grid={"lr": "0.1"})),
        ("type: grid.batch_size holds a float", spec(grid={"batch_size": [32.5]})),
        ("type: resources is a list", spec(resources=[1, 2])),
        ("type: model.options is a list", spec(model={"options": [1, 2]})),
        ("type: the top level is a list", [base_spec()]),
        ("type: an empty file", ""),
        # Unknown keys, at the top level and in every section
        ("unknown key: top level (epochs)", spec(epochs=3)),
        *[
            (f"unknown key: {section}", spec(**{section: {"bogus": 1}}))
            for section in ("dataset", "model", "train", "grid", "resources", "resilience", "limits", "curvature")
        ],
        ("unknown key: schedule", spec(schedule={"kind": "constant", "bogus": 1})),
        ("unknown key: rescale", family("rescale", {**RESCALE, "bogus": 1})),
        ("unknown key: beta", family("beta", {**BETA, "bogus": 1})),
        ("unknown key: variants[0]", family("variants", [{**VARIANT, "bogus": 1}])),
        ("unknown key: grid.lr range (step)", spec(grid={"lr": {"min": 0.01, "max": 0.1, "num": 3, "step": 2}})),
        ("unknown key: model.options (mlp)", spec(model={"options": {"bogus": 1}})),
        ("unknown key: dataset.options (digits)", spec(dataset={"options": {"bogus": 1}})),
        # Names
        ("name: missing", spec(name=DROP)),
        ("name: NUL byte", spec(name="a\x00b")),
        ("name: contains '/'", spec(name="a/b")),
        ("name: 300 characters", spec(name="x" * 300)),
        ("name: empty", spec(name="")),
        ("name: newline inside", spec(name="a\nb")),
        # Numbers: negative, zero, non-finite, out of range
        ("number: grid.lr negative", spec(grid={"lr": [-0.1]})),
        ("number: grid.lr .nan", spec(grid={"lr": [float("nan")]})),
        ("number: grid.lr .inf", spec(grid={"lr": [float("inf")]})),
        ("number: grid.batch_size zero", spec(grid={"batch_size": [0]})),
        ("number: grid.batch_size above n_train", spec(grid={"batch_size": [100_000]})),
        ("number: train.epochs zero", spec(train={"epochs": 0})),
        ("number: train.momentum 1.0", spec(train={"momentum": 1.0})),
        ("number: train.weight_decay negative", spec(train={"weight_decay": -1})),
        ("number: train.weight_decay .nan", spec(train={"weight_decay": float("nan")})),
        ("number: train.divergence_factor .nan", spec(train={"divergence_factor": float("nan")})),
        ("number: dataset.val_fraction 1.5", spec(dataset={"val_fraction": 1.5})),
        ("number: dataset.n_train above the data set", spec(dataset={"n_train": 100_000})),
        ("range: grid.batch_size max .inf", spec(grid={"batch_size": {"min": 16, "max": float("inf"), "num": 3}})),
        ("range: grid.batch_size min .nan", spec(grid={"batch_size": {"min": float("nan"), "max": 64, "num": 3}})),
        ("range: grid.lr min > max", spec(grid={"lr": {"min": 1.0, "max": 0.1, "num": 3}})),
        ("range: grid.lr num 0", spec(grid={"lr": {"min": 0.01, "max": 0.1, "num": 0}})),
        ("range: grid.lr num 10^9", spec(grid={"lr": {"min": 0.01, "max": 0.1, "num": 10**9}})),
        (
            "range: grid.lr num written 1e9 (a string in YAML 1.1)",
            text.replace("lr:\n  - 0.05\n  - 0.2", "lr: {min: 0.01, max: 0.1, num: 1e9}"),
        ),
        ("range: log scale with min 0", spec(grid={"lr": {"min": 0, "max": 0.1, "num": 3}})),
        ("seed: 2**63", spec(grid={"seed": [2**63]})),
        ("seed: 2**70", spec(grid={"seed": [2**70]})),
        ("seed: negative", spec(grid={"seed": [-1]})),
        # YAML itself
        ("yaml: duplicate top-level key", text + "name: again\n"),
        ("yaml: duplicate nested key", text.replace("train:\n  epochs: 3", "train:\n  epochs: 3\n  epochs: 4")),
        ("yaml: alias bomb", alias_bomb()),
        ("yaml: 100k-deep list nesting", "name: deep\ndescription: " + "[" * 100_000 + "]" * 100_000 + "\n"),
        (
            "yaml: 100k-deep mapping nesting",
            "name: deep\ndescription: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n",
        ),
        ("yaml: non-UTF-8 bytes", text.encode().replace(b"name: hc", b"name: h\xe9c\xff")),
        ("yaml: spec over 1 MB", text + "description: " + "x" * 1_100_000 + "\n"),
        ("yaml: unclosed flow sequence", "name: [unclosed\n"),
        ("yaml: python object tag", "name: !!python/object/apply:os.system ['true']\n"),
        ("yaml: complex (list) key", "name: x\n? [a, b]\n: 1\n"),
        # Sizes and huge values in errors
        (
            "size: 10^6-point grid",
            spec(grid={"lr": {"min": 1e-3, "max": 1.0, "num": 1000}, "batch_size": [32], "seed": list(range(1000))}),
        ),
        ("size: mlp width 100000, depth 3", spec(model={"options": {"width": 100_000}})),
        ("size: mlp depth 100000", spec(model={"options": {"depth": 100_000}})),
        ("size: synthetic n_train 10^10", spec(dataset={"name": "synthetic", "n_train": 10**10})),
        ("size: 50,000 repeated lrs (a huge value in the error)", spec(grid={"lr": [0.1] * 50_000})),
        ("size: 900,000-character name", spec(name="n" * 900_000)),
        # Resources
        ("resources: cpu 0", spec(resources={"cpu": 0})),
        ("resources: cpu .nan", spec(resources={"cpu": float("nan")})),
        ("resources: gpu -1", spec(resources={"gpu": -1})),
        ("resources: gpu 1.5", spec(resources={"gpu": 1.5})),
        ("resources: gpu .nan", spec(resources={"gpu": float("nan")})),
        # Models and data sets
        ("model: unknown name", spec(model={"name": "transformer", "options": DROP})),
        ("dataset: unknown name", spec(dataset={"name": "imagenet"})),
        ("model: import path to a missing module", spec(model={"name": "nosuchpkg.models:factory", "options": DROP})),
        (
            "dataset: import path to a missing module",
            spec(dataset={"name": "nosuchpkg.data:make", "val_fraction": DROP}),
        ),
        ("model: factory raises", spec(model={"name": "hc_plugin:boom", "options": DROP})),
        ("model: factory returns wrong logits", spec(model={"name": "hc_plugin:wrong_shape", "options": DROP})),
        ("model: mlp depth 0", spec(model={"options": {"depth": 0}})),
        # Train
        ("train: pack 0", spec(train={"pack": 0})),
        ("train: replicas (old key)", spec(train={"replicas": 2})),
        # Schedules
        ("schedule: unknown kind", spec(schedule={"kind": "exponential"})),
        ("schedule: step without milestones or every", spec(schedule={"kind": "step"})),
        ("schedule: cycle_epochs 0", spec(schedule={"kind": "cyclic_lr", "low": 0.01, "high": 0.1, "cycle_epochs": 0})),
        ("schedule: factor .nan", spec(schedule={"kind": "step", "every": 1, "factor": float("nan")})),
        (
            "schedule: cyclic_batch high above n_train",
            spec(schedule={"kind": "cyclic_batch", "low": 32, "high": 100_000}),
        ),
        # Curvature
        ("curvature: every 0", spec(curvature={"every": 0})),
        ("curvature: unknown trace_method", spec(curvature={"trace_method": "exact"})),
        # Families: rescale, beta, variants
        ("rescale: unknown rule", family("rescale", {**RESCALE, "rules": ["cubic"]})),
        ("rescale: batch size above n_train", family("rescale", {**RESCALE, "batch_sizes": [100_000]})),
        ("beta: value 0", family("beta", {**BETA, "values": [0]})),
        ("beta: value .nan", family("beta", {**BETA, "values": [float("nan")]})),
        ("variants: repeated labels", family("variants", [VARIANT, VARIANT])),
        ("variants: lr 0", family("variants", [{**VARIANT, "lr": 0}])),
        # Limits and resilience
        ("limits: max_points 0", spec(limits={"max_points": 0})),
        ("limits: max_params -1", spec(limits={"max_params": -1})),
        ("limits: memory_gb .nan", spec(limits={"memory_gb": float("nan")})),
        ("limits: resource_wait_s -1", spec(limits={"resource_wait_s": -1})),
        ("limits: memory_gb below one trial's need", spec(limits={"memory_gb": 1e-6})),
        ("resilience: keep_checkpoints 0", spec(resilience={"keep_checkpoints": 0})),
        ("resilience: checkpoint_every_s 0", spec(resilience={"checkpoint_every_s": 0})),
        ("resilience: fail_at_epoch past the last epoch", spec(resilience={"fail_at_epoch": 99})),
    ]


def spec_cases(folder: Path) -> list[Case]:
    folder.mkdir(parents=True)
    (folder / "hc_plugin.py").write_text(PLUGIN)  # next to the specs: found as a plug-in module
    good = folder / "valid.yaml"
    good.write_text(yaml.safe_dump(base_spec(), sort_keys=False))
    cases = [Case("spec", "control: the valid base spec", [["validate", str(good)]], accepted(), control=True)]
    for i, (name, content) in enumerate(bad_specs()):
        path = folder / f"{i:03d}.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(yaml.safe_dump(content, sort_keys=False))
        cases.append(Case("spec", name, [["validate", str(path)]], refused))
    return cases


# ---------------------------------------------------------------------------------------------
# 2. Damaged metric files and trial records

RUN_NAME = "hc_run"
TRIAL = "t_1"


def build_run_dir(run_dir: Path) -> list[int]:
    """A finished one-trial run (3 epochs) as ``lrbs run`` leaves it: spec.yaml, one metric file
    written row by row through ArrowMetricsSink, a TERMINATED trial record. Returns the metric
    file's size after each row (record boundaries)."""
    from lrbs.rundir.records import TERMINATED, TrialRecord, write_record
    from lrbs.sweeps.grid import expand_points
    from lrbs.sweeps.metrics_sink import ArrowMetricsSink, row_from_result
    from lrbs.sweeps.spec_load import spec_from_dict

    data = spec(name=RUN_NAME, grid={"lr": [0.1], "batch_size": [32], "seed": [0]})
    (run_dir / "metrics").mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (point,) = expand_points(spec_from_dict(data))
    config = {"sweep": RUN_NAME, "point": point, "train": {"epochs": 3}}
    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=0)  # streams: the checks damage them
    sizes = []
    for epoch in (1, 2, 3):
        result = {
            "epoch": epoch,
            "lr": 0.1,
            "batch_size": 32,
            "ratio": 0.1 / 32,
            "seed": 0,
            "n_train": 100,
            "train_loss": 1.0,
            "train_acc": 0.5,
            "val_loss": 1.0,
            "val_acc": 0.5,
            "steps": epoch,
            "examples_seen": 32 * epoch,
            "epoch_s": 0.1,
            "wall_s": 0.1 * epoch,
            "status": "finished" if epoch == 3 else "running",
        }
        sink.write_row(row_from_result(result, config, TRIAL))
        sizes.append(metric_file(run_dir).stat().st_size)  # flushed per row
    sink.on_experiment_end([])  # closes the stream: end-of-stream marker
    write_record(run_dir, TrialRecord(TRIAL, point, status=TERMINATED))
    return sizes


def metric_file(run_dir: Path) -> Path:
    (path,) = (run_dir / "metrics").glob("*.arrow")
    return path


def _flip_string(data: bytes) -> bytes:
    """Invalid UTF-8 in the trial_id column of the last record (as tests/sweeps/test_resilience.py)."""
    pos = data.rfind(TRIAL.encode())
    return data[:pos] + b"\xff\xfe" + data[pos + 2 :]


def _flip_middle(data: bytes) -> bytes:
    """Eight bytes inverted at the middle of the file (wherever that falls)."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 8]) + data[mid + 8 :]


def _as_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def damage_cases(folder: Path) -> list[Case]:
    base = folder / "base" / RUN_NAME
    sizes = build_run_dir(base)
    cut = (sizes[1] + sizes[2]) // 2  # inside the third record
    record = f"{TRIAL}.json"
    # (case, how to damage the copy, what the report must say besides DAMAGED and the file name;
    # status must say DAMAGED and the file name: its error column is cut at 60 characters)
    metric_damages: list[tuple[str, Callable[[Path], None], str]] = [
        ("metric file: 0 bytes", lambda p: p.write_bytes(b""), "0 bytes"),
        (
            "metric file: header overwritten",
            lambda p: p.write_bytes(b"\xde\xad\xbe\xef" * 4 + p.read_bytes()[16:]),
            "header",
        ),
        ("metric file: not Arrow at all (text)", lambda p: p.write_text("this is not an arrow stream\n"), "header"),
        (
            "metric file: flipped bytes in a string column",
            lambda p: p.write_bytes(_flip_string(p.read_bytes())),
            "bad bytes",
        ),
        ("metric file: 8 bytes inverted mid-file", lambda p: p.write_bytes(_flip_middle(p.read_bytes())), ""),
        ("metric file: garbage appended after the end", lambda p: p.write_bytes(p.read_bytes() + os.urandom(64)), ""),
        ("metric file: a directory in its place", _as_directory, ""),
    ]
    cases = []

    def copy(name: str) -> Path:
        dest = folder / f"{len(cases):02d}" / RUN_NAME
        shutil.copytree(base, dest)
        return dest

    def commands(run: Path) -> list[list[str]]:
        return [["status", str(run)], ["report", str(run), "--format", "md"]]

    run = copy("control")
    cases.append(
        Case(
            "damage",
            "control: undamaged run directory",
            commands(run),
            judge_damage(run, status_says=None, report_says=None, clean=True),
            control=True,
            describe=describe_damage(run),
        )
    )
    for name, damage, what in metric_damages:
        run = copy(name)
        fname = metric_file(run).name
        damage(metric_file(run))
        cases.append(
            Case(
                "damage",
                name,
                commands(run),
                judge_damage(run, status_says=["DAMAGED", fname], report_says=["DAMAGED", fname, what]),
                describe=describe_damage(run),
            )
        )
    run = copy("cut")
    path = metric_file(run)
    path.write_bytes(path.read_bytes()[:cut])
    cases.append(
        Case(
            "damage",
            "metric file: cut off mid-record (writer killed)",
            commands(run),
            judge_damage(run, status_says=None, report_says=["writer killed"]),
            describe=describe_damage(run),
        )
    )
    for name, content in [
        ("trial record: truncated JSON", None),
        ("trial record: point of the wrong type", b'{"trial_id": "t_1", "point": "x"}'),
        ("trial record: not UTF-8", b'\xff\xfe{"trial_id": "t_1"}'),
    ]:
        run = copy(name)
        rec = run / "trials" / record
        rec.write_bytes(rec.read_bytes()[: len(rec.read_bytes()) // 2] if content is None else content)
        cases.append(
            Case(
                "damage",
                name,
                commands(run),
                judge_damage(run, status_says=[f"trial record {record}"], report_says=None),
                describe=describe_damage(run),
            )
        )
    return cases


def describe_damage(run_dir: Path) -> Callable[[list[Run]], str]:
    """Status's line for the trial (or its stderr) and the report's notes on the files read."""

    def describe(runs: list[Run]) -> str:
        status, report = runs
        rows = [line for line in status.stdout.splitlines() if line.startswith(TRIAL)]
        said = " / ".join(" ".join(r.split()) for r in rows) or status.last_err
        report_md = run_dir / "report.md"
        notes = [
            line[2:]
            for line in (report_md.read_text(errors="replace").splitlines() if report_md.is_file() else [])
            if line.startswith("- ") and ("DAMAGED" in line or "writer killed" in line)
        ]
        return f"status: {said}; report: {' / '.join(notes) or report.last_err or 'no note'}"

    return describe


def judge_damage(
    run_dir: Path, status_says: list[str] | None, report_says: list[str] | None, clean: bool = False
) -> Judge:
    """Both commands exit 0 or 2 without a traceback; the damage is named (``*_says``: every
    string must appear in status's output, or in report.md / report's stderr); ``clean``: an
    undamaged run must not be called damaged."""

    def judge(runs: list[Run]) -> str | None:
        status, report = runs
        for r in runs:
            problem = no_crash(r)
            if problem:
                return problem
        report_md = run_dir / "report.md"
        report_text = (report_md.read_text(errors="replace") if report_md.is_file() else "") + report.stderr
        status_text = status.stdout + status.stderr
        if clean:
            if status.rc or report.rc or "DAMAGED" in status_text + report_text:
                return "undamaged run reported damaged or refused"
            return None
        missing = []
        if status_says and not all(s in status_text for s in status_says if s):
            missing.append("status does not name it")
        if report_says and not all(s in report_text for s in report_says if s):
            missing.append("report does not name it")
        return "; ".join(missing) or None

    return judge


# ---------------------------------------------------------------------------------------------
# 3. Read-only commands on things that are not run directories


def resume_would_not_start_ray(run_dir: Path) -> bool:
    """``lrbs resume`` refuses before Ray (no spec.yaml or metrics/), or has nothing left to train."""
    if not (run_dir / "spec.yaml").is_file() or not (run_dir / "metrics").is_dir():
        return True
    from lrbs.sweeps.resume import plan_resume
    from lrbs.sweeps.spec_load import load_spec

    _, _, counts, _ = plan_resume(load_spec(run_dir / "spec.yaml"), run_dir, restart_errored=False)
    return counts["continued"] + counts["restarted"] + counts["new"] == 0


def read_only_cases(folder: Path, finished: Path) -> list[Case]:
    (folder / "a_file.txt").parent.mkdir(parents=True)
    (folder / "a_file.txt").write_text("not a run directory\n")
    (folder / "empty").mkdir()
    (folder / "metrics_only" / "metrics").mkdir(parents=True)
    no_spec = folder / "no_spec" / RUN_NAME
    shutil.copytree(finished, no_spec)
    (no_spec / "spec.yaml").unlink()
    targets = [
        ("missing path", folder / "missing"),
        ("a file", folder / "a_file.txt"),
        ("empty folder", folder / "empty"),
        ("folder with only metrics/", folder / "metrics_only"),
        ("run dir without spec.yaml", no_spec),
    ]
    cases = []
    for label, target in targets:
        for command in (
            ["status", str(target)],
            ["report", str(target), "--format", "md"],
            ["resume", str(target)],
            ["interpolate", str(target), "t_1", "t_2"],
        ):
            name = f"{command[0]}: {label}"
            if command[0] == "resume" and not resume_would_not_start_ray(target):
                raise RuntimeError(f"{name} would start Ray: not run")
            if label == "run dir without spec.yaml" and command[0] in ("status", "report"):
                # Its rows are all there: status and report need no spec, so this is valid input.
                cases.append(Case("read-only", f"control: {name}", [command], accepted(), control=True))
            else:
                cases.append(Case("read-only", name, [command], refused))
    done = folder / "finished" / RUN_NAME
    shutil.copytree(finished, done)
    if not resume_would_not_start_ray(done):
        raise RuntimeError("the finished run directory has trials left: resume would start Ray")
    cases.append(
        Case(
            "read-only",
            "control: resume of a run whose trials all finished",
            [["resume", str(done)]],
            accepted("trials done; 0 continue"),
            control=True,
        )
    )
    return cases


# ---------------------------------------------------------------------------------------------
# Summary


CATEGORIES = {  # category -> (title, the baseline figure measured on 6c0093f)
    "spec": ("bad specs (`lrbs validate`)", "58 of 75 handled"),
    "damage": ("damaged metric files / trial records (`status`, `report`)", "3 of 5 corrupted metric files handled"),
    "read-only": ("read-only commands on non-run-directories", "15 tried (failures not counted separately)"),
}


def _cell(text: str, limit: int = 150) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def summarize(cases: list[Case], total_s: float, tmp: Path) -> str:
    """The markdown summary (``tmp``, the temporary folder, is written $TMP)."""
    lines = [
        f"# hardening check: bad-input figures re-measured ({total_s:.0f} s, "
        f"{WORKERS} workers, Python {platform.python_version()}, {os.cpu_count()} CPUs)",
        "",
        "`PYTHONPATH=$PWD .venv/bin/python -m remeasure.hardening_check`: every command a subprocess, no Ray "
        "started. Handled: see the module docstring. Controls are valid inputs that must be accepted; "
        "they are not counted.",
        "",
        "| category | handled now | baseline (6c0093f) | controls ok |",
        "| --- | --- | --- | --- |",
    ]
    for key, (title, before) in CATEGORIES.items():
        bad = [c for c in cases if c.category == key and not c.control]
        ctrl = [c for c in cases if c.category == key and c.control]
        n_ok = sum(c.verdict == HANDLED for c in bad)
        lines.append(
            f"| {title} | {n_ok} of {len(bad)} | {before} | {sum(c.verdict == OK for c in ctrl)} of {len(ctrl)} |"
        )
    for key, (title, _) in CATEGORIES.items():
        lines += [
            "",
            f"## {title}",
            "",
            "| case | verdict | exit | s | stderr's last line (or why not handled) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for c in (c for c in cases if c.category == key):
            rcs = ",".join("killed" if r.rc is None else str(r.rc) for r in c.runs)
            why = f"{c.reason}: {c.detail}" if c.reason else c.detail
            why = why.replace(str(tmp), "$TMP")
            lines.append(
                f"| {_cell(c.name, 70)} | {c.verdict} | {rcs} | {c.wall_s:.1f} | "
                f"{_cell(why, 260 if key == 'damage' else 160)} |"
            )
    failed = [c for c in cases if c.verdict in (NOT_HANDLED, FAIL)]
    lines += ["", "## Not handled", ""]
    lines += [
        f"- [{c.category}] {c.name}: {c.reason}; {'last stderr line' if c.detail.startswith('lrbs:') else 'output'}: "
        f"`{_cell(c.detail.replace(str(tmp), '$TMP'), 300)}`"
        for c in failed
    ] or ["none"]
    return "\n".join(lines) + "\n"


def main() -> int:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lrbs-hardening-") as tmp:
        tmp = Path(tmp)
        cases = spec_cases(tmp / "specs") + damage_cases(tmp / "damage")
        cases += read_only_cases(tmp / "read_only", tmp / "damage" / "base" / RUN_NAME)
        print(f"{len(cases)} cases, {WORKERS} at a time ...", flush=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
            futures = [pool.submit(c.execute) for c in cases]
            for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                c = future.result()
                if c.verdict != HANDLED and c.verdict != OK or n % 20 == 0:
                    print(f"  [{n}/{len(cases)}] {c.category}: {c.name}: {c.verdict} {c.reason}", flush=True)
        text = summarize(cases, time.monotonic() - t0, tmp)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(f"written: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
