"""The SGD loop without Ray: rows, determinism, divergence as a result."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.data import train_set_size
from lrbs.trainables.models import can_stack
from lrbs.trainables.packed_models import choose_layout
from lrbs.trainables.schedules import ScheduleConfig
from lrbs.trainables.train_loop import DIVERGED, FINISHED, TrialPoint, run_pack, run_training

DIGITS = DatasetConfig(name="digits", val_fraction=0.2)
SMALL = ModelConfig(name="mlp", options=dict(depth=3, width=32, batch_norm=True))


def _run(point, epochs=3, model=SMALL, train=None, **kwargs):
    rows = []
    status = run_training(
        point, DIGITS, model, train or TrainConfig(epochs=epochs), lambda row, state: rows.append(row), **kwargs
    )
    return status, rows


def test_one_row_per_epoch_with_the_point():
    status, rows = _run(TrialPoint(lr=0.1, batch_size=64, seed=0), epochs=3)
    assert status == FINISHED
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["status"] for r in rows] == ["running", "running", "finished"]
    n = rows[0]["n_train"]
    assert n == train_set_size(DIGITS) and 1400 < n < 1450  # 1797 digits, 20% held out
    steps = n // 64  # the ragged last batch is dropped: every step sees exactly S examples
    assert [r["steps"] for r in rows] == [steps, 2 * steps, 3 * steps]
    assert rows[-1]["examples_seen"] == 3 * steps * 64
    for r in rows:
        assert r["lr"] == 0.1 and r["batch_size"] == 64 and r["ratio"] == 0.1 / 64 and r["seed"] == 0
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0
        assert r["wall_s"] >= r["epoch_s"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns


def test_same_seed_same_trajectory_other_seed_differs():
    torch.set_num_threads(1)
    _, a = _run(TrialPoint(lr=0.1, batch_size=64, seed=3), epochs=2)
    _, b = _run(TrialPoint(lr=0.1, batch_size=64, seed=3), epochs=2)
    _, c = _run(TrialPoint(lr=0.1, batch_size=64, seed=4), epochs=2)
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert a[-1]["train_loss"] != c[-1]["train_loss"]


def test_exploding_loss_is_a_diverged_result_not_a_crash():
    # No batch norm and a huge step: the loss blows up within the first epoch.
    model = ModelConfig(name="mlp", options=dict(depth=3, width=32, batch_norm=False))
    status, rows = _run(TrialPoint(lr=50.0, batch_size=32, seed=0), epochs=5, model=model)
    assert status == DIVERGED
    assert rows[-1]["status"] == DIVERGED
    assert len(rows) < 5  # training stopped at the divergence
    last = rows[-1]["train_loss"]
    assert not math.isfinite(last) or last > 10 * math.log(10)


# bf16 on a convnet twin: channels_last weights and momentum buffers go through the checkpoint.
@pytest.mark.parametrize(
    "model, precision",
    [(SMALL, "fp32"), (ModelConfig(name="vgg11", options=dict(width_mult=0.0625)), "bf16")],
    ids=["mlp-fp32", "vgg11-bf16"],
)
def test_resume_from_a_checkpoint_continues_the_same_run(model, precision):
    """Stop after epoch 2, restart from the saved state: epochs 3-4 match an uninterrupted run."""
    torch.set_num_threads(1)
    point = TrialPoint(lr=0.1, batch_size=64, seed=5)
    train = TrainConfig(epochs=4, momentum=0.9, precision=precision)
    _, full = _run(point, model=model, train=train)

    saved = {}

    def stop_after_two(row, state):
        if row["epoch"] == 2:
            saved.update(torch.load(_roundtrip(state()), weights_only=True))
            raise KeyboardInterrupt  # a killed worker

    try:
        run_training(point, DIGITS, model, train, stop_after_two)
    except KeyboardInterrupt:
        pass
    _, resumed = _run(point, model=model, train=train, start_state=saved)
    assert [r["epoch"] for r in resumed] == [3, 4]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "steps", "examples_seen")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full[2:]]


def _roundtrip(state):
    """Through bytes, as a checkpoint on disk: only tensors and plain data survive weights_only."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_cyclic_batch_schedule_sets_each_epochs_batch_size_and_ratio():
    schedule = ScheduleConfig(kind="cyclic_batch", low=32, high=128, cycle_epochs=4)
    _, rows = _run(TrialPoint(lr=0.05, batch_size=32, seed=0), epochs=4, schedule=schedule)
    assert [r["batch_size"] for r in rows] == [32, 80, 128, 80]
    assert all(r["lr"] == 0.05 and r["ratio"] == 0.05 / r["batch_size"] for r in rows)
    assert all(r["schedule"] == "cyclic_batch" for r in rows)


def test_probes_at_the_end_fill_the_curvature_columns():
    probes = CurvatureConfig(
        n_samples=256, lanczos_iters=10, hutchinson_probes=4, noise_b_small=16, noise_b_big=128, noise_pairs=4
    )
    _, rows = _run(TrialPoint(lr=0.1, batch_size=64, seed=0), epochs=2, probes=probes)
    assert "lambda_max" not in rows[0]  # probes only at the end by default
    last = rows[-1]
    assert last["lambda_max"] > 0 and last["probe_n_samples"] == 256
    assert last["hessian_trace"] > 0 and last["hessian_trace_stderr"] > 0
    assert last["hessian_fro"] >= 0.9 * last["lambda_max"]  # ||H||_F >= |lambda_max|, up to probe noise
    assert last["grad_noise_scale"] is not None and last["probe_s"] > 0


def test_point_n_train_overrides_the_data_set_size():
    _, rows = _run(TrialPoint(lr=0.1, batch_size=32, seed=0, beta=1.0, n_train=500), epochs=1)
    assert rows[0]["n_train"] == 500 and rows[0]["beta"] == 1.0 and rows[0]["steps"] == 500 // 32


def test_checkpoint_clock_saves_by_epochs_by_seconds_and_when_training_stops():
    import time

    from lrbs.trainables.tune_trial import CheckpointClock

    by_time = CheckpointClock(every=None, every_s=3600.0)  # short epochs: no save until training stops
    assert [by_time.due(e, "running") for e in (1, 2, 3)] == [False, False, False]
    assert by_time.due(4, "finished") and by_time.due(2, "diverged")
    by_epoch = CheckpointClock(every=2, every_s=None)
    assert [by_epoch.due(e, "running") for e in (1, 2, 3, 4)] == [False, True, False, True]
    soon = CheckpointClock(every=None, every_s=0.01)
    assert not soon.due(1, "running")
    time.sleep(0.02)
    assert soon.due(2, "running") and not soon.due(3, "running")  # the clock restarts at each save


def test_crop_flip_augmentation_is_per_example_deterministic_and_packs():
    """train.augment: crop_flip crops and flips each example with the member's own draws: the
    same run twice is identical, a packed member equals its run alone, and 'none' changes nothing."""
    from lrbs.trainables import augment

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    params = torch.tensor([[4, 4, 0], [0, 8, 1]])  # centre, no flip; top-right corner, flipped
    out = augment.apply(x, params)
    assert torch.equal(out[0], x[0])  # offset 4 of a 4-pixel pad: the image itself
    padded = torch.nn.functional.pad(x[1], (4, 4, 4, 4))
    assert torch.equal(out[1], padded[:, 0:5, 8:13].flip(-1))

    from lrbs.trainables.config import DatasetConfig
    from lrbs.trainables.tensor_data import TensorData

    g = torch.Generator().manual_seed(0)
    data = TensorData(
        torch.randn(96, 3, 8, 8, generator=g),
        torch.randint(0, 4, (96,), generator=g),
        torch.randn(32, 3, 8, 8, generator=g),
        torch.randint(0, 4, (32,), generator=g),
        4,
    )
    conv = ModelConfig(name="resnet20", options=dict(width_mult=0.25))
    train = TrainConfig(epochs=2, augment="crop_flip", pack=2)
    pts = [TrialPoint(lr=0.05, batch_size=16, seed=0), TrialPoint(lr=0.1, batch_size=16, seed=1)]

    def run(points, train):
        rows = []
        run_pack(points, DatasetConfig(), conv, train, lambda r, st: rows.extend(r), data=data)
        return rows

    packed = run(pts, train)
    assert [r["train_loss"] for r in run(pts, train)] == [r["train_loss"] for r in packed]
    alone = run(pts[1:], train)
    assert [r["train_loss"] for r in packed if r["member"] == 1] == pytest.approx(
        [r["train_loss"] for r in alone], rel=1e-5
    )
    plain = run(pts[1:], TrainConfig(epochs=2, pack=2))
    assert [r["train_loss"] for r in plain] != [r["train_loss"] for r in alone]


def _final_weights_eval(model_cfg, states, data, k, split_seed=0):
    """An independent evaluation of final weights: for each state dict a plain module in eval
    mode, one forward pass over the subset the spec promises (k training examples drawn by a
    randperm seeded with the data split's seed, then sorted) -> [(loss in nats, accuracy)]."""
    from lrbs.trainables.models import build_model

    n = len(data.x_train)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))[: min(k, n)].sort().values
    x, y = data.x_train[idx], data.y_train[idx]
    out = []
    for state in states:
        model = build_model(model_cfg, data.input_shape, data.n_classes)
        model.load_state_dict(state)
        with torch.no_grad():
            logits = model.eval()(x)
        out.append(
            (torch.nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).double().mean().item())
        )
    return out


def _pack_rows_and_final_weights(points, model_cfg, train, data):
    """Each member's rows and the weights it ended with (from the checkpoint of its last epoch)."""
    rows: list[list[dict]] = [[] for _ in points]
    final: dict[int, dict] = {}

    def report(rs, state):
        for r in rs:
            rows[r["member"]].append(r)
        if rs[0]["epoch"] == train.epochs:
            final.update({j: m["model"] for j, m in enumerate(state()["members"]) if m["model"] is not None})

    run_pack(points, DIGITS, model_cfg, train, report, data=data)
    return rows, final


@pytest.mark.parametrize("samples", [300, 10_000])  # a subset, and more than the training set (capped)
def test_last_epoch_rows_hold_the_final_weights_eval_mode_train_loss_and_accuracy(samples):
    """A pack of three batch-norm MLPs and one that diverges: on the last epoch each surviving
    member's train_eval_loss/acc equal a plain module's eval-mode pass with its final weights
    over the same seeded subset; earlier rows and the diverged member have none."""
    from lrbs.trainables.data import load_dataset

    torch.set_num_threads(1)
    data = load_dataset(DIGITS)
    model = ModelConfig(name="mlp", options=dict(depth=3, width=32, batch_norm=True))
    points = [TrialPoint(0.05, 32, 0), TrialPoint(0.2, 32, 1), TrialPoint(0.1, 32, 2), TrialPoint(1e4, 32, 3)]
    train = TrainConfig(epochs=3, momentum=0.9, train_eval_samples=samples)
    rows, final = _pack_rows_and_final_weights(points, model, train, data)
    assert rows[3][-1]["status"] == DIVERGED and "train_eval_acc" not in rows[3][-1]
    assert sorted(final) == [0, 1, 2]
    expected = _final_weights_eval(model, [final[j] for j in (0, 1, 2)], data, samples)
    n_eval = min(samples, len(data.x_train))
    for j, (loss, acc) in zip((0, 1, 2), expected):
        last = rows[j][-1]
        assert last["status"] == FINISHED and last["epoch"] == 3
        assert last["train_eval_loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
        assert last["train_eval_acc"] == pytest.approx(acc, abs=0.5 / n_eval)  # the same count of hits
        assert all(r.get("train_eval_loss") is None and r.get("train_eval_acc") is None for r in rows[j][:-1])
    # eval mode on the final weights, not the train-mode running mean over the last epoch
    assert any(rows[j][-1]["train_eval_acc"] != rows[j][-1]["train_acc"] for j in (0, 1, 2))


def test_train_eval_subset_is_the_same_for_every_trial_and_a_pack_of_one():
    """Alone (a pack of one) each point gets the values it gets in a pack; with the probes'
    seed and size the subset is the probe subset, so train_eval_loss is probe_loss."""
    torch.set_num_threads(1)
    probes = CurvatureConfig(n_samples=400, lanczos_iters=4, hutchinson_probes=4, noise_scale=False, seed=0)
    train = TrainConfig(epochs=2, train_eval_samples=400)
    points = [TrialPoint(0.1, 64, 0), TrialPoint(0.3, 64, 1)]
    packed: list[list[dict]] = [[], []]
    run_pack(points, DIGITS, SMALL, train, lambda rs, state: [packed[r["member"]].append(r) for r in rs], probes=probes)
    for point, member_rows in zip(points, packed):
        _, alone = _run(point, train=train, probes=probes)
        assert alone[-1]["train_eval_loss"] == member_rows[-1]["train_eval_loss"]
        assert alone[-1]["train_eval_acc"] == member_rows[-1]["train_eval_acc"]
        assert alone[-1]["train_eval_loss"] == pytest.approx(alone[-1]["probe_loss"], rel=1e-5)


def stacking_net(input_shape, n_classes, width=16):
    """A user's model factory (``model.name: "module:stacking_net"``) that opts in to packing."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Linear(width, n_classes),
    )


stacking_net.stacked = True  # train.pack: auto packs it, members in the stacked layout (docs/extending.md)


def test_a_user_factory_that_opts_in_is_stacked_and_trains_each_point_as_the_loop_layout():
    torch.set_num_threads(1)
    user = ModelConfig(name=f"{__name__}:stacking_net", options={"width": 16})
    assert can_stack(user) and choose_layout(user) == "stacked"  # what run_pack and train.pack: auto ask
    assert not can_stack(ModelConfig(name="resnet20")) and can_stack(SMALL)
    points = [TrialPoint(0.1, 64, 0), TrialPoint(0.05, 64, 1)]
    rows = {}
    for layout in ("auto", "loop"):
        rows[layout] = [[], []]
        train = TrainConfig(epochs=2, momentum=0.9, pack_layout=layout)
        run_pack(points, DIGITS, user, train, lambda rs, state: [rows[layout][r["member"]].append(r) for r in rs])
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "train_eval_loss")
    for stacked, loop in zip(rows["auto"], rows["loop"]):  # vmap and the loop agree to float32 round-off
        assert [r["epoch"] for r in stacked] == [1, 2] and [r["status"] for r in stacked] == [r["status"] for r in loop]
        for a, b in zip(stacked, loop):
            assert [a[k] for k in keys if k in a] == pytest.approx([b[k] for k in keys if k in b], rel=1e-4, abs=1e-6)
