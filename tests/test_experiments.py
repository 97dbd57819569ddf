"""The paper's experiments as specs: paper-scale specs validate; each small twin runs for real."""

from __future__ import annotations

import math

import pytest

from lrbs.rundir.tables import load_metrics, load_trials
from lrbs.sweeps.cli import main
from lrbs.sweeps.estimate import estimate_cost
from lrbs.sweeps.grid import expand_points
from lrbs.sweeps.spec_load import load_spec
from tests.conftest import ROOT

SWEEPS = ROOT / "sweeps"
PAPER = [
    "fig1_cyclic",
    "fig2_rescaling",
    "fig2_rescaling_vgg11",
    "fig3_grid",
    "fig4_interpolation",
    "fig4_interpolation_vgg11",
    "fig5_breakdown",
]
TWINS = [
    "fig1_cyclic_small",
    "fig2_rescaling_small",
    "fig3_grid_small",
    "fig4_interpolation_small",
    "fig5_breakdown_small",
]


@pytest.mark.parametrize("name", PAPER)
def test_paper_scale_specs_validate_with_counts_and_cost(name, capsys):
    spec = load_spec(SWEEPS / f"{name}.yaml")
    n = len(expand_points(spec))
    assert main(["validate", str(SWEEPS / f"{name}.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{name}: {n} trials")
    assert out[-1].startswith("estimated cost:")
    cost = estimate_cost(spec)
    assert cost.device_hours > 0 and cost.trials == n


def test_paper_specs_match_the_paper():
    fig3 = load_spec(SWEEPS / "fig3_grid.yaml")
    lrs = [p["lr"] for p in expand_points(fig3)]
    sizes = [p["batch_size"] for p in expand_points(fig3)]
    assert (min(lrs), max(lrs), min(sizes), max(sizes)) == (0.005, 0.1, 25, 1000)
    assert fig3.train.epochs == 200 and len(fig3.grid.seed) == 5 and fig3.dataset.name == "fashion_mnist"
    assert fig3.curvature is not None and fig3.resources.gpu < 1  # trials share a GPU
    fig1 = {p["variant"]: p for p in expand_points(load_spec(SWEEPS / "fig1_cyclic.yaml")) if p["seed"] == 0}
    assert fig1["cyclic_batch"]["schedule"]["low"] == 128 and fig1["cyclic_batch"]["schedule"]["high"] == 640
    assert fig1["const_0.001_128"]["lr"] / 128 == pytest.approx(fig1["const_0.005_640"]["lr"] / 640)
    fig5 = load_spec(SWEEPS / "fig5_breakdown.yaml")
    assert fig5.beta.n_train == (12000, 22500, 45000) and fig5.model.name == "vgg11"
    fig2 = load_spec(SWEEPS / "fig2_rescaling.yaml")
    assert fig2.schedule.milestones == (60, 100, 140, 180) and fig2.model.name == "resnet56"
    assert load_spec(SWEEPS / "fig2_rescaling_vgg11.yaml").schedule.every == 25


def _section(run_dir, name):
    """The report section that stands for the twin's figure (fits.json), after a fresh report."""
    import json

    assert main(["report", str(run_dir)]) == 0
    return json.loads((run_dir / "fits.json").read_text())["sections"][name]


def _run_twin(name, tmp_path):
    assert main(["run", str(SWEEPS / f"{name}.yaml"), "--storage", str(tmp_path)]) == 0
    run_dir = tmp_path / name
    assert (run_dir / "report.html").exists() and (run_dir / "fits.json").exists()
    spec = load_spec(SWEEPS / f"{name}.yaml")
    metrics, trials = load_metrics(run_dir), load_trials(run_dir)
    assert trials.num_rows == len(expand_points(spec))
    # Exactly one row per epoch of every trial (a diverged trial stops early).
    assert metrics.num_rows == sum(trials.column("epochs_done").to_pylist())
    for t in trials.to_pylist():
        assert t["status"] in ("finished", "diverged")
        assert t["epochs_done"] == spec.train.epochs or t["status"] == "diverged"
    return run_dir, metrics, trials


@pytest.mark.slow
def test_fig1_twin_cyclic_schedules_share_eta_over_s_at_the_ends(ray_local, tmp_path):
    run_dir, metrics, _ = _run_twin("fig1_cyclic_small", tmp_path)
    assert _section(run_dir, "equal_ratio")["status"] == "ok"
    rows = [r for r in metrics.to_pylist() if r["seed"] == 0]
    by = {(r["variant"], r["epoch"]): r for r in rows}
    assert [by[("cyclic_batch", e)]["batch_size"] for e in (1, 3, 5, 7, 9)] == [32, 96, 160, 96, 32]
    assert [by[("cyclic_lr", e)]["lr"] for e in (1, 5, 9)] == pytest.approx([0.05, 0.01, 0.05])
    for e in (1, 5, 9, 13):  # peaks and troughs of the two cycles coincide in eta/S
        assert by[("cyclic_batch", e)]["ratio"] == pytest.approx(by[("cyclic_lr", e)]["ratio"])
    assert by[("const_0.01_32", 1)]["ratio"] == pytest.approx(by[("const_0.05_160", 1)]["ratio"])


@pytest.mark.slow
def test_fig2_twin_rescaling_rules(ray_local, tmp_path):
    run_dir, _, trials = _run_twin("fig2_rescaling_small", tmp_path)
    assert _section(run_dir, "rescaling")["status"] == "ok"
    by = {t["rescale"]: t for t in trials.to_pylist()}
    assert set(by) == {"reference", "linear", "sqrt", "none"}
    assert by["linear"]["ratio"] == pytest.approx(by["reference"]["ratio"])
    assert by["sqrt"]["lr"] == pytest.approx(0.04) and by["none"]["lr"] == pytest.approx(0.02)
    assert all(t["model"] == "resnet20" for t in by.values())


@pytest.mark.slow
def test_fig3_twin_has_sharpness_for_every_trial(ray_local, tmp_path):
    run_dir, _, trials = _run_twin("fig3_grid_small", tmp_path)
    assert _section(run_dir, "geometry")["status"] == "ok" and _section(run_dir, "eq7")["status"] == "ok"
    for t in trials.to_pylist():
        assert t["lambda_max"] > 0 and t["hessian_fro"] > 0 and t["probe_n_samples"] == 500
        assert math.isfinite(t["hessian_trace_stderr"]) and t["grad_noise_scale"] is not None


@pytest.mark.slow
def test_fig4_twin_interpolates_between_endpoints(ray_local, tmp_path):
    run_dir, _, trials = _run_twin("fig4_interpolation_small", tmp_path)
    ids = {t["variant"]: t["trial_id"] for t in trials.to_pylist()}
    for other in ("large_batch_0.1_256", "small_lr_0.0125_32"):
        assert main(["interpolate", str(run_dir), ids["base_0.1_32"], ids[other], "--num", "7"]) == 0
        assert (run_dir / "interpolation" / f"{ids['base_0.1_32']}__{ids[other]}.arrow").exists()
    assert _section(run_dir, "interpolation")["status"] == "ok"


@pytest.mark.slow
def test_fig5_twin_beta_family_at_two_sizes(ray_local, tmp_path):
    run_dir, _, trials = _run_twin("fig5_breakdown_small", tmp_path)
    assert _section(run_dir, "breakdown")["status"] == "ok"
    combos = {(t["n_train"], t["beta"]) for t in trials.to_pylist()}
    assert combos == {(n, b) for n in (400, 1400) for b in (1.0, 4.0, 16.0, 32.0)}
    ratios = {round(t["ratio"], 12) for t in trials.to_pylist()}
    assert len(ratios) == 1  # every member of a beta family has eta/S = 0.05/8
