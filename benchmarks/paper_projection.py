"""The paper's five specs projected onto this device, per ``train.precision``, from measured steps.

    python -m benchmarks.paper_projection [--device cuda] [--precisions fp32,bf16] [--specs NAMES] [--out FILE] [--quick]

For every distinct (model, batch size, pack size) that a spec's trials step at, the engine's own
step (``benchmarks.pack_timing``: gather, forward, backward, per-member SGD update; a CUDA graph on
a GPU) is timed once per precision on synthetic data of the spec's input shape. A spec's projected
device time is the sum over its packs and epochs of steps x measured seconds per step, plus one
evaluation of the validation set per epoch (timed per model and precision-independent: evaluation
runs in fp32). Curvature probes at the end of a trial and the driver's start-up are left out (they
are seconds per trial; docs/performance.md). ``--quick`` times a handful of steps at tiny widths.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from benchmarks.pack_timing import pack_step_seconds
from lrbs.sweeps.packing import pack_key, plan_packs
from lrbs.sweeps.spec_load import load_spec
from lrbs.trainables.config import ModelConfig
from lrbs.trainables.data import train_set_size
from lrbs.trainables.models import build_model
from lrbs.trainables.packed_models import build_pack, choose_layout
from lrbs.trainables.tensor_data import TensorData
from lrbs.trainables.train_loop import evaluate_pack

SPECS = ("fig1_cyclic", "fig2_rescaling", "fig3_grid", "fig4_interpolation", "fig5_breakdown")
SHAPES = {"cifar10": ((3, 32, 32), 10, 10000), "fashion_mnist": ((1, 28, 28), 10, 10000)}


def synthetic(shape: tuple[int, ...], classes: int, n: int, device: torch.device) -> TensorData:
    """n random examples of the spec's input shape (the step's cost does not depend on the values)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=gen).to(device)
    y = torch.randint(0, classes, (n,), generator=gen).to(device)
    return TensorData(x, y, x[: n // 4], y[: n // 4], classes)


def spec_steps(name: str) -> tuple[ModelConfig, str, dict[tuple[int, int], int], int]:
    """(model, data set, {(S, K): steps over the whole sweep}, member-epochs) of sweeps/<name>.yaml on one GPU."""
    spec = load_spec(f"sweeps/{name}.yaml")
    spec = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, gpu=1.0))
    steps: dict[tuple[int, int], int] = {}
    member_epochs = 0
    for pack in plan_packs(spec):
        p = pack[0]
        n = train_set_size(dataclasses.replace(spec.dataset, n_train=p.get("n_train", spec.dataset.n_train)))
        for s in pack_key(p, spec)[1]:
            steps[(s, len(pack))] = steps.get((s, len(pack)), 0) + n // s
        member_epochs += spec.train.epochs * len(pack)
    return spec.model, spec.dataset.name, steps, member_epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", help="comma-separated (default: fp32,tf32,bf16 on CUDA, fp32,bf16 on a CPU)")
    parser.add_argument("--specs", default=",".join(SPECS), help="comma-separated names under sweeps/")
    parser.add_argument("--out")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    precisions = (args.precisions or ("fp32,tf32,bf16" if dev.type == "cuda" else "fp32,bf16")).split(",")
    graphed = dev.type == "cuda"
    n_steps = 5 if args.quick else 60
    out: dict = {"device": torch.cuda.get_device_name(0) if graphed else "cpu", "specs": {}}
    total = dict.fromkeys(precisions, 0.0)
    for name in args.specs.split(","):
        model, dataset, steps, member_epochs = spec_steps(name)
        if args.quick:
            model = dataclasses.replace(model, options={**model.options, "width_mult": 0.125})
            if model.name == "mlp":
                model = dataclasses.replace(model, options={"depth": 2, "width": 16})
        shape, classes, n_val = SHAPES[dataset]
        # at least two batches of the largest S, so every timed step is a full batch
        data = synthetic(shape, classes, max(2 * max(s for s, _ in steps), 0 if args.quick else 4096), dev)
        t0 = time.perf_counter()
        per_spec: dict = {"steps": {f"S={s} K={k}": v for (s, k), v in steps.items()}, "step_ms": {}}
        seconds = dict.fromkeys(precisions, 0.0)
        for (s, k), count in sorted(steps.items()):
            for precision in precisions:
                sec = pack_step_seconds(model, data, k, s, dev, graphed, n_steps=n_steps, precision=precision)
                per_spec["step_ms"][f"S={s} K={k} {precision}"] = sec * 1e3
                seconds[precision] += count * sec
        eval_s = _eval_seconds(model, data, n_val, dev)
        for precision in precisions:
            seconds[precision] += member_epochs * eval_s
            total[precision] += seconds[precision]
        per_spec["eval_s_per_member_epoch"] = eval_s
        per_spec["gpu_hours"] = {p: seconds[p] / 3600 for p in precisions}
        out["specs"][name] = per_spec
        print(
            f"{name}: {model.name}, {sum(steps.values()):,} pack steps at {len(steps)} (S, K); projected "
            + ", ".join(f"{p} {seconds[p] / 3600:.3f} h" for p in precisions)
            + f" (measured in {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    out["total_gpu_hours"] = {p: total[p] / 3600 for p in precisions}
    print("total: " + ", ".join(f"{p} {total[p] / 3600:.2f} GPU-hours" for p in precisions), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


def _eval_seconds(model_cfg: ModelConfig, data: TensorData, n_val: int, dev: torch.device) -> float:
    """Seconds of one member's evaluation of n_val examples (fp32, eval batch 2048)."""
    module = build_model(model_cfg, data.input_shape, data.n_classes).to(dev).eval()
    pack = build_pack([module], choose_layout(model_cfg), len(data.input_shape))
    evaluate_pack(pack, data.x_train, data.y_train, 2048)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        evaluate_pack(pack, data.x_train, data.y_train, 2048)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / 3 * n_val / len(data.x_train)


if __name__ == "__main__":
    raise SystemExit(main())
