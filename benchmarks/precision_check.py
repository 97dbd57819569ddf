"""Per-step cost of the paper's convnets in fp32, tf32 and bf16 on one GPU: ``python -m benchmarks.precision_check``.

The measurements behind a ``train.precision`` spec key; nothing in lrbs' training uses them yet.
One step is what a trial's step does for one point: gather a batch of S examples by index from
a device tensor, forward, backward (``torch.autograd.grad``), plain SGD update of every parameter
(fp32 weights), loss kept on the device. Inputs are CIFAR-10-shaped random images (3x32x32)
labelled by a fixed random linear teacher (10 classes), 8,192 of them (~100 MB, larger than L2).

Precisions:
  fp32  cuDNN convolutions and cuBLAS matmuls in IEEE float32 (TF32 off)
  tf32  both on TF32 tensor cores (float32 storage)
  bf16  ``torch.autocast`` to bfloat16 with channels_last weights and inputs; float32 master
        weights, gradients and update
Models and batch sizes (the paper specs' S): VGG11 (batch norm; sweeps/fig1, fig2_vgg11, fig4_vgg11,
fig5) at S = 50 ... 800, ResNet56 (fig2, fig4) at S = 50 ... 1024, ResNet20 (its cheap twin).

0. Ceilings: an 8192^3 matmul on random data per precision (TFLOP/s).
1. Graphed steps (one CUDA graph per step, replayed) per model x S x precision: median ms per step
   over repeats (CUDA events; warm-up and capture not timed), and TFLOP/s from the FLOP count
   ``lrbs validate`` uses (3x the forward FLOPs of ``torch.utils.flop_counter``).
2. Fidelity: N identical graphed steps (same init, same batches) per precision; final training
   loss and a held-out fp32 loss, relative to fp32, beside fp32 run twice and fp32 from weights
   perturbed by 1e-6 (what any float32 difference grows to in N steps).
3. The engine's own step (``benchmarks.pack_timing``: one member, graphed) under torch's default
   precision flags, for comparison with the plain step.
4. Eager steps per model x S x precision (launch overhead included).
5. ``cudnn.benchmark`` on (graphed; torch's default and the engine's is off), and bf16 without
   channels_last (``bf16-nchw``), at each of VGG11's and ResNet56's smallest and largest S.

Every row is written to ``--out`` (JSON) as soon as it is measured; rows left when ``--budget-s``
runs out are recorded as not measured. ``--quick`` runs tiny widths and few steps (a CPU dry run:
no graphs, precision flags inert).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.pack_timing import pack_step_seconds
from lrbs.sweeps.estimate import train_flops_per_example
from lrbs.trainables.config import DatasetConfig, ModelConfig
from lrbs.trainables.models import build_model
from lrbs.trainables.tensor_data import TensorData

PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class Case:
    """One model and the batch sizes the paper's specs train it at."""

    label: str
    model: ModelConfig
    sizes: tuple[int, ...]


FULL_CASES = (
    Case("vgg11", ModelConfig(name="vgg11", options=dict(batch_norm=True)), (50, 128, 200, 640, 800)),
    Case("resnet56", ModelConfig(name="resnet56"), (50, 128, 200, 800, 1024)),
    Case("resnet20", ModelConfig(name="resnet20"), (50, 128, 1024)),
)
QUICK_CASES = (
    Case("vgg11", ModelConfig(name="vgg11", options=dict(batch_norm=True, width_mult=0.125)), (16,)),
    Case("resnet56", ModelConfig(name="resnet56", options=dict(width_mult=0.125)), (16,)),
    Case("resnet20", ModelConfig(name="resnet20", options=dict(width_mult=0.25)), (16,)),
)


@dataclass(frozen=True)
class Settings:
    n_examples: int  # training images on the device
    n_val: int  # held-out images (fidelity's fp32 loss)
    n_timed: float  # seconds of steps per timed repeat (sets the steps per repeat)
    repeats: int  # timed repeats; the median is reported
    fidelity_steps: int
    fidelity_s: int
    fidelity_lr: float


FULL = Settings(
    n_examples=8192, n_val=2048, n_timed=0.05, repeats=5, fidelity_steps=200, fidelity_s=128, fidelity_lr=0.05
)
QUICK = Settings(n_examples=256, n_val=128, n_timed=0.0, repeats=2, fidelity_steps=5, fidelity_s=16, fidelity_lr=0.05)


def precision_flags() -> dict:
    """The float32 math cuDNN convolutions and cuBLAS matmuls use now ('tf32', 'ieee'; 'none': torch's default)."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return {
            "cudnn.conv": torch.backends.cudnn.conv.fp32_precision,
            "cuda.matmul": torch.backends.cuda.matmul.fp32_precision,
        }
    return {
        "cudnn.conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee",
        "cuda.matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
    }


def set_precision_flags(conv: str, matmul: str) -> None:
    """Set the float32 math of convolutions and matmuls ('tf32' or 'ieee'); only the new API when
    torch has it (mixing it with the legacy ``allow_tf32`` flags is an error in recent torch)."""
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cudnn.conv.fp32_precision = conv
        torch.backends.cuda.matmul.fp32_precision = matmul
    else:
        torch.backends.cudnn.allow_tf32 = conv == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = matmul == "tf32"


def set_precision(precision: str) -> None:
    """fp32 and bf16 run their float32 parts in IEEE float32; tf32 on TF32 tensor cores."""
    mode = "tf32" if precision == "tf32" else "ieee"
    set_precision_flags(mode, mode)


def teacher_data(n: int, n_val: int, dev: torch.device) -> TensorData:
    """n training and n_val held-out random 3x32x32 images, labelled by one fixed random linear
    teacher (10 classes), on ``dev``."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(3 * 32 * 32, 10, generator=g)
    x = torch.randn(n + n_val, 3, 32, 32, generator=g)
    y = (x.flatten(1) @ teacher).argmax(1)
    x, y = x.to(dev), y.to(dev)
    return TensorData(x[:n], y[:n], x[n:], y[n:], 10)


class PlainStep:
    """One SGD step of one model, all on the device (no host sync), so a CUDA graph can hold it.

    Batch j is row ``j % n_batches`` of a fixed (n_batches, S) index table; a device counter picks
    it, so every replay trains on the next batch. ``losses[j]`` is step j's loss (float32).
    """

    def __init__(self, model, x, y, s: int, lr: float, precision: str, n_steps_max: int, seed: int = 0):
        dev = x.device
        self.model, self.x, self.y, self.lr = model, x, y, lr
        self.bf16 = precision.startswith("bf16")
        self.channels_last = precision == "bf16"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.params = [p for p in model.parameters()]
        g = torch.Generator().manual_seed(seed)
        n_batches = max(1, len(x) // s)
        self.batches = torch.randperm(len(x), generator=g)[: n_batches * s].view(n_batches, s).to(dev)
        self.n_batches = n_batches
        self.counter = torch.zeros((), dtype=torch.long, device=dev)
        self.losses = torch.zeros(n_steps_max + 1, device=dev)
        self.n_steps_max = n_steps_max
        self.device_type = dev.type

    def __call__(self) -> None:
        row = torch.remainder(self.counter, self.n_batches).view(1)
        idx = self.batches.index_select(0, row).view(-1)
        xb = self.x.index_select(0, idx)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture.
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            loss = F.cross_entropy(self.model(xb), self.y.index_select(0, idx))
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            torch._foreach_add_(self.params, grads, alpha=-self.lr)
            # Step j's loss at losses[min(j, n_steps_max)]: timing runs past the fidelity length.
            slot = torch.clamp(self.counter, max=self.n_steps_max).view(1)
            self.losses.index_copy_(0, slot, loss.detach().float().view(1))
            self.counter.add_(1)


def graphed(step, warmup: int = 3):
    """Run ``warmup`` eager steps on a side stream (lazy cuDNN/cuBLAS and autograd set-up stay out
    of the capture), capture one step, and return the graph's replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def time_per_step(run, dev: torch.device, target_s: float, repeats: int) -> dict:
    """Median, min and max seconds per step over ``repeats`` timed blocks of steps (CUDA events on
    a GPU), each block about ``target_s`` long; two untimed steps first."""

    def block(n: int) -> float:
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                run()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / n  # ms -> s
        t = time.perf_counter()
        for _ in range(n):
            run()
        return (time.perf_counter() - t) / n

    block(2)
    n = max(2, min(200, math.ceil(target_s / max(block(2), 1e-6))))
    times = [block(n) for _ in range(repeats)]
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "steps": n,
        "repeats": repeats,
    }


def matmul_ceilings(dev: torch.device, n: int) -> dict:
    """TFLOP/s of an n x n x n matmul on random data in fp32, tf32 and bf16: the card's ceilings here."""
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    rates = {}
    for precision in PRECISIONS:
        set_precision(precision)
        x, y = (a.bfloat16(), b.bfloat16()) if precision == "bf16" else (a, b)
        rates[precision] = 2 * n**3 / time_per_step(lambda: torch.mm(x, y), dev, 0.1, 3)["median_s"] / 1e12
    return rates


def fresh_model(case: Case, dev: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(case.model, (3, 32, 32), 10).to(dev).train()


def step_cost(case: Case, s: int, precision: str, graph: bool, x, y, cfg: Settings, dev) -> dict:
    """Seconds per step of ``case`` at batch size ``s`` (fresh model, its own graph)."""
    set_precision(precision)
    step = PlainStep(fresh_model(case, dev), x, y, s, 0.01, precision, n_steps_max=1)
    if graph:
        g = graphed(step)
        result = time_per_step(g.replay, dev, cfg.n_timed, cfg.repeats)
        del g
    else:
        for _ in range(3):
            step()
        result = time_per_step(step, dev, cfg.n_timed, cfg.repeats)
    if not torch.isfinite(step.losses).all():
        result["error"] = "non-finite loss"
    return result


def fidelity(case: Case, x, y, x_val, y_val, cfg: Settings, dev) -> dict:
    """Final training loss (mean of the last 10 steps) and held-out fp32 loss after
    ``cfg.fidelity_steps`` identical steps from one init, per precision; relative to fp32."""

    def run(precision: str, perturb: float = 0.0) -> tuple[float, float, list[float]]:
        set_precision(precision)
        model = fresh_model(case, dev)
        if perturb:
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + perturb * torch.randn(p.shape, generator=g).to(dev))
        n = cfg.fidelity_steps
        step = PlainStep(model, x, y, cfg.fidelity_s, cfg.fidelity_lr, precision, n_steps_max=n)
        if dev.type == "cuda":
            g = graphed(step)  # steps 0-2 run eagerly, step 3 is captured and runs at the first replay
            for _ in range(n - 3):
                g.replay()
        else:
            for _ in range(n):
                step()
        losses = step.losses[:n].tolist()
        set_precision("fp32")
        model.eval()
        with torch.no_grad():
            val = F.cross_entropy(model.to(memory_format=torch.contiguous_format)(x_val), y_val).item()
        return statistics.fmean(losses[-10:]), val, losses

    base_train, base_val, base_curve = run("fp32")
    out = {
        "steps": cfg.fidelity_steps,
        "S": cfg.fidelity_s,
        "lr": cfg.fidelity_lr,
        "fp32": {"train_loss": base_train, "val_loss_fp32": base_val, "first_loss": base_curve[0]},
    }
    for label, precision, perturb in (
        ("fp32 again", "fp32", 0.0),
        ("fp32 init x (1 + 1e-6 noise)", "fp32", 1e-6),
        ("tf32", "tf32", 0.0),
        ("bf16", "bf16", 0.0),
    ):
        tr, va, _ = run(precision, perturb)
        out[label] = {
            "train_loss": tr,
            "val_loss_fp32": va,
            "train_rel": abs(tr - base_train) / abs(base_train),
            "val_rel": abs(va - base_val) / abs(base_val),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny widths, few steps: a dry run of the script")
    p.add_argument("--budget-s", type=float, default=150.0, help="stop measuring new rows after this many seconds")
    p.add_argument("--out", default=None, help="write the figures as JSON here (rewritten after every row)")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    cfg = QUICK if args.quick else FULL
    cases = QUICK_CASES if args.quick else FULL_CASES
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    defaults = precision_flags()
    out: dict = {
        "device": name,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "torch_default_fp32_precision": defaults,
        "cudnn_benchmark_default": torch.backends.cudnn.benchmark,
        "quick": args.quick,
        "rows": [],
        "fidelity": {},
        "not_measured": [],
    }
    print(
        f"device: {name}, torch {torch.__version__}, cuDNN {out['cudnn']}; torch's default fp32 precision: "
        f"convolutions {defaults['cudnn.conv']}, matmuls {defaults['cuda.matmul']}",
        flush=True,
    )

    def save() -> None:
        out["total_s"] = time.perf_counter() - t0
        if args.out:
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)

    data = teacher_data(cfg.n_examples, cfg.n_val, dev)
    x, y, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    flops = {c.label: train_flops_per_example(c.model, DatasetConfig(name="cifar10")) for c in cases}
    out["train_flops_per_example"] = flops
    graph_modes = (True, False) if dev.type == "cuda" else (False,)

    def over_budget(what: str) -> bool:
        if time.perf_counter() - t0 > args.budget_s:
            out["not_measured"].append(what)
            return True
        return False

    def measure(case: Case, s: int, precision: str, graph: bool, section: str, bench: bool = False) -> None:
        key = f"{section} {case.label} S={s} {precision} {'graph' if graph else 'eager'}"
        key += " cudnn.benchmark" if bench else ""
        if over_budget(key):
            return
        torch.backends.cudnn.benchmark = bench
        try:
            r = step_cost(case, s, precision, graph, x, y, cfg, dev)
        except Exception as e:  # report and go on: one failing row must not lose the others
            r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        finally:
            torch.backends.cudnn.benchmark = out["cudnn_benchmark_default"]
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        row = {
            "section": section,
            "model": case.label,
            "S": s,
            "precision": precision,
            "graph": graph,
            "cudnn_benchmark": bench,
            **r,
        }
        if "median_s" in r:
            row["tflops"] = flops[case.label] * s / r["median_s"] / 1e12
            print(
                f"{key}: {r['median_s'] * 1e3:.3f} ms/step ({r['min_s'] * 1e3:.3f}-{r['max_s'] * 1e3:.3f}), "
                f"{row['tflops']:.3g} TFLOP/s",
                flush=True,
            )
        else:
            print(f"{key}: failed {r.get('error')}", flush=True)
        out["rows"].append(row)
        save()

    # 0. the matmul ceilings (also brings the GPU's clocks up before the first row)
    out["matmul_tflops"] = matmul_ceilings(dev, 256 if args.quick else 8192)
    print(
        "0 matmul ceilings, TFLOP/s: " + ", ".join(f"{k} {v:.3g}" for k, v in out["matmul_tflops"].items()), flush=True
    )
    save()

    # 1. graphed steps, every model x S x precision
    for case in cases:
        for s in case.sizes:
            for precision in PRECISIONS:
                measure(case, s, precision, graph_modes[0], "1")

    # 2. fidelity: identical steps from one init per precision
    for case in cases[:2]:
        if over_budget(f"2 fidelity {case.label}"):
            continue
        try:
            fid = fidelity(case, x, y, x_val, y_val, cfg, dev)
        except Exception as e:  # report and go on
            fid = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        out["fidelity"][case.label] = fid
        if "error" in fid:
            print(f"2 fidelity {case.label}: failed {fid['error']}", flush=True)
        else:
            parts = ", ".join(
                f"{k} {v['train_rel']:.2e} (held-out {v['val_rel']:.2e})"
                for k, v in fid.items()
                if isinstance(v, dict) and "train_rel" in v
            )
            base = fid["fp32"]
            print(
                f"2 fidelity {case.label}, {fid['steps']} steps at S={fid['S']}, lr={fid['lr']}: fp32 train loss "
                f"{base['first_loss']:.3f} -> {base['train_loss']:.3f}, held-out {base['val_loss_fp32']:.3f}; "
                f"rel. diff to fp32: {parts}",
                flush=True,
            )
        save()

    # 3. the engine's own step (one member, graphed when on CUDA) under torch's default flags
    set_precision_flags(defaults["cudnn.conv"], defaults["cuda.matmul"])
    out["engine_step_s"] = {}
    for case in cases:
        for s in case.sizes:
            key = f"3 engine step {case.label} S={s} torch defaults"
            if over_budget(key):
                continue
            try:
                sec = pack_step_seconds(
                    case.model, data, 1, s, dev, dev.type == "cuda", n_steps=5 if args.quick else 40
                )
                out["engine_step_s"][f"{case.label} S={s}"] = sec
                print(f"{key}: {sec * 1e3:.3f} ms/step, {flops[case.label] * s / sec / 1e12:.3g} TFLOP/s", flush=True)
            except Exception as e:  # report and go on
                print(f"{key}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            save()

    # 4. eager steps (section 1 is eager already without CUDA)
    if dev.type == "cuda":
        for case in cases:
            for s in case.sizes:
                for precision in PRECISIONS:
                    measure(case, s, precision, False, "4")
    # 5. cudnn.benchmark on; bf16 without channels_last
    for case in cases[:2]:
        for s in sorted({case.sizes[0], case.sizes[-1]}):
            for precision in PRECISIONS:
                measure(case, s, precision, graph_modes[0], "5", bench=True)
            measure(case, s, "bf16-nchw", graph_modes[0], "5")

    print_table(out)
    save()
    print(f"total {out['total_s']:.0f} s", flush=True)
    failed = [r for r in out["rows"] if "error" in r] + [f for f in out["fidelity"].values() if "error" in f]
    return 1 if failed else 0


def print_table(out: dict) -> None:
    """The markdown table: per model and S, ms per step and TFLOP/s per precision (graphed), the
    speedups over fp32, eager steps, and the engine's step under torch's defaults."""

    def cell(section, model, s, precision, graph=True, bench=False):
        for r in out["rows"]:
            if (r["section"], r["model"], r["S"], r["precision"], r["graph"], r["cudnn_benchmark"]) == (
                section,
                model,
                s,
                precision,
                graph,
                bench,
            ) and "median_s" in r:
                return r
        return None

    graph = out["device"] != "cpu"
    mode = "graphed" if graph else "eager"
    print(
        "\n| model | S | fp32 ms | tf32 ms | bf16 ms | fp32 TFLOP/s | tf32 TFLOP/s | bf16 TFLOP/s | tf32 speedup | "
        "bf16 speedup | eager fp32 / tf32 / bf16 ms | engine step, torch defaults, ms |"
    )
    print("| --- | --- | " + " | ".join(["---"] * 10) + " |")
    pairs = list(dict.fromkeys((r["model"], r["S"]) for r in out["rows"] if r["section"] == "1"))
    nm = "not measured"
    for model, s in pairs:
        rs = {p: cell("1", model, s, p, graph) for p in PRECISIONS}
        ms = [f"{rs[p]['median_s'] * 1e3:.3f}" if rs[p] else nm for p in PRECISIONS]
        tf = [f"{rs[p]['tflops']:.1f}" if rs[p] else nm for p in PRECISIONS]
        sp = [
            f"{rs['fp32']['median_s'] / rs[p]['median_s']:.2f}x" if rs[p] and rs["fp32"] else nm
            for p in ("tf32", "bf16")
        ]
        eager = [cell("4", model, s, p, False) for p in PRECISIONS]
        eg = " / ".join(f"{e['median_s'] * 1e3:.2f}" if e else nm for e in eager) if graph else "-"
        eng = out.get("engine_step_s", {}).get(f"{model} S={s}")
        eng_ms = f"{eng * 1e3:.3f}" if eng else nm
        print(f"| {model} | {s} | {' | '.join(ms)} | {' | '.join(tf)} | {' | '.join(sp)} | {eg} | {eng_ms} |")
    print(f"({mode} steps; median of {out['rows'][0].get('repeats', '-') if out['rows'] else '-'} repeats)")
    for r in (r for r in out["rows"] if r["section"] == "5" and "median_s" in r):
        what = "cudnn.benchmark on" if r["cudnn_benchmark"] else "bf16 without channels_last"
        base = cell("1", r["model"], r["S"], "bf16" if r["precision"] == "bf16-nchw" else r["precision"], graph)
        speed = (
            f" (speedup {base['median_s'] / r['median_s']:.2f}x over section 1's {base['precision']})" if base else ""
        )
        print(f"{what}: {r['model']} S={r['S']} {r['precision']} {r['median_s'] * 1e3:.3f} ms{speed}")
    for model, fid in out["fidelity"].items():
        if "error" not in fid:
            print(
                f"fidelity {model} ({fid['steps']} steps, S={fid['S']}): "
                + "; ".join(
                    f"{k}: train loss rel. diff {v['train_rel']:.2e}, held-out {v['val_rel']:.2e}"
                    for k, v in fid.items()
                    if isinstance(v, dict) and "train_rel" in v
                )
            )
    if out["not_measured"]:
        print(
            f"not measured (time budget): {len(out['not_measured'])} rows: {', '.join(out['not_measured'][:8])}"
            + (" ..." if len(out["not_measured"]) > 8 else "")
        )


if __name__ == "__main__":
    sys.exit(main())
