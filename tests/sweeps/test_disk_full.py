"""A full disk and a read-only run directory, on real small filesystems (tmpfs, a read-only bind
mount): one line naming the path, a non-zero exit, rows already written intact, and the run
resumable once space is back. Needs mount rights (root, as in CI); skipped
without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrbs.rundir.tables import load_metrics_with_report
from tests.conftest import ROOT, write_yaml
from tests.sweeps.test_resilience import assert_exactly_once_and_unfaulted, fault_spec


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs: room for the run, then filled up on demand."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)):
        pytest.skip("needs rights to mount a tmpfs (root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(path: Path) -> None:
    """Take every free byte of the filesystem holding ``path``."""
    with open(path, "wb", buffering=0) as f:  # unbuffered: nothing left to fail at close
        for block in (b"\0" * (1 << 16), b"\0" * 512):  # then the last partial block
            try:
                while True:
                    f.write(block)
            except OSError:
                pass


@pytest.mark.slow
def test_disk_full_mid_sweep_then_resume(small_disk, tmp_path):
    spec = write_yaml(tmp_path / "d.yaml", fault_spec("d", train={"epochs": 12}))
    run_dir = small_disk / "runs" / "d"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "lrbs", "run", str(spec), "--storage", str(small_disk / "runs"), "--no-report"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if list(run_dir.glob("train_trial_*/checkpoint_000001/state.pt")):
            break
        time.sleep(0.1)
    else:
        driver.kill()
        pytest.fail("no checkpointed progress: " + driver.communicate()[1][-3000:])
    filler = small_disk / "filler"
    _fill(filler)
    out, err = driver.communicate(timeout=300)
    # One line naming the run directory and the cause, exit 4 (not a traceback, not exit 1).
    assert driver.returncode == 4, (out[-2000:], err[-3000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"lrbs: error: sweep stopped: {run_dir}: the disk is full"), last
    assert f"lrbs resume {run_dir}" in last
    # The rows written before the disk filled are intact (a cut-off tail at most), each once.
    metrics, report = load_metrics_with_report(run_dir)
    assert 0 < metrics.num_rows < 2 * 12 and not report.damaged
    assert not (run_dir / "lock.json").exists()

    filler.unlink()  # space is back
    done = subprocess.run(
        [sys.executable, "-m", "lrbs", "resume", str(run_dir), "--no-report"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "2 trials finished, 0 errored" in done.stdout
    assert_exactly_once_and_unfaulted(run_dir, n_trials=2, epochs=12)


def test_read_only_run_dir(small_disk, tmp_path, capsys):
    """``lrbs resume`` and ``lrbs report`` on a read-only run directory: one line naming it, exit 2,
    nothing changed (a read-only bind mount: root's writes fail there too)."""
    from lrbs.sweeps.cli import main
    from tests.sweeps.test_resilience import _finished_run_dir

    run_dir = _finished_run_dir(small_disk)
    before = sorted((p.relative_to(run_dir), p.stat().st_size) for p in run_dir.rglob("*"))
    view = tmp_path / "ro" / run_dir.name
    view.mkdir(parents=True)
    if not (_mount("--bind", str(run_dir), str(view)) and _mount("-o", "remount,ro,bind", str(view))):
        pytest.skip("cannot make a read-only bind mount")
    try:
        assert main(["resume", str(view), "--no-report"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"cannot lock {view}" in err and "Read-only file system" in err
        assert main(["report", str(view)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(view) in err
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)
    assert sorted((p.relative_to(run_dir), p.stat().st_size) for p in run_dir.rglob("*")) == before
