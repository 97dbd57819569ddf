"""Fault tolerance with real Ray (no mocks): a dying worker node, a SIGKILLed driver, a trial that
raises; ``lrbs resume`` and ``lrbs status``; exactly-once metric rows; cut-off Arrow files.

Every faulted trial must end with exactly the epoch rows of the same trial run without a fault
(its pack run by ``run_pack`` in this process: same seeds, CPU, one thread, deterministic).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from lrbs.rundir.tables import load_metrics, load_metrics_with_report, read_stream_file
from lrbs.sweeps.cli import main
from lrbs.sweeps.metrics_sink import ArrowMetricsSink
from lrbs.sweeps.status import read_status
from tests.conftest import ROOT, tiny_spec, write_yaml

COMPARED = (
    "epoch",
    "lr",
    "batch_size",
    "steps",
    "examples_seen",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "status",
)
EPOCHS = 10
KILL_EPOCHS = 30  # long enough to be SIGKILLed mid-sweep (tests/sweeps/test_remote.py)


def fault_spec(name: str, **overrides) -> dict:
    """2 trials (one pack of 2 by default) x EPOCHS epochs of a small MLP, checkpointed every epoch."""
    base = dict(
        model={"options": {"width": 128}},
        resilience={"checkpoint_every": 1},
        grid={"lr": [0.05, 0.2], "batch_size": [16], "seed": [0]},
    )
    # pack: 2 spelled out (auto would give each of this machine's trial slots its own pack)
    train = {"epochs": EPOCHS, "pack": 2, **overrides.pop("train", {})}
    return tiny_spec(name, train=train, **{**base, **overrides})


_EXPECTED: dict[str, list[list[dict]]] = {}


def uninterrupted_rows(configs: list[dict]) -> list[list[dict]]:
    """Per member, the epoch rows of this pack (the member configs of one Tune trial, in member
    order) run start to finish without Ray or faults."""
    import torch

    from lrbs.trainables.config import DatasetConfig, ModelConfig, TrainConfig, from_dict
    from lrbs.trainables.schedules import schedule_from_dict
    from lrbs.trainables.train_loop import TrialPoint, run_pack

    config = configs[0]
    key = json.dumps(
        [[c.get(k) for k in ("point", "dataset", "model", "train", "schedule")] for c in configs], sort_keys=True
    )
    if key not in _EXPECTED:
        rows: list[list[dict]] = [[] for _ in configs]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as inside the trial (resources.cpu: 1)
        try:
            run_pack(
                [TrialPoint.from_dict(c["point"]) for c in configs],
                from_dict(DatasetConfig, config["dataset"]),
                from_dict(ModelConfig, config["model"]),
                from_dict(TrainConfig, config["train"]),
                report=lambda rs, state: [rows[r["member"]].append(r) for r in rs],
                schedule=schedule_from_dict(config.get("schedule")),
            )
        finally:
            torch.set_num_threads(threads)
        _EXPECTED[key] = [[{k: r[k] for k in COMPARED} for r in member] for member in rows]
    return _EXPECTED[key]


def assert_exactly_once_and_unfaulted(run_dir: Path, n_trials: int, epochs: int) -> list[dict]:
    """One row per (trial, epoch) for every trial, equal to the uninterrupted run of its pack."""
    from lrbs.rundir.points import split_member_id

    metrics = load_metrics(run_dir)
    rows = metrics.to_pylist()
    by_trial: dict[str, list[dict]] = {}
    for r in rows:
        by_trial.setdefault(r["trial_id"], []).append(r)
    assert len(by_trial) == n_trials, sorted(by_trial)
    packs: dict[str, dict[int, str]] = {}
    for trial_id in by_trial:
        tune_id, j = split_member_id(trial_id)
        packs.setdefault(tune_id, {})[j or 0] = trial_id
    for tune_id, ids in packs.items():
        ordered = [ids[j] for j in sorted(ids)]
        expected = uninterrupted_rows([json.loads(by_trial[t][-1]["config_json"]) for t in ordered])
        for trial_id, member_expected in zip(ordered, expected):
            trial_rows = by_trial[trial_id]
            assert [r["epoch"] for r in trial_rows] == list(range(1, epochs + 1)), trial_id
            assert [{k: r[k] for k in COMPARED} for r in trial_rows] == member_expected, trial_id
    return rows


def tune_trial_ids(run_dir: Path) -> set[str]:
    return {t.trial_id for t in read_status(run_dir)}


def status_cli(run_dir: Path) -> subprocess.CompletedProcess:
    """``lrbs status`` in a fresh interpreter; it must not even import Ray."""
    code = (
        "import sys; from lrbs.sweeps.cli import main; rc = main(['status', sys.argv[1]]); "
        "assert 'ray' not in sys.modules, 'lrbs status imported ray'; sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(run_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


# ---------------------------------------------------------------------------------------------
# Arrow files: cut off mid-write, and rows superseded by later attempts (no Ray)


def _row(trial_id: str, epoch: int, config: dict, val_acc: float = 0.5, status: str = "running") -> dict:
    from lrbs.sweeps.metrics_sink import row_from_result

    result = {
        "epoch": epoch,
        "lr": 0.1,
        "batch_size": 32,
        "ratio": 0.1 / 32,
        "seed": 0,
        "n_train": 100,
        "train_loss": 1.0,
        "train_acc": 0.5,
        "val_loss": 1.0,
        "val_acc": val_acc,
        "steps": epoch,
        "examples_seen": 32 * epoch,
        "epoch_s": 0.1,
        "wall_s": 0.1 * epoch,
        "status": status,
    }
    return row_from_result(result, config, trial_id)


def test_truncated_arrow_file_keeps_every_whole_record(tmp_path):
    run_dir = tmp_path / "run"
    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=0)  # streams only: this test cuts them
    config = {"sweep": "t", "point": {"lr": 0.1, "batch_size": 32, "seed": 0}}
    (path,) = [None]
    sizes = []
    for epoch in range(1, 6):
        sink.write_row(_row("t_00000", epoch, config))
        (path,) = list((run_dir / "metrics").glob("*.arrow"))
        sizes.append(path.stat().st_size)  # flushed per row: the file ends after a whole record
    sink.on_experiment_end([])
    full = path.read_bytes()
    table, dropped = read_stream_file(path)
    assert table.num_rows == 5 and dropped == 0
    # A writer killed anywhere inside record 4 leaves records 1-3 whole.
    for cut in (sizes[2] + 1, (sizes[2] + sizes[3]) // 2, sizes[3] - 1):
        path.write_bytes(full[:cut])
        table, dropped = read_stream_file(path)
        assert table.column("epoch").to_pylist() == [1, 2, 3]
        assert dropped == cut - sizes[2]
        metrics, report = load_metrics_with_report(run_dir)
        assert metrics.num_rows == 3 and report.dropped_bytes == {path.name: cut - sizes[2]}
        assert report.truncated_files == [path.name]
    # Cut inside the schema message: nothing readable, every byte reported dropped.
    path.write_bytes(full[:10])
    table, dropped = read_stream_file(path)
    assert table.num_rows == 0 and dropped == 10


def test_later_attempts_supersede_earlier_rows(tmp_path):
    run_dir = tmp_path / "run"
    a = {"sweep": "s", "point": {"lr": 0.1, "batch_size": 32, "seed": 0}}
    b = {"sweep": "s", "point": {"lr": 0.2, "batch_size": 32, "seed": 0}}
    first = ArrowMetricsSink(run_dir / "metrics")
    for epoch in range(1, 5):  # attempt 1 of trial A reached epoch 4; only epoch 2 was checkpointed
        first.write_row(_row("s_A", epoch, a, val_acc=0.1))
    first.write_row(_row("s_B", 1, b, val_acc=0.1))  # trial B errored after epoch 1
    first.on_experiment_end([])
    second = ArrowMetricsSink(run_dir / "metrics")
    assert second.session != first.session
    # Attempt 2 of A resumed from epoch 2 and diverged at epoch 3: the old epoch 4 row is stale.
    second.write_row(_row("s_A", 3, a, val_acc=0.3, status="diverged"))
    # B restarted from scratch under a new trial id (lrbs resume --restart-errored).
    for epoch in (1, 2):
        second.write_row(
            _row("s_C", epoch, b, val_acc=(0.3, 0.4)[epoch - 1], status="finished" if epoch == 2 else "running")
        )
    second.on_experiment_end([])
    metrics, report = load_metrics_with_report(run_dir)
    got = [(r["trial_id"], r["epoch"], r["val_acc"]) for r in metrics.to_pylist()]
    assert got == [("s_A", 1, 0.1), ("s_A", 2, 0.1), ("s_A", 3, 0.3), ("s_C", 1, 0.3), ("s_C", 2, 0.4)]
    assert report.rows_read == 8 and report.superseded_rows == 3


def test_a_restart_under_newer_code_supersedes_the_older_attempt(tmp_path):
    """lrbs resume --restart-errored under code that writes more config keys (a new code version,
    report settings, a measurement setting) still replaces the errored attempt's rows."""
    run_dir = tmp_path / "run"
    old = {
        "sweep": "s",
        "code_version": "old",
        "point": {"lr": 0.2, "batch_size": 32, "seed": 0},
        "train": {"epochs": 2},
    }
    new = {
        **old,
        "code_version": "new",
        "report": {"converged_train_acc": 0.99},
        "train": {"epochs": 2, "train_eval_samples": 2000},
    }
    first = ArrowMetricsSink(run_dir / "metrics")
    first.write_row(_row("s_B", 1, old, val_acc=0.1))  # errored after epoch 1
    first.on_experiment_end([])
    second = ArrowMetricsSink(run_dir / "metrics")
    for epoch in (1, 2):
        second.write_row(_row("s_C", epoch, new, val_acc=0.4, status="finished" if epoch == 2 else "running"))
    second.on_experiment_end([])
    metrics, report = load_metrics_with_report(run_dir)
    assert set(metrics.column("trial_id").to_pylist()) == {"s_C"} and report.superseded_rows == 1
    # a different point is never merged: another lr stays its own trial
    other = {**new, "point": {"lr": 0.4, "batch_size": 32, "seed": 0}}
    third = ArrowMetricsSink(run_dir / "metrics")
    third.write_row(_row("s_D", 1, other, val_acc=0.2))
    third.on_experiment_end([])
    assert set(load_metrics_with_report(run_dir)[0].column("trial_id").to_pylist()) == {"s_C", "s_D"}


def test_restored_sink_starts_a_new_session(tmp_path):
    import ray.cloudpickle as cloudpickle

    sink = ArrowMetricsSink(tmp_path / "metrics")
    sink.write_row(_row("x_0", 1, {"sweep": "x"}))
    restored = cloudpickle.loads(cloudpickle.dumps(sink))  # as Tuner.restore reloads the RunConfig
    assert restored.session != sink.session and restored._writers == {}
    restored.write_row(_row("x_0", 2, {"sweep": "x"}))  # would raise FileExistsError on the old name
    sink.on_experiment_end([])
    restored.on_experiment_end([])
    # one file per session (each compacted at its end), never the same name twice
    assert len(list((tmp_path / "metrics").glob("*.parquet"))) == 2
    assert load_metrics(tmp_path).column("epoch").to_pylist() == [1, 2]


def test_status_and_resume_refuse_non_run_dirs(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert main(["resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("RUN_DIR" in line and str(tmp_path) in line for line in err), err


# ---------------------------------------------------------------------------------------------
# A real multi-node cluster on loopback: head (no CPUs) + a worker node that trials run on


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "dashboard_host": "127.0.0.1"}
    )
    c.add_node(num_cpus=2)
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _worker_nodes(c):
    return [n for n in c.list_all_nodes() if n is not c.head_node]


@pytest.mark.slow
def test_worker_node_dies_trials_finish_unchanged(cluster, tmp_path):
    spec = write_yaml(tmp_path / "n.yaml", fault_spec("n", resilience={"max_failures": 3}))
    run_dir = tmp_path / "runs" / "n"
    # The sweep's driver runs in a thread (Tune supports that); the main thread plays the
    # cluster operator, since Ray only adds nodes from the main thread.
    outcome: list = []
    sweep = threading.Thread(
        target=lambda: outcome.append(
            main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--address", cluster.address, "--no-report"])
        ),
        daemon=True,
    )
    sweep.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert sweep.is_alive(), outcome
        try:
            epochs = load_metrics(run_dir).column("epoch").to_pylist()
        except Exception:  # noqa: BLE001 - the run directory is still being created
            epochs = []
        if epochs and max(epochs) >= 2:
            break
        time.sleep(0.05)
    else:
        pytest.fail("no trial reached epoch 2 in 180 s")
    (node,) = _worker_nodes(cluster)
    cluster.remove_node(node)  # kills the node's raylet and every trial running on it
    rows_at_kill = len(epochs)
    cluster.add_node(num_cpus=2)  # a fresh node for the trials to restart on
    sweep.join(timeout=240)
    assert not sweep.is_alive() and outcome == [0]
    assert rows_at_kill < 2 * EPOCHS  # the node died mid-sweep
    assert_exactly_once_and_unfaulted(run_dir, n_trials=2, epochs=EPOCHS)
    trials = read_status(run_dir)
    assert all(t.status == "TERMINATED" for t in trials)
    assert sum(t.failures for t in trials) >= 1  # the node death did hit the trials


def test_resources_no_node_can_hold_wait_then_one_line(cluster, tmp_path, capsys):
    """``--address``: no node can ever hold a trial (8 CPUs; nodes of 0 and 2): lrbs waits
    ``limits.resource_wait_s`` for one to join, then one line, exit 2, no run directory."""
    spec = write_yaml(tmp_path / "big.yaml", tiny_spec("big", resources={"cpu": 8}, limits={"resource_wait_s": 1}))
    t0 = time.monotonic()
    assert (
        main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--address", cluster.address, "--no-report"]) == 2
    )
    assert time.monotonic() - t0 < 60
    out, err = capsys.readouterr()
    assert "[lrbs] waiting up to 1 s (limits.resource_wait_s) for a node with 8 CPU / 0 GPU" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("lrbs: error: resources: no node of the cluster can hold a trial (8 CPU / 0 GPU) after 1 s")
    assert not (tmp_path / "runs" / "big").exists()


@pytest.mark.slow
def test_errored_trial_status_then_resume_and_restart(cluster, tmp_path, capsys):
    spec = write_yaml(
        tmp_path / "e.yaml",
        tiny_spec(
            "e",
            train={"pack": 2},
            grid={"lr": [0.05, 0.2], "batch_size": [32], "seed": [0]},
            resilience={"max_failures": 0, "fail_at_epoch": 2, "checkpoint_every": 1},
        ),
    )
    run_dir = tmp_path / "runs" / "e"
    # Trials that ended in ERROR: exit 3 (not 0), said in the last line.
    assert (
        main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--address", cluster.address, "--no-report"]) == 3
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("[lrbs] 2 of 2 trials errored (exit 3)") and "--restart-errored" in last
    out = status_cli(run_dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:6] == ["trial_id", "lr", "batch", "seed", "status", "epochs"]
    assert lines[-2].startswith("0/2 points done (0 diverged, 2 errored, 0 running) | epochs 2/6 |")  # the run's line
    body = [line for line in lines[1:-2]]
    assert len(body) == 2
    for line in body:
        assert " errored " in line and " 1/3 " in line and "InjectedFault: injected fault at e" in line
    assert lines[-1] == "2 trials: 2 errored"
    ids_before = tune_trial_ids(run_dir)

    copy = tmp_path / "copy" / "e"  # the same errored run, for --restart-errored (moved, too)
    shutil.copytree(run_dir, copy)

    # lrbs resume: errored trials continue from their epoch-1 checkpoints, keeping their ids.
    assert main(["resume", str(run_dir), "--address", cluster.address, "--no-report"]) == 0
    rows = assert_exactly_once_and_unfaulted(run_dir, n_trials=2, epochs=3)
    assert {r["trial_id"] for r in rows} == ids_before
    trials = read_status(run_dir)
    assert [(t.status, t.epochs_done, t.row_status) for t in trials] == [("TERMINATED", 3, "finished")] * 2
    out = status_cli(run_dir)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "2 trials: 2 finished"
    # The resumed pack ran in this session's Ray experiment (RUN_DIR/resume-*/), from its epoch-1
    # checkpoint: epochs 2 and 3 there (resilience.keep_checkpoints, default 2).
    resumed_dirs = list(run_dir.glob("resume-*/train_trial_*"))
    assert len(resumed_dirs) == 1
    for trial_dir in resumed_dirs:
        assert [p.name for p in sorted(trial_dir.glob("checkpoint_*"))] == ["checkpoint_000000", "checkpoint_000001"]
    # Each session's rows, compacted at its end into one file (sweeps/compaction.py): the first
    # session wrote epoch 1 of both members, the resumed one started at epoch 2.
    from lrbs.rundir.tables import read_compacted_file

    sessions = sorted((run_dir / "metrics").glob("*.parquet"))
    assert len(sessions) == 2 and not list((run_dir / "metrics").glob("*.arrow"))
    firsts = []
    for path in sessions:
        table = read_compacted_file(path)[0]
        first: dict[str, int] = {}
        for trial_id, epoch in zip(table.column("trial_id").to_pylist(), table.column("epoch").to_pylist()):
            first.setdefault(trial_id, epoch)
        firsts += first.values()
    assert sorted(firsts) == [1, 1, 2, 2]

    # lrbs resume --restart-errored: from scratch under new trial ids; the old rows are superseded.
    assert main(["resume", str(copy), "--restart-errored", "--address", cluster.address, "--no-report"]) == 0
    rows = assert_exactly_once_and_unfaulted(copy, n_trials=2, epochs=3)
    ids_restarted = {r["trial_id"] for r in rows}
    assert ids_restarted == tune_trial_ids(copy) and not ids_restarted & ids_before
    _, report = load_metrics_with_report(copy)
    assert report.rows_read == 2 + 6 and report.superseded_rows == 2


def _finished_run_dir(tmp_path: Path) -> Path:
    """A run directory whose one trial wrote its last row (no Ray needed to resume it)."""
    from lrbs.sweeps.grid import expand_points
    from lrbs.sweeps.spec_load import spec_from_dict

    data = tiny_spec("w", grid={"lr": [0.1], "batch_size": [32], "seed": [0]})
    run_dir = tmp_path / "w"
    (run_dir / "metrics").mkdir(parents=True)
    write_yaml(run_dir / "spec.yaml", data)
    (point,) = expand_points(spec_from_dict(data))
    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=0)  # streams: the tests damage them
    config = {"point": point, "train": {"epochs": 3}}
    for epoch in (1, 2, 3):
        sink.write_row(_row("t_1", epoch, config, status="finished" if epoch == 3 else "running"))
    sink.on_experiment_end([])
    return run_dir


def test_resume_never_unpickles_ray_state(tmp_path, capsys):
    """A crafted tuner.pkl (it would run a command when unpickled) and a garbage experiment state,
    even group- and world-writable, are never read: resume rebuilds from spec, rows and records."""
    run_dir = _finished_run_dir(tmp_path)
    marker = tmp_path / "pwned"
    (run_dir / "tuner.pkl").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    (run_dir / "experiment_state-2026-01-01_00-00-00.json").write_text("{")
    os.chmod(run_dir / "tuner.pkl", 0o666)
    assert main(["resume", str(run_dir), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "1 trials done; 0 continue" in out and "1 trials finished, 0 errored" in out
    assert not marker.exists() and not (run_dir / "lock.json").exists()


def test_resume_never_continues_from_a_checkpoint_ahead_of_the_rows(tmp_path, capsys):
    """Tune stores an epoch's checkpoint before the driver writes its rows: a driver killed (or a
    disk filled) in between leaves the newest checkpoint one epoch ahead. Resume takes the newest
    checkpoint no later than the last epoch every member still training has rows for; damaged
    ones are skipped; none left: from scratch."""
    import torch

    from lrbs.rundir.records import TrialRecord, resumable_epoch
    from lrbs.trainables.train_loop import CHECKPOINT_FILE, first_loadable_state

    record = TrialRecord("t_1", {"members": [{"lr": 0.1}, {"lr": 0.2}, {"lr": 0.4}]})
    rows = {"t_1-m0": (3, "running", None), "t_1-m1": (2, "diverged", None), "t_1-m2": (4, "running", None)}
    assert resumable_epoch(record, rows) == 3  # m1 diverged: its rows stop early, it does not count
    assert resumable_epoch(record, {"t_1-m0": (3, "running", None)}) == 0  # m2 has no rows yet
    folders = []
    for epoch in (4, 3, 2):  # newest first, as TrialRecord.checkpoints lists them
        folder = tmp_path / f"checkpoint_{epoch:06d}"
        folder.mkdir()
        torch.save({"epoch": epoch}, folder / CHECKPOINT_FILE)
        folders.append(folder)
    assert first_loadable_state(folders, max_epoch=3)["epoch"] == 3
    (folders[1] / CHECKPOINT_FILE).write_bytes(b"cut off")
    assert first_loadable_state(folders, max_epoch=3)["epoch"] == 2
    assert first_loadable_state(folders, max_epoch=1) is None
    err = capsys.readouterr().err
    assert "past the last epoch with rows (3)" in err and "does not load" in err and "starting from scratch" in err


def test_restart_under_newer_code_supersedes_the_old_attempt(tmp_path):
    """``--restart-errored`` after a commit: the new trial's config differs only in code_version;
    it still replaces the old attempt's rows (one row per epoch of the point)."""
    from lrbs.rundir.tables import load_metrics_with_report

    metrics = tmp_path / "r" / "metrics"
    point = {"lr": 0.1, "batch_size": 32, "seed": 0}
    old, new = ArrowMetricsSink(metrics), ArrowMetricsSink(metrics)
    for epoch in (1, 2):
        old.write_row(_row("a_1", epoch, {"point": point, "code_version": "0.1+gaaa"}))
    for epoch in (1, 2, 3):
        new.write_row(_row("b_2", epoch, {"point": point, "code_version": "0.1+gbbb.dirty"}))
    table, report = load_metrics_with_report(tmp_path / "r")
    assert table.column("trial_id").to_pylist() == ["b_2"] * 3 and report.superseded_rows == 2


def test_records_rebuilt_from_real_tune_trial_folders(tmp_path):
    """A run directory written before the trial records (or with a damaged one): records come
    from the Tune trial folders' params.json and their names (train_trial_<id>_<index>_...),
    a resumed session's folders counted under the first attempt's id."""
    from lrbs.rundir.points import point_key
    from lrbs.rundir.records import ledger_from_trial_dirs

    point = {"members": [{"lr": 0.1}, {"lr": 0.2}]}
    first = tmp_path / "train_trial_418cf_00000_0_point=members_lr_0_1_2026-11-28_06-52-31"
    first.mkdir()
    (first / "params.json").write_text(json.dumps({"point": point}))
    plan = tmp_path / "resume-20261128T070000Z-1" / "lrbs-resume-plan.json"
    later = plan.parent / "train_trial_9b0e2_00000_0_point=members_2026-11-28_07-00-01"
    later.mkdir(parents=True)
    plan.write_text(json.dumps({point_key(point): {"trial_id": "418cf_00000", "checkpoints": [], "max_epoch": 1}}))
    (later / "params.json").write_text(json.dumps({"point": point, "resume": str(plan)}))
    records = ledger_from_trial_dirs(tmp_path)
    assert list(records) == ["418cf_00000"]
    assert records["418cf_00000"].logdirs == [first.name, f"{plan.parent.name}/{later.name}"]


@pytest.mark.parametrize(
    "record",
    [
        {"trial_id": "../../../tmp/x", "point": {}},
        {"trial_id": "418cf_00000", "point": {}, "logdirs": [1]},
        {"trial_id": "418cf_00000", "point": {}, "logdirs": ["../../elsewhere"]},
        {"trial_id": "418cf_00000", "point": {}, "updated_at": "x"},
        {"trial_id": "418cf_00000", "point": {"members": 3}},
        {"trial_id": "418cf_00000", "point": {}, "status": "PWNED"},
        {"trial_id": "418cf_00001", "point": {}},  # not the file's name
        [1, 2, 3],
    ],
)
def test_hostile_trial_records_are_damaged_not_trusted(tmp_path, record):
    from lrbs.rundir.records import read_ledger

    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "418cf_00000.json").write_text(json.dumps(record))
    records, damaged = read_ledger(tmp_path)
    assert records == {} and list(damaged) == ["418cf_00000.json"]


def test_run_dir_lock(tmp_path, capsys):
    """One driver per run directory: a live holder refuses the second (one line naming it), a dead
    holder's lock is stale and taken over, a read-only run directory is one line, exit 2."""
    from lrbs.sweeps.lock import RunLock

    run_dir = _finished_run_dir(tmp_path)
    with RunLock(run_dir, "lrbs resume"):  # held by this (live) process
        assert main(["resume", str(run_dir), "--no-report"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"is in use by lrbs resume (pid {os.getpid()}" in err
    assert not (run_dir / "lock.json").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_dir / "lock.json").write_text(
        json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "command": "lrbs run", "at": 0})
    )
    assert main(["resume", str(run_dir), "--no-report"]) == 0
    assert "took over a stale lock of lrbs run" in capsys.readouterr().err
    (run_dir / "lock.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "command": "lrbs run", "at": 0}))
    assert main(["resume", str(run_dir), "--no-report"]) == 2
    assert "locked by lrbs run (pid 1 on elsewhere" in capsys.readouterr().err
    (run_dir / "lock.json").unlink()
    if os.geteuid() != 0:  # root writes anywhere
        os.chmod(run_dir, 0o555)
        try:
            assert main(["resume", str(run_dir), "--no-report"]) == 2
            assert "cannot lock" in capsys.readouterr().err
        finally:
            os.chmod(run_dir, 0o755)


@pytest.mark.parametrize("value, ok", [(None, True), (1, True), (3, True), (0, False), (4, False)])
def test_fail_at_epoch_must_be_an_epoch_of_the_run(value, ok):
    from lrbs.sweeps.spec import SpecError
    from lrbs.sweeps.spec_load import spec_from_dict

    data = tiny_spec("v", resilience={"fail_at_epoch": value})  # 3 epochs
    if ok:
        assert spec_from_dict(data).resilience.fail_at_epoch == value
    else:
        with pytest.raises(SpecError, match=r"resilience.fail_at_epoch: must be an epoch in 1..3"):
            spec_from_dict(data)


def test_damaged_metric_files_are_flagged_not_crashed(tmp_path):
    """A 0-byte file, an overwritten header and flipped bytes in a string column are
    'damaged' (named, in status and the report), never a traceback and never 'writer killed'."""
    from lrbs.analysis.report import write_reports
    from lrbs.rundir.tables import load_metrics_with_report

    run = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "fixtures" / "grid", run)
    src = sorted((run / "metrics").glob("*.arrow"))[0]
    table, _ = read_stream_file(src)
    ids = sorted(set(table.column("trial_id").to_pylist()))
    one = table.filter(pa.compute.equal(table.column("trial_id"), ids[0]))
    good = run / "metrics" / f"s1__{ids[0]}.arrow"
    with pa.OSFile(str(good), "wb") as f, pa.ipc.new_stream(f, one.schema) as w:
        for batch in one.to_batches(max_chunksize=1):
            w.write_batch(batch)
    data = good.read_bytes()
    (run / "metrics" / "s2__empty.arrow").write_bytes(b"")
    (run / "metrics" / "s3__header.arrow").write_bytes(b"\x00" * 16 + data[16:])
    flipped = bytearray(data)
    pos = data.rfind(ids[0].encode())  # a trial id inside the last record batch
    flipped[pos : pos + 2] = b"\xff\xfe"  # invalid UTF-8 in a string column
    (run / "metrics" / "s4__flipped.arrow").write_bytes(bytes(flipped))
    # 8 bytes inverted in the middle of a closed file (its end-of-stream marker intact): damage,
    # not a cut-off, though the reader stops there as at a cut-off.
    middle = bytearray(data)
    at = len(data) // 2
    middle[at : at + 8] = bytes(b ^ 0xFF for b in middle[at : at + 8])
    (run / "metrics" / "s6__middle.arrow").write_bytes(bytes(middle))
    (run / "metrics" / "s7__appended.arrow").write_bytes(data + b"garbage after the end")
    (run / "metrics" / "s8__folder.arrow").mkdir()  # a folder where a file should be
    cut = run / "metrics" / "s9__cut.arrow"
    cut.write_bytes(data[: -len(b"\xff\xff\xff\xff\x00\x00\x00\x00") - 20])  # a writer killed mid-record
    _, info = load_metrics_with_report(run)
    assert set(info.damaged) == {
        "s2__empty.arrow",
        "s3__header.arrow",
        "s4__flipped.arrow",
        "s6__middle.arrow",
        "s7__appended.arrow",
        "s8__folder.arrow",
    }
    assert "0 bytes" in info.damaged["s2__empty.arrow"] and "header" in info.damaged["s3__header.arrow"]
    assert "bad bytes" in info.damaged["s4__flipped.arrow"] and not set(info.dropped_bytes) & set(info.damaged)
    assert "bad bytes" in info.damaged["s6__middle.arrow"]
    assert "21 bytes after the end of the stream" in info.damaged["s7__appended.arrow"]
    assert "unreadable" in info.damaged["s8__folder.arrow"]
    assert set(info.dropped_bytes) == {"s9__cut.arrow"}  # still "writer killed", read up to its last row
    fits = json.loads(write_reports(run, ("json",))["json"].read_text())
    assert fits["summary"]["partial"] is True
    assert sum("DAMAGED metric file" in n for n in fits["notes"]) == 6
    # lrbs status names the trial whose file is damaged (files are <session>__<trial id>.arrow).
    (run / "metrics" / f"s5__{ids[1]}.arrow").write_bytes(b"")
    from lrbs.sweeps.status import format_status

    trials = {t.trial_id: t for t in read_status(run)}
    assert trials[ids[1]].row_status == "damaged" and "0 bytes" in trials[ids[1]].error
    assert "DAMAGED: 1 trial(s)" in format_status(list(trials.values()))


# ---------------------------------------------------------------------------------------------
# lrbs status: one vocabulary (no Ray)


class _StopTraining(Exception):
    """Raised by a test's report callback: the trial's process dies after that epoch."""


def _write_states_run(run_dir: Path) -> dict[str, str]:
    """A run as a sweep leaves it: real packs trained by ``run_pack`` (3 epochs), their rows
    through the real metric sink and lrbs's trial records through ``write_record``. A pack of two
    (lr 0.05 finishes, lr 1e4 diverges) ended TERMINATED; a trial that raised after epoch 1 ended
    ERROR; one whose driver died after epoch 2 still says RUNNING. Returns trial id -> expected state."""
    import torch

    from lrbs.rundir.points import members, to_config
    from lrbs.rundir.records import ERROR, RUNNING, TERMINATED, TrialRecord, write_record
    from lrbs.sweeps.grid import expand_points
    from lrbs.sweeps.metrics_sink import row_from_result
    from lrbs.sweeps.param_space import to_param_space
    from lrbs.sweeps.spec_load import spec_from_dict
    from lrbs.trainables.train_loop import TrialPoint, run_pack

    torch.set_num_threads(1)
    spec = spec_from_dict(
        tiny_spec("states", train={"epochs": 3}, grid={"lr": [0.05, 1e4, 0.2], "batch_size": [32], "seed": [0]})
    )
    (run_dir / "spec.yaml").parent.mkdir(parents=True, exist_ok=True)
    write_yaml(run_dir / "spec.yaml", tiny_spec("states", train={"epochs": 3}))
    points = expand_points(spec)
    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=0)
    trials = [
        ("5a7e5_00000", points[:2], TERMINATED, None, ""),
        ("5a7e5_00001", points[2:], ERROR, 1, "trainables.faults.InjectedFault: injected fault at epoch 2"),
        ("5a7e5_00002", [dict(points[0], seed=1)], RUNNING, 2, ""),
    ]
    for trial_id, pack, status, stop_after, error in trials:
        config = {**{k: v for k, v in to_param_space(spec, "test").items() if k != "point"}, "point": to_config(pack)}
        ids = members(trial_id, config)

        def report(rows, state, ids=ids, stop_after=stop_after):
            for r in rows:
                sink.write_row(row_from_result(r, ids[r["member"]][1], ids[r["member"]][0]))
            if stop_after is not None and rows[0]["epoch"] >= stop_after:
                raise _StopTraining

        try:
            run_pack([TrialPoint.from_dict(p) for p in pack], spec.dataset, spec.model, spec.train, report)
        except _StopTraining:
            pass
        write_record(
            run_dir, TrialRecord(trial_id, to_config(pack), status=status, failures=int(status == ERROR), error=error)
        )
    sink.on_experiment_end([])
    return {
        "5a7e5_00000-m0": "finished",
        "5a7e5_00000-m1": "diverged",
        "5a7e5_00001": "errored",
        "5a7e5_00002": "stopped",
    }


def test_status_shows_one_vocabulary(tmp_path, capsys):
    """``lrbs status`` on a run with finished, diverged, errored and stopped trials: every trial's
    status is one of sweeps.status.STATES (never Tune's TERMINATED/ERROR/STOPPED, nor a second
    "result" column that says running for a trial that is not), and the summary counts them."""
    from lrbs.sweeps.lock import RunLock
    from lrbs.sweeps.status import STATES

    run = tmp_path / "states"
    expected = _write_states_run(run)
    assert main(["status", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:8] == ["trial_id", "lr", "batch", "seed", "status", "epochs", "val_acc", "fails"]
    assert "result" not in header
    shown = {line.split()[0]: line.split()[4] for line in lines[1 : 1 + len(expected)]}
    assert shown == expected and set(shown.values()) <= set(STATES)
    for line in lines:
        assert not {"TERMINATED", "ERROR", "STOPPED", "RUNNING", "UNKNOWN"} & set(line.split()), line
    assert lines[-1] == "4 trials: 1 finished, 1 diverged, 1 errored, 1 stopped"
    epochs = {t.trial_id: t.epochs_done for t in read_status(run)}
    assert (
        epochs == {"5a7e5_00000-m0": 3, "5a7e5_00000-m1": epochs["5a7e5_00000-m1"], "5a7e5_00001": 1, "5a7e5_00002": 2}
        and epochs["5a7e5_00000-m1"] < 3
    )  # the diverged member stopped early
    # A driver holding the run directory: the trial whose record says RUNNING is running.
    with RunLock(run, "lrbs run"):
        states = {t.trial_id: t.state for t in read_status(run)}
    assert states == {**expected, "5a7e5_00002": "running"}
    # A run written before trial records (a frozen fixture): the rows alone give the state.
    fixture = tmp_path / "grid"
    shutil.copytree(ROOT / "tests" / "fixtures" / "grid", fixture)
    assert {t.state for t in read_status(fixture)} == {"finished"}


def test_a_trial_whose_rows_are_damaged_is_not_called_finished():
    """Tune says TERMINATED, but a damaged or missing metric file cannot show the trial reached its
    end: lrbs status says unknown (the error column names the file), never finished."""
    from lrbs.sweeps.status import STATES, trial_state

    assert trial_state("TERMINATED", "finished", False) == "finished"
    assert trial_state("TERMINATED", "damaged", False) == "unknown"
    assert trial_state("TERMINATED", None, False) == "unknown"
    assert trial_state("TERMINATED", "running", False) == "stopped"
    assert "unknown" in STATES
