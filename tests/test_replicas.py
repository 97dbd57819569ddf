"""Vectorized seeds (trainables/replicas.py): the same computation as separate runs, and the
sweep wiring (``train.replicas``) that gives every seed its own trial rows."""
from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

from trainables.config import DatasetConfig, ModelConfig, TrainConfig
from trainables.data import load_dataset
from trainables.models import build_model
from trainables.replicas import StackedMLP, StackedSGD, cross_entropy_per_replica, run_replicas
from trainables.train_loop import TrialPoint, run_training

DIGITS = DatasetConfig(name="digits", val_fraction=0.2)
QUICKSTART_MODEL = ModelConfig(name="mlp", depth=4, width=256, batch_norm=True)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DIGITS)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_ten_steps_match_separate_runs(digits, batch_norm):
    """Same seeds, same batches: after 10 SGD steps (momentum and weight decay on) every
    replica's parameters and batch-norm statistics equal those of its own nn.Module run."""
    seeds, lr, s = [0, 1, 5], 0.1, 32
    cfg = ModelConfig(name="mlp", depth=4, width=64, batch_norm=batch_norm)
    stacked = StackedMLP.from_seeds(seeds, cfg, digits.input_shape, digits.n_classes)
    opt = StackedSGD(stacked.parameters(), lr, momentum=0.9, weight_decay=1e-3)
    n = len(digits.x_train)
    perms = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(seed)) for seed in seeds])
    for step in range(10):
        idx = perms[:, step * s:(step + 1) * s]
        loss = cross_entropy_per_replica(stacked(digits.x_train[idx], training=True), digits.y_train[idx])
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    for k, seed in enumerate(seeds):
        # What run_training does for this seed: init after manual_seed, torch.optim.SGD, own order.
        torch.manual_seed(seed)
        model = build_model(cfg, digits.input_shape, digits.n_classes)
        model.train()
        ref_opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        for step in range(10):
            i = perm[step * s:(step + 1) * s]
            ref_loss = F.cross_entropy(model(digits.x_train[i]), digits.y_train[i])
            ref_opt.zero_grad(set_to_none=True)
            ref_loss.backward()
            ref_opt.step()
        ours = stacked.replica_state(k)
        ref = {name: t for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")}
        assert set(ours) == set(ref)
        for name, t in ref.items():
            torch.testing.assert_close(ours[name], t, rtol=0, atol=1e-5, msg=name)


def test_rows_match_run_training_over_one_short_epoch(digits):
    """run_replicas' rows equal run_training's for a 10-step epoch (n_train = 10 S)."""
    ds = DatasetConfig(name="digits", val_fraction=0.2, n_train=320)
    data = load_dataset(ds)
    cfg = ModelConfig(name="mlp", depth=3, width=64, batch_norm=True)
    train = TrainConfig(epochs=1, momentum=0.9)
    rows: list[dict] = []
    run_replicas(0.05, 32, [3, 4], ds, cfg, train, report=lambda rs, state: rows.extend(rs), data=data)
    assert [r["seed"] for r in rows] == [3, 4]
    for r in rows:
        ref: list[dict] = []
        run_training(TrialPoint(0.05, 32, r["seed"]), ds, cfg, train, report=lambda row, state: ref.append(row), data=data)
        (ref_row,) = ref
        assert set(r) == set(ref_row)
        assert r["steps"] == ref_row["steps"] == 10 and r["status"] == ref_row["status"] == "finished"
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert r[key] == pytest.approx(ref_row[key], abs=1e-5), key


def test_full_quickstart_trial_within_seed_spread(digits):
    """A whole quickstart trial (40 epochs, S = 128): each replica's final metrics lie within
    the spread over seeds of separate runs (and next to its own seed's separate run)."""
    seeds = [0, 1, 2, 3]
    train = TrainConfig(epochs=40)
    final: dict[int, dict] = {}
    run_replicas(0.16, 128, seeds, DIGITS, QUICKSTART_MODEL, train,
                 report=lambda rows, state: final.update({r["seed"]: r for r in rows}), data=digits)
    separate = {}
    for seed in seeds:
        rows: list[dict] = []
        run_training(TrialPoint(0.16, 128, seed), DIGITS, QUICKSTART_MODEL, train, report=lambda row, state: rows.append(row), data=digits)
        separate[seed] = rows[-1]
    for key in ("train_loss", "val_loss", "val_acc"):
        values = [separate[s][key] for s in seeds]
        spread = max(values) - min(values)
        sd = statistics.stdev(values)
        for s in seeds:
            assert final[s]["status"] == "finished" and final[s]["epoch"] == 40
            assert min(values) - sd <= final[s][key] <= max(values) + sd, (key, s, final[s][key], values)
            assert abs(final[s][key] - separate[s][key]) <= max(spread, 1e-6), (key, s)


def test_diverged_replicas_stop(digits):
    """A replica whose epoch ends diverged reports status 'diverged' once and is dropped."""
    rows: list[list[dict]] = []
    status = run_replicas(1e4, 32, [0, 1], DIGITS, ModelConfig(depth=3, width=32, batch_norm=False),
                          TrainConfig(epochs=5), report=lambda rs, state: rows.append(rs), data=digits)
    assert status == {0: "diverged", 1: "diverged"}
    assert len(rows) == 1 and [r["status"] for r in rows[0]] == ["diverged", "diverged"]


def test_dropping_a_replica_leaves_the_others_unchanged(digits):
    """select() + rebind(): the kept replicas continue exactly as a stack without the dropped one."""
    cfg = ModelConfig(depth=3, width=32)
    a = StackedMLP.from_seeds([0, 1, 2], cfg, digits.input_shape, 10)
    b = StackedMLP.from_seeds([0, 2], cfg, digits.input_shape, 10)
    oa = StackedSGD(a.parameters(), 0.1, momentum=0.9)
    ob = StackedSGD(b.parameters(), 0.1, momentum=0.9)
    x, y = digits.x_train[:32], digits.y_train[:32]

    def step(model, opt, k):
        loss = cross_entropy_per_replica(model(x.expand(k, -1, -1).contiguous(), training=True), y.expand(k, -1))
        opt.zero_grad()
        loss.sum().backward()
        opt.step()

    step(a, oa, 3)
    step(b, ob, 2)
    keep = torch.tensor([0, 2])
    a.select(keep)
    oa.rebind(a.parameters(), keep)
    for _ in range(3):
        step(a, oa, 2)
        step(b, ob, 2)
    for pa_, pb_ in zip(a.parameters() + a.buffers(), b.parameters() + b.buffers()):
        torch.testing.assert_close(pa_, pb_, rtol=0, atol=1e-6)


def test_spec_groups_seeds():
    from sweeps.spec import SpecError, expand_points, spec_from_dict
    from tests.conftest import tiny_spec

    spec = spec_from_dict(tiny_spec(train={"epochs": 1, "replicas": 2}, grid={"lr": [0.1], "batch_size": [32],
                                                                                "seed": [0, 1, 2]}))
    assert expand_points(spec) == [{"lr": 0.1, "batch_size": 32, "seeds": [0, 1]},
                                   {"lr": 0.1, "batch_size": 32, "seeds": [2]}]
    single = spec_from_dict(tiny_spec(grid={"seed": [0, 1]}))
    assert all("seed" in p and "seeds" not in p for p in expand_points(single))
    with pytest.raises(SpecError, match="train.replicas: must be >= 1"):
        spec_from_dict(tiny_spec(train={"replicas": 0}))


def test_sweep_with_replicas_writes_one_trial_per_seed(ray_local, tmp_path):
    """A real local Ray sweep, train.replicas 2 and 2 seeds: one Tune trial, two trial ids in
    the tables, exactly epochs rows each."""
    from analysis.tables import load_metrics, load_trials
    from sweeps.cli import main
    from tests.conftest import tiny_spec, write_yaml

    spec = write_yaml(tmp_path / "rep.yaml", tiny_spec(
        "rep", train={"epochs": 3, "replicas": 2}, grid={"lr": [0.1], "batch_size": [32], "seed": [0, 1]}))
    assert main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--no-report"]) == 0
    run_dir = tmp_path / "runs" / "rep"
    metrics = load_metrics(run_dir)
    assert metrics.num_rows == 2 * 3
    ids = sorted(set(metrics.column("trial_id").to_pylist()))
    assert len(ids) == 2 and {i.rsplit("-s", 1)[1] for i in ids} == {"0", "1"}
    assert ids[0].rsplit("-s", 1)[0] == ids[1].rsplit("-s", 1)[0]  # one Tune trial behind both
    trials = load_trials(run_dir).to_pylist()
    assert sorted(t["seed"] for t in trials) == [0, 1]
    for t in trials:
        assert t["status"] == "finished" and t["epochs_done"] == 3 and t["lr"] == 0.1 and t["batch_size"] == 32
        assert t["cfg.train.replicas"] == 2
    # lrbs status shows the per-seed trials of the tables, with the Tune trial's status.
    from sweeps.status import read_status

    status = read_status(run_dir)
    assert sorted(s.trial_id for s in status) == ids
    assert all(s.status == "TERMINATED" and s.epochs_done == 3 and s.seed in (0, 1) for s in status)


# ---------------------------------------------------------------------------------------------
# Checkpoints: run_replicas(start_state=...) continues with the rows of an uninterrupted run

class _Stop(Exception):
    """Raised from a report callback to end a run after a checkpoint, as a crash would."""


def _roundtrip(state: dict) -> dict:
    """The checkpoint as a trial stores and reloads it: torch.save, torch.load(weights_only=True)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def _stop_after(epoch: int, rows: list[dict], saved: list[dict]):
    def report(rs, state):
        rows.extend(rs)
        if rs[0]["epoch"] == epoch:
            saved.append(_roundtrip(state()))
            raise _Stop
    return report


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("epoch_s", "wall_s")} for r in rows]


def _resume_case(data, lr, seeds, cfg, train, stop_epoch):
    """(uninterrupted rows, rows before the stop, the checkpoint, rows after resuming, statuses)."""
    full: list[dict] = []
    full_status = run_replicas(lr, 32, seeds, DIGITS, cfg, train, report=lambda rs, state: full.extend(rs), data=data)
    before: list[dict] = []
    saved: list[dict] = []
    with pytest.raises(_Stop):
        run_replicas(lr, 32, seeds, DIGITS, cfg, train, report=_stop_after(stop_epoch, before, saved), data=data)
    (ckpt,) = saved
    after: list[dict] = []
    status = run_replicas(lr, 32, seeds, DIGITS, cfg, train, report=lambda rs, state: after.extend(rs),
                          data=data, start_state=ckpt)
    assert status == full_status
    return full, before, ckpt, after


def test_resume_from_checkpoint_matches_uninterrupted_run(digits):
    """Stopped after epoch 2 of 4 (momentum and weight decay on, batch norm), resumed from the
    reloaded checkpoint: epochs 3-4 are the uninterrupted run's rows, number for number."""
    cfg = ModelConfig(name="mlp", depth=3, width=64, batch_norm=True)
    train = TrainConfig(epochs=4, momentum=0.9, weight_decay=1e-3)
    full, before, ckpt, after = _resume_case(digits, 0.1, [0, 1], cfg, train, stop_epoch=2)
    assert ckpt["epoch"] == 2 and ckpt["active"] == [0, 1] and ckpt["status"] == ["running", "running"]
    assert ckpt["momentum"] is not None and len(ckpt["order_rng"]) == 2
    assert _without_timing(before) == _without_timing(full[:4])
    assert [(r["epoch"], r["seed"]) for r in after] == [(3, 0), (3, 1), (4, 0), (4, 1)]
    assert _without_timing(after) == _without_timing(full[4:])
    assert all(r["wall_s"] > ckpt["wall_s"] for r in after)  # training time continues


def test_resume_after_a_replica_diverged_keeps_the_survivors(digits):
    """Seed 2 diverges in epoch 1 (lr 2, momentum 0.9, no batch norm) and is dropped; seed 0
    trains on. The epoch-2 checkpoint holds only seed 0's stacks and momentum (active position 1),
    and the resumed run reports seed 0's epochs 3-4 exactly as the uninterrupted run does."""
    cfg = ModelConfig(name="mlp", depth=3, width=64, batch_norm=False)
    train = TrainConfig(epochs=4, momentum=0.9)
    full, before, ckpt, after = _resume_case(digits, 2.0, [2, 0], cfg, train, stop_epoch=2)
    # The premise: seed 2 diverged before the checkpoint, seed 0 did not.
    assert [(r["epoch"], r["seed"], r["status"]) for r in full] == [
        (1, 2, "diverged"), (1, 0, "running"), (2, 0, "running"), (3, 0, "running"), (4, 0, "finished")]
    assert ckpt["active"] == [1] and ckpt["status"] == ["diverged", "running"]
    assert all(w.shape[0] == 1 for w in ckpt["model"]["weights"]) and all(b.shape[0] == 1 for b in ckpt["momentum"])
    assert _without_timing(after) == _without_timing(full[3:])


def test_resume_after_every_replica_diverged_reports_nothing(digits):
    """A checkpoint taken when every replica had diverged: resuming trains nothing and returns the
    statuses (a restored trial that had ended)."""
    cfg = ModelConfig(depth=3, width=32, batch_norm=False)
    saved: list[dict] = []
    status = run_replicas(1e4, 32, [0, 1], DIGITS, cfg, TrainConfig(epochs=5), data=digits,
                          report=lambda rs, state: saved.append(_roundtrip(state())))
    assert status == {0: "diverged", 1: "diverged"} and len(saved) == 1
    (ckpt,) = saved
    assert ckpt["active"] == [] and ckpt["model"] is None
    rows: list = []
    again = run_replicas(1e4, 32, [0, 1], DIGITS, cfg, TrainConfig(epochs=5), data=digits,
                         report=lambda rs, state: rows.append(rs), start_state=ckpt)
    assert again == status and rows == []
    with pytest.raises(ValueError, match="checkpoint of seeds"):
        run_replicas(1e4, 32, [0, 2], DIGITS, cfg, TrainConfig(epochs=5), data=digits,
                     report=lambda rs, state: None, start_state=ckpt)


@pytest.mark.slow
def test_replica_trial_fails_and_continues_from_its_checkpoint(ray_local, tmp_path):
    """A real local Ray sweep, train.replicas 2: the trial raises at epoch 2 (resilience.fail_at_epoch)
    and Tune restarts it (max_failures 1) from its epoch-1 checkpoint. Each seed's trial id ends
    with exactly one row per epoch, equal to run_replicas run without Ray or a fault, and no epoch
    was written twice: a restart from scratch would have written epoch 1 again."""
    import json

    from analysis.tables import load_metrics_with_report
    from sweeps.cli import main
    from sweeps.replica_points import replica_trial_id
    from sweeps.status import read_status
    from tests.conftest import tiny_spec, write_yaml
    from trainables.config import from_dict

    epochs = 3
    spec = write_yaml(tmp_path / "repf.yaml", tiny_spec(
        "repf", train={"epochs": epochs, "replicas": 2, "momentum": 0.9},
        grid={"lr": [0.1], "batch_size": [32], "seed": [0, 1]},
        resilience={"fail_at_epoch": 2, "max_failures": 1}))
    assert main(["run", str(spec), "--storage", str(tmp_path / "runs"), "--no-report"]) == 0
    run_dir = tmp_path / "runs" / "repf"
    metrics, report = load_metrics_with_report(run_dir)
    rows = metrics.to_pylist()
    assert report.rows_read == 2 * epochs and report.superseded_rows == 0  # epoch 1 written once
    assert len(list((run_dir / "faults").iterdir())) == 1  # the fault did fire

    config = json.loads(rows[0]["config_json"])
    expected: list[dict] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside the trial (resources.cpu: 1)
    try:
        run_replicas(0.1, 32, [0, 1], from_dict(DatasetConfig, config["dataset"]),
                     from_dict(ModelConfig, config["model"]), from_dict(TrainConfig, config["train"]),
                     report=lambda rs, state: expected.extend(rs))
    finally:
        torch.set_num_threads(threads)
    compared = ("epoch", "lr", "batch_size", "seed", "steps", "examples_seen", "train_loss", "train_acc",
                "val_loss", "val_acc", "status")
    tune_trial = rows[0]["trial_id"].rsplit("-s", 1)[0]
    for seed in (0, 1):
        got = [r for r in rows if r["trial_id"] == replica_trial_id(tune_trial, seed)]
        assert [r["epoch"] for r in got] == list(range(1, epochs + 1))
        want = [r for r in expected if r["seed"] == seed]
        assert [{k: r[k] for k in compared} for r in got] == [{k: r[k] for k in compared} for r in want]
        assert got[0]["wall_s"] < got[1]["wall_s"] < got[2]["wall_s"]  # the clock went on from the checkpoint
    # lrbs status lists the per-seed trials, each with the Tune trial's status and failure count.
    per_seed = [t for t in read_status(run_dir) if t.trial_id.startswith(f"{tune_trial}-s")]
    assert len(per_seed) == 2 and all(t.status == "TERMINATED" and t.failures == 1 for t in per_seed)
    ckpts = sorted(p.name for p in next(run_dir.glob("train_trial_*")).glob("checkpoint_*"))
    assert len(ckpts) == 2  # resilience.keep_checkpoints (default 2) of the epochs 1..3 saved


def test_sequential_fallback_resumes_between_and_within_seeds():
    """Models without a stacked path run seed after seed; their checkpoint is the current seed's
    run_training checkpoint plus the position in the seed list. Stopped after seed 0's last
    epoch, or inside seed 1, the resumed run reports the uninterrupted run's remaining rows."""
    ds = DatasetConfig(name="digits", val_fraction=0.2, n_train=128)
    data = load_dataset(ds)
    cfg = ModelConfig(name="resnet20", width_mult=0.25)
    train = TrainConfig(epochs=2, momentum=0.9)
    full: list[dict] = []
    run_replicas(0.05, 32, [0, 1], ds, cfg, train, report=lambda rs, state: full.extend(rs), data=data)
    assert [(r["seed"], r["epoch"]) for r in full] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for n_before in (2, 3):  # stop after seed 0's epoch 2 (it had finished), after seed 1's epoch 1
        before: list[dict] = []
        saved: list[dict] = []

        def report(rs, state):
            before.extend(rs)
            if len(before) == n_before:
                saved.append(_roundtrip(state()))
                raise _Stop

        with pytest.raises(_Stop):
            run_replicas(0.05, 32, [0, 1], ds, cfg, train, report=report, data=data)
        after: list[dict] = []
        status = run_replicas(0.05, 32, [0, 1], ds, cfg, train, report=lambda rs, state: after.extend(rs),
                              data=data, start_state=saved[0])
        assert status == {0: "finished", 1: "finished"}
        assert _without_timing(after) == _without_timing(full[n_before:])
