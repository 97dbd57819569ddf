"""Device check of the trainable on a GPU (no Ray needed): ``python -m benchmarks.gpu_check``.

1. A quickstart trial (with end-of-training probes) on CUDA against the same trial on CPU:
   same data, init and batch order, so the curves agree up to float error.
2. Checkpoint and resume on CUDA: stop after epoch 3, restart from the saved state; epochs 4-6
   against an uninterrupted CUDA run.
3. Vectorized seeds on CUDA: 8 replicas' rows against 8 separate CUDA runs (one epoch).
Prints one line per check with the measured differences; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import io
import sys
import time

import torch

from trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from trainables.data import load_dataset
from trainables.replicas import run_replicas
from trainables.train_loop import TrialPoint, run_training

DIGITS = DatasetConfig(name="digits", val_fraction=0.2)
MODEL = ModelConfig(name="mlp", depth=4, width=256, batch_norm=True)
PROBES = CurvatureConfig(n_samples=1000, lanczos_iters=20, lanczos_tol=1e-4, hutchinson_probes=8)


def _run(point, epochs, device, data, probes=None, start_state=None, stop_after=None):
    rows, saved = [], {}

    def report(row, state):
        rows.append(row)
        if row["epoch"] == stop_after:
            buf = io.BytesIO()
            torch.save(state(), buf)
            buf.seek(0)
            saved.update(torch.load(buf, weights_only=True))
            raise KeyboardInterrupt

    try:
        run_training(point, DIGITS, MODEL, TrainConfig(epochs=epochs), report, device=device, data=data,
                     probes=probes, start_state=start_state)
    except KeyboardInterrupt:
        pass
    return rows, saved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    data = load_dataset(DIGITS)
    point = TrialPoint(lr=0.04, batch_size=32, seed=0)
    ok = True

    t = time.perf_counter()
    cpu, _ = _run(point, args.epochs, "cpu", data, PROBES)
    t_cpu = time.perf_counter() - t
    t = time.perf_counter()
    gpu, _ = _run(point, args.epochs, dev, data, PROBES)
    t_gpu = time.perf_counter() - t
    d_loss = max(abs(a["train_loss"] - b["train_loss"]) / max(abs(a["train_loss"]), 1e-12) for a, b in zip(cpu, gpu))
    d_lmax = abs(cpu[-1]["lambda_max"] - gpu[-1]["lambda_max"]) / cpu[-1]["lambda_max"]
    good = d_loss < 0.05 and d_lmax < 0.05
    ok &= good
    print(f"1 cpu vs {dev.type}: max rel. train-loss diff {d_loss:.2e}, lambda_max {cpu[-1]['lambda_max']:.4f} vs "
          f"{gpu[-1]['lambda_max']:.4f} (rel {d_lmax:.2e}); wall {t_cpu:.1f} s vs {t_gpu:.1f} s "
          f"(probes {cpu[-1]['probe_s']:.2f} s vs {gpu[-1]['probe_s']:.2f} s) {'ok' if good else 'FAIL'}")

    full, _ = _run(point, 6, dev, data)
    _, saved = _run(point, 6, dev, data, stop_after=3)
    resumed, _ = _run(point, 6, dev, data, start_state=saved)
    d_res = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(full[3:], resumed))
    good = [r["epoch"] for r in resumed] == [4, 5, 6] and d_res < 1e-6
    ok &= good
    print(f"2 resume on {dev.type}: epochs {[r['epoch'] for r in resumed]}, max train-loss diff vs uninterrupted "
          f"{d_res:.2e} {'ok' if good else 'FAIL'}")

    seeds = list(range(8))
    rep_rows: list[dict] = []
    t = time.perf_counter()
    run_replicas(0.04, 32, seeds, DIGITS, MODEL, TrainConfig(epochs=1), report=lambda rs, state: rep_rows.extend(rs),
                 device=dev, data=data)
    t_rep = time.perf_counter() - t
    t = time.perf_counter()
    sep = [_run(TrialPoint(0.04, 32, s), 1, dev, data)[0][0] for s in seeds]
    t_sep = time.perf_counter() - t
    d_rep = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(rep_rows, sep))
    good = d_rep < 1e-3
    ok &= good
    print(f"3 replicas on {dev.type}: 8 seeds, max train-loss diff vs separate runs {d_rep:.2e}; "
          f"{t_rep:.2f} s together vs {t_sep:.2f} s separately {'ok' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
