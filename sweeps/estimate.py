"""Cost of a sweep before it runs, as packs (printed by ``lrbs validate``).

Compute: 3x the forward FLOPs per training example (forward + backward), counted with
``torch.utils.flop_counter`` on the real model. Time: every pack (``sweeps.packing``) takes the
steps of its batch-size schedule, and one step of K members at batch size S costs

    t(K, S) = step_floor_s + K * S * train_flops_per_example / flops_per_s

with ``step_floor_s`` (launch and Python cost of one step, paid once per pack) and
``flops_per_s`` fitted to graphed pack steps that ``benchmarks/gpu_check.py`` measured on a GPU
(``cuda``) or ``benchmarks/run.py`` on a CPU (``cpu``); ``sweeps/step_costs.json`` holds them
with the device and command they came from. Probes and evaluation are not counted. The
figure is a planning aid for the MLP-sized steps it was fitted on; convnets reach other rates.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from sweeps.packing import plan_packs
from sweeps.spec import SweepSpec
from trainables.config import ModelConfig
from trainables.data import train_set_size
from trainables.models import build_model
from trainables.schedules import schedule_at, schedule_from_dict

# Per-example input shape and classes of each data set (no files needed).
DATASET_SHAPES = {"digits": ((64,), 10), "synthetic": ((32,), 10), "fashion_mnist": ((1, 28, 28), 10),
                  "cifar10": ((3, 32, 32), 10)}
STEP_COSTS = Path(__file__).with_name("step_costs.json")


@dataclass(frozen=True)
class CostEstimate:
    trials: int
    packs: tuple[int, ...]             # members per pack
    forward_flops_per_example: float
    total_pflop: float
    device_hours: float
    device: str                        # "cuda" or "cpu": which measured step costs were used
    costs: dict                        # the step_costs.json entry used

    @property
    def gpu_hours(self) -> float:
        return self.device_hours


@functools.lru_cache(maxsize=16)
def forward_flops(model_cfg: ModelConfig, dataset: str) -> float:
    shape, classes = DATASET_SHAPES[dataset]
    model = build_model(model_cfg, shape, classes).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(2, *shape))
    return counter.get_total_flops() / 2


def train_flops_per_example(model_cfg: ModelConfig, dataset: str) -> float:
    return 3.0 * forward_flops(model_cfg, dataset)


def step_costs(device: str) -> dict:
    return json.loads(STEP_COSTS.read_text())[device]


def estimate_cost(spec: SweepSpec) -> CostEstimate:
    per_example = forward_flops(spec.model, spec.dataset.name)
    train_flops = 3.0 * per_example
    device = "cuda" if spec.resources.gpu > 0 else "cpu"
    costs = step_costs(device)
    total_flops = seconds = 0.0
    packs = plan_packs(spec)
    for pack in packs:
        p = pack[0]  # members share n_train and every epoch's batch size
        n = train_set_size(dataclasses.replace(spec.dataset, n_train=p.get("n_train", spec.dataset.n_train)))
        schedule = schedule_from_dict(p["schedule"]) if p.get("schedule") else spec.schedule
        for epoch in range(spec.train.epochs):
            s = schedule_at(schedule, epoch, p["lr"], p["batch_size"])[1]
            steps = n // s
            flops = train_flops * len(pack) * s * steps
            total_flops += flops
            seconds += steps * costs["step_floor_s"] + flops / costs["flops_per_s"]
    return CostEstimate(trials=sum(len(p) for p in packs), packs=tuple(len(p) for p in packs),
                        forward_flops_per_example=per_example, total_pflop=total_flops / 1e15,
                        device_hours=seconds / 3600, device=device, costs=costs)


def describe(cost: CostEstimate) -> str:
    """Two lines: the pack plan, then the estimate and where its per-step costs come from."""
    plan = ", ".join(f"{n} x {k}" for k, n in sorted(Counter(cost.packs).items(), reverse=True))
    unit = "GPU-hours" if cost.device == "cuda" else "CPU-hours"
    c = cost.costs
    return (f"pack plan: {len(cost.packs)} Tune trials for {cost.trials} points (packs x members: {plan})\n"
            f"estimated cost: {cost.total_pflop:.3g} PFLOP of training "
            f"({cost.forward_flops_per_example / 1e6:.3g} MFLOP forward per example), "
            f"~{cost.device_hours:.3g} {unit} ({cost.device_hours * 60:.3g} min) with packs run one after another, "
            f"from per-step costs measured on {c['device']} ({c['step_floor_s'] * 1e3:.3g} ms per step + "
            f"{c['flops_per_s'] / 1e12:.3g} TFLOP/s; {c['source']}); probes and evaluation not counted")
