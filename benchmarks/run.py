"""lrbs performance benchmark: ratios measured side by side, in one run, on one machine.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--threads N] [--out FILE] [--skip-sweep]

Prints a markdown table (and writes it to ``--out``). Rows:

1. lrbs' loop (``run_training`` on preloaded tensors) against the loop a user writes (torchvision
   FashionMNIST + ToTensor + DataLoader), same BN MLP 784-256-256-256-10, same S, at S = 25, 128
   and 1000, on Fashion-MNIST-format files written here; plus the step's achieved FLOP rate as a
   fraction of this machine's measured fp32 matmul rate (the physical limit).
2. K = 1, 4, 8 replicas of the quickstart model (digits, S = 25) trained together
   (``trainables.replicas.run_replicas``) against K sequential ``run_training`` runs.
3. Sweep overhead: wall time of a 16-trial local Ray sweep against the sum of its trials'
   training time divided by the cores used; the per-trial fixed cost.
4. Curvature probes (top Hessian eigenvalue by Lanczos + Hutchinson trace/Frobenius) as a
   fraction of a quickstart trial's training time.

With ``--device cuda``, also the step as one CUDA graph and under ``torch.compile``. Speed is
never asserted: the numbers are for docs/performance.md. ``--quick`` shrinks everything so the
whole run takes seconds (CI runs it; its numbers are rough).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainables.config import DatasetConfig, ModelConfig, TrainConfig
from trainables.data import load_dataset
from trainables.models import build_model
from trainables.replicas import run_replicas
from trainables.train_loop import TrialPoint, run_training

FMNIST_MODEL = ModelConfig(name="mlp", depth=4, width=256, batch_norm=True)
QUICKSTART_MODEL = ModelConfig(name="mlp", depth=4, width=256, batch_norm=True)
DIGITS = DatasetConfig(name="digits", val_fraction=0.2)


@dataclass
class Row:
    section: str
    setting: str
    value: str      # the ratio (or fraction) measured
    target: str
    detail: str


def _noop(*_a, **_k) -> None:
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int, device: torch.device) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of ``a`` and ``b``, run alternately (a shared, noisy machine
    slows both alike; the minimum is the least disturbed run)."""
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a, device))
        tb.append(timed(b, device))
    return min(ta), min(tb)


# ---------------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or platform.machine()


def matmul_rate(device: torch.device, quick: bool) -> float:
    """Measured fp32 matmul FLOP/s (median of timed square products after warm-up)."""
    n = (512 if quick else 1024) if device.type == "cpu" else (2048 if quick else 8192)
    reps = 5 if quick else 20
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    times = [timed(lambda: a @ b, device) for _ in range(reps)]
    return 2 * n ** 3 / statistics.median(times)


def mlp_train_flops_per_example(n_in: int, width: int, depth: int, n_classes: int) -> int:
    """Matmul FLOPs of one training example: forward, weight gradients, and input gradients of
    every layer but the first (2 FLOPs per multiply-add; elementwise ops not counted)."""
    dims = [n_in] + [width] * (depth - 1) + [n_classes]
    macs = [a * b for a, b in zip(dims[:-1], dims[1:])]
    return 2 * (sum(macs) + sum(macs) + sum(macs[1:]))


# ---------------------------------------------------------------------------------- 1. loops

def bench_loops(device: torch.device, quick: bool, peak: float, extra_cuda: bool) -> list[Row]:
    from benchmarks.fmnist_files import write_fashion_mnist
    from benchmarks.user_loop import user_training

    n_train, n_test = (2000, 500) if quick else (12000, 1000)
    epochs, repeats = (1, 1) if quick else (2, 3)
    rows: list[Row] = []
    flops_ex = mlp_train_flops_per_example(784, FMNIST_MODEL.width, FMNIST_MODEL.depth, 10)
    with tempfile.TemporaryDirectory() as root:
        write_fashion_mnist(root, n_train, n_test)
        ds = DatasetConfig(name="fashion_mnist", data_dir=root, val_fraction=None, download=False)
        for s in (25, 128, 1000):
            lrbs_rows: list[dict] = []

            def lrbs() -> None:
                lrbs_rows.clear()
                data = load_dataset(ds, device)
                run_training(TrialPoint(0.05, s, 0), ds, FMNIST_MODEL, TrainConfig(epochs=epochs),
                             report=lambda row, state: lrbs_rows.append(row), device=device, data=data)

            def user() -> None:
                torch.manual_seed(0)
                model = build_model(FMNIST_MODEL, (1, 28, 28), 10)
                user_training(root, n_train, s, 0.05, epochs, model, device)

            timed(lrbs, device)  # warm-up both (first-call costs: allocator, kernels, imports)
            timed(user, device)
            t_lrbs, t_user = paired(lrbs, user, repeats, device)
            steps = epochs * (n_train // s)
            train_s = sum(r["epoch_s"] for r in lrbs_rows)  # train + eval of the last timed run
            rate = flops_ex * s * steps / train_s
            rows.append(Row(
                "1 loop vs DataLoader", f"S={s}", f"{t_user / t_lrbs:.2f}x",
                {25: ">= 1.5x", 1000: ">= 1.8x"}.get(s, "-"),
                f"lrbs {t_lrbs:.2f} s vs user {t_user:.2f} s for {steps} steps; step at "
                f"{rate / 1e9:.1f} GFLOP/s = {rate / peak:.0%} of matmul peak"))
            if extra_cuda:
                rows += cuda_step_variants(s, device, quick)
    return rows


def cuda_step_variants(s: int, device: torch.device, quick: bool) -> list[Row]:
    """The single-model step eager vs one CUDA graph vs torch.compile (GPU only)."""
    from benchmarks.cuda_graphs import time_single

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12000, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (12000,), generator=g).to(device)
    steps = 200 if quick else 2000
    out = []

    def model():
        torch.manual_seed(0)
        return build_model(FMNIST_MODEL, (1, 28, 28), 10).to(device)

    eager = time_single(model(), x, y, s, 0.05, steps, graphed=False)
    try:
        graph = time_single(model(), x, y, s, 0.05, steps, graphed=True)
        out.append(Row("1 loop vs DataLoader", f"S={s} step: CUDA graph vs eager", f"{eager / graph:.2f}x", "-",
                       f"eager {eager / steps * 1e6:.0f} us/step, graphed {graph / steps * 1e6:.0f} us/step"))
    except Exception as e:  # pragma: no cover - GPU only
        out.append(Row("1 loop vs DataLoader", f"S={s} step: CUDA graph", "failed", "-", _short(e)))
    if s == 25:
        try:
            compiled = torch.compile(model())
            t0 = time.perf_counter()
            time_single(compiled, x, y, s, 0.05, 10, graphed=False)  # compile
            compile_s = time.perf_counter() - t0
            t = time_single(compiled, x, y, s, 0.05, steps, graphed=False)
            out.append(Row("1 loop vs DataLoader", f"S={s} step: torch.compile vs eager", f"{eager / t:.2f}x", "-",
                           f"{t / steps * 1e6:.0f} us/step; compile took {compile_s:.0f} s"))
        except Exception as e:  # pragma: no cover - GPU only
            out.append(Row("1 loop vs DataLoader", f"S={s} step: torch.compile", "failed", "-", _short(e)))
    return out


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"


# ---------------------------------------------------------------------------------- 2. replicas

def bench_replicas(device: torch.device, quick: bool) -> list[Row]:
    data = load_dataset(DIGITS, device)
    epochs, repeats = (1, 1) if quick else (3, 3)
    train = TrainConfig(epochs=epochs)
    s, lr = 25, 0.04
    rows = []
    run_replicas(lr, s, [0], DIGITS, QUICKSTART_MODEL, train, report=_noop, device=device, data=data)  # warm-up
    run_training(TrialPoint(lr, s, 0), DIGITS, QUICKSTART_MODEL, train, report=_noop, device=device, data=data)
    for k in (1, 4, 8):
        seeds = list(range(k))

        def together() -> None:
            run_replicas(lr, s, seeds, DIGITS, QUICKSTART_MODEL, train, report=_noop, device=device, data=data)

        def sequential() -> None:
            for seed in seeds:
                run_training(TrialPoint(lr, s, seed), DIGITS, QUICKSTART_MODEL, train, report=_noop,
                             device=device, data=data)

        t_vec, t_seq = paired(together, sequential, repeats, device)
        target = "-" if k != 8 else ("<= 0.7x" if device.type == "cpu" else "<= 0.25x")
        rows.append(Row("2 vectorized seeds", f"K={k}, S={s}", f"{t_vec / t_seq:.2f}x", target,
                        f"together {t_vec:.2f} s vs {k} sequential runs {t_seq:.2f} s ({epochs} epochs each)"))
    if device.type == "cuda":
        rows += cuda_replica_variants(data, device, quick)
    return rows


def cuda_replica_variants(data, device: torch.device, quick: bool) -> list[Row]:
    from benchmarks.cuda_graphs import time_replicas, time_single
    from trainables.replicas import StackedMLP

    steps = 200 if quick else 2000
    s = 25
    rows = []
    torch.manual_seed(0)
    single = time_single(build_model(QUICKSTART_MODEL, data.input_shape, 10).to(device), data.x_train,
                         data.y_train, s, 0.04, steps, graphed=False)
    for k in (8, 64):
        try:
            stacked = StackedMLP.from_seeds(range(k), QUICKSTART_MODEL, data.input_shape, 10, device)
            t = time_replicas(stacked, data.x_train, data.y_train, s, 0.04, steps, graphed=True)
            rows.append(Row("2 vectorized seeds", f"K={k}, S={s} step: CUDA graph vs {k} eager single steps",
                            f"{t / (k * single):.3f}x", "<= 0.25x" if k == 8 else "-",
                            f"graphed K={k} step {t / steps * 1e6:.0f} us vs eager single step "
                            f"{single / steps * 1e6:.0f} us"))
        except Exception as e:  # pragma: no cover - GPU only
            rows.append(Row("2 vectorized seeds", f"K={k} CUDA graph", "failed", "-", _short(e)))
    return rows


# ---------------------------------------------------------------------------------- 3. sweep

def bench_sweep(quick: bool, threads: int) -> list[Row]:
    try:
        import ray
    except ImportError:
        return [Row("3 sweep overhead", "-", "n/a", "<= 1.15x", "ray is not installed here")]
    from analysis.tables import load_metrics
    from sweeps.runner import run_sweep
    from sweeps.spec import spec_from_dict

    cores = 2 if quick else max(1, min(os.cpu_count() or 1, 16))
    n_trials, trial_s = (2, 0.5) if quick else (16, 20.0)
    s = 32
    # Calibrate epochs so that every trial trains for at least trial_s seconds.
    data = load_dataset(DIGITS)
    cal: list[dict] = []
    run_training(TrialPoint(0.04, s, 0), DIGITS, QUICKSTART_MODEL, TrainConfig(epochs=3), report=lambda row, state: cal.append(row), data=data)
    epoch_s = min(r["epoch_s"] for r in cal)
    epochs = max(1, math.ceil(trial_s / epoch_s * 1.1))
    lrs = [round(0.01 * 1.25 ** i, 5) for i in range(max(1, n_trials // 2))]
    spec = spec_from_dict({
        "name": "bench-sweep",
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "mlp", "depth": 4, "width": 256, "batch_norm": True},
        "train": {"epochs": epochs},
        "grid": {"lr": lrs, "batch_size": [s], "seed": [0, 1] if n_trials > 1 else [0]},
        "resources": {"cpu": threads},
    })
    was_running = ray.is_initialized()
    t0 = time.perf_counter()
    if not was_running:
        # address="local": always a fresh local cluster of our own, never one another process started.
        ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    cores_used = int(ray.cluster_resources().get("CPU", cores)) // threads
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            run_dir = run_sweep(spec, storage=tmp, out=io.StringIO())
        wall = time.perf_counter() - t0
        metrics = load_metrics(run_dir)
    if not was_running:
        ray.shutdown()
    per_trial: dict[str, float] = {}
    for tid, w in zip(metrics.column("trial_id").to_pylist(), metrics.column("wall_s").to_pylist()):
        per_trial[tid] = max(per_trial.get(tid, 0.0), w)
    total = sum(per_trial.values())
    n = len(per_trial)
    ideal = total / cores_used
    fixed = (wall * cores_used - total) / max(n, 1)
    return [Row("3 sweep overhead", f"{n} trials x {epochs} epochs on {cores_used} cores",
                f"{wall / ideal:.3f}x", "<= 1.15x",
                f"wall {wall:.1f} s vs ideal {ideal:.1f} s (trials train {min(per_trial.values()):.1f}-"
                f"{max(per_trial.values()):.1f} s); fixed cost {fixed:.2f} s per trial (start-up, data "
                f"load, result streaming); ray.init {init_s:.1f} s not counted")]


# ---------------------------------------------------------------------------------- 4. probes

def bench_probes(device: torch.device, quick: bool) -> list[Row]:
    try:
        from trainables import curvature as cv
    except ImportError:
        return [Row("4 curvature probes", "quickstart trial", "n/a", "< 10%",
                    "trainables.curvature is not in this checkout")]
    import torch.nn.functional as F

    data = load_dataset(DIGITS, device)
    epochs = 3 if quick else 40
    lr = 0.04
    train_s = {}
    for s in (32, 128):  # the quickstart's two batch sizes; S = 128 has the shortest trials
        rows_: list[dict] = []
        run_training(TrialPoint(lr, s, 0), DIGITS, QUICKSTART_MODEL, TrainConfig(epochs=epochs),
                     report=lambda row, state: rows_.append(row), device=device, data=data)
        train_s[s] = rows_[-1]["wall_s"]
    # A model trained the same way, to probe (run_training does not hand its model out).
    s = 128
    torch.manual_seed(0)
    model = build_model(QUICKSTART_MODEL, data.input_shape, data.n_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    n = len(data.x_train)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for j in range(n // s):
            idx = perm[j * s:(j + 1) * s]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    rows = []
    settings = [("paper", min(n, 2250), 20, 32), ("light", min(n, 512), 20, 8)]
    if quick:
        settings = [("quick", min(n, 256), 4, 2)]
    for name, n_probe, eig_iters, n_probes in settings:
        batches = cv.make_batches(data.x_train, data.y_train, cv.probe_subset(n, n_probe, seed=0), batch_size=1000)
        out: dict = {}

        def probe() -> None:
            out["eig"] = cv.top_eigenvalue(model, F.cross_entropy, batches, max_iters=eig_iters, tol=1e-3, seed=0)
            out["tf"] = cv.hessian_trace_and_frobenius(model, F.cross_entropy, batches, n_probes=n_probes, seed=0)

        timed(probe, device)  # warm-up
        probe_s = timed(probe, device)
        hvps = out["eig"].n_hvp + n_probes
        rows.append(Row(
            "4 curvature probes", f"{name}: {n_probe} examples, Lanczos (tol 1e-3, <= {eig_iters}) + "
            f"Hutchinson {n_probes}, once per trial", f"{probe_s / train_s[128]:.1%}", "< 10%",
            f"probes {probe_s:.2f} s ({hvps} HVPs, {probe_s / hvps * 1e3:.0f} ms each) vs a quickstart trial's "
            f"training ({epochs} epochs): S=128 {train_s[128]:.2f} s, S=32 {train_s[32]:.2f} s "
            f"({probe_s / train_s[32]:.1%})"))
    return rows


# ---------------------------------------------------------------------------------- main

def render(rows: list[Row], header: list[str]) -> str:
    lines = header + ["", "| benchmark | setting | ratio | target | detail |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r.section} | {r.setting} | {r.value} | {r.target} | {r.detail} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: seconds, rough numbers (CI)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (and CPUs per sweep trial)")
    p.add_argument("--out", help="also write the table to this file")
    p.add_argument("--skip-sweep", action="store_true", help="leave out the Ray sweep (3)")
    p.add_argument("--only", help="comma-separated sections to run: loops,replicas,sweep,probes")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    only = set(args.only.split(",")) if args.only else {"loops", "replicas", "sweep", "probes"}
    t_all = time.perf_counter()
    peak = matmul_rate(device, args.quick)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"{cpu_model()}, {os.cpu_count()} cores"
    header = [
        f"# lrbs benchmark ({'quick' if args.quick else 'full'} mode, device {args.device})",
        "",
        f"- command: `python -m benchmarks.run {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- machine: {name}; torch {torch.__version__}; {args.threads} torch thread(s)",
        f"- measured fp32 matmul rate: {peak / 1e9:.1f} GFLOP/s",
    ]
    print("\n".join(header), flush=True)
    rows: list[Row] = []
    sections = [
        ("loops", lambda: bench_loops(device, args.quick, peak, extra_cuda=device.type == "cuda")),
        ("replicas", lambda: bench_replicas(device, args.quick)),
        ("sweep", lambda: [] if args.skip_sweep else bench_sweep(args.quick, args.threads)),
        ("probes", lambda: bench_probes(device, args.quick)),
    ]
    for key, fn in sections:
        if key not in only:
            continue
        t = time.perf_counter()
        try:
            new = fn()
        except Exception as e:  # one broken section must not hide the others' numbers
            new = [Row(key, "-", "error", "-", _short(e))]
        rows += new
        for r in new:
            print(f"  {r.section} | {r.setting} | {r.value} | {r.detail}", flush=True)
        print(f"  ({key}: {time.perf_counter() - t:.1f} s)", flush=True)
    header.append(f"- total benchmark time: {time.perf_counter() - t_all:.0f} s")
    table = render(rows, header)
    print()
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
