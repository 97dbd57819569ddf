"""The SGD loop that runs inside one trial.

Data live on the trial's device as tensors; each epoch draws a seeded ``randperm`` and batches
are index slices of it (airbench style: no DataLoader, no per-item Python in the hot loop).
``run_training`` is plain Python with a ``report`` callback so it can be tested and benchmarked
without Ray; ``train_trial`` is the Ray Tune function trainable around it, with per-epoch
checkpoints that let a restarted trial continue the same batch order.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainables import curvature
from trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig, from_dict
from trainables.data import TensorData, load_dataset
from trainables.models import build_model
from trainables.schedules import ScheduleConfig, schedule_at, schedule_from_dict

# Row status values (the ``status`` column of the metric tables).
RUNNING, FINISHED, DIVERGED = "running", "finished", "diverged"
CHECKPOINT_FILE = "state.pt"

# report(row, state): ``state()`` builds the checkpoint dict; a reporter that does not
# checkpoint never calls it, so plain runs pay nothing for it.
Reporter = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]


@dataclass(frozen=True)
class TrialPoint:
    """What varies between the trials of a sweep (see ``sweeps.spec.expand_points``)."""
    lr: float
    batch_size: int
    seed: int
    beta: float | None = None       # beta family member: lr = lr0*beta, S = S0*beta (Fig. 5)
    rescale: str | None = None      # rescaling rule that derived lr from S (Fig. 2)
    n_train: int | None = None      # per-point training-set size (overrides dataset.n_train)
    variant: str | None = None      # label of a named explicit point (Fig. 1)
    schedule: dict | None = None    # per-point schedule (replaces the sweep's schedule)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialPoint":
        return from_dict(cls, data)


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


def probe_due(cfg: CurvatureConfig | None, epoch: int, last_epoch: int) -> bool:
    if cfg is None:
        return False
    if epoch == last_epoch:
        return True
    return isinstance(cfg.every, int) and epoch % cfg.every == 0


def run_probes(model: nn.Module, data: TensorData, cfg: CurvatureConfig) -> dict[str, Any]:
    """Sharpness and noise-scale columns for one epoch row (probes restore the model's mode)."""
    t0 = time.perf_counter()
    n = len(data.x_train)
    idx = curvature.probe_subset(n, min(cfg.n_samples, n), cfg.seed)
    batches = curvature.make_batches(data.x_train, data.y_train, idx, cfg.batch_size)
    eig = curvature.top_eigenvalue(model, F.cross_entropy, batches, max_iters=cfg.lanczos_iters,
                                   tol=cfg.lanczos_tol, seed=cfg.seed, retain_graph=cfg.retain_graph)
    trace, fro = curvature.hessian_trace_and_frobenius(model, F.cross_entropy, batches,
                                                       n_probes=cfg.hutchinson_probes, seed=cfg.seed,
                                                       retain_graph=cfg.retain_graph)
    row: dict[str, Any] = {
        "lambda_max": eig.value, "lambda_max_converged": eig.converged, "lambda_max_n_hvp": eig.n_hvp,
        "hessian_trace": trace.value, "hessian_trace_stderr": trace.stderr,
        "hessian_fro": fro.value, "hessian_fro_stderr": fro.stderr,
        "probe_n_samples": len(idx), "grad_noise_scale": None,
    }
    if cfg.noise_scale and cfg.noise_b_big <= n:
        xs, ys = data.x_train[idx.to(data.x_train.device)], data.y_train[idx.to(data.y_train.device)]
        ns = curvature.gradient_noise_scale(model, F.cross_entropy, xs, ys, b_small=cfg.noise_b_small,
                                            b_big=cfg.noise_b_big, n_pairs=cfg.noise_pairs, seed=cfg.seed,
                                            chunk_size=cfg.batch_size)
        row["grad_noise_scale"] = ns.b_simple
    row["probe_s"] = time.perf_counter() - t0
    return row


def run_training(
    point: TrialPoint,
    dataset: DatasetConfig,
    model_cfg: ModelConfig,
    train: TrainConfig,
    report: Reporter,
    device: torch.device | str = "cpu",
    data: TensorData | None = None,
    schedule: ScheduleConfig | None = None,
    probes: CurvatureConfig | None = None,
    start_state: dict[str, Any] | None = None,
) -> str:
    """Train one model with plain SGD; call ``report(row, state)`` after every epoch. Returns the status.

    Steps per epoch are ``floor(N / S)`` so every step sees exactly S examples: the SDE argument
    is about the noise of an S-example mean, and a ragged last batch would change it.
    ``start_state`` (a checkpoint made by ``state()``) continues a trial where it stopped, with
    the same weights, optimizer, batch order and random state as if it had never stopped.
    """
    device = torch.device(device)
    schedule = schedule_from_dict(point.schedule) if point.schedule else (schedule or ScheduleConfig())
    if point.n_train is not None:
        dataset = dataclasses.replace(dataset, n_train=point.n_train)
    data = (data or load_dataset(dataset)).to(device)
    torch.manual_seed(point.seed)  # initialization
    model = build_model(model_cfg, data.input_shape, data.n_classes).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=point.lr, momentum=train.momentum,
                          weight_decay=train.weight_decay)
    # Batch order has its own CPU generator: the same order on any device, and unaffected by
    # whatever else draws random numbers.
    order_gen = torch.Generator().manual_seed(point.seed)
    n = len(data.x_train)
    blowup = train.divergence_factor * math.log(data.n_classes)  # nats per example
    examples_seen = steps = 0
    first_epoch, wall_before = 1, 0.0
    if start_state is not None:
        model.load_state_dict(start_state["model"])
        opt.load_state_dict(start_state["optimizer"])
        order_gen.set_state(start_state["order_rng"])
        torch.set_rng_state(start_state["torch_rng"])
        first_epoch = int(start_state["epoch"]) + 1
        examples_seen, steps = int(start_state["examples_seen"]), int(start_state["steps"])
        wall_before = float(start_state["wall_s"])
    t_start = time.perf_counter()
    status = RUNNING
    for epoch in range(first_epoch, train.epochs + 1):
        t_epoch = time.perf_counter()
        lr, s = schedule_at(schedule, epoch - 1, point.lr, point.batch_size)
        for group in opt.param_groups:
            group["lr"] = lr
        steps_per_epoch = n // s
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
        steps += steps_per_epoch
        train_loss = loss_sum.item() / seen  # GPU sync point: once per epoch
        train_acc = correct.item() / seen
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, train.eval_batch_size)
        if not math.isfinite(train_loss) or train_loss > blowup:
            status = DIVERGED
        elif epoch == train.epochs:
            status = FINISHED
        row: dict[str, Any] = {
            "epoch": epoch, "lr": lr, "batch_size": s, "ratio": lr / s, "seed": point.seed,
            "n_train": n, "beta": point.beta, "rescale": point.rescale, "variant": point.variant,
            "schedule": schedule.kind,
            "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
            "steps": steps, "examples_seen": examples_seen,
        }
        # No probes on a diverged model: its Hessian is not a minimum's (and may be NaN).
        if status != DIVERGED and probe_due(probes, epoch, train.epochs):
            row.update(run_probes(model, data, probes))
        now = time.perf_counter()
        row.update(epoch_s=now - t_epoch, wall_s=wall_before + now - t_start, status=status)

        def state(epoch=epoch, row=row) -> dict[str, Any]:
            return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "order_rng": order_gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "epoch": epoch, "examples_seen": examples_seen, "steps": steps,
                    "wall_s": row["wall_s"], "status": status}

        report(row, state)
        if status == DIVERGED:
            break
    return status


def load_state(directory: str | Path) -> dict[str, Any]:
    """A checkpoint written by ``train_trial``; tensors and plain data only (no unpickling of code)."""
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def tune_start_state() -> dict[str, Any] | None:
    """The state in the trial's latest Tune checkpoint (after a failure or ``lrbs resume``), if any."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_state(directory)


def tune_report(result: dict[str, Any], state: Callable[[], dict[str, Any]], *, epoch: int, status: str,
                checkpoint_every: int) -> None:
    """``tune.report(result)``, with the checkpoint ``state()`` every ``checkpoint_every`` epochs
    and whenever training stops (finished or diverged)."""
    from ray import tune

    if status == RUNNING and epoch % checkpoint_every:
        tune.report(result)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state(), Path(tmp) / CHECKPOINT_FILE)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: ``config`` is the param space made by ``sweeps.spec``."""
    from trainables.faults import maybe_fail

    resources = config.get("resources", {})
    torch.set_num_threads(max(1, int(resources.get("cpu", 1))))
    if "seeds" in config["point"]:  # train.replicas > 1: several seeds in one trial
        from trainables.replicas import train_replica_trial
        # Checkpoints, restores and fault hook as below (see train_replica_trial).
        return train_replica_trial(config, device=pick_device(float(resources.get("gpu", 0))))

    checkpoint_every = int(config.get("resilience", {}).get("checkpoint_every", 1))

    def report(row: dict[str, Any], state: Callable[[], dict[str, Any]]) -> None:
        maybe_fail(config, row["epoch"])  # test hook: resilience.fail_at_epoch (trainables/faults.py)
        tune_report(row, state, epoch=row["epoch"], status=row["status"], checkpoint_every=checkpoint_every)

    run_training(
        point=TrialPoint.from_dict(config["point"]),
        dataset=from_dict(DatasetConfig, config["dataset"]),
        model_cfg=from_dict(ModelConfig, config["model"]),
        train=from_dict(TrainConfig, config["train"]),
        report=report,
        device=pick_device(float(resources.get("gpu", 0))),
        schedule=schedule_from_dict(config.get("schedule")),
        probes=from_dict(CurvatureConfig, config["curvature"]) if config.get("curvature") else None,
        start_state=tune_start_state(),
    )
