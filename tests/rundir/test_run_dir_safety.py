"""Run directories that cannot be turned against their user (a copied run directory is input):
links planted in it are never written through (``rundir/safe_write.py``), the user code it
names is imported only with ``--trust-code`` (``sweeps/trust.py``), and odd or unwritable locks
are one line, exit 2 (``sweeps/lock.py``). Real files, real torch models; no Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lrbs.rundir.safe_write import UnsafePathError, check_inside, write_file_safely
from lrbs.sweeps.cli import main
from lrbs.sweeps.trust import resume_command
from lrbs.trainables import plugins
from tests.conftest import ROOT, tiny_spec, write_yaml

VICTIM_TEXT = "export PATH=/usr/bin  # the user's own file, outside the run directory\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's outside the run directory (a ~/.bashrc), that links will point at."""
    path = tmp_path / "home" / ".bashrc"
    path.parent.mkdir(exist_ok=True)
    path.write_text(VICTIM_TEXT)
    return path


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder of the user's outside the run directory, that folder links will point at."""
    path = tmp_path / "home" / "documents"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _untouched(victim: Path, outside: Path | None = None) -> None:
    assert victim.read_text() == VICTIM_TEXT and not victim.is_symlink()
    assert outside is None or list(outside.iterdir()) == []


def _one_line(err: str) -> str:
    err = err.strip()
    assert err.count("\n") == 0 and err.startswith("lrbs: error: "), err
    return err


def _grid_run(tmp_path: Path, name: str = "grid") -> Path:
    run = tmp_path / "runs" / name
    shutil.copytree(ROOT / "tests" / "fixtures" / name, run)
    return run


# ---------------------------------------------------------------------------------------------
# The writer itself


def test_writer_replaces_a_link_and_refuses_folders_linked_outside(tmp_path, victim, outside):
    run = tmp_path / "run"
    (run / "inner").mkdir(parents=True)
    (run / "out.txt").symlink_to(victim)
    write_file_safely(run / "out.txt", "new", root=run)
    _untouched(victim)
    assert (run / "out.txt").read_text() == "new" and not (run / "out.txt").is_symlink()
    # A folder link that stays inside the run directory is followed as usual
    (run / "alias").symlink_to(run / "inner")
    write_file_safely(run / "alias" / "a.txt", b"\x00\x01", root=run)
    assert (run / "inner" / "a.txt").read_bytes() == b"\x00\x01"
    # A folder link out of it is refused, at any depth, nothing written there
    (run / "inner" / "away").symlink_to(outside)
    for target in (run / "inner" / "away" / "b.txt", run / "alias" / "away" / "b.txt"):
        with pytest.raises(UnsafePathError, match=r"is a symbolic link to .*outside the run directory"):
            write_file_safely(target, "x", root=run)
    _untouched(victim, outside)
    # A write that fails (the target is a folder) leaves the old contents and no temporary file
    (run / "dir.txt").mkdir()
    with pytest.raises(IsADirectoryError):
        write_file_safely(run / "dir.txt", "x", root=run)
    assert sorted(p.name for p in run.iterdir()) == ["alias", "dir.txt", "inner", "out.txt"]
    with pytest.raises(ValueError, match="not inside"):
        check_inside(run / "inner", run / "out.txt")


# ---------------------------------------------------------------------------------------------
# lrbs report, lrbs export


def test_report_replaces_planted_links_and_leaves_their_targets(tmp_path, victim, capsys):
    from lrbs.analysis.selection import page_name
    from lrbs.rundir.tables import load_trials

    run, other = _grid_run(tmp_path), _grid_run(tmp_path, "rescale")
    trial = load_trials(run).column("trial_id")[0].as_py()
    planted = [
        "report.html",
        "fits.json",
        "report.md",
        f"compare-{other.name}.md",
        f"compare-{other.name}.html",
        page_name([trial]),
    ]
    for name in planted:
        (run / name).symlink_to(victim)
    assert main(["report", str(run), "--compare", str(other)]) == 0
    assert main(["report", str(run), "--trials", trial]) == 0
    _untouched(victim)
    for name in planted:
        assert (run / name).is_file() and not (run / name).is_symlink(), name
    assert json.loads((run / "fits.json").read_text())["summary"]["trials"] > 0
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_export_never_writes_through_links(tmp_path, victim, outside, capsys):
    run = _grid_run(tmp_path)
    # The export folder a link out of the run: refused, one line, nothing written there
    (run / "export").symlink_to(outside, target_is_directory=True)
    assert main(["export", str(run)]) == 2
    assert "export is a symbolic link to" in _one_line(capsys.readouterr().err)
    _untouched(victim, outside)
    # A link at a name the export writes through (its temporary file's name, once predictable)
    (run / "export").unlink()
    (run / "export").mkdir()
    for name in ("epochs", "trials"):
        (run / "export" / f".{name}.parquet.tmp").symlink_to(victim)
    assert main(["export", str(run)]) == 0
    _untouched(victim, outside)
    import pyarrow.parquet as pq

    for name in ("epochs", "trials"):
        path = run / "export" / f"{name}.parquet"
        assert path.is_file() and not path.is_symlink() and pq.read_table(path).num_rows > 0
    # A link at the output's own name counts as an existing file: never overwritten
    capsys.readouterr()
    assert main(["export", str(run), "--format", "csv", "--out", str(tmp_path / "csv")]) == 0
    (tmp_path / "csv" / "epochs.csv").unlink()
    (tmp_path / "csv" / "epochs.csv").symlink_to(victim)
    assert main(["export", str(run), "--format", "csv", "--out", str(tmp_path / "csv")]) == 2
    assert "already exists" in _one_line(capsys.readouterr().err)
    _untouched(victim)


# ---------------------------------------------------------------------------------------------
# lrbs interpolate: two trial folders as Tune writes them (params.json, checkpoint_*/state.pt)

USER_MODULE = textwrap.dedent("""
    from pathlib import Path

    from torch import nn

    Path(__file__).with_name("imported").write_text("user code ran")

    def net(input_shape, n_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], n_classes))
""")


def _interpolation_run(tmp_path: Path, model_name: str | None = None) -> tuple[Path, list[str]]:
    """A run directory with two finished trials on digits (64 features, 10 classes): the tiny
    spec's MLP, or with ``model_name`` a linear model of the user's of that name, found through
    plugins.json in the run's ``code/`` folder; their weights drawn from two seeds."""
    from lrbs.sweeps.grid import expand_points
    from lrbs.sweeps.spec_load import spec_from_dict
    from lrbs.trainables.config import ModelConfig, from_dict
    from lrbs.trainables.models import build_model
    from lrbs.trainables.train_loop import CHECKPOINT_FILE

    spec = spec_from_dict(tiny_spec("interp", grid={"lr": [0.05, 0.2], "batch_size": [32], "seed": [0]}))
    shared = spec.to_dict()
    run = tmp_path / "runs" / "interp"
    (run / "metrics").mkdir(parents=True)
    model = shared["model"]
    if model_name is not None:
        module, _ = model_name.split(":")
        (run / "code").mkdir()
        (run / "code" / f"{module}.py").write_text(USER_MODULE)
        (run / "plugins.json").write_text(json.dumps({"search_roots": [str(run / "code")]}))
        model = {"name": model_name, "options": {}}
    ids = []
    for i, point in enumerate(expand_points(spec)):
        trial_id = f"aaaaa_{i:05d}"
        folder = run / f"train_trial_{trial_id}_{i}_lr={point['lr']}"
        (folder / "checkpoint_000000").mkdir(parents=True)
        config = {
            "point": point,
            "sweep": "interp",
            "dataset": shared["dataset"],
            "model": model,
            "train": shared["train"],
        }
        (folder / "params.json").write_text(json.dumps(config))
        torch.manual_seed(i)
        # The user's model is built here as its module builds it, without importing that module
        net = (
            nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
            if model_name
            else build_model(from_dict(ModelConfig, model), (64,), 10)
        )
        state = {"format": "pack-v1", "members": [{"status": "finished", "model": net.state_dict(), "momentum": None}]}
        torch.save(state, folder / "checkpoint_000000" / CHECKPOINT_FILE)
        ids.append(trial_id)
    return run, ids


@pytest.fixture
def fresh_plugins(monkeypatch):
    """The plug-in search path as a new process has it (the tests import user modules)."""
    monkeypatch.setattr(plugins, "_search_roots", [])
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("user_net_"):
            del sys.modules[name]


def test_interpolate_never_writes_through_links(tmp_path, victim, outside, capsys):
    from lrbs.rundir.tables import read_stream_file

    run, (a, b) = _interpolation_run(tmp_path)
    # The output folder a link out of the run: refused before anything is computed
    (run / "interpolation").symlink_to(outside, target_is_directory=True)
    assert main(["interpolate", str(run), a, b, "--num", "3"]) == 2
    assert "interpolation is a symbolic link to" in _one_line(capsys.readouterr().err)
    _untouched(victim, outside)
    (run / "interpolation").unlink()
    (run / "interpolation").mkdir()
    outputs = [run / "interpolation" / f"{a}__{b}.{ext}" for ext in ("arrow", "html")]
    for path in outputs:
        path.symlink_to(victim)
    assert main(["interpolate", str(run), a, b, "--num", "3"]) == 0
    _untouched(victim)
    assert all(p.is_file() and not p.is_symlink() for p in outputs)
    table, dropped = read_stream_file(outputs[0])
    assert dropped == 0 and table.column("alpha").to_pylist() == [-1.0, 0.5, 2.0]


def test_interpolate_imports_user_code_only_with_trust_code(tmp_path, capsys, fresh_plugins):
    name = f"user_net_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    run, (a, b) = _interpolation_run(tmp_path, f"{name}:net")
    marker = run / "code" / "imported"
    assert main(["interpolate", str(run), a, b, "--num", "3"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"model.name '{name}:net'" in err and "--trust-code" in err and "lrbs interpolate" in err
    assert not marker.exists() and not (run / "interpolation").exists()
    assert main(["interpolate", str(run), a, b, "--num", "3", "--trust-code"]) == 0
    assert marker.read_text() == "user code ran"
    assert (run / "interpolation" / f"{a}__{b}.arrow").is_file()


# ---------------------------------------------------------------------------------------------
# lrbs resume: its own files, user code, the lock (runs with nothing left to train: no Ray)


def _finished_run(tmp_path: Path, model: dict | None = None) -> Path:
    from tests.sweeps.test_resilience import _finished_run_dir

    run = _finished_run_dir(tmp_path)
    if model is not None:
        spec = yaml.safe_load((run / "spec.yaml").read_text())
        write_yaml(run / "spec.yaml", {**spec, "model": model})
    return run


def test_resume_never_writes_through_links(tmp_path, victim, outside, capsys):
    from lrbs.rundir.records import TrialRecord, write_record

    run = _finished_run(tmp_path)
    (stream,) = (run / "metrics").glob("*.arrow")
    session = stream.name.split("__")[0]
    # Resume compacts the streams an earlier session left, through a temporary file whose name
    # was predictable; and it ends with the report
    (run / "metrics" / f".{session}__compacted-r0000.parquet.tmp").symlink_to(victim)
    (run / "report.html").symlink_to(victim)
    assert main(["resume", str(run)]) == 0
    _untouched(victim)
    assert (run / "metrics" / f"{session}__compacted-r0000.parquet").is_file()
    assert (run / "report.html").is_file() and not (run / "report.html").is_symlink()
    # The folders it writes into, linked out of the run: refused before anything is written
    for name in ("trials", "metrics"):
        moved = outside / name
        if name == "metrics":
            shutil.move(run / name, moved)
        (run / name).symlink_to(moved if name == "metrics" else outside, target_is_directory=True)
        before = sorted(p.name for p in outside.rglob("*"))
        assert main(["resume", str(run), "--no-report"]) == 2
        assert f"{run / name} is a symbolic link to" in _one_line(capsys.readouterr().err)
        assert sorted(p.name for p in outside.rglob("*")) == before and not (run / "lock.json").exists()
        (run / name).unlink()
        if name == "metrics":
            shutil.move(moved, run / name)
    _untouched(victim)
    # A link deep in a tracker's folder (MLflow's file store appends to its metric files, a
    # TensorBoard writer creates files in its run folder): refused like the folders themselves
    deep = run / "mlruns" / "0" / "abc" / "metrics"
    deep.mkdir(parents=True)
    (deep / "val_acc").symlink_to(victim)
    assert main(["resume", str(run), "--no-report"]) == 2
    assert f"{deep / 'val_acc'} is a symbolic link to" in _one_line(capsys.readouterr().err)
    shutil.rmtree(run / "mlruns")
    _untouched(victim)
    # The trial records (written by the driver as trials start and end)
    record = TrialRecord("bbbbb_00000", {"lr": 0.1, "batch_size": 32, "seed": 0})
    (run / "trials").mkdir(exist_ok=True)
    (run / "trials" / "bbbbb_00000.json").symlink_to(victim)
    (run / "trials" / f".bbbbb_00000.json.{os.getpid()}.tmp").symlink_to(victim)
    write_record(run, record)
    _untouched(victim)
    assert json.loads((run / "trials" / "bbbbb_00000.json").read_text())["trial_id"] == "bbbbb_00000"
    shutil.rmtree(run / "trials")
    (run / "trials").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        write_record(run, record)
    _untouched(victim, outside)


def test_resume_imports_user_code_only_with_trust_code(tmp_path, capsys, fresh_plugins):
    name = f"user_net_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    run = _finished_run(tmp_path, model={"name": f"{name}:net"})
    (run / f"{name}.py").write_text(USER_MODULE)  # next to the spec copy: where load_spec looks
    marker = run / "imported"
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["resume", str(run), "--no-report"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"model.name '{name}:net'" in err and "--trust-code" in err and "lrbs resume" in err
    assert not marker.exists() and sorted(p.name for p in run.rglob("*")) == before  # nothing written
    assert main(["resume", str(run), "--no-report", "--trust-code"]) == 0
    assert marker.read_text() == "user code ran" and "1 trials finished" in capsys.readouterr().out


def test_resume_with_lock_json_a_folder_is_one_line(tmp_path, capsys):
    run = _finished_run(tmp_path)
    (run / "lock.json").mkdir()
    os.utime(run / "lock.json", (0, 0))  # not one just being written
    assert main(["resume", str(run), "--no-report"]) == 2
    assert f"{run / 'lock.json'} is a folder, not a lock lrbs wrote" in _one_line(capsys.readouterr().err)
    assert (run / "lock.json").is_dir() and [p.name for p in run.iterdir() if "stale" in p.name] == []


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_resume_on_a_read_only_run_dir_with_a_stale_lock_is_one_line(tmp_path, capsys):
    """A lock left by a dead driver cannot be moved away in a read-only run directory (a
    read-only bind mount as root, where chmod would not stop root; chmod otherwise)."""
    run = _finished_run(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / "lock.json").write_text(
        json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "command": "lrbs run", "at": 0})
    )
    before = sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*"))
    if os.geteuid() == 0:
        view = tmp_path / "ro" / run.name
        view.mkdir(parents=True)
        if not (_mount("--bind", str(run), str(view)) and _mount("-o", "remount,ro,bind", str(view))):
            pytest.skip("cannot make a read-only bind mount")
    else:
        view = run
        os.chmod(run, 0o555)
    try:
        assert main(["resume", str(view), "--no-report"]) == 2
        err = _one_line(capsys.readouterr().err)
        assert f"cannot take over the stale lock {view / 'lock.json'} of lrbs run" in err
    finally:
        if view != run:
            subprocess.run(["umount", str(view)], capture_output=True)
        os.chmod(run, 0o755)
    assert sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*")) == before


@pytest.mark.slow
def test_resume_that_trains_never_writes_through_links(tmp_path, victim):
    """A resume that starts Ray and trains a point never started: Ray's log (appended to), the
    trial records, the metric streams and the report replace or refuse planted links."""
    run = _finished_run(tmp_path)
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    write_yaml(run / "spec.yaml", {**spec, "grid": {**spec["grid"], "lr": [0.1, 0.2]}})  # lr 0.2: never started
    for name in ("ray.log", "report.html"):
        (run / name).symlink_to(victim)
    out = subprocess.run(
        [sys.executable, "-m", "lrbs", "resume", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "2 trials finished, 0 errored" in out.stdout
    _untouched(victim)
    assert "Ray's log: not written" in out.stdout and (run / "ray.log").is_symlink()  # O_NOFOLLOW: kept in memory
    (record,) = (run / "trials").glob("*.json")
    assert record.is_file() and not record.is_symlink() and json.loads(record.read_text())["status"] == "TERMINATED"
    assert (run / "report.html").is_file() and not (run / "report.html").is_symlink()


def test_the_resume_hint_carries_the_trust_flag_when_the_spec_names_user_code(tmp_path):
    """The command a stopped or errored run prints works as given: with --trust-code exactly when
    the run's spec copy names a model or data set by import path."""
    builtin, user = tmp_path / "builtin", tmp_path / "user"
    for run_dir, model in ((builtin, {"name": "mlp"}), (user, {"name": "my_models:conv1d"})):
        run_dir.mkdir()
        write_yaml(run_dir / "spec.yaml", tiny_spec(name=run_dir.name, model=model))
    assert resume_command(builtin) == f"lrbs resume {builtin}"
    assert resume_command(user) == f"lrbs resume {user} --trust-code"
    assert resume_command("s3://bucket/runs/x") == "lrbs resume s3://bucket/runs/x"
