"""The SGD loop without Ray: rows, determinism, divergence as a result."""
from __future__ import annotations

import math

import torch

from trainables.data import train_set_size
from trainables.config import DatasetConfig, ModelConfig, TrainConfig
from trainables.train_loop import DIVERGED, FINISHED, TrialPoint, run_training

DIGITS = DatasetConfig(name="digits", val_fraction=0.2)
SMALL = ModelConfig(name="mlp", depth=3, width=32, batch_norm=True)


def _run(point, epochs=3, model=SMALL, train=None):
    rows = []
    status = run_training(point, DIGITS, model, train or TrainConfig(epochs=epochs), rows.append)
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
    model = ModelConfig(name="mlp", depth=3, width=32, batch_norm=False)
    status, rows = _run(TrialPoint(lr=50.0, batch_size=32, seed=0), epochs=5, model=model)
    assert status == DIVERGED
    assert rows[-1]["status"] == DIVERGED
    assert len(rows) < 5  # training stopped at the divergence
    last = rows[-1]["train_loss"]
    assert not math.isfinite(last) or last > 10 * math.log(10)
