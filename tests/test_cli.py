"""The command line itself: help for every command and option, --version, and ``lrbs export``
read back with pandas."""

from __future__ import annotations

import argparse
import shutil

import pytest

from lrbs.rundir.tables import load_metrics, load_trials
from lrbs.sweeps.cli import COMMANDS, build_parser, main
from tests.conftest import ROOT


def test_every_command_and_option_has_help_and_an_example():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == set(COMMANDS)
    for name, p in sub.choices.items():
        assert p.description and "examples:" in p.epilog and f"lrbs {name}" in p.epilog, name
        for action in p._actions:
            assert action.help, f"lrbs {name} {action.dest}: no help"


def test_version_is_the_code_version_of_the_rows(capsys):
    from lrbs.sweeps.version import code_version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"lrbs {code_version()}"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_reads_back_with_pandas_equal_to_load_metrics(tmp_path, capsys, fmt):
    import pandas as pd

    run = tmp_path / "grid"
    shutil.copytree(ROOT / "tests" / "fixtures" / "grid", run)
    assert main(["export", str(run), "--format", fmt]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"exported: {run / 'export' / f'epochs.{fmt}'}", f"exported: {run / 'export' / f'trials.{fmt}'}"]
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    epochs, trials = read(run / "export" / f"epochs.{fmt}"), read(run / "export" / f"trials.{fmt}")
    expected = load_metrics(run).to_pandas()
    assert list(epochs.columns) == list(expected.columns) and len(epochs) == len(expected) > 0
    for column in ("trial_id", "epoch", "lr", "batch_size", "val_acc", "train_loss", "status"):
        assert (
            epochs[column].tolist() == pytest.approx(expected[column].tolist())
            if epochs[column].dtype.kind == "f"
            else epochs[column].tolist() == expected[column].tolist()
        ), column
    assert trials["trial_id"].tolist() == load_trials(run).column("trial_id").to_pylist()
    # Never overwrites: a second export into the same folder is one line, exit 2, files unchanged.
    before = (run / "export" / f"epochs.{fmt}").read_bytes()
    assert main(["export", str(run), "--format", fmt]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "already exists" in err
    assert (run / "export" / f"epochs.{fmt}").read_bytes() == before


def test_export_refuses_a_non_run_directory(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "not an lrbs run directory" in capsys.readouterr().err
