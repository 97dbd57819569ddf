"""Seconds per training step of a pack, measured on the engine's own step (``train_loop.Steps``).

Shared by ``benchmarks.run`` (CPU and GPU tables) and ``benchmarks.gpu_check`` (the projection
of paper-scale sweeps). The step is the one trials run: batch gather from per-member index
rows, forward, backward, per-member SGD update, loss and accuracy accumulation; replayed from a
CUDA graph when ``graphed`` (the capture and its eager warm-up steps are not timed).
"""

from __future__ import annotations

import time

import torch

from lrbs.trainables.config import ModelConfig
from lrbs.trainables.models import build_model
from lrbs.trainables.pack_sgd import PackSGD
from lrbs.trainables.packed_models import build_pack, choose_layout
from lrbs.trainables.tensor_data import TensorData
from lrbs.trainables.train_loop import Steps, step_numerics


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pack_step_seconds(
    model_cfg: ModelConfig,
    data: TensorData,
    k: int,
    s: int,
    device: torch.device,
    graphed: bool,
    n_steps: int = 200,
    layout: str = "auto",
    momentum: float = 0.0,
    precision: str = "fp32",
) -> float:
    """Mean seconds per step of K members at batch size S (after a warm-up epoch slice), in
    ``train.precision`` ``precision`` (tf32 and bf16 as a trial's steps run them)."""
    torch.manual_seed(0)
    modules = [build_model(model_cfg, data.input_shape, data.n_classes).to(device).train() for _ in range(k)]
    pack = build_pack(modules, choose_layout(model_cfg, layout), len(data.input_shape))
    opt = PackSGD(pack, k, device, momentum)
    opt.set_lr([0.01] * k)
    steps = Steps(pack, opt, data.x_train, data.y_train, graphed, precision)
    n = len(data.x_train)
    per_epoch = n // s
    gen = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(k)]).to(device)
    with step_numerics(precision):
        steps.epoch(perms, s, min(per_epoch, 5))  # warm-up (and the graph's capture)
        _sync(device)
        t = time.perf_counter()
        done = 0
        while done < n_steps:
            m = min(per_epoch, n_steps - done)
            steps.epoch(perms, s, m)
            done += m
        _sync(device)
    return (time.perf_counter() - t) / done
