"""lrbs performance benchmark: ratios measured side by side, in one run, on one machine.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--threads N] [--out FILE] [--only SECTIONS]

Prints a markdown table (and writes it to ``--out``). Rows:

1. lrbs' loop (``run_training`` on preloaded tensors) against the loop a user writes (torchvision
   FashionMNIST + ToTensor + DataLoader), same BN MLP 784-256-256-256-10, same S, at S = 25, 128
   and 1000, on Fashion-MNIST-format files written here; plus the step's achieved FLOP rate as a
   fraction of this machine's measured fp32 matmul rate (the physical limit).
2. Packs: K points of the quickstart's MLP on digits (S = 25) trained in lockstep by ``run_pack``
   (K = 8 seeds; K = 25 = 5 learning rates x 5 seeds) against K separate ``run_training`` runs;
   a convnet pack in both layouts (stacked vmap, loop); on CUDA the graphed pack step of the
   Fig. 3 MLP. Also the per-step cost model (``sweeps/step_costs.json``, ``--costs-out``), and
   ``lrbs run`` of a six-point sweep with ``train.pack: auto`` against ``train.pack: 1``.
3. Fixed costs and the quickstart (MNIST-1D) end to end: ``lrbs run sweeps/quickstart.yaml`` packed (the
   default) against the same spec with ``train.pack: 1`` (one trial per point), each as a fresh
   process, with the packed run's time line (start-up, Ray, worker start, trials, report).
4. Curvature probes (top Hessian eigenvalue by Lanczos + Hutchinson trace/Frobenius) as a
   fraction of a training run of the quickstart's MLP on digits (the quickstart before MNIST-1D).
5. Estimates (not in ``--quick``'s default set: two sweeps run for real): the pre-flight's
   CPU-hours and planned training wall time against what ``lrbs run`` then used, for the
   quickstart and examples/mnist1d_conv.yaml.

Speed is never asserted: the numbers are for docs/performance.md. ``--quick`` shrinks everything
so the whole run takes seconds (CI runs it; its numbers are rough).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lrbs.trainables.config import DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.data import load_dataset
from lrbs.trainables.models import build_model
from lrbs.trainables.train_loop import TrialPoint, run_pack, run_training

FMNIST_MODEL = ModelConfig(name="mlp", options=dict(depth=4, width=256, batch_norm=True))
QUICKSTART_MODEL = ModelConfig(name="mlp", options=dict(depth=4, width=256, batch_norm=True))
DIGITS = DatasetConfig(name="digits", val_fraction=0.2)


@dataclass
class Row:
    section: str
    setting: str
    value: str  # the ratio (or fraction) measured
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
    return 2 * n**3 / statistics.median(times)


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
    flops_ex = mlp_train_flops_per_example(784, FMNIST_MODEL.options["width"], FMNIST_MODEL.options["depth"], 10)
    with tempfile.TemporaryDirectory() as root:
        write_fashion_mnist(root, n_train, n_test)
        ds = DatasetConfig(name="fashion_mnist", data_dir=root, val_fraction=None, download=False)
        for s in (25, 128, 1000):
            lrbs_rows: list[dict] = []

            def lrbs() -> None:
                lrbs_rows.clear()
                data = load_dataset(ds, device)
                run_training(
                    TrialPoint(0.05, s, 0),
                    ds,
                    FMNIST_MODEL,
                    TrainConfig(epochs=epochs),
                    report=lambda row, state: lrbs_rows.append(row),
                    device=device,
                    data=data,
                )

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
            rows.append(
                Row(
                    "1 loop vs DataLoader",
                    f"S={s}",
                    f"{t_user / t_lrbs:.2f}x",
                    {25: ">= 1.5x", 1000: ">= 1.8x"}.get(s, "-"),
                    f"lrbs {t_lrbs:.2f} s vs user {t_user:.2f} s for {steps} steps; step at "
                    f"{rate / 1e9:.1f} GFLOP/s = {rate / peak:.0%} of matmul peak",
                )
            )
            if extra_cuda:
                rows += cuda_step_variants(s, device, quick)
    return rows


def cuda_step_variants(s: int, device: torch.device, quick: bool) -> list[Row]:
    """The single-model step eager vs one CUDA graph (GPU only)."""
    from benchmarks.pack_timing import pack_step_seconds
    from lrbs.trainables.tensor_data import TensorData

    g = torch.Generator().manual_seed(0)
    data = TensorData(
        torch.randn(12000, 1, 28, 28, generator=g).to(device),
        torch.randint(0, 10, (12000,), generator=g).to(device),
        torch.zeros(0, 1, 28, 28, device=device),
        torch.zeros(0, dtype=torch.long, device=device),
        10,
    )
    steps = 200 if quick else 2000
    eager = pack_step_seconds(FMNIST_MODEL, data, 1, s, device, graphed=False, n_steps=steps)
    graph = pack_step_seconds(FMNIST_MODEL, data, 1, s, device, graphed=True, n_steps=steps)
    return [
        Row(
            "1 loop vs DataLoader",
            f"S={s} step: CUDA graph vs eager",
            f"{eager / graph:.2f}x",
            "-",
            f"eager {eager * 1e6:.0f} us/step, graphed {graph * 1e6:.0f} us/step",
        )
    ]


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"


# ---------------------------------------------------------------------------------- 2. packs


def bench_packs(device: torch.device, quick: bool, costs_out: str | None) -> list[Row]:
    from benchmarks.pack_timing import pack_step_seconds

    data = load_dataset(DIGITS, device)
    epochs, repeats = (1, 1) if quick else (3, 3)
    train = TrainConfig(epochs=epochs)
    s = 25
    rows = []
    run_training(TrialPoint(0.04, s, 0), DIGITS, QUICKSTART_MODEL, train, report=_noop, device=device, data=data)
    lrs = [0.01, 0.02, 0.04, 0.08, 0.16]
    cases = {
        1: [TrialPoint(0.04, s, 0)],
        8: [TrialPoint(0.04, s, seed) for seed in range(8)],
        25: [TrialPoint(lr, s, seed) for lr in lrs for seed in range(5)],
    }
    targets = {8: "<= 0.6x", 25: "<= 0.6x"} if device.type == "cpu" else {}
    for k, points in cases.items():

        def together() -> None:
            run_pack(points, DIGITS, QUICKSTART_MODEL, train, report=_noop, device=device, data=data)

        def separate() -> None:
            for p in points:
                run_training(p, DIGITS, QUICKSTART_MODEL, train, report=_noop, device=device, data=data)

        t_pack, t_sep = paired(together, separate, repeats, device)
        what = "seeds" if k < 25 else "5 lr x 5 seeds"
        rows.append(
            Row(
                "2 packs",
                f"K={k} ({what}), S={s}",
                f"{t_pack / t_sep:.2f}x",
                targets.get(k, "-"),
                f"pack {t_pack:.2f} s vs {k} separate runs {t_sep:.2f} s ({epochs} epochs each)",
            )
        )
    conv = ModelConfig(name="resnet20", options=dict(width_mult=0.25))
    n_steps = 5 if quick else 40
    layouts = {
        lay: pack_step_seconds(conv, data, 4, 32, device, graphed=True, n_steps=n_steps, layout=lay)
        for lay in ("stacked", "loop")
    }
    rows.append(
        Row(
            "2 packs",
            "ResNet20 (x0.25) K=4, S=32 step: stacked (vmap) vs loop layout",
            f"{layouts['stacked'] / layouts['loop']:.2f}x",
            "-",
            f"vmap {layouts['stacked'] * 1e3:.1f} ms vs loop {layouts['loop'] * 1e3:.1f} ms per step",
        )
    )
    if device.type == "cuda":
        g = torch.Generator().manual_seed(0)
        from lrbs.trainables.tensor_data import TensorData

        fm = TensorData(
            torch.randn(60000, 1, 28, 28, generator=g).to(device),
            torch.randint(0, 10, (60000,), generator=g).to(device),
            torch.zeros(0, 1, 28, 28, device=device),
            torch.zeros(0, dtype=torch.long, device=device),
            10,
        )
        graphed = pack_step_seconds(FMNIST_MODEL, fm, 25, 25, device, graphed=True, n_steps=200 if quick else 2000)
        eager1 = pack_step_seconds(FMNIST_MODEL, fm, 1, 25, device, graphed=False, n_steps=200 if quick else 2000)
        rows.append(
            Row(
                "2 packs",
                "Fig. 3 MLP, K=25, S=25: graphed pack step",
                f"{graphed * 1e3:.3f} ms",
                "<= 0.3 ms",
                f"{graphed / (25 * eager1):.3f}x of 25 eager single steps ({eager1 * 1e3:.3f} ms each)",
            )
        )
    rows.append(step_cost_row(device, quick, costs_out))
    return rows


def step_cost_row(device: torch.device, quick: bool, costs_out: str | None) -> Row:
    """Fit t(K, S) = floor + K*S*flops/rate to graphed (CUDA) or eager (CPU) Fig. 3 MLP pack steps:
    the per-step cost model that ``lrbs validate`` uses (sweeps/step_costs.json)."""
    import json

    import numpy as np

    from benchmarks.pack_timing import pack_step_seconds
    from lrbs.sweeps.estimate import train_flops_per_example
    from lrbs.trainables.tensor_data import TensorData

    g = torch.Generator().manual_seed(0)
    n = 4000 if quick else 20000
    fm = TensorData(
        torch.randn(n, 1, 28, 28, generator=g).to(device),
        torch.randint(0, 10, (n,), generator=g).to(device),
        torch.zeros(0, 1, 28, 28, device=device),
        torch.zeros(0, dtype=torch.long, device=device),
        10,
    )
    fl = train_flops_per_example(FMNIST_MODEL, DatasetConfig(name="fashion_mnist"))
    grid = (
        [(1, 25), (8, 25), (1, 250), (8, 250)] if device.type == "cpu" else [(25, 25), (25, 250), (64, 25), (64, 1000)]
    )
    pts = [
        (k * s * fl, pack_step_seconds(FMNIST_MODEL, fm, k, s, device, graphed=True, n_steps=5 if quick else 60))
        for k, s in grid
    ]
    # Least squares on relative error (rows divided by the time): small, launch-bound steps count as
    # much as big, compute-bound ones.
    floor, per_flop = np.linalg.lstsq(np.array([[1.0 / t, x / t] for x, t in pts]), np.ones(len(pts)), rcond=None)[0]
    entry = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"{cpu_model()}, 1 thread",
        "step_floor_s": max(float(floor), 0.0),
        "flops_per_s": 1.0 / max(float(per_flop), 1e-18),
        "source": f"python -m benchmarks.run --device {device.type} --costs-out FILE",
    }
    if costs_out:
        Path(costs_out).write_text(json.dumps({device.type: entry}, indent=1) + "\n")
    return Row(
        "2 packs",
        f"step cost model, Fig. 3 MLP at (K, S) in {grid}",
        f"{entry['step_floor_s'] * 1e3:.3f} ms",
        "-",
        f"t(K,S) = {entry['step_floor_s'] * 1e3:.3f} ms + K*S*{fl / 1e6:.2f} MFLOP / "
        f"{entry['flops_per_s'] / 1e9:.1f} GFLOP/s (sweeps/step_costs.json)",
    )


def lrbs_run(spec: dict, tmp: str, label: str) -> tuple[float, str]:
    """``lrbs run`` of ``spec`` in a fresh process: its wall seconds and its output."""
    import yaml

    path = Path(tmp) / f"{label}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": label}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "lrbs", "run", str(path), "--storage", f"{tmp}/runs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=path.parent,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"lrbs run ({label}) failed: {proc.stderr.strip().splitlines()[-1:]}")
    return wall, proc.stdout


def bench_auto_pack(quick: bool) -> list[Row]:
    """``train.pack: auto`` against ``train.pack: 1`` on the six-point sweep of the digits MLP
    (3 lr x 2 seeds, one batch size, a step schedule, probes, 12 epochs), fresh processes."""
    spec: dict = {
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "mlp", "options": {"depth": 4, "width": 256, "batch_norm": True}},
        "train": {"epochs": 12},
        "schedule": {"kind": "step", "every": 4, "factor": 0.5},
        "curvature": {"n_samples": 512, "lanczos_iters": 20, "hutchinson_probes": 8},
        "grid": {"lr": [0.01, 0.04, 0.16], "batch_size": [32], "seed": [0, 1]},
        "resources": {"cpu": 1},
    }
    if quick:
        spec["train"]["epochs"], spec["model"]["options"]["width"] = 2, 32
        spec["schedule"]["every"] = 1
        spec.pop("curvature")
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, pack in (("unpacked", 1), ("auto", "auto")):
            walls[label], _ = lrbs_run({**spec, "train": {**spec["train"], "pack": pack}}, tmp, label)
    return [
        Row(
            "2 packs",
            f"six points (3 lr x 2 seeds, step schedule, {'no probes' if quick else 'probes'}, "
            f"{spec['train']['epochs']} epochs, digits MLP): train.pack auto vs 1, `lrbs run`",
            f"{walls['auto'] / walls['unpacked']:.2f}x",
            "<= 1.0x",
            f"auto {walls['auto']:.1f} s vs unpacked {walls['unpacked']:.1f} s wall, fresh processes, "
            f"{os.cpu_count()} cores",
        )
    ]


def bench_estimates(quick: bool) -> list[Row]:
    """The pre-flight's estimate against the CPU-hours the run then used (its last progress
    line), for the quickstart and examples/mnist1d_conv.yaml, each run for real."""
    import re

    import yaml

    root = Path(__file__).resolve().parent.parent
    rows = []
    for rel in ("sweeps/quickstart.yaml", "examples/mnist1d_conv.yaml"):
        spec = yaml.safe_load((root / rel).read_text())
        if quick:
            spec["train"]["epochs"] = 2
            spec.pop("curvature", None)
        with tempfile.TemporaryDirectory() as tmp:
            if rel.startswith("examples/"):  # its plug-in module sits next to the spec
                Path(tmp, "mnist1d_conv.py").write_text((root / "examples" / "mnist1d_conv.py").read_text())
            wall, out = lrbs_run(spec, tmp, Path(rel).stem)
            planned = json.loads(Path(tmp, "runs", Path(rel).stem, "provenance.json").read_text())["estimate"]
        found = re.findall(r"CPU-hours ([0-9.e+-]+) of ~([0-9.e+-]+) estimated", out)
        phases = dict(re.findall(TIME_LINE, out))
        if not found or "trials" not in phases:
            raise RuntimeError(f"{rel}: no progress line with an estimate, or no time line")
        used, est = (float(v) for v in found[-1])
        trained = float(phases["trials"]) - float(phases.get("worker start", 0.0))
        label = f"{rel}{' (2 epochs, no probes)' if quick else ''}"
        rows += [
            Row(
                "5 estimate vs used",
                label,
                f"{est / used:.2f}x",
                "0.75-1.25x",
                f"estimated {est:.3g} CPU-hours in the pre-flight, used {used:.3g} (sum of trial wall times); "
                f"run {wall:.0f} s",
            ),
            Row(
                "5 planned vs trained wall",
                label,
                f"{planned['wall_hours'] * 3600 / trained:.2f}x",
                "0.75-1.25x",
                f"planned {planned['wall_hours'] * 3600:.1f} s of training on {planned['slots']} slot(s) (the first "
                f"ETA), trials took {trained:.1f} s after the first worker's start",
            ),
        ]
    return rows


# ---------------------------------------------------------------------------------- 3. fixed costs

# The same training as `lrbs run` of a one-point spec, as a plain script: Python, torch, the data
# set and the training loop, nothing else (no Ray, no spec checks, no report). Prints its own
# training seconds.
PLAIN_SCRIPT = """
import sys, time
import torch
from lrbs.sweeps.spec_load import load_spec
from lrbs.trainables.train_loop import TrialPoint, run_training
spec = load_spec(sys.argv[1])
torch.set_num_threads(1)
t = time.perf_counter()
point = TrialPoint(spec.grid.lr[0], spec.grid.batch_size[0], spec.grid.seed[0])
run_training(point, spec.dataset, spec.model, spec.train, report=lambda row, state: None)
print(f"training {time.perf_counter() - t:.2f} s")
"""
TIME_LINE = r"(start-up|Ray|trials|worker start|report) ([0-9.]+) s"


def bench_fixed_cost(quick: bool) -> list[Row]:
    """``lrbs run`` of a one-point sweep against the same training as a plain script, fresh
    processes, alternated (``repeats`` pairs; the faster of each kept): the fixed cost is the
    difference, split by lrbs's time line (start-up, waiting for Ray, the first worker's start,
    report and Ray's stop) plus the process's exit after the line."""
    import re

    import yaml

    root = Path(__file__).resolve().parent.parent
    spec = yaml.safe_load((root / "sweeps" / "quickstart.yaml").read_text())
    spec.pop("curvature")
    spec["name"] = "fixed"
    spec["grid"] = {"lr": [0.04], "batch_size": [128], "seed": [0]}
    spec["train"]["epochs"] = 3 if quick else 60
    if quick:
        spec["model"]["options"]["width"] = 32
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    repeats = 1 if quick else 2
    runs: dict[str, list[tuple[float, str]]] = {"lrbs": [], "script": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fixed.yaml"
        path.write_text(yaml.safe_dump(spec))
        for i in range(repeats):
            for label in ("script", "lrbs"):
                cmd = [sys.executable, "-c", PLAIN_SCRIPT, str(path)]
                if label == "lrbs":
                    cmd = [sys.executable, "-m", "lrbs", "run", str(path), "--storage", f"{tmp}/runs{i}"]
                t = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                wall = time.perf_counter() - t
                if proc.returncode != 0:
                    raise RuntimeError(f"{label} failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
                key = "[lrbs] time:" if label == "lrbs" else "training "
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(key)), "")
                runs[label].append((wall, line))
    (t_lrbs, line), (t_plain, plain_line) = min(runs["lrbs"]), min(runs["script"])
    parts = {k: float(v) for k, v in re.findall(TIME_LINE, line)}
    printed = float(line.split("time: ")[1].split(" s")[0]) if line else t_lrbs
    training = float(plain_line.split()[1]) if plain_line else 0.0
    trial_training = parts.get("trials", 0.0) - parts.get("worker start", 0.0)
    fixed = t_lrbs - t_plain
    breakdown = (
        f"start-up {parts.get('start-up', 0):.1f} s (imports, spec, model built and its steps timed, data) + "
        f"waiting for Ray {parts.get('Ray', 0):.1f} s + first worker's start {parts.get('worker start', 0):.1f} s + "
        f"report and Ray's stop {parts.get('report', 0):.1f} s + interpreter start and exit "
        f"{t_lrbs - printed:.1f} s; the trial trained {trial_training:.1f} s, the script {training:.1f} s"
    )
    walls = "; ".join(f"{k}: " + ", ".join(f"{w:.1f}" for w, _ in v) + " s" for k, v in runs.items())
    return [
        Row(
            "3 fixed cost",
            f"one-point sweep ({spec['train']['epochs']} epochs, MNIST-1D MLP): lrbs run vs plain script",
            f"{t_lrbs / t_plain:.2f}x",
            "-",
            f"lrbs run {t_lrbs:.1f} s vs script {t_plain:.1f} s wall, fresh processes, faster of {repeats} ({walls})",
        ),
        Row("3 fixed cost", "lrbs run minus the plain script", f"{fixed:.1f} s", "<= 6 s", breakdown),
    ]


def bench_quickstart(quick: bool) -> list[Row]:
    """``lrbs run`` of the quickstart as a user runs it (fresh processes), packed and unpacked."""
    import re

    import yaml

    try:
        import ray  # noqa: F401
    except ImportError:
        return [Row("3 quickstart end to end", "-", "n/a", ">= 1.5x", "ray is not installed here")]
    spec = yaml.safe_load((Path(__file__).resolve().parent.parent / "sweeps" / "quickstart.yaml").read_text())
    if quick:  # a tiny stand-in: same shape, seconds of training
        spec["train"]["epochs"] = 2
        spec["model"]["options"]["width"] = 32
        spec["grid"] = {"lr": [0.01, 0.16], "batch_size": [32, 128], "seed": [0]}  # 4 points, not 12
        spec.pop("curvature")
    out: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, pack in (("unpacked", 1), ("packed", "auto")):
            spec["train"]["pack"] = pack
            wall, stdout = lrbs_run(spec, tmp, label)
            line = next((ln for ln in stdout.splitlines() if ln.startswith("[lrbs] time:")), "")
            out[label] = (wall, line)
        from lrbs.rundir.tables import load_trials

        finals = {
            label: {(t["lr"], t["batch_size"], t["seed"]): t for t in load_trials(f"{tmp}/runs/{label}").to_pylist()}
            for label in out
        }
        diff = max(
            abs(finals["packed"][k]["final_train_loss"] - v["final_train_loss"])
            / max(abs(v["final_train_loss"]), 1e-12)
            for k, v in finals["unpacked"].items()
        )
    (t_un, line_un), (t_pk, line_pk) = out["unpacked"], out["packed"]
    parts = dict(re.findall(r"(start-up|Ray|worker start|report) ([0-9.]+) s", line_pk))
    fixed = sum(float(v) for v in parts.values())
    return bench_fixed_cost(quick) + [
        Row(
            "3 quickstart end to end",
            f"{'tiny stand-in' if quick else 'sweeps/quickstart.yaml'}: train.pack 1 vs auto",
            f"{t_un / t_pk:.2f}x",
            ">= 1.5x",
            f"unpacked {t_un:.1f} s vs packed {t_pk:.1f} s wall, fresh processes; max rel. diff of final train "
            f"loss per point {diff:.1e}",
        ),
        Row(
            "3 fixed costs",
            "packed quickstart: start-up + Ray + worker start + report",
            f"{fixed:.1f} s",
            "< 15 s",
            line_pk.replace("[lrbs] time: ", "") + f" | unpacked: {line_un.replace('[lrbs] time: ', '')}",
        ),
    ]


# ---------------------------------------------------------------------------------- 4. probes


def bench_probes(device: torch.device, quick: bool) -> list[Row]:
    try:
        from lrbs.trainables import curvature as cv
    except ImportError:
        return [
            Row(
                "4 curvature probes", "quickstart trial", "n/a", "< 10%", "trainables.curvature is not in this checkout"
            )
        ]
    import torch.nn.functional as F

    data = load_dataset(DIGITS, device)
    epochs = 3 if quick else 40
    lr = 0.04
    train_s = {}
    for s in (32, 128):  # the quickstart's two batch sizes; S = 128 has the shortest trials
        rows_: list[dict] = []
        run_training(
            TrialPoint(lr, s, 0),
            DIGITS,
            QUICKSTART_MODEL,
            TrainConfig(epochs=epochs),
            report=lambda row, state: rows_.append(row),
            device=device,
            data=data,
        )
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
            idx = perm[j * s : (j + 1) * s]
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
        rows.append(
            Row(
                "4 curvature probes",
                f"{name}: {n_probe} examples, Lanczos (tol 1e-3, <= {eig_iters}) + "
                f"Hutchinson {n_probes}, once per trial",
                f"{probe_s / train_s[128]:.1%}",
                "< 10%",
                f"probes {probe_s:.2f} s ({hvps} HVPs, {probe_s / hvps * 1e3:.0f} ms each) vs a quickstart trial's "
                f"training ({epochs} epochs): S=128 {train_s[128]:.2f} s, S=32 {train_s[32]:.2f} s "
                f"({probe_s / train_s[32]:.1%})",
            )
        )
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
    p.add_argument("--skip-sweep", action="store_true", help="leave out the Ray runs (3)")
    p.add_argument(
        "--only",
        help="comma-separated sections to run: loops,packs,quickstart,autopack,probes and estimates "
        "(not in the default set: it runs the quickstart and the example convnet for real, minutes)",
    )
    p.add_argument("--costs-out", help="write the fitted per-step cost model (sweeps/step_costs.json entry) here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # The estimates run two sweeps for real: in the full run, not in --quick's (the test suite's).
    default = {"loops", "packs", "quickstart", "autopack", "probes"} | (set() if args.quick else {"estimates"})
    only = set(args.only.split(",")) if args.only else default
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
        ("packs", lambda: bench_packs(device, args.quick, args.costs_out)),
        ("quickstart", lambda: [] if args.skip_sweep else bench_quickstart(args.quick)),
        ("autopack", lambda: [] if args.skip_sweep else bench_auto_pack(args.quick)),
        ("estimates", lambda: bench_estimates(args.quick)),
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
