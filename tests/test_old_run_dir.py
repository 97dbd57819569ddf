"""A run directory written by lrbs before it became one ``lrbs`` package still resumes and reports.

tests/fixtures/old_run/old_format was made by commit 4fb7f14 (top-level ``sweeps``/``trainables``
packages) from tests/fixtures/old_run/old_format.yaml: two trials that errored at epoch 2 of 3
(``resilience.fail_at_epoch``), their epoch-1 checkpoints, lrbs's trial records, Ray's own files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import lrbs
from lrbs.rundir.records import read_ledger
from lrbs.rundir.tables import load_trials
from lrbs.sweeps.cli import main
from lrbs.trainables.models import build_model

OLD_RUN = Path(__file__).parent / "fixtures" / "old_run" / "old_format"

pytestmark = pytest.mark.slow


def test_an_old_run_directory_resumes_and_reports(tmp_path, capsys):
    run = tmp_path / "old_format"
    shutil.copytree(OLD_RUN, run)
    before = load_trials(run)
    assert before.column("epochs_done").to_pylist() == [1, 1]  # epoch 2 failed before its row
    assert main(["status", str(run)]) in (0, 3)  # 3: the run has errored trials
    assert "errored" in capsys.readouterr().out

    assert main(["resume", str(run)]) == 0
    trials = load_trials(run)
    assert sorted(trials.column("status").to_pylist()) == ["finished", "finished"]
    assert trials.column("epochs_done").to_pylist() == [3, 3]
    # The continued trials keep their ids, and every record says they finished.
    assert set(trials.column("trial_id").to_pylist()) == set(before.column("trial_id").to_pylist())
    records, damaged = read_ledger(run)
    assert not damaged and {r.status for r in records.values()} == {"TERMINATED"}
    for name in ("report.html", "fits.json", "report.md"):
        assert (run / name).stat().st_size > 0


def test_a_spec_naming_lrbs_modules_by_their_old_import_paths_still_loads():
    # Spec copies written before the lrbs package may name built-in factories as trainables.x.
    spec = lrbs.load(
        {
            "name": "old_paths",
            "dataset": {"name": "digits"},
            "model": {"name": "trainables.models:mlp", "options": {"depth": 2, "width": 16}},
            "grid": {"lr": [0.1], "batch_size": [64], "seed": [0]},
        }
    )
    model = build_model(spec.model, (64,), 10)
    assert type(model).__module__ == "lrbs.trainables.models"  # the one MLP class, not a second copy
