"""Rough cost of a sweep before it runs (printed by ``lrbs validate``).

Compute: 3x the forward FLOPs per training example (forward + backward), counted with
``torch.utils.flop_counter`` on the real model, times the examples each trial trains on. Time
per trial is the larger of compute at an assumed sustained rate and a floor per optimizer step
(small-batch steps are bound by kernel launches, not FLOPs). Both assumptions are printed; the
figure is a planning aid, not a measurement (docs/performance.md has measured rates).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sweeps.spec import SweepSpec, expand_points
from trainables.config import ModelConfig
from trainables.data import train_set_size
from trainables.models import build_model

# Per-example input shape and classes of each data set (no files needed).
DATASET_SHAPES = {"digits": ((64,), 10), "synthetic": ((32,), 10), "fashion_mnist": ((1, 28, 28), 10),
                  "cifar10": ((3, 32, 32), 10)}


@dataclass(frozen=True)
class CostEstimate:
    trials: int
    forward_flops_per_example: float
    total_pflop: float
    gpu_hours: float
    tflops: float
    step_floor_ms: float


@functools.lru_cache(maxsize=16)
def forward_flops(model_cfg: ModelConfig, dataset: str) -> float:
    shape, classes = DATASET_SHAPES[dataset]
    model = build_model(model_cfg, shape, classes).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(2, *shape))
    return counter.get_total_flops() / 2


def estimate_cost(spec: SweepSpec, tflops: float = 20.0, step_floor_ms: float = 1.0) -> CostEstimate:
    per_example = forward_flops(spec.model, spec.dataset.name)
    total_flops = 0.0
    seconds = 0.0
    for p in expand_points(spec):
        n = train_set_size(dataclasses.replace(spec.dataset, n_train=p.get("n_train", spec.dataset.n_train)))
        steps = spec.train.epochs * (n // p["batch_size"])
        flops = 3.0 * per_example * steps * p["batch_size"]
        total_flops += flops
        seconds += max(flops / (tflops * 1e12), steps * step_floor_ms / 1e3)
    return CostEstimate(trials=len(expand_points(spec)), forward_flops_per_example=per_example,
                        total_pflop=total_flops / 1e15, gpu_hours=seconds / 3600, tflops=tflops,
                        step_floor_ms=step_floor_ms)


def describe(cost: CostEstimate) -> str:
    return (f"estimated cost: {cost.total_pflop:.3g} PFLOP of training "
            f"({cost.forward_flops_per_example / 1e6:.3g} MFLOP forward per example), "
            f"~{cost.gpu_hours:.3g} GPU-hours at {cost.tflops:g} TFLOP/s sustained and >= {cost.step_floor_ms:g} ms "
            f"per step, one trial per GPU (probes not counted)")
