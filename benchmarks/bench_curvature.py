"""Cost and accuracy of the curvature probes on the quickstart model.

The quickstart model is the paper's Fig. 3 architecture at digits scale: a 4-layer batch-normalised
ReLU MLP, 64 -> 256 -> 256 -> 256 -> 10, on sklearn's digits (1797 examples, 64 features), after a
few hundred SGD steps so that the Hessian is a trained one. Probes run on a fixed seeded subset,
batch norm in inference mode (as the trainable does).

    .venv/bin/python benchmarks/bench_curvature.py            # about a minute on 2 CPU cores
    .venv/bin/python benchmarks/bench_curvature.py --quick    # a few seconds
    .venv/bin/python benchmarks/bench_curvature.py --device cuda

Prints markdown tables: Lanczos vs power iteration (HVPs, seconds, estimate, error against a long
Lanczos reference, converged, residual), then Hutchinson trace/Frobenius cost per probe, and the
gradient-noise-scale cost.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrbs.trainables import curvature as cv  # noqa: E402


def build_model(width: int = 256, depth: int = 4, n_in: int = 64, n_out: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    fan_in = n_in
    for _ in range(depth - 1):
        layers += [nn.Linear(fan_in, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, n_out))
    return nn.Sequential(*layers)


def load_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32) / 16.0
        y = torch.tensor(d.target, dtype=torch.long)
        name = "sklearn digits"
    except ImportError:  # no sklearn: random inputs with a random linear teacher
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2000, 64, generator=g)
        y = (x @ torch.randn(64, 10, generator=g)).argmax(1)
        name = "random (no sklearn)"
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x.to(device), y.to(device), name


def train(model: nn.Module, x, y, steps: int, lr: float, batch: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g).to(x.device)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return loss.item()


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset, few iterations: a few seconds")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--steps", type=int, default=None, help="SGD steps before probing (default 400; quick 150)")
    ap.add_argument("--n-probe", type=int, default=None, help="examples in the probe subset (default 1000; quick 300)")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--probes", type=int, default=None, help="Hutchinson probes (default 16; quick 4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    steps = args.steps if args.steps is not None else (150 if args.quick else 400)
    n_probe = args.n_probe if args.n_probe is not None else (300 if args.quick else 1000)
    n_probes = args.probes if args.probes is not None else (4 if args.quick else 16)
    lz_iters, pw_iters, ref_iters = (10, 30, 30) if args.quick else (20, 100, 80)

    torch.manual_seed(args.seed)
    x, y, data_name = load_data(device)
    model = build_model().to(device)
    last_loss, t_train = timed(lambda: train(model, x, y, steps, lr=0.1, batch=64, seed=args.seed), device)
    n_params = sum(p.numel() for p in model.parameters())
    idx = cv.probe_subset(x.shape[0], min(n_probe, x.shape[0]), seed=args.seed)
    batches = cv.make_batches(x, y, idx, batch_size=1000)
    model.train()  # as a trainable would leave it; every probe must restore this

    print(
        f"# curvature probes: quickstart MLP 64-256-256-256-10 (BN, ReLU), {n_params} params, "
        f"{data_name} ({x.shape[0]} ex.), {steps} SGD steps (lr 0.1, S 64, last loss {last_loss:.3f}, "
        f"{t_train:.1f}s); probe subset {len(idx)} ex., BN in eval mode; device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )

    (loss, _), t_grad = timed(lambda: cv.loss_and_grad(model, nn.functional.cross_entropy, batches), device)
    params = [p for p in model.parameters() if p.requires_grad]
    cv.hvp(model, nn.functional.cross_entropy, batches, [torch.ones_like(p) for p in params])  # warm-up
    _, t_hvp = timed(
        lambda: cv.hvp(model, nn.functional.cross_entropy, batches, [torch.ones_like(p) for p in params]), device
    )
    print(f"probe-set loss {loss:.4f}; one gradient {t_grad * 1e3:.1f} ms, one HVP {t_hvp * 1e3:.1f} ms\n")

    ce = nn.functional.cross_entropy
    ref, t_ref = timed(
        lambda: cv.top_eigenvalue(model, ce, batches, max_iters=ref_iters, tol=1e-9, seed=args.seed + 100), device
    )
    runs = [
        ("lanczos", args.tol, lz_iters),
        ("power", args.tol, pw_iters),
        ("lanczos", args.tol * 1e-3, lz_iters),
        ("power", args.tol * 1e-3, pw_iters),
    ]
    print("## Top Hessian eigenvalue (largest algebraic)\n")
    print(
        f"reference: Lanczos, {ref.n_hvp} HVPs, tol 1e-9, lambda_max = {ref.value:.6g} "
        f"(converged={ref.converged}, residual {ref.residual:.2g}, {t_ref:.2f} s)\n"
    )
    print("| method | tol | max_iters | HVPs | seconds | estimate | rel. error vs ref | converged | residual/|value| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method, tol, iters in runs:
        r, t = timed(
            lambda: cv.top_eigenvalue(model, ce, batches, max_iters=iters, tol=tol, seed=args.seed, method=method),
            device,
        )
        err = abs(r.value - ref.value) / abs(ref.value)
        print(
            f"| {method} | {tol:g} | {iters} | {r.n_hvp} | {t:.2f} | {r.value:.6g} | {err:.1e} | "
            f"{r.converged} | {r.residual / abs(r.value):.1e} |"
        )

    print("\n## Hutchinson trace and Frobenius norm (shared HVPs)\n")
    (tr, fro), t = timed(
        lambda: cv.hessian_trace_and_frobenius(model, ce, batches, n_probes=n_probes, seed=args.seed), device
    )
    print("| quantity | probes | estimate | stderr | rel. stderr | seconds total | ms per probe |")
    print("|---|---|---|---|---|---|---|")
    for name, e in (("Tr(H)", tr), ("‖H‖_F", fro)):
        print(
            f"| {name} | {e.n_probes} | {e.value:.5g} | {e.stderr:.2g} | {e.stderr / abs(e.value):.1%} | "
            f"{t:.2f} | {t / n_probes * 1e3:.1f} |"
        )
    print(f"\n(both from the same {n_probes} HVPs; separate calls would cost twice that)")

    print("\n## Gradient noise scale (McCandlish et al.), on all training examples\n")
    b_small, b_big, n_pairs = (16, 256, 4) if args.quick else (32, 512, 16)
    r, t = timed(
        lambda: cv.gradient_noise_scale(model, ce, x, y, b_small=b_small, b_big=b_big, n_pairs=n_pairs, seed=args.seed),
        device,
    )
    print("| B_small | B_big | pairs | B_simple | stderr (Fieller) | |G|^2 | tr(Sigma) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {b_small} | {b_big} | {n_pairs} | {r.b_simple:.4g} | {r.b_simple_stderr:.2g} | {r.g2:.3g} ± "
        f"{r.g2_stderr:.1g} | {r.trace_sigma:.3g} ± {r.trace_sigma_stderr:.1g} | {t:.2f} |"
    )
    assert model.training and all(m.training for m in model.modules()), "a probe leaked eval mode"


if __name__ == "__main__":
    main()
