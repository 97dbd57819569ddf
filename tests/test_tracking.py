"""Experiment trackers (issue 14): TensorBoard, MLflow (a local file store) and W&B (offline) each
receive one run per point, a pack's members as separate runs, with every epoch's metrics, read
back from what each tool wrote. One shared run: the trials fail at epoch 2 (a test hook), so the
same run also shows ``lrbs resume`` re-attaching every point to its run."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from analysis.tables import load_metrics
from sweeps.cli import main
from tests.conftest import tiny_spec, write_yaml

EPOCHS = 3
TRACKED = ("train_loss", "val_loss", "val_acc")


def wandb_records(path: Path):
    """The protobuf records of a W&B offline ``.wandb`` file (LevelDB log format after a 7-byte
    header; read here because wandb no longer ships a reader)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header: zero padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):  # FIRST, MIDDLE
            pending += chunk
        else:
            pos += left - 7 - length  # zero padding to the block's end


def wandb_history(wandb_dir: Path) -> dict[str, dict[int, dict[str, float]]]:
    """Run id -> step -> metrics, over every offline run folder (a resumed run has two)."""
    import json

    out: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):
        run_id = path.stem[len("run-"):]
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                out.setdefault(run_id, {})[int(items["_step"])] = items
    return out


@pytest.mark.slow
def test_trackers_get_one_run_per_point_and_resume_reattaches(ray_local, tmp_path, capsys):
    for module in ("tensorboard", "mlflow", "wandb"):
        pytest.importorskip(module)
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A pack of 2 (one Tune trial) and a third point on its own; each trial fails once at epoch 2.
    spec = write_yaml(tmp_path / "t.yaml", tiny_spec(
        "t", train={"epochs": EPOCHS, "pack": 2}, grid={"lr": [0.05, 0.1, 0.2], "batch_size": [32], "seed": [0]},
        resilience={"max_failures": 0, "fail_at_epoch": 2, "checkpoint_every": 1},
        tracking={"mlflow": {}, "wandb": {"mode": "offline"}}))
    storage = tmp_path / "runs"
    run_dir = storage / "t"
    assert main(["run", str(spec), "--storage", str(storage), "--no-report", "--track", "tensorboard"]) == 3
    assert "tensorboard" in (run_dir / "spec.yaml").read_text()  # --track is kept for resume
    assert main(["resume", str(run_dir), "--no-report"]) == 0
    capsys.readouterr()

    rows = load_metrics(run_dir).to_pylist()
    by_point: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_point.setdefault(r["trial_id"], {})[r["epoch"]] = r
    assert len(by_point) == 3 and any(k.endswith("-m1") for k in by_point)  # pack members by their own ids
    assert all(sorted(epochs) == [1, 2, 3] for epochs in by_point.values())

    def same(logged: dict[int, float], key: str, trial_id: str, rel: float) -> None:
        expected = {e: r[key] for e, r in by_point[trial_id].items()}
        assert sorted(logged) == sorted(expected), (trial_id, key, logged)
        assert all(abs(logged[e] - expected[e]) <= rel * max(1.0, abs(expected[e])) for e in expected), key

    # TensorBoard: a folder per point; the resumed session's event file beside the first one.
    tb = run_dir / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == sorted(by_point)
    for trial_id in by_point:
        assert len(list((tb / trial_id).glob("events.out.tfevents.*"))) == 2
        acc = EventAccumulator(str(tb / trial_id))
        acc.Reload()
        for key in TRACKED:
            same({s.step: s.value for s in acc.Scalars(key)}, key, trial_id, 1e-6)  # float32 in the file

    # MLflow: one run per point (the resume went on in the same run), full history.
    client = MlflowClient(tracking_uri=f"file:{run_dir / 'mlruns'}")
    experiment = client.get_experiment_by_name("t")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["lrbs.trial_id"] for r in runs) == sorted(by_point)
    for run in runs:
        trial_id = run.data.tags["lrbs.trial_id"]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == by_point[trial_id][1]["lr"]
        assert float(run.data.params["eta_over_s"]) == pytest.approx(by_point[trial_id][1]["ratio"])
        for key in TRACKED:
            same({m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}, key, trial_id, 1e-12)

    # W&B offline: run id <sweep>-<trial id>, two offline folders per point (first session, resume).
    history = wandb_history(run_dir / "wandb")
    assert sorted(history) == sorted(f"t-{k}" for k in by_point)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2 * len(by_point)
    for trial_id in by_point:
        steps = history[f"t-{trial_id}"]
        for key in TRACKED:
            same({s: m[key] for s, m in steps.items()}, key, trial_id, 1e-12)


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
        ({"tracking": {"mlflow": {"tracking_uri": f"file:{tmp_path / 'afile' / 'mlruns'}"}}}, [],
         "tracking.mlflow.tracking_uri: cannot write"),
        # an MLflow server nobody runs (port 9 of loopback): refused at once, not after the sweep
        ({"tracking": {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}}}, [],
         "tracking.mlflow.tracking_uri: cannot use http://127.0.0.1:9"),
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
