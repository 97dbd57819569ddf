"""A real local Ray sweep end to end: Arrow rows, trial table, report files, CLI."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys

import pytest

from lrbs.rundir.tables import load_metrics, load_trials
from lrbs.sweeps.cli import main
from tests.conftest import ROOT, tiny_spec, write_yaml


@pytest.fixture(scope="module")
def tiny_run(ray_local, tmp_path_factory):
    """4 trials x 3 epochs, run through the CLI in this process (so it reuses the fixture's Ray)."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = write_yaml(tmp / "tiny.yaml", tiny_spec("tiny"))
    assert main(["run", str(spec), "--storage", str(tmp / "runs")]) == 0
    return tmp / "runs" / "tiny"


def test_provenance_is_recorded_and_reported(tiny_run):
    """provenance.json at run start; the report's provenance section reads it with the time used."""
    import json

    info = json.loads((tiny_run / "provenance.json").read_text())
    assert {"code_version", "started_at", "python", "platform", "cpu", "driver_device", "packages", "estimate"} <= set(
        info
    )
    assert {"torch", "ray", "pyarrow"} <= set(info["packages"]) and info["estimate"]["device"] == "cpu"
    # The estimate keeps the step costs the pre-flight measured here, and the planned wall time.
    assert {"1,32", "1,128"} <= set(info["estimate"]["costs"]["step_s"]) and info["estimate"]["slots"] >= 1
    assert 0 < info["estimate"]["wall_hours"] <= info["estimate"]["device_hours"]
    sec = json.loads((tiny_run / "fits.json").read_text())["sections"]["provenance"]
    assert sec["status"] == "ok" and sec["data"]["device_hours_estimated"] == pytest.approx(
        info["estimate"]["device_hours"]
    )
    assert 0 < sec["data"]["device_hours_used"] < 0.1 and sec["data"]["packages"]["torch"] == info["packages"]["torch"]


def test_metric_rows_exactly_one_per_trial_epoch(tiny_run):
    metrics = load_metrics(tiny_run)
    assert metrics.num_rows == 4 * 3
    keys = list(zip(metrics.column("trial_id").to_pylist(), metrics.column("epoch").to_pylist()))
    assert len(set(keys)) == 12
    assert sorted({e for _, e in keys}) == [1, 2, 3]
    for col in (
        "sweep",
        "trial_id",
        "epoch",
        "lr",
        "batch_size",
        "ratio",
        "seed",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "status",
        "code_version",
        "examples_seen",
        "wall_s",
    ):
        assert col in metrics.column_names
        assert metrics.column(col).null_count == 0, col
    assert set(metrics.column("sweep").to_pylist()) == {"tiny"}
    points = {(r["lr"], r["batch_size"]) for r in metrics.select(["lr", "batch_size"]).to_pylist()}
    assert points == {(0.05, 32), (0.05, 128), (0.2, 32), (0.2, 128)}
    for r in metrics.to_pylist():
        assert r["ratio"] == pytest.approx(r["lr"] / r["batch_size"])


def test_trial_table(tiny_run):
    trials = load_trials(tiny_run)
    assert trials.num_rows == 4
    rows = trials.to_pylist()
    for r in rows:
        assert r["status"] == "finished" and r["epochs_done"] == 3
        assert r["max_val_acc"] >= r["final_val_acc"]
        assert r["cfg.model.options.width"] == 32 and r["cfg.dataset.name"] == "digits"
        assert r["cfg.train.epochs"] == 3
    # The spec copy in the run directory is the validated spec.
    assert (tiny_run / "spec.yaml").read_text().startswith("name: tiny")


def test_report_files(tiny_run):
    assert main(["report", str(tiny_run)]) == 0
    html = (tiny_run / "report.html").read_text()
    # Works offline: plotly.js is inside the file, nothing is fetched from elsewhere.
    assert not re.search(r"<script[^>]*\ssrc=", html) and len(html) > 1_000_000
    assert html.count("Plotly.newPlot") >= 4
    fits = json.loads((tiny_run / "fits.json").read_text())
    assert fits["summary"]["trials"] == 4 and fits["summary"]["epoch_rows"] == 12
    fit = fits["fits"]["final_train_loss"]
    assert fit["n"] == 4 and fit["x"] == "log10(lr/batch_size)"
    for key in ("slope", "slope_ci", "r2", "spearman_rho", "spearman_p"):
        assert key in fit


def test_existing_run_dir_is_never_overwritten(tiny_run, capsys):
    before = sorted(p.name for p in (tiny_run / "metrics").iterdir())
    spec = write_yaml(tiny_run.parent.parent / "again.yaml", tiny_spec("tiny"))
    assert main(["run", str(spec), "--storage", str(tiny_run.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lrbs: error: run directory") and "already exists" in err and "\n" not in err
    assert sorted(p.name for p in (tiny_run / "metrics").iterdir()) == before


def _lrbs(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lrbs", *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=120
    )


def test_cli_validate_prints_grid():
    out = _lrbs("validate", str(ROOT / "sweeps" / "quickstart.yaml"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("quickstart: 12 trials") and "in 2 packs" in lines[0]
    assert len(lines) == 2 + 12 + 3
    assert [line.split()[1] for line in lines[2:14]] == ["0"] * 6 + ["1"] * 6  # the pack of each point
    # The model, built once on the driver: 40*256 + 2*256*256 + 3*2*256 (BN) + 256*10 + 10 parameters.
    assert lines[-3].startswith("model: mlp {depth: 4, width: 256, batch_norm: True}: 145,418 parameters")
    assert "data: mnist1d {n_samples: 5000, seed: 42}: input (40,), 10 classes" in lines[-3]
    assert lines[-2].startswith("pack plan: 2 Tune trials for 12 points (packs x members: 2 x 6)")
    assert lines[-1].startswith("estimated cost:") and "CPU-hours" in lines[-1]


@pytest.mark.parametrize(
    "content, needle",
    [
        ("name: x\ngrid: {lr: [0.1\n", "malformed YAML"),
        ("name: x\nfoo: 1\n", "foo: unknown key"),
        ("name: x\ngrid: {lr: [-1], batch_size: [8], seed: [0]}\n", "grid.lr[0]: must be > 0"),
        ("name: x\ngrid: {lr: [0.1], batch_size: [0], seed: [0]}\n", "grid.batch_size[0]: must be >= 1"),
        ("name: x\ngrid: {lr: [0.1], batch_size: [100000], seed: [0]}\n", "larger than the training set"),
        ("name: x\ndataset: {name: mnist2}\n", "dataset.name: unknown data set"),
        ("name: x\nmodel: {name: gpt}\n", "model.name: unknown model"),
    ],
)
def test_cli_bad_spec_exit_2_one_line_nothing_launched(tmp_path, content, needle, capsys):
    # In-process (the CLI's exit code and streams; the other tests here run it as a process)
    spec = tmp_path / "bad.yaml"
    spec.write_text(content)
    assert main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    err = out.err.strip()
    assert "\n" not in err and needle in err and "bad.yaml" in err, err
    assert not (tmp_path / "runs").exists()  # nothing launched, nothing written


def test_cli_model_refused_by_the_preflight_is_one_line(tmp_path):
    """A model the pre-flight refuses (here: over limits.max_params) is one line naming the spec
    file and the field, exit 2, nothing written, Ray never started (no Ray line on the terminal)."""
    spec = write_yaml(tmp_path / "m.yaml", tiny_spec("m", limits={"max_params": 10}))
    out = _lrbs("run", str(spec), "--storage", str(tmp_path / "runs"))
    assert out.returncode == 2 and out.stdout == ""
    err = out.stderr.strip()
    assert "\n" not in err and err.startswith(f"lrbs: error: {spec}: ") and "limits.max_params" in err, err
    assert not (tmp_path / "runs").exists()


def test_cli_storage_that_is_a_file(tmp_path):
    spec = write_yaml(tmp_path / "s.yaml", tiny_spec("s"))
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    out = _lrbs("run", str(spec), "--storage", str(blocker))
    assert out.returncode == 2
    assert out.stderr.strip() == f"lrbs: error: --storage: {blocker} is a file, not a directory"
    assert blocker.read_text() == "keep me"


def test_cli_report_on_a_non_run_dir(tmp_path):
    out = _lrbs("report", str(tmp_path))
    assert out.returncode == 2 and "not an lrbs run directory" in out.stderr


def test_interpolate_between_two_trials(tiny_run, capsys):
    import torch
    import torch.nn.functional as F

    from lrbs.rundir.tables import read_stream_file
    from lrbs.sweeps.interpolate import member_checkpoint
    from lrbs.trainables.config import DatasetConfig, ModelConfig
    from lrbs.trainables.data import load_dataset
    from lrbs.trainables.models import build_model

    a, b = load_trials(tiny_run).column("trial_id").to_pylist()[:2]
    assert main(["interpolate", str(tiny_run), a, b, "--num", "4"]) == 0
    table, dropped = read_stream_file(tiny_run / "interpolation" / f"{a}__{b}.arrow")
    assert dropped == 0 and table.column("alpha").to_pylist() == [-1.0, 0.0, 1.0, 2.0]
    assert (tiny_run / "interpolation" / f"{a}__{b}.html").stat().st_size > 1_000_000
    # alpha = 0 is trial A's final checkpoint, evaluated independently here.
    data = load_dataset(DatasetConfig(name="digits", val_fraction=0.2))
    model = build_model(ModelConfig(name="mlp", options=dict(depth=3, width=32)), data.input_shape, data.n_classes)
    model.load_state_dict(member_checkpoint(tiny_run, a)[1])  # a pack member's weights, by its trial id
    model.eval()
    with torch.no_grad():
        logits = model(data.x_train)
    loss = F.cross_entropy(logits, data.y_train).item()
    acc = (logits.argmax(1) == data.y_train).double().mean().item()
    # By default batch norm is re-estimated at alpha = 0 too (on a fixed training subset): finite,
    # and near the trial's own loss; `--batch-norm interpolate` (interpolated statistics) reproduces it exactly.
    row = table.to_pylist()[1]
    assert all(math.isfinite(r["train_loss"]) for r in table.to_pylist())
    assert row["train_loss"] == pytest.approx(loss, rel=0.5) and row["train_acc"] == pytest.approx(acc, abs=0.05)
    assert main(["interpolate", str(tiny_run), a, b, "--num", "4", "--batch-norm", "interpolate"]) == 0
    old, _ = read_stream_file(tiny_run / "interpolation" / f"{a}__{b}__bn-interpolated.arrow")
    row = old.to_pylist()[1]
    assert row["train_loss"] == pytest.approx(loss, rel=1e-5) and row["train_acc"] == pytest.approx(acc)
    (tiny_run / "interpolation" / f"{a}__{b}__bn-interpolated.arrow").unlink()  # the report reads the rest
    (tiny_run / "interpolation" / f"{a}__{b}__bn-interpolated.html").unlink()
    capsys.readouterr()
    assert main(["interpolate", str(tiny_run), a, "nope"]) == 2
    assert "no trial 'nope'" in capsys.readouterr().err


def test_cli_bad_address_exit_2_nothing_written(tmp_path):
    spec = write_yaml(tmp_path / "s.yaml", tiny_spec("s"))
    out = _lrbs("run", str(spec), "--storage", str(tmp_path / "runs"), "--address", "nohost:abc")
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("lrbs: error: --address: cannot connect to a Ray cluster at nohost:abc")
    )
    assert not (tmp_path / "runs").exists()  # the run directory is made only once Ray is reached


def test_cli_missing_torchvision_data_exit_2_before_launch(tmp_path):
    spec = write_yaml(
        tmp_path / "f.yaml",
        tiny_spec("f", dataset={"name": "fashion_mnist", "data_dir": str(tmp_path / "nodata"), "download": False}),
    )
    out = _lrbs("run", str(spec), "--storage", str(tmp_path / "runs"))
    assert out.returncode == 2
    err = out.stderr.strip()
    assert (
        "\n" not in err
        and "dataset fashion_mnist not found" in err
        and "python -m lrbs.trainables.data download" in err
    )
    assert not (tmp_path / "runs").exists()


def test_storage_under_a_file_or_read_only_fails_before_ray(tmp_path):
    """Refused with one line before Ray starts (the embedded Ray is never launched)."""
    import os

    spec = write_yaml(tmp_path / "s.yaml", tiny_spec("s"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = _lrbs("run", str(spec), "--storage", str(afile / "sub" / "runs"))
    assert out.returncode == 2 and "lies under" in out.stderr and out.stderr.count("\n") == 1
    assert "Started a local Ray instance" not in out.stderr + out.stdout
    if os.getuid() != 0:  # root writes anywhere: the read-only case only means something for users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = _lrbs("run", str(spec), "--storage", str(ro / "runs"))
        assert out.returncode == 2 and "cannot write under" in out.stderr


def test_damaged_checkpoint_and_unwritable_report_are_one_line(tiny_run, tmp_path, capsys):
    """A corrupt final checkpoint in interpolate and a report that cannot be
    written are one line, exit 2, nothing else touched."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "interpolation", ignore_errors=True)  # curves other tests wrote there
    a, b = load_trials(run).column("trial_id").to_pylist()[:2]
    from lrbs.rundir.points import split_member_id
    from lrbs.sweeps.interpolate import last_checkpoint, trial_dir

    state = last_checkpoint(trial_dir(run, split_member_id(a)[0])) / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated: a full disk or a killed copy
    capsys.readouterr()
    assert main(["interpolate", str(run), a, b, "--num", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not load" in err and not (run / "interpolation" / f"{a}__{b}.arrow").exists()
    (run / "report.html").unlink()
    (run / "report.html").mkdir()  # a path the report cannot be written to (root ignores chmod)
    assert main(["report", str(run), "--format", "html"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write the report" in err


class _Terminal(io.StringIO):
    """What a terminal receives: the text written, and isatty() true as a terminal's stream says."""

    def isatty(self) -> bool:
        return True


def _progress_of_a_real_pack(out) -> None:
    """ProgressPrinter driven as Tune drives it, for a real pack of two points trained by
    ``run_pack`` (3 epochs): trial start, one result per epoch, completion, experiment end."""
    import torch
    from ray.tune.experiment import Trial

    from lrbs.rundir.points import to_config
    from lrbs.sweeps.grid import expand_points
    from lrbs.sweeps.param_space import to_param_space
    from lrbs.sweeps.progress import ProgressPrinter
    from lrbs.sweeps.spec_load import spec_from_dict
    from lrbs.trainables.train_loop import TrialPoint, run_pack

    torch.set_num_threads(1)
    spec = spec_from_dict(tiny_spec("p", grid={"lr": [0.05, 0.2], "batch_size": [32], "seed": [0]}))
    points = expand_points(spec)
    config = {**{k: v for k, v in to_param_space(spec, "test").items() if k != "point"}, "point": to_config(points)}
    trial = Trial("train_trial", config=config, trial_id="5a7e5_00000", stub=True)
    printer = ProgressPrinter(len(points), len(points) * spec.train.epochs, 0.01, out=out, min_interval_s=0)
    printer.on_trial_start(0, [trial], trial)
    run_pack(
        [TrialPoint.from_dict(p) for p in points],
        spec.dataset,
        spec.model,
        spec.train,
        lambda rows, state: printer.on_trial_result(
            0, [trial], trial, {"pack_rows": {str(r["member"]): r for r in rows}}
        ),
    )
    printer.on_trial_complete(0, [trial], trial)
    printer.on_experiment_end([trial])


def test_progress_line_is_redrawn_in_place_on_a_terminal(monkeypatch):
    """On a terminal every update returns to the start of the line (\\r) and clears it, nothing
    scrolls until the end, and the sweep's end leaves the last line with a newline; into a file
    or pipe each update is a plain line, as before."""
    from lrbs.sweeps.progress import CLEAR_TO_EOL

    monkeypatch.setenv("COLUMNS", "1000")  # a terminal wide enough for the line: no wrapped rows to go up over
    tty = _Terminal()
    _progress_of_a_real_pack(tty)
    text = tty.getvalue()
    draws = text.split("\r")[1:]
    assert text.startswith("\r") and len(draws) >= 3 + 1  # trial start, an update per epoch, completion
    assert all(d.startswith(CLEAR_TO_EOL + "[lrbs] ") for d in draws)
    assert text.count("\n") == 1 and text.endswith("\n")  # one newline, at the end
    assert draws[-1].startswith(CLEAR_TO_EOL + "[lrbs] 2/2 points done") and "epochs 6/6" in draws[-1]
    plain = io.StringIO()
    _progress_of_a_real_pack(plain)
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and "\x1b" not in plain.getvalue()
    assert len(lines) == len(draws) and all(line.startswith("[lrbs] ") for line in lines)
    assert [d.removeprefix(CLEAR_TO_EOL).split(" | ")[0] for d in draws] == [line.split(" | ")[0] for line in lines]


def test_eta_before_the_first_epoch_comes_from_the_planned_training_time():
    """The progress line and ``lrbs status`` have an ETA from the start: the pre-flight's planned
    training time less the time elapsed, until a measured epoch rate takes over."""
    from lrbs.sweeps.summary import eta_seconds, planned_seconds

    assert eta_seconds(100, 0, 0.0) is None  # no plan (a resumed sweep) and no rate yet
    assert eta_seconds(100, 0, 0.0, planned_s=30.0, elapsed_s=4.0) == 26.0
    assert eta_seconds(100, 0, 0.0, planned_s=30.0, elapsed_s=40.0) is None  # past the plan: unknown
    assert eta_seconds(100, 50, 10.0, planned_s=30.0, elapsed_s=5.0) == 20.0  # the measured rate wins
    assert eta_seconds(0, 50, 10.0, planned_s=30.0) == 0.0
    # The plan counts only where the pre-flight measured the step costs (CPU trials here).
    measured = {"estimate": {"wall_hours": 0.01, "costs": {"step_s": {"1,32": 0.001}}}}
    assert planned_seconds(measured) == pytest.approx(36.0)
    assert planned_seconds({"estimate": {"wall_hours": 0.01, "costs": {"step_floor_s": 1e-3}}}) is None
    assert planned_seconds({**measured, "beta_search": True}) is None and planned_seconds({}) is None


def test_lines_said_while_the_progress_line_is_shown_go_above_it(monkeypatch):
    """A line printed through ``lrbs.sweeps.progress.say`` (the beta search's decisions) while the
    progress line is drawn erases it, stays on its own line, and the progress line is drawn
    again below it; a progress line that wrapped is erased whole (cursor up over its rows)."""
    from lrbs.sweeps.progress import CLEAR_TO_END, CLEAR_TO_EOL, LiveLine, say

    monkeypatch.setenv("COLUMNS", "80")  # the width of a terminal that cannot be asked (a StringIO has no fd)
    tty = _Terminal()
    live = LiveLine(tty)
    live.draw("[lrbs] 1/4 points done")
    say("[lrbs] beta search: beta 2 holds", tty)
    assert tty.getvalue() == (
        "\r"
        + CLEAR_TO_EOL
        + "[lrbs] 1/4 points done"
        + "\r"
        + CLEAR_TO_EOL
        + "[lrbs] beta search: beta 2 holds\n[lrbs] 1/4 points done"
    )
    long = "x" * 230  # three rows of an 80-column terminal (80 + 80 + 70)
    live.draw(long)
    live.draw("short")
    assert tty.getvalue().endswith("\r" + CLEAR_TO_EOL + long + "\x1b[2A\r" + CLEAR_TO_END + "short")
    live.end()
    say("[lrbs] done", tty)  # no live line any more: a plain line
    assert tty.getvalue().endswith("short\n[lrbs] done\n")


IDLE_WORKERS = """
import os
from pathlib import Path
import ray
from lrbs.sweeps.runner import init_ray


def workers():
    # Ray's worker processes of this cluster: children of its raylet (our child), but its agents
    procs = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            procs[int(proc.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), (proc / "cmdline").read_bytes())
        except (OSError, ValueError):  # a process that ended meanwhile
            pass
    raylets = {pid for pid, (parent, cmd) in procs.items() if parent == os.getpid() and b"raylet" in cmd}
    return sum(parent in raylets and b"Agent" not in cmd.split(b"\\0")[0] for parent, cmd in procs.values())


init_ray(None)  # Ray starts its idle workers, if any, as the driver connects: they exist by now
before = workers()
ray.get(ray.remote(lambda: 0).remote())  # a task's worker: the count sees Ray's workers
print("workers", before, workers())
ray.shutdown()
"""


@pytest.mark.slow
def test_the_embedded_ray_starts_no_idle_workers():
    """Tune never runs a trial on Ray's idle workers (its trial actors carry their own
    runtime_env), so the embedded cluster starts none (``runner.no_idle_workers``; with Ray's
    default, one per CPU is there as soon as ``ray.init`` returns); a task's worker shows that
    the count sees Ray's workers."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", IDLE_WORKERS], capture_output=True, text=True, timeout=120, cwd=ROOT)
    line = out.stdout.split()
    assert line[:2] == ["workers", "0"] and int(line[2]) >= 1, out.stdout + out.stderr[-2000:]
