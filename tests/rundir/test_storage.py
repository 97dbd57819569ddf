"""Storage that is not the local default filesystem: a pyarrow SubTreeFileSystem as a stand-in
for an object store (nothing can be appended; Tune and the metric upload go through pyarrow.fs),
and file:// URIs through the CLI."""

from __future__ import annotations

import io

import pyarrow.fs as pafs
import pytest

from lrbs.rundir.location import RunDir
from lrbs.rundir.tables import load_metrics, load_trials
from lrbs.sweeps.cli import main
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.runner import run_sweep
from lrbs.sweeps.spec_load import spec_from_dict
from lrbs.sweeps.storage import fetch_run_dir, resolve_storage, upload_files
from tests.conftest import tiny_spec, write_yaml

N_TRIALS, N_EPOCHS = 2, 2


def _spec(name: str):
    return spec_from_dict(
        tiny_spec(
            name, train={"epochs": N_EPOCHS, "pack": 2}, grid={"lr": [0.05, 0.2], "batch_size": [64], "seed": [0]}
        )
    )


@pytest.fixture(scope="module")
def bucket_run(ray_local, tmp_path_factory):
    """One sweep into a SubTreeFileSystem rooted at <tmp>/bucket, under the prefix ``exp``."""
    tmp = tmp_path_factory.mktemp("storage")
    cache = tmp / "cache"
    mp = pytest.MonkeyPatch()
    mp.setenv("LRBS_CACHE_DIR", str(cache))
    (tmp / "bucket").mkdir()
    fs = pafs.SubTreeFileSystem(str(tmp / "bucket"), pafs.LocalFileSystem())
    out = io.StringIO()
    staging = run_sweep(_spec("remote"), storage="exp", storage_filesystem=fs, out=out, upload_interval_s=0.0)
    yield fs, tmp, staging, out.getvalue()
    mp.undo()


def test_resolve_storage():
    runs = resolve_storage("runs")
    assert isinstance(runs.fs, pafs.LocalFileSystem) and runs.is_local and runs.path.endswith("/runs")
    assert runs.path.startswith("/")
    uri = resolve_storage("file:///tmp/lrbs-x/runs")
    assert isinstance(uri.fs, pafs.LocalFileSystem) and uri.is_local and uri.path == "/tmp/lrbs-x/runs"
    sub = pafs.SubTreeFileSystem("/tmp", pafs.LocalFileSystem())
    assert resolve_storage("a/b/", sub) == RunDir(sub, "a/b", False)
    with pytest.raises(LrbsError, match="--storage: cannot open nosuchscheme://x"):
        resolve_storage("nosuchscheme://x")


def test_remote_metrics_and_tune_state_arrive(bucket_run):
    fs, tmp, staging, log = bucket_run
    bucket = tmp / "bucket"
    run = bucket / "exp" / "remote"
    # Nothing of the run lands in the staging area's place in the bucket, and vice versa.
    assert staging.is_relative_to(tmp / "cache" / "staging")
    assert "-> subtree://exp/remote" in log
    # Arrow metric tables: compacted at the end into one Parquet file, the streams it replaces
    # deleted from the store after it arrived; exactly one row per (trial, epoch).
    assert [p.suffix for p in (run / "metrics").iterdir()] == [".parquet"]
    metrics = load_metrics(run)
    assert metrics.num_rows == N_TRIALS * N_EPOCHS
    assert len(set(zip(metrics.column("trial_id").to_pylist(), metrics.column("epoch").to_pylist()))) == 4
    assert metrics.equals(load_metrics(staging))  # the upload is the staged table, whole
    assert {r["status"] for r in load_trials(run).to_pylist()} == {"finished"}
    # The validated spec copy, and Tune's experiment state, trial dirs and checkpoints.
    assert (run / "spec.yaml").read_text().startswith("name: remote")
    assert list(run.glob("experiment_state-*.json")) and (run / "tuner.pkl").is_file()
    trial_dirs = [p for p in run.iterdir() if p.is_dir() and p.name.startswith("train_trial")]
    assert len(trial_dirs) == 1  # the trials are one pack: one Tune trial
    for d in trial_dirs:
        assert sorted(c.name for c in d.glob("checkpoint_*"))
    # lrbs's trial records reach the bucket too, their folders relative to the run directory there.
    from lrbs.rundir.records import read_ledger

    records, damaged = read_ledger(run)
    assert not damaged and [r.status for r in records.values()] == ["TERMINATED"]
    assert [r.logdirs for r in records.values()] == [[trial_dirs[0].name]]


def test_remote_existing_run_dir_is_refused(bucket_run):
    fs, tmp, _, _ = bucket_run
    before = sorted(p.name for p in (tmp / "bucket" / "exp" / "remote" / "metrics").iterdir())
    with pytest.raises(LrbsError, match=r"run directory subtree://exp/remote already exists"):
        run_sweep(_spec("remote"), storage="exp", storage_filesystem=fs)
    assert sorted(p.name for p in (tmp / "bucket" / "exp" / "remote" / "metrics").iterdir()) == before
    (tmp / "bucket" / "afile").write_text("keep")
    with pytest.raises(LrbsError, match="is a file, not a directory"):
        run_sweep(_spec("x"), storage="afile", storage_filesystem=fs)
    assert (tmp / "bucket" / "afile").read_text() == "keep"


def test_fetch_and_upload(bucket_run, tmp_path, monkeypatch):
    fs, tmp, _, _ = bucket_run
    monkeypatch.setenv("LRBS_CACHE_DIR", str(tmp_path / "cache"))
    local = fetch_run_dir("exp/remote", fs)
    assert local.is_relative_to(tmp_path / "cache") and local.name == "remote"
    assert load_metrics(local).equals(load_metrics(tmp / "bucket" / "exp" / "remote"))
    assert (local / "spec.yaml").read_text().startswith("name: remote")
    assert fetch_run_dir("exp/remote", fs) == local  # again: nothing changed, same place
    (local / "fits.json").write_text("{}")
    assert upload_files("exp/remote", [local / "fits.json"], fs) == ["subtree://exp/remote/fits.json"]
    assert (tmp / "bucket" / "exp" / "remote" / "fits.json").read_text() == "{}"
    with pytest.raises(LrbsError, match="not an lrbs run directory"):
        fetch_run_dir("exp/nothing", fs)


def test_cli_file_uri_storage_and_report(ray_local, tmp_path, capsys):
    spec = write_yaml(
        tmp_path / "u.yaml", tiny_spec("u", train={"epochs": 1}, grid={"lr": [0.1], "batch_size": [64], "seed": [0]})
    )
    uri = f"file://{tmp_path}/runs"
    assert main(["run", str(spec), "--storage", uri, "--no-report"]) == 0
    run = tmp_path / "runs" / "u"
    assert load_metrics(run).num_rows == 1 and (run / "spec.yaml").is_file()
    capsys.readouterr()
    assert main(["report", f"{uri}/u"]) == 0
    assert (run / "report.html").is_file() and (run / "fits.json").is_file()
    assert main(["run", str(spec), "--storage", uri]) == 2
    assert "already exists" in capsys.readouterr().err
