"""Before/after figures of the probes' measurement fixes (docs/curvature.md), measured here.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m remeasure.measurement_check [--quick]

1. Fig. 4 interpolation: the twin pair of ``sweeps/fig4_interpolation_small.yaml`` (digits,
   width-128 BN MLP, 20 epochs, lr 0.1 at S = 32 and S = 256, seed 0), loss along the line with
   batch-norm statistics interpolated (before) and re-estimated at every alpha (after).
2. Eq. 7's E(l): the train-mode epoch mean (before) against ``probe_loss`` (after) at the same
   final weights, for both endpoints.
3. Gradient noise scale B_simple of both endpoints against its exact value (every per-example
   gradient): coverage of ``value +- 1.96 stderr`` (the fraction of seeds whose interval holds
   the exact value), mean and sd of z = (estimate - exact) / stderr over 200 seeds. The whole-set
   estimator (``noise_method: full``, 64 batches of 32) with independently drawn batches and
   their sample standard error (before) against whole passes over the set with the
   batch-difference standard error (after); the two-batch estimator on the 1,000-example probe
   subset (against the subset's exact value) with its jackknife (before) and Fieller (after)
   standard error, on the same draws, at 16 pairs (200 seeds) and 64 pairs (100 seeds).
4. Tr(H) and ||H||_F against eigvalsh: coverage and z over 300 seeds on a 499-parameter tanh
   net, a 714-parameter batch-norm MLP trained on digits, and quadratics whose Hessian has 3 or
   10 outlier eigenvalues (as trained networks' do), at 8 HVPs (plain Hutchinson) and 16
   (Hutch++, the default): the Frobenius norm's old delta-method standard error (before, on
   the same probes, replayed) against the chi-square interval (after). The trace's standard
   error did not change (both columns).
5. Hutch++ against plain Hutchinson at 16 HVPs: relative RMSE of Tr(H) and ||H||_F on the
   problems of 4 (against the exact values, 300 seeds) and on the digits endpoint and the
   quickstart's MNIST-1D model after 60 epochs (against the mean of all estimates, 100 seeds).

Prints a markdown table; nothing is asserted (the tests check the fixes). About 5 minutes on one
thread; ``--quick`` (fewer epochs and seeds; rough numbers) about 15 s.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from lrbs.trainables import curvature as cv
from lrbs.trainables.config import DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.data import load_dataset
from lrbs.trainables.train_loop import TrialPoint, run_pack

CE = F.cross_entropy


def train_endpoints(epochs: int):
    data = load_dataset(DatasetConfig(name="digits", val_fraction=0.2))
    model_cfg = ModelConfig(name="mlp", options={"depth": 4, "width": 128, "batch_norm": True})
    out = {}
    for s in (32, 256):
        rows, states = [], []
        run_pack(
            [TrialPoint(lr=0.1, batch_size=s, seed=0)],
            DatasetConfig(name="digits"),
            model_cfg,
            TrainConfig(epochs=epochs),
            lambda r, st: (rows.extend(r), states.append(st)),
            data=data,
        )
        out[s] = (rows[-1], states[-1]()["members"][0]["model"])
    from lrbs.trainables.models import build_model

    return data, (lambda: build_model(model_cfg, data.input_shape, data.n_classes)), out


def check_interpolation(data, make_model, ends) -> list[str]:
    (_, sa), (_, sb) = ends[32], ends[256]
    alphas = torch.linspace(-1, 2, 31)
    batches = cv.make_batches(data.x_train, data.y_train, None, 2048)
    val = cv.make_batches(data.x_val, data.y_val, None, 2048)
    bn = cv.make_batches(
        data.x_train, data.y_train, cv.probe_subset(len(data.x_train), min(4096, len(data.x_train)), 0), 2048
    )
    old = cv.interpolate(make_model(), sa, sb, alphas, CE, batches, val, batch_norm="interpolate")
    new = cv.interpolate(make_model(), sa, sb, alphas, CE, batches, val, bn_batches=bn)
    neg = sum(int(((2 * sb[k] - sa[k]) < 0).sum()) for k in sa if k.endswith("running_var"))
    total = sum(sa[k].numel() for k in sa if k.endswith("running_var"))
    nan_old = [f"{r['alpha']:.1f}" for r in old if not math.isfinite(r["train_loss"])]
    nan_new = [f"{r['alpha']:.1f}" for r in new if not math.isfinite(r["train_loss"])]
    side = [(o, n) for o, n in zip(old, new) if 1.0 < o["alpha"] <= 1.7 + 1e-9 and math.isfinite(o["train_loss"])]
    rel = [abs(n["train_loss"] - o["train_loss"]) / abs(o["train_loss"]) for o, n in side]
    return [
        f"| 1 interpolation, Fig. 4 twin (0.1/32 vs 0.1/256) | negative running variances at alpha = 2: "
        f"{neg} of {total}; non-finite alphas: {', '.join(nan_old) or 'none'} | non-finite alphas: {', '.join(nan_new) or 'none'}; "
        f"train loss on (1, 1.7] differs from the old curve by {min(rel):.0%}-{max(rel):.0%} |"
    ]


def check_eq7(data, make_model, ends) -> list[str]:
    idx = cv.probe_subset(len(data.x_train), min(1000, len(data.x_train)), 0)
    batches = cv.make_batches(data.x_train, data.y_train, idx, 1000)
    out = []
    for s in (32, 256):
        row, state = ends[s]
        model = make_model()
        model.load_state_dict(state)
        probe = cv.mean_loss(model, CE, batches)
        out.append(
            f"| 2 Eq. 7 E(l), endpoint 0.1/{s} | train-mode epoch mean {row['train_loss']:.4g} | "
            f"probe_loss (eval mode, probe subset) {probe:.4g}: ratio {row['train_loss'] / probe:.2g}x |"
        )
    return out


def per_example_sq_deviations(model, x, y) -> tuple[torch.Tensor, float]:
    """||g_i - G||^2 of every example (their mean is tr(Sigma), population covariance) and |G|^2,
    from every per-example gradient, in eval mode."""
    params = list(model.parameters())
    grads = []
    with cv.probe_mode(model):
        for i in range(len(x)):
            g = torch.autograd.grad(CE(model(x[i : i + 1]), y[i : i + 1]), params)
            grads.append(torch.cat([t.reshape(-1) for t in g]).double())
    g = torch.stack(grads)
    mean = g.mean(0)
    return ((g - mean) ** 2).sum(1), float(mean.pow(2).sum())


def exact_noise_scale(model, x, y) -> float:
    """tr(Sigma) / |G|^2 of the whole set from every per-example gradient (population covariance),
    in eval mode (tests/trainables/test_curvature.py uses it too)."""
    dev, g2 = per_example_sq_deviations(model, x, y)
    return float(dev.mean()) / g2


def calibration(z: list[float]) -> str:
    """Coverage of the 95% interval (|z| <= 1.96), mean and sd of z = (estimate - exact) / stderr."""
    finite = [v for v in z if math.isfinite(v)]
    cover = sum(abs(v) <= 1.96 for v in z) / len(z)  # an infinite stderr (z = 0) covers
    return f"coverage {cover:.3f}, z mean {statistics.mean(finite):+.2f}, z sd {statistics.pstdev(finite):.2f}"


def _sq_norm(grads) -> float:
    return float(sum(g.double().pow(2).sum() for g in grads))


def old_noise_scale_full(model, x, y, b_small: int, n_batches: int, seed: int) -> tuple[float, float]:
    """The whole-set estimator before its standard errors were recalibrated, for the 'before'
    column: exact |G|^2, tr(Sigma) from n_batches batches drawn independently with replacement,
    sample standard error of b (|G_b|^2 - |G|^2). Returns (B_simple, stderr)."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(x), (n_batches * b_small,), generator=gen)
    g2 = _sq_norm(cv.loss_and_grad(model, CE, cv.make_batches(x, y, None, 1000))[1])
    t = [
        b_small * (_sq_norm(cv.loss_and_grad(model, CE, [(x[i], y[i])])[1]) - g2)
        for i in draws.view(n_batches, b_small)
    ]
    return statistics.mean(t) / g2, statistics.stdev(t) / math.sqrt(n_batches) / g2


def old_two_batch(model, x, y, b_small: int, b_big: int, n_pairs: int, seed: int) -> tuple[float, float]:
    """``gradient_noise_scale`` (with replacement) with its jackknife standard error, as before
    Fieller's interval, on the same draws. Returns (B_simple, jackknife stderr)."""
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randint(0, len(x), (b,), generator=gen) for _ in range(n_pairs) for b in (b_small, b_big)]
    sq = [_sq_norm(cv.loss_and_grad(model, CE, [(x[i], y[i])])[1]) for i in draws]
    s, bg = sq[0::2], sq[1::2]

    def ratio(ms, mb):
        g2, tr = cv.noise_scale_from_sq_norms(ms, mb, b_small, b_big)
        return tr / g2

    b = ratio(statistics.mean(s), statistics.mean(bg))
    loo = [ratio((sum(s) - s[i]) / (n_pairs - 1), (sum(bg) - bg[i]) / (n_pairs - 1)) for i in range(n_pairs)]
    mean = statistics.mean(loo)
    return b, math.sqrt((n_pairs - 1) / n_pairs * sum((v - mean) ** 2 for v in loo))


def check_noise(data, make_model, ends, seeds: int) -> list[str]:
    """Coverage of B_simple's intervals against its exact value (every per-example gradient)."""
    out = []
    for s in (32, 256):
        model = make_model()
        model.load_state_dict(ends[s][1])
        dev, g2 = per_example_sq_deviations(model, data.x_train, data.y_train)
        exact = float(dev.mean()) / g2
        top5 = float(dev.sort(descending=True).values[:5].sum() / dev.sum())  # share of tr(Sigma)
        old = [old_noise_scale_full(model, data.x_train, data.y_train, 32, 64, seed) for seed in range(seeds)]
        new = [
            cv.gradient_noise_scale_full(model, CE, data.x_train, data.y_train, b_small=32, n_batches=64, seed=seed)
            for seed in range(seeds)
        ]

        def summary(pairs):
            b = [v for v, _ in pairs]
            return (
                f"{calibration([(v - exact) / se for v, se in pairs])}; estimate mean "
                f"{statistics.mean(b) / exact - 1:+.1%} off, median {statistics.median(b):.4g}, "
                f"sd {statistics.pstdev(b):.3g}"
            )

        out.append(
            f"| 3 noise scale B_simple, noise_method full (64 batches of 32), endpoint 0.1/{s} "
            f"(exact {exact:.4g} on {len(data.x_train)} examples, {top5:.0%} of tr(Sigma) from 5 of them), "
            f"{seeds} seeds | batches drawn with replacement, sample stderr: {summary(old)} | whole passes "
            f"over the set, stderr from batch-difference products: "
            f"{summary([(r.b_simple, r.b_simple_stderr) for r in new])} |"
        )
    model = make_model()
    model.load_state_dict(ends[32][1])
    idx = cv.probe_subset(len(data.x_train), min(1000, len(data.x_train)), 0)
    xs, ys = data.x_train[idx], data.y_train[idx]
    exact = exact_noise_scale(model, xs, ys)
    for pairs in (16, 64):
        n = seeds if pairs == 16 else max(4, seeds // 2)
        old = [old_two_batch(model, xs, ys, 32, 512, pairs, seed) for seed in range(n)]
        new = [
            cv.gradient_noise_scale(model, CE, xs, ys, b_small=32, b_big=512, n_pairs=pairs, seed=seed)
            for seed in range(n)
        ]
        b = [v for v, _ in old]
        out.append(
            f"| 3 noise scale B_simple, two_batch on the {len(idx)}-example probe subset (exact {exact:.4g} of "
            f"the subset), endpoint 0.1/32, {pairs} pairs of 32/512, {n} seeds (estimate median "
            f"{statistics.median(b):.4g}, sd {statistics.pstdev(b):.3g}) | jackknife stderr: "
            f"{calibration([(v - exact) / se for v, se in old])} | Fieller stderr: "
            f"{calibration([(r.b_simple - exact) / r.b_simple_stderr for r in new])} |"
        )
    return out


def full_batch_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> nn.Module:
    """``steps`` plain SGD steps on the mean cross-entropy of all of (x, y): small models brought
    near a minimum for the exact-Hessian and exact-noise checks (here and in tests/trainables/test_curvature.py)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    return model


def trained_tanh_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 499-parameter float64 tanh net after 200 full-batch steps, with its 400 examples: small
    enough for an exact Hessian (tests/trainables/test_curvature.py uses it too)."""
    torch.manual_seed(0)
    n = 400
    x = torch.randn(n, 10, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(n, dtype=torch.float64) > 0).long() + (x[:, 1] > 0.3).long()
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    return full_batch_sgd(model, x, y, lr=0.3, steps=200), x, y


def trained_bn_net(data) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 714-parameter float64 batch-norm ReLU MLP (64-8-8-10) after 30 epochs of SGD (lr 0.1,
    S = 32) on the digits training set (99% train accuracy), with that set: a trained network
    with batch norm whose Hessian (eval mode) is small enough to compute exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10)
    ).double()
    x, y = data.x_train.double(), data.y_train
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            opt.zero_grad()
            CE(model(x[perm[i : i + 32]]), y[perm[i : i + 32]]).backward()
            opt.step()
    return model, x, y


def exact_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Every eigenvalue of the Hessian of the mean cross-entropy (autograd Hessian, eigvalsh),
    batch norm in eval mode as in the probes."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v):
        parts, i = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = v[i : i + math.prod(shape)].view(shape)
            i += math.prod(shape)
        return CE(torch.func.functional_call(model, parts, (x,)), y)

    with cv.probe_mode(model):
        return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))


def old_frobenius_stderr(model, loss_fn, batches, m: int, seed: int) -> tuple[float, float]:
    """||H||_F and its standard error as computed before the cross-product interval, on the same
    probes as ``hessian_trace_and_frobenius(..., method="hutch++")`` (the draws are replayed):
    the sample standard error of ||H p||^2 scaled by sqrt((r - 1) / (r - 3)), then the delta
    method se / (2 ||H||_F)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    dtype = params[0].dtype
    gen = torch.Generator().manual_seed(seed)
    k = max(0, min(m // 4, (m - 8) // 2, n - 1))

    def rademacher():
        return torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).mul_(2).sub_(1).to(dtype)

    top, sq = 0.0, []
    with cv.probe_mode(model):
        op = cv.HessianOperator(model, loss_fn, batches, params)
        if k:
            q = torch.linalg.qr(torch.stack([op.flat(rademacher()) for _ in range(k)], dim=1)).Q
            top = float(torch.stack([op.flat(q[:, i].contiguous()) for i in range(k)], dim=1).pow(2).sum())
        for _ in range(m - 2 * k):
            v = rademacher()
            if k:
                v = v - q @ (q.T @ v)
            sq.append(float(op.flat(v).pow(2).sum()))
    r = len(sq)
    frob = math.sqrt(top + statistics.mean(sq))
    se = statistics.stdev(sq) / math.sqrt(r) * math.sqrt((r - 1) / (r - 3))
    return frob, se / (2 * frob)


class _Quadratic(nn.Module):
    """loss = 1/2 p^T H p: a model whose Hessian is exactly H."""

    def __init__(self, d: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, x):
        return self.p


def outlier_quadratic(d: int, outliers: int):
    """A quadratic loss whose Hessian Q diag(lam) Q^T has ``outliers`` eigenvalues 20..5 over a
    bulk in [0, 0.5] (as trained networks' spectra): (model, loss_fn, batches, eigenvalues)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.cat(
        [
            torch.linspace(20, 5, outliers, dtype=torch.float64),
            torch.rand(d - outliers, generator=g, dtype=torch.float64) * 0.5,
        ]
    )
    h = q @ torch.diag(lam) @ q.T
    return _Quadratic(d), (lambda o, y: 0.5 * o @ h @ o), [(torch.zeros(1, 1), torch.zeros(1))], lam


def exact_problems(data) -> list[tuple[str, nn.Module, object, list, torch.Tensor]]:
    """(name, model, loss_fn, batches, eigenvalues) of every problem with an exact Hessian."""
    tanh, x, y = trained_tanh_net()
    bn, xb, yb = trained_bn_net(data)
    out = [
        ("499-parameter tanh net", tanh, CE, cv.make_batches(x, y, None, 1000), exact_spectrum(tanh, x, y)),
        (
            "714-parameter batch-norm MLP on digits",
            bn,
            CE,
            cv.make_batches(xb, yb, None, 2048),
            exact_spectrum(bn, xb, yb),
        ),
    ]
    for d, outliers in ((60, 3), (200, 10)):
        model, loss_fn, batches, lam = outlier_quadratic(d, outliers)
        out.append((f"quadratic, d = {d} with {outliers} outlier eigenvalues", model, loss_fn, batches, lam))
    return out


def check_hessian_intervals(problems, seeds: int) -> list[str]:
    """Coverage of the Tr(H) and ||H||_F intervals against eigvalsh, before (the old Frobenius
    standard error on the same probes) and after, at 8 HVPs (plain Hutchinson) and 16 (Hutch++)."""
    out = []
    for name, model, loss_fn, batches, ev in problems:
        exact_t, exact_f = float(ev.sum()), float(ev.pow(2).sum().sqrt())
        for m in (8, 16):
            if m == 8 and name.startswith("quadratic"):
                continue
            zt, zf_old, zf = [], [], []
            for s in range(seeds):
                t, f = cv.hessian_trace_and_frobenius(model, loss_fn, batches, n_probes=m, seed=s)
                f_old, se_old = old_frobenius_stderr(model, loss_fn, batches, m, s)
                assert abs(f_old - f.value) <= 1e-6 * f.value, (f_old, f.value)  # the same probes
                zt.append((t.value - exact_t) / t.stderr)
                zf_old.append((f_old - exact_f) / se_old)
                zf.append((f.value - exact_f) / f.stderr)
            method = "Hutch++" if m >= 12 else "plain Hutchinson"
            out.append(
                f"| 4 Tr(H), ||H||_F, {m} HVPs ({method}), {name}, {seeds} seeds | Tr(H) {calibration(zt)}; "
                f"||H||_F delta method: {calibration(zf_old)} | Tr(H) (unchanged) {calibration(zt)}; "
                f"||H||_F chi-square interval: {calibration(zf)} |"
            )
    return out


def _rmse(values: list[float], ref: float) -> float:
    return math.sqrt(statistics.mean((v - ref) ** 2 for v in values)) / abs(ref)


def mnist1d_quickstart_model(epochs: int):
    """The quickstart's model (4-layer width-256 BN MLP on MNIST-1D) after ``epochs`` at lr 0.04,
    S = 32, seed 0, with the quickstart's 1,000-example probe subset: (model, batches)."""
    from lrbs.trainables.models import build_model

    ds = DatasetConfig(name="mnist1d", options={"n_samples": 5000, "seed": 42}, val_fraction=0.2, split_seed=0)
    data = load_dataset(ds)
    model_cfg = ModelConfig(name="mlp", options={"depth": 4, "width": 256, "batch_norm": True})
    states = []
    run_pack(
        [TrialPoint(lr=0.04, batch_size=32, seed=0)],
        ds,
        model_cfg,
        TrainConfig(epochs=epochs),
        lambda r, st: states.append(st),
        data=data,
    )
    model = build_model(model_cfg, data.input_shape, data.n_classes)
    model.load_state_dict(states[-1]()["members"][0]["model"])
    idx = cv.probe_subset(len(data.x_train), 1000, 0)
    return model, cv.make_batches(data.x_train, data.y_train, idx, 1000)


def check_hutchpp_error(problems, data, make_model, ends, epochs: int, seeds: int, big_seeds: int) -> list[str]:
    """Relative RMSE of Tr(H) and ||H||_F at 16 HVPs, plain Hutchinson against Hutch++: against
    eigvalsh where the Hessian is exact, else against the mean of every estimate of both methods
    (both are unbiased; that reference's own error is ~1/sqrt(2 x seeds) of an RMSE)."""
    digits = make_model()
    digits.load_state_dict(ends[32][1])
    idx = cv.probe_subset(len(data.x_train), min(1000, len(data.x_train)), 0)
    big = [
        (
            "digits width-128 BN MLP, endpoint 0.1/32, 1,000-example probe subset",
            digits,
            cv.make_batches(data.x_train, data.y_train, idx, 1000),
        ),
        (
            f"MNIST-1D quickstart model (width-256 BN MLP, {epochs} epochs at 0.04/32), 1,000-example probe subset",
            *mnist1d_quickstart_model(epochs),
        ),
    ]
    rows = [
        (name, model, loss_fn, batches, (float(ev.sum()), float(ev.pow(2).sum().sqrt())), seeds)
        for name, model, loss_fn, batches, ev in problems
    ]
    rows += [(name, model, CE, batches, None, big_seeds) for name, model, batches in big]
    out = []
    for name, model, loss_fn, batches, exact, n in rows:
        ref = "exact" if exact else "mean of all estimates"
        est = {
            meth: [
                cv.hessian_trace_and_frobenius(
                    model, loss_fn, batches, n_probes=16, seed=s, method=meth, retain_graph=True
                )
                for s in range(n)
            ]
            for meth in ("hutchinson", "hutch++")
        }
        if exact is None:
            every = est["hutchinson"] + est["hutch++"]
            exact = (statistics.mean(t.value for t, _ in every), statistics.mean(f.value for _, f in every))
        cols = [
            f"RMSE Tr(H) {_rmse([t.value for t, _ in e], exact[0]):.1%}, ||H||_F "
            f"{_rmse([f.value for _, f in e], exact[1]):.1%}"
            for e in est.values()
        ]
        out.append(
            f"| 5 Hutch++ vs Hutchinson, 16 HVPs, {name}, {n} seeds (reference: {ref}) | plain Hutchinson: "
            f"{cols[0]} | Hutch++ (4 sketch + 4 + 8 probes, the default): {cols[1]} |"
        )
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
    rows += check_noise(data, make_model, ends, 4 if args.quick else 200)
    problems = exact_problems(data)
    rows += check_hessian_intervals(problems, 10 if args.quick else 300)
    rows += check_hutchpp_error(
        problems, data, make_model, ends, 2 if args.quick else 60, 6 if args.quick else 300, 4 if args.quick else 100
    )
    print(
        f"# measurement checks, before/after ({time.perf_counter() - t0:.0f} s, torch {torch.__version__}, 1 thread)\n"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
