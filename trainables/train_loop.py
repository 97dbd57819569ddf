"""The SGD loop that runs inside one trial.

Data live on the trial's device as tensors; each epoch draws a seeded ``randperm`` and batches
are index slices of it (airbench style: no DataLoader, no per-item Python in the hot loop).
``run_training`` is plain Python with a ``report`` callback so it can be tested and benchmarked
without Ray; ``train_trial`` is the Ray Tune function trainable around it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F

from trainables.config import DatasetConfig, ModelConfig, TrainConfig, from_dict
from trainables.data import TensorData, load_dataset
from trainables.models import build_model

# Row status values (the ``status`` column of the metric tables).
RUNNING, FINISHED, DIVERGED = "running", "finished", "diverged"


@dataclass(frozen=True)
class TrialPoint:
    """What varies between the trials of a sweep."""
    lr: float
    batch_size: int
    seed: int


def pick_device(gpus: float) -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES for trials that asked for a GPU (or a fraction of one).
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy (nats per example) and accuracy, in eval mode; restores the mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size])
        yb = y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(x), 1)
    return loss_sum.item() / n, correct.item() / n  # GPU sync point: once per evaluation


def run_training(
    point: TrialPoint,
    dataset: DatasetConfig,
    model_cfg: ModelConfig,
    train: TrainConfig,
    report: Callable[[dict[str, Any]], None],
    device: torch.device | str = "cpu",
    data: TensorData | None = None,
) -> str:
    """Train one model with plain SGD; call ``report(row)`` after every epoch. Returns the status.

    Steps per epoch are ``floor(N / S)`` so every step sees exactly S examples: the SDE argument
    is about the noise of an S-example mean, and a ragged last batch would change it.
    """
    device = torch.device(device)
    data = (data or load_dataset(dataset)).to(device)
    torch.manual_seed(point.seed)  # initialization
    model = build_model(model_cfg, data.input_shape, data.n_classes).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=point.lr, momentum=train.momentum,
                          weight_decay=train.weight_decay)
    # Batch order has its own CPU generator: the same order on any device, and unaffected by
    # whatever else draws random numbers (dropout, probes).
    order_gen = torch.Generator().manual_seed(point.seed)
    n = len(data.x_train)
    s = point.batch_size
    steps_per_epoch = n // s
    blowup = train.divergence_factor * math.log(data.n_classes)  # nats per example
    examples_seen = 0
    t_start = time.perf_counter()
    status = RUNNING
    for epoch in range(1, train.epochs + 1):
        t_epoch = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen).to(device, non_blocking=True)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for step in range(steps_per_epoch):
            idx = perm[step * s:(step + 1) * s]
            xb, yb = data.x_train[idx], data.y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)  # mean over the S examples of the batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Accumulate on the device; reading them back would sync the GPU every step.
            loss_sum += loss.detach().double() * s
            correct += (logits.detach().argmax(1) == yb).sum()
        seen = steps_per_epoch * s
        examples_seen += seen
        train_loss = loss_sum.item() / seen  # GPU sync point: once per epoch
        train_acc = correct.item() / seen
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, train.eval_batch_size)
        if not math.isfinite(train_loss) or train_loss > blowup:
            status = DIVERGED
        elif epoch == train.epochs:
            status = FINISHED
        now = time.perf_counter()
        report({
            "epoch": epoch,
            "lr": point.lr,
            "batch_size": s,
            "ratio": point.lr / s,
            "seed": point.seed,
            "n_train": n,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "steps": epoch * steps_per_epoch,
            "examples_seen": examples_seen,
            "epoch_s": now - t_epoch,
            "wall_s": now - t_start,
            "status": status,
        })
        if status == DIVERGED:
            break
    return status


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: ``config`` is the param space made by ``sweeps.spec``."""
    from ray import tune

    resources = config.get("resources", {})
    torch.set_num_threads(max(1, int(resources.get("cpu", 1))))
    if "seeds" in config["point"]:  # train.replicas > 1: several seeds in one trial
        from trainables.replicas import train_replica_trial
        return train_replica_trial(config, device=pick_device(float(resources.get("gpu", 0))))
    run_training(
        point=TrialPoint(**config["point"]),
        dataset=from_dict(DatasetConfig, config["dataset"]),
        model_cfg=from_dict(ModelConfig, config["model"]),
        train=from_dict(TrainConfig, config["train"]),
        report=tune.report,
        device=pick_device(float(resources.get("gpu", 0))),
    )
