"""The README's main job: the quickstart sweep end to end shows the paper's effect."""

from __future__ import annotations

import json

import pytest

from lrbs.rundir.tables import load_trials
from lrbs.sweeps.cli import main
from tests.conftest import ROOT


@pytest.mark.slow
def test_quickstart_end_to_end_shows_the_effect(ray_local, tmp_path, capfd):
    assert main(["run", str(ROOT / "sweeps" / "quickstart.yaml"), "--storage", str(tmp_path)]) == 0
    run_dir = tmp_path / "quickstart"
    # The terminal has lrbs's lines only (Ray's go to RUN_DIR/ray.log), and the progress line an ETA.
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert all(line.startswith("[lrbs] ") for line in lines), [x for x in lines if not x.startswith("[lrbs] ")]
    progress = [line for line in lines if "points done" in line]
    assert any(", ETA " in line for line in progress) and progress[-1].startswith("[lrbs] 12/12 points done"), progress
    assert "epochs 720/720" in progress[-1] and "CPU-hours" in progress[-1]
    assert (run_dir / "ray.log").is_file()
    trials = load_trials(run_dir)
    assert trials.num_rows == 12 and set(trials.column("status").to_pylist()) == {"finished"}
    assert min(trials.column("final_train_acc").to_pylist()) > 0.9  # every run fits the training set
    assert set(trials.column("cfg.dataset.name").to_pylist()) == {"mnist1d"}
    report = json.loads((run_dir / "fits.json").read_text())
    fits = report["fits"]
    # The paper's claim on MNIST-1D: validation accuracy rises with eta/S, with a 95% interval over
    # the 6 points (seeds averaged) that excludes zero, while the minima get wider (sharpness falls).
    for metric in ("final_val_acc", "max_val_acc"):
        assert fits[metric]["slope"] > 0 and fits[metric]["slope_ci"][0] > 0, fits[metric]
        assert (fits[metric]["n_points"], fits[metric]["n"]) == (6, 12)
    # Sharpness is fitted over the trials that reached 99% eval-mode train accuracy only; the
    # smallest eta/S (lr 0.01, S 128) stays just below it in 60 epochs, and the report names them.
    conv = report["sections"]["geometry"]["data"]["convergence"]
    left = {t["trial_id"] for t in conv["left_out"]}
    assert conv["threshold"] == 0.99 and all(t["final_train_eval_acc"] < 0.99 for t in conv["left_out"])
    by_id = {r["trial_id"]: r for r in trials.to_pylist()}
    assert all(by_id[t]["lr"] == 0.01 and by_id[t]["batch_size"] == 128 for t in left), left
    assert fits["lambda_max"]["n"] == 12 - len(left)
    assert fits["lambda_max"]["slope"] < 0 and fits["lambda_max"]["spearman_rho"] < -0.7, fits["lambda_max"]
    assert fits["hessian_fro"]["spearman_rho"] < -0.7
    assert (run_dir / "report.html").exists() and (run_dir / "report.md").exists()
