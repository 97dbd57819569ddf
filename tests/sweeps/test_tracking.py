"""Experiment trackers: TensorBoard, MLflow (a local file store) and W&B (offline) each receive
one run per point, a pack's members as separate runs, with every epoch's metrics once, read back
from what each tool wrote. The sweeps lose a trial at epoch 4 after an epoch (3) its checkpoint
(epoch 2) does not hold: the restored trial reports epoch 3 again, after a Tune retry and after
``lrbs resume`` (which also re-attaches every point to its run), and each tracker must hold every
epoch once, with the values the metric tables keep."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from lrbs.rundir.tables import load_metrics_with_report
from lrbs.sweeps.cli import main
from lrbs.sweeps.tracking import (
    TRACKERS,
    build_trackers,
    metrics_of,
    tensorboard_steps,
    wandb_history,
    wandb_records,
    wandb_steps,
)
from tests.conftest import tiny_spec, write_yaml

EPOCHS = 4
LRS = [0.05, 0.1, 0.2]  # the sweeps' points: a pack of 2 (one Tune trial) and a third on its own
# Each trial fails once at epoch 4 with a checkpoint at epoch 2 only: epoch 3 is reported twice.
FAULT = {"fail_at_epoch": 4, "checkpoint_every": 2, "checkpoint_every_s": None}

# point's trial id -> metric -> step -> every value the tracker stored for it (in write order)
Stored = dict[str, dict[str, dict[int, list[float]]]]


def stored(name: str, run_dir: Path, sweep: str, monkeypatch) -> Stored:
    """Every entry tracker ``name`` holds for each point of the sweep in ``run_dir``, read the way
    a user's tools read them back: all of a point's TensorBoard event files (raw, without the
    purging TensorBoard's UI may apply), MLflow's metric histories, W&B's records over every
    offline folder."""
    out: Stored = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    if name == "tensorboard":
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        for folder in (run_dir / "tensorboard").iterdir():
            for path in sorted(folder.glob("events.out.tfevents.*")):
                for event in LegacyEventFileLoader(str(path)).Load():
                    for value in event.summary.value:
                        if value.HasField("simple_value"):
                            out[folder.name][value.tag][event.step].append(value.simple_value)
    elif name == "mlflow":
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 and its file store
        client = MlflowClient(tracking_uri=f"file:{run_dir / 'mlruns'}")
        for run in client.search_runs([client.get_experiment_by_name(sweep).experiment_id]):
            trial_id = run.data.tags["lrbs.trial_id"]
            for key in run.data.metrics:
                for m in client.get_metric_history(run.info.run_id, key):
                    out[trial_id][key][m.step].append(m.value)
    else:
        run_ids = {p.stem[len("run-") :] for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")}
        for run_id in run_ids:
            for step, items in wandb_history(run_dir / "wandb", run_id):  # every folder of the run
                for key, value in items.items():
                    if not key.startswith("_"):
                        out[run_id[len(sweep) + 1 :]][key][step].append(value)
    return out


def wait_for_wandb_files(wandb_dir: Path, timeout_s: float = 30.0) -> None:
    """Until every offline run file in ``wandb_dir`` ends with its exit record: ``finish()``
    returns before W&B's service process has written the file."""
    deadline = time.monotonic() + timeout_s
    while not all(
        any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path))
        for path in wandb_dir.glob("offline-run-*/run-*.wandb")
    ):
        assert time.monotonic() < deadline, f"W&B did not finish its files in {wandb_dir} in {timeout_s} s"
        time.sleep(0.05)


def assert_once_as_tables(run_dir: Path, sweep: str, re_reported: int, monkeypatch) -> dict[str, dict[int, dict]]:
    """Each tracker holds, for every point, each epoch's metrics exactly once, equal to the row the
    metric tables keep; ``re_reported`` rows were superseded (epochs reported twice). The kept rows."""
    table, report = load_metrics_with_report(run_dir)
    assert report.superseded_rows == re_reported  # the restarts did report epochs again
    by_point: dict[str, dict[int, dict]] = defaultdict(dict)
    for r in table.to_pylist():
        by_point[r["trial_id"]][r["epoch"]] = r
    assert all(sorted(epochs) == list(range(1, EPOCHS + 1)) for epochs in by_point.values())
    wait_for_wandb_files(run_dir / "wandb")
    # float32 in TensorBoard's files; MLflow and W&B keep the float64 value
    for name, rel in {"tensorboard": 1e-6, "mlflow": 1e-12, "wandb": 1e-12}.items():
        held = stored(name, run_dir, sweep, monkeypatch)
        assert sorted(held) == sorted(by_point), name
        for trial_id, epochs in by_point.items():
            expected: dict[str, dict[int, float]] = defaultdict(dict)
            for epoch, row in epochs.items():
                for key, value in metrics_of(row).items():
                    expected[key][epoch] = value
            assert sorted(held[trial_id]) == sorted(expected), (name, trial_id)
            for key, values in expected.items():
                got = held[trial_id][key]
                assert {s: len(v) for s, v in got.items()} == {e: 1 for e in values}, (name, trial_id, key)
                for epoch, value in values.items():
                    # every metric, timings (epoch_s, wall_s) too: the newest attempt's value
                    assert abs(got[epoch][0] - value) <= rel * max(1.0, abs(value)), (name, trial_id, key, epoch)
    return by_point


@pytest.mark.slow
def test_trackers_log_each_epoch_once_after_a_retry_and_a_resume(ray_local, tmp_path, capsys, monkeypatch):
    for module in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(module)
    from mlflow.tracking import MlflowClient

    # Two sweeps: one point with a Tune retry (max_failures 1); every point with no retry (the
    # trials error), then lrbs resume.
    storage = tmp_path / "runs"
    for name, failures, lrs in (("retry", 1, LRS[:1]), ("t", 0, LRS)):
        spec = write_yaml(
            tmp_path / f"{name}.yaml",
            tiny_spec(
                name,
                train={"epochs": EPOCHS, "pack": 2},
                grid={"lr": lrs, "batch_size": [32], "seed": [0]},
                resilience={"max_failures": failures, **FAULT},
                tracking={"mlflow": {}, "wandb": {"mode": "offline"}},
            ),
        )
        code = main(["run", str(spec), "--storage", str(storage), "--no-report", "--track", "tensorboard"])
        assert code == (0 if failures else 3)
    run_dir = storage / "t"
    assert "tensorboard" in (run_dir / "spec.yaml").read_text()  # --track is kept for resume
    wait_for_wandb_files(run_dir / "wandb")  # as when the first driver's process has ended
    assert main(["resume", str(run_dir), "--no-report"]) == 0
    capsys.readouterr()

    # epoch 3 of every point reported twice in each sweep
    assert_once_as_tables(storage / "retry", "retry", re_reported=1, monkeypatch=monkeypatch)
    by_point = assert_once_as_tables(run_dir, "t", re_reported=len(LRS), monkeypatch=monkeypatch)
    assert len(by_point) == len(LRS) and any(k.endswith("-m1") for k in by_point)  # pack members by their own ids

    # TensorBoard: a folder per point; the resumed session's event file beside the first one. The
    # first session logged the epochs its checkpoint (epoch 2) held, the resumed one the others.
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    tb = run_dir / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == sorted(by_point)
    for trial_id in by_point:
        files = sorted((tb / trial_id).glob("events.out.tfevents.*"))  # by creation time (in the name)
        steps = [
            {
                e.step
                for e in LegacyEventFileLoader(str(f)).Load()
                if any(v.HasField("simple_value") for v in e.summary.value)
            }
            for f in files
        ]
        assert steps == [{1, 2}, {3, 4}], (trial_id, steps)
    # MLflow: one run per point (the resume went on in the same run), with the point's parameters.
    client = MlflowClient(tracking_uri=f"file:{run_dir / 'mlruns'}")
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert sorted(r.data.tags["lrbs.trial_id"] for r in runs) == sorted(by_point)
    for run in runs:
        trial_id = run.data.tags["lrbs.trial_id"]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == by_point[trial_id][1]["lr"]
        assert float(run.data.params["eta_over_s"]) == pytest.approx(by_point[trial_id][1]["ratio"])
    # W&B offline: run id <sweep>-<trial id>, two offline folders per point (first session, resume).
    assert sorted(p.name.rpartition("-t-")[2] for p in (run_dir / "wandb").glob("offline-run-*")) == sorted(
        [*by_point, *by_point]
    )


def test_a_tracker_skips_the_steps_its_store_has_from_an_earlier_session(tmp_path, monkeypatch):
    """Each tracker, in a new driver session, reads which steps a point's run has from its own
    store and writes only the others; a file the killed session cut off mid-record still reads."""
    for module in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(module)
    tracking = {"tensorboard": {}, "mlflow": {}, "wandb": {"mode": "offline"}}
    key = "abc_00000"
    for name in TRACKERS:
        first = build_trackers({name: tracking[name]}, "s", tmp_path)[0]
        first.start(key, {"lr": 0.1})
        assert [first.log(key, step, {"val_acc": step / 10}) for step in (1, 2, 3)] == [True] * 3
        first.finish(key, "stopped")
        if name == "wandb":  # as when its process ends: W&B's own process has written the run's file
            wait_for_wandb_files(tmp_path / "wandb")
        again = build_trackers({name: tracking[name]}, "s", tmp_path)[0]  # the next driver session
        again.start(key, {"lr": 0.1})
        assert again.steps[key] == {1, 2, 3}, name
        assert [again.log(key, step, {"val_acc": 1.0}) for step in (2, 3, 4)] == [False, False, True]
        again.finish(key, "finished")
        if name == "wandb":
            wait_for_wandb_files(tmp_path / "wandb")
        held = stored(name, tmp_path, "s", monkeypatch)[key]["val_acc"]
        assert held == {**{s: [pytest.approx(s / 10)] for s in (1, 2, 3)}, 4: [1.0]}, name  # the first values kept

    # A driver killed mid-write leaves a cut-off last record: the records before it still read.
    for path in [*(tmp_path / "tensorboard" / key).glob("events.*"), *(tmp_path / "wandb").glob("*/run-*.wandb")]:
        path.write_bytes(path.read_bytes()[:-3])
    # TensorBoard: each session's last record is its last scalar (step 3, then step 4)
    assert tensorboard_steps(tmp_path / "tensorboard" / key) == {1, 2}
    # W&B: each session's last record is the run's exit record, after its history
    assert wandb_steps(tmp_path / "wandb", "s-abc_00000") == {1, 2, 3, 4}


def test_tracking_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    storage = tmp_path / "runs"
    cases = [
        ({"tracking": {"neptune": {}}}, [], "tracking.neptune: unknown tracker"),
        ({"tracking": {"mlflow": {"uri": "x"}}}, [], "tracking.mlflow.uri: unknown key"),
        ({"tracking": {"wandb": {"mode": "sometimes"}}}, [], "tracking.wandb.mode: must be one of"),
        ({"tracking": "tensorboard"}, [], "tracking: must be a mapping"),
        ({}, ["--track", "comet"], "--track: unknown tracker 'comet'"),
        # a folder that cannot be written: a file stands where the folder would be
        ({"tracking": {"tensorboard": {"dir": str(tmp_path / "afile" / "tb")}}}, [], "tracking.tensorboard.dir"),
        (
            {"tracking": {"mlflow": {"tracking_uri": f"file:{tmp_path / 'afile' / 'mlruns'}"}}},
            [],
            "tracking.mlflow.tracking_uri: cannot write",
        ),
        # an MLflow server nobody runs (port 9 of loopback): refused at once, not after the sweep
        (
            {"tracking": {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}}},
            [],
            "tracking.mlflow.tracking_uri: cannot use http://127.0.0.1:9",
        ),
    ]
    (tmp_path / "afile").write_text("keep")
    for extra, args, expected in cases:
        spec = write_yaml(tmp_path / "b.yaml", tiny_spec("b", **extra))
        assert main(["run", str(spec), "--storage", str(storage), *args]) == 2, expected
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, (expected, err)
    # A tracker whose package is missing: one line naming the extra to install.
    monkeypatch.setitem(sys.modules, "mlflow", None)  # Python's own way to make an import fail
    spec = write_yaml(tmp_path / "b.yaml", tiny_spec("b", tracking={"mlflow": {}}))
    assert main(["run", str(spec), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'lrbs[mlflow]'" in err, err
    assert not storage.exists() and (tmp_path / "afile").read_text() == "keep"  # nothing written
