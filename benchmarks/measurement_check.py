"""Before/after figures of the measurement fixes of issue 12 (docs/curvature.md), measured here.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m benchmarks.measurement_check [--quick]

1. Fig. 4 interpolation: the twin pair of ``sweeps/fig4_interpolation_small.yaml`` (digits,
   width-128 BN MLP, 20 epochs, lr 0.1 at S = 32 and S = 256, seed 0), loss along the line with
   batch-norm statistics interpolated (before) and re-estimated at every alpha (after).
2. Eq. 7's E(l): the train-mode epoch mean (before) against ``probe_loss`` (after) at the same
   final weights, for both endpoints.
3. Gradient noise scale of endpoint A against its exact value (every per-example gradient of the
   training set): two-batch on the 1,000-example probe subset with 16 pairs (before) and the
   whole-set estimator with 64 small batches (after), 20 seeds each.
4. Tr(H) and ||H||_F against eigvalsh on a 499-parameter tanh network: z = (estimate - exact) /
   stderr over 100 seeds, plain Hutchinson with the sample standard error (before) and Hutch++
   with the corrected standard errors (after), at 8 and 16 HVPs.
5. The same on quadratics whose Hessian has 3 or 10 outlier eigenvalues (as trained networks'
   do), 300 seeds, 16 HVPs: plain Hutchinson and Hutch++ as they are now.

Prints a markdown table; nothing is asserted (the tests check the fixes).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from trainables import curvature as cv
from trainables.config import DatasetConfig, ModelConfig, TrainConfig
from trainables.data import load_dataset
from trainables.train_loop import TrialPoint, run_pack

CE = F.cross_entropy


def train_endpoints(epochs: int):
    data = load_dataset(DatasetConfig(name="digits", val_fraction=0.2))
    model_cfg = ModelConfig(name="mlp", options={"depth": 4, "width": 128, "batch_norm": True})
    out = {}
    for s in (32, 256):
        rows, states = [], []
        run_pack([TrialPoint(lr=0.1, batch_size=s, seed=0)], DatasetConfig(name="digits"), model_cfg,
                 TrainConfig(epochs=epochs), lambda r, st: (rows.extend(r), states.append(st)), data=data)
        out[s] = (rows[-1], states[-1]()["members"][0]["model"])
    from trainables.models import build_model

    return data, (lambda: build_model(model_cfg, data.input_shape, data.n_classes)), out


def check_interpolation(data, make_model, ends) -> list[str]:
    (_, sa), (_, sb) = ends[32], ends[256]
    alphas = torch.linspace(-1, 2, 31)
    batches = cv.make_batches(data.x_train, data.y_train, None, 2048)
    val = cv.make_batches(data.x_val, data.y_val, None, 2048)
    bn = cv.make_batches(data.x_train, data.y_train, cv.probe_subset(len(data.x_train), min(4096, len(data.x_train)), 0), 2048)
    old = cv.interpolate(make_model(), sa, sb, alphas, CE, batches, val, batch_norm="interpolate")
    new = cv.interpolate(make_model(), sa, sb, alphas, CE, batches, val, bn_batches=bn)
    neg = sum(int(((2 * sb[k] - sa[k]) < 0).sum()) for k in sa if k.endswith("running_var"))
    total = sum(sa[k].numel() for k in sa if k.endswith("running_var"))
    nan_old = [f"{r['alpha']:.1f}" for r in old if not math.isfinite(r["train_loss"])]
    nan_new = [f"{r['alpha']:.1f}" for r in new if not math.isfinite(r["train_loss"])]
    side = [(o, n) for o, n in zip(old, new) if 1.0 < o["alpha"] <= 1.7 + 1e-9 and math.isfinite(o["train_loss"])]
    rel = [abs(n["train_loss"] - o["train_loss"]) / abs(o["train_loss"]) for o, n in side]
    return [f"| 1 interpolation, Fig. 4 twin (0.1/32 vs 0.1/256) | negative running variances at alpha = 2: "
            f"{neg} of {total}; non-finite alphas: {', '.join(nan_old) or 'none'} | non-finite alphas: {', '.join(nan_new) or 'none'}; "
            f"train loss on (1, 1.7] differs from the old curve by {min(rel):.0%}-{max(rel):.0%} |"]


def check_eq7(data, make_model, ends) -> list[str]:
    idx = cv.probe_subset(len(data.x_train), min(1000, len(data.x_train)), 0)
    batches = cv.make_batches(data.x_train, data.y_train, idx, 1000)
    out = []
    for s in (32, 256):
        row, state = ends[s]
        model = make_model()
        model.load_state_dict(state)
        probe = cv.mean_loss(model, CE, batches)
        out.append(f"| 2 Eq. 7 E(l), endpoint 0.1/{s} | train-mode epoch mean {row['train_loss']:.4g} | "
                   f"probe_loss (eval mode, probe subset) {probe:.4g}: ratio {row['train_loss'] / probe:.2g}x |")
    return out


def exact_noise_scale(model, x, y) -> float:
    """tr(Sigma) / |G|^2 of the whole set from every per-example gradient (population covariance),
    in eval mode (tests/test_curvature.py uses it too)."""
    params = list(model.parameters())
    model.eval()
    grads = []
    for i in range(len(x)):
        g = torch.autograd.grad(CE(model(x[i:i + 1]), y[i:i + 1]), params)
        grads.append(torch.cat([t.reshape(-1) for t in g]).double())
    g = torch.stack(grads)
    mean = g.mean(0)
    return float(((g - mean) ** 2).sum(1).mean() / mean.pow(2).sum())


def check_noise(data, make_model, ends, seeds: int) -> list[str]:
    model = make_model()
    model.load_state_dict(ends[32][1])
    exact = exact_noise_scale(model, data.x_train, data.y_train)
    idx = cv.probe_subset(len(data.x_train), min(1000, len(data.x_train)), 0)
    xs, ys = data.x_train[idx], data.y_train[idx]
    old = [cv.gradient_noise_scale(model, CE, xs, ys, b_small=32, b_big=512, n_pairs=16, seed=s) for s in range(seeds)]
    new = [cv.gradient_noise_scale_full(model, CE, data.x_train, data.y_train, b_small=32, n_batches=64, seed=s)
           for s in range(seeds)]

    def summary(res):
        b = [r.b_simple for r in res]
        return (f"median {statistics.median(b):.4g}, sd {statistics.pstdev(b):.3g}, "
                f"{sum(v < 0 for v in b)}/{len(b)} negative, mean stderr {statistics.mean(r.b_simple_stderr for r in res):.3g}")
    return [f"| 3 noise scale, endpoint 0.1/32 (exact {exact:.4g} on {len(data.x_train)} examples) | two-batch, "
            f"probe subset, 16 pairs: {summary(old)} | whole set, 64 batches: {summary(new)} |"]


def trained_tanh_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 499-parameter float64 tanh net after 200 full-batch steps, with its 400 examples: small
    enough for an exact Hessian (tests/test_curvature.py uses it too)."""
    torch.manual_seed(0)
    n = 400
    x = torch.randn(n, 10, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(n, dtype=torch.float64) > 0).long() + (x[:, 1] > 0.3).long()
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(200):
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    return model, x, y


def exact_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every eigenvalue of the Hessian of the mean cross-entropy (autograd Hessian, eigvalsh)."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v):
        parts, i = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = v[i:i + math.prod(shape)].view(shape)
            i += math.prod(shape)
        return CE(torch.func.functional_call(model, parts, (x,)), y)

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))


def old_hutchinson(model, loss_fn, batches, m: int, seed: int) -> tuple[float, float, float, float]:
    """The estimator before issue 12, for the 'before' column: plain Hutchinson from m Rademacher
    HVPs with the plain sample standard errors (trace, its se, Frobenius, its se)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(seed)
    quad, sq = [], []
    with cv.probe_mode(model):
        op = cv.HessianOperator(model, loss_fn, batches, params)
        for _ in range(m):
            v = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(params[0].dtype)
            hv = op.flat(v)
            quad.append(float(v @ hv))
            sq.append(float(hv @ hv))
    f2, f2_se = statistics.mean(sq), statistics.stdev(sq) / math.sqrt(m)
    return statistics.mean(quad), statistics.stdev(quad) / math.sqrt(m), math.sqrt(f2), f2_se / (2 * math.sqrt(f2))


def check_hutchinson(seeds: int) -> list[str]:
    model, x, y = trained_tanh_net()
    ev = exact_spectrum(model, x, y)
    exact_t, exact_f = float(ev.sum()), float(ev.pow(2).sum().sqrt())
    batches = cv.make_batches(x, y, None, 1000)
    out = []
    for m in (8, 16):
        zt, zf, et, ef = [], [], [], []
        for s in range(seeds):
            t, t_se, f, f_se = old_hutchinson(model, CE, batches, m, s)
            zt.append((t - exact_t) / t_se)
            zf.append((f - exact_f) / f_se)
            et.append(abs(t - exact_t) / exact_t)
            ef.append(abs(f - exact_f) / exact_f)
        before = (f"z sd trace {statistics.pstdev(zt):.2f}, Frobenius {statistics.pstdev(zf):.2f}; "
                  f"median rel. error {statistics.median(et):.3f}, {statistics.median(ef):.3f}")
        zt, zf, et, ef = [], [], [], []
        for s in range(seeds):
            t, f = cv.hessian_trace_and_frobenius(model, CE, batches, n_probes=m, seed=s)
            zt.append((t.value - exact_t) / t.stderr)
            zf.append((f.value - exact_f) / f.stderr)
            et.append(abs(t.value - exact_t) / exact_t)
            ef.append(abs(f.value - exact_f) / exact_f)
        after = (f"z sd trace {statistics.pstdev(zt):.2f}, Frobenius {statistics.pstdev(zf):.2f}; "
                 f"median rel. error {statistics.median(et):.3f}, {statistics.median(ef):.3f}")
        out.append(f"| 4 Tr(H), ||H||_F, {m} HVPs, 499 parameters, {seeds} seeds | Hutchinson, sample stderr: "
                   f"{before} | default (Hutch++ from 12 HVPs, corrected stderr): {after} |")
    return out


class _Quadratic(nn.Module):
    """loss = 1/2 p^T H p: a model whose Hessian is exactly H."""

    def __init__(self, d: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, x):
        return self.p


def check_outlier_spectra(seeds: int) -> list[str]:
    """Calibration where a few outlier eigenvalues dominate (trained nets): known H = Q diag Q^T."""
    out = []
    for d, outliers in ((60, 3), (200, 10)):
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = torch.cat([torch.linspace(20, 5, outliers, dtype=torch.float64),
                         torch.rand(d - outliers, generator=g, dtype=torch.float64) * 0.5])
        h = q @ torch.diag(lam) @ q.T
        model, batches = _Quadratic(d), [(torch.zeros(1, 1), torch.zeros(1))]
        exact_t, exact_f = float(lam.sum()), float(lam.pow(2).sum().sqrt())
        cols = []
        for method in ("hutchinson", "hutch++"):
            zt, zf, et = [], [], []
            for s in range(seeds):
                t, f = cv.hessian_trace_and_frobenius(model, lambda o, y: 0.5 * o @ h @ o, batches, n_probes=16,
                                                      seed=s, method=method)
                zt.append((t.value - exact_t) / t.stderr)
                zf.append((f.value - exact_f) / f.stderr)
                et.append(abs(t.value - exact_t) / exact_t)
            cov = sum(abs(z) < 1.96 for z in zt) / len(zt)
            cols.append(f"z sd trace {statistics.pstdev(zt):.2f} (95% coverage {cov:.2f}), Frobenius "
                        f"{statistics.pstdev(zf):.2f}; median rel. error of Tr(H) {statistics.median(et):.3f}")
        out.append(f"| 5 Tr(H), ||H||_F, 16 HVPs, d = {d} with {outliers} outlier eigenvalues, {seeds} seeds | "
                   f"Hutchinson: {cols[0]} | Hutch++: {cols[1]} |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs and seeds (seconds; numbers rough)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data, make_model, ends = train_endpoints(3 if args.quick else 20)
    rows = ["| check | before | after |", "| --- | --- | --- |"]
    rows += check_interpolation(data, make_model, ends)
    rows += check_eq7(data, make_model, ends)
    rows += check_noise(data, make_model, ends, 4 if args.quick else 20)
    rows += check_hutchinson(10 if args.quick else 100)
    rows += check_outlier_spectra(20 if args.quick else 300)
    print(f"# measurement fixes, before/after ({time.perf_counter() - t0:.0f} s, torch {torch.__version__}, 1 thread)\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
