"""The benchmark's quick mode runs and prints every row (numbers are not checked: not a speed test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_quick_mode_prints_the_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    out_file = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out_file.read_text()
    assert table in proc.stdout
    assert "measured fp32 matmul rate" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    assert not any("| error |" in r for r in rows), rows
    for setting in ("S=25", "S=128", "S=1000"):
        assert any(r.startswith("| 1 loop vs DataLoader") and f"| {setting} |" in r for r in rows), setting
    for k in (1, 8, 25):
        assert any(r.startswith("| 2 packs") and f"K={k} (" in r for r in rows), k
    assert any(r.startswith("| 2 packs") and "stacked (vmap) vs loop" in r for r in rows)
    assert any(r.startswith("| 2 packs | step cost model") for r in rows)
    assert any(r.startswith("| 2 packs | six points") and "auto vs 1" in r for r in rows)
    assert any(r.startswith("| 3 quickstart end to end") for r in rows)
    assert any(r.startswith("| 3 fixed costs") for r in rows)
    assert any(r.startswith("| 4 curvature probes") for r in rows)


def test_measurement_check_quick_mode_prints_every_check(capsys):
    """remeasure/measurement_check.py (the before/after figures of docs/curvature.md) runs."""
    from remeasure.measurement_check import main

    assert main(["--quick"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "| check |" not in line]
    for check in ("| 1 interpolation", "| 2 Eq. 7", "| 3 noise scale", "| 4 Tr(H)"):
        assert any(r.startswith(check) for r in rows), check
    interp = next(r for r in rows if r.startswith("| 1 interpolation"))
    assert interp.split(" | ")[2].startswith("non-finite alphas: none")  # after the fix: finite everywhere


def test_tracking_cost_prints_every_writer(capsys):
    """benchmarks/tracking_cost.py (docs/performance.md's tracker costs) runs, tiny."""
    from benchmarks.tracking_cost import main

    assert main(["--points", "2", "--epochs", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| Arrow metric sink (always on)",
        "| tensorboard",
        "| mlflow",
        "| wandb",
    ]
    assert not any("nan" in r for r in rows), rows


def test_metrics_scale_compares_old_and_new_layouts(capsys):
    """benchmarks/metrics_scale.py (docs/performance.md's scale table) runs, tiny, both ways."""
    from benchmarks.metrics_scale import main

    assert main(["--trials", "12", "--epochs", "4", "--old", "--skip-report"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| sink: write every row (driver)",
        "| on disk once the sweep ended",
        "| load_metrics (time, peak RSS)",
        "| load_trials (time, peak RSS)",
        "| one fit against eta/S with its CI (old: 1,000-resample bootstrap; now: point means)",
    ]
    assert "smaller" in rows[2] and all(r.count(" s, ") >= 2 for r in rows[3:5]), rows
    assert rows[5].count(" s |") + rows[5].count(" ms |") >= 2 and "faster" in rows[5], rows


def test_precision_check_quick_mode_measures_every_precision(tmp_path):
    """benchmarks/precision_check.py (docs/performance.md's convnet precision table) runs, tiny, on
    CPU, in its own process: it sets torch's process-wide float32-precision flags."""
    from benchmarks.precision_check import PRECISIONS, QUICK_CASES

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.precision_check",
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "p.json"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "p.json").read_text())
    measured = {
        (r["section"], r["model"], r["S"], r["precision"]) for r in out["rows"] if r["median_s"] > 0 and r["tflops"] > 0
    }
    assert {m for m in measured if m[0] == "1"} == {
        ("1", c.label, s, p) for c in QUICK_CASES for s in c.sizes for p in PRECISIONS
    }
    assert {m[1] for m in measured if m[0] == "5" and m[3] == "bf16-nchw"} == {c.label for c in QUICK_CASES[:2]}
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + sum(len(c.sizes) for c in QUICK_CASES) and not any("not measured" in r for r in rows)
    for fid in out["fidelity"].values():
        assert fid["fp32 again"]["train_rel"] == 0.0  # on a CPU, same init and batches: bitwise-equal runs
        assert fid["bf16"]["train_rel"] > 0.0  # autocast really changed the arithmetic


def test_paper_projection_quick_mode_projects_a_spec(capsys, tmp_path):
    """benchmarks/paper_projection.py (the GPU projection of the paper's specs) runs, tiny, on CPU."""
    from benchmarks.paper_projection import main

    out = tmp_path / "projection.json"
    assert main(["--device", "cpu", "--quick", "--specs", "fig3_grid", "--out", str(out)]) == 0
    assert "fig3_grid: mlp" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result["total_gpu_hours"]) == {"fp32", "bf16"} and all(h > 0 for h in result["total_gpu_hours"].values())
