"""The README's main job: the quickstart sweep end to end shows the paper's effect."""
from __future__ import annotations

import json

import pytest

from analysis.tables import load_trials
from sweeps.cli import main
from tests.conftest import ROOT


@pytest.mark.slow
def test_quickstart_end_to_end_shows_the_effect(ray_local, tmp_path):
    assert main(["run", str(ROOT / "sweeps" / "quickstart.yaml"), "--storage", str(tmp_path)]) == 0
    run_dir = tmp_path / "quickstart"
    trials = load_trials(run_dir)
    assert trials.num_rows == 12 and set(trials.column("status").to_pylist()) == {"finished"}
    assert min(trials.column("final_train_acc").to_pylist()) > 0.98  # ~100% train accuracy
    fits = json.loads((run_dir / "fits.json").read_text())["fits"]
    # Issue 2: final train loss falls as eta/S rises; issue 3: so does the sharpness.
    assert fits["final_train_loss"]["spearman_rho"] < -0.8
    assert fits["lambda_max"]["spearman_rho"] < -0.8
    assert fits["hessian_fro"]["spearman_rho"] < -0.8
    assert (run_dir / "report.html").exists() and (run_dir / "report.md").exists()
