"""Device check of the packed engine on a GPU (no Ray needed): ``python -m benchmarks.gpu_check``.

1. CUDA graph vs eager: a 25-member pack of the Fig. 3 MLP (5 lr x 5 seeds, S = 25) for one
   epoch of a few hundred steps, graphed and eager: same losses to float32 round-off.
2. Packed vs unpacked on CUDA: the same 25 members run one by one (``run_training``).
3. Per-step cost of a graphed pack step for the Fig. 3 grid's batch sizes (K = 25), K = 1 and
   K = 64, eager and graphed; per-epoch evaluation and per-member probe cost (paper settings).
4. Projection of ``sweeps/fig3_grid.yaml`` at paper scale on this GPU: every pack's step count
   times its measured per-step cost, plus evaluation and probes (target <= 10 GPU-minutes).
5. One full-length pack of the Fig. 3 grid (200 epochs, probes at the end) on Fashion-MNIST-format
   files written here, its wall time against the projection of that pack.
6. Convnets on CUDA: stacked (vmap) against loop layout per step (VGG11, ResNet20), the measurement
   behind ``choose_layout`` (loop for every model but the MLP).
7. Resume and divergence on CUDA with graphs: a pack stopped after epoch 2 and resumed matches the
   uninterrupted run; a member that diverges leaves the pack and the others' rows are unchanged.

Prints one line per check; writes ``--out`` (JSON: the figures, and the per-step cost model
that ``sweeps/step_costs.json`` holds). Exits 1 if a correctness check fails. ``--quick`` shrinks
everything (a CPU dry run of the script).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.fmnist_files import write_fashion_mnist
from benchmarks.pack_timing import pack_step_seconds
from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.data import load_dataset
from lrbs.trainables.models import build_model
from lrbs.trainables.probes import run_probes
from lrbs.trainables.tensor_data import TensorData
from lrbs.trainables.train_loop import TrialPoint, evaluate_pack, run_pack, run_training

FIG3_MODEL = ModelConfig(name="mlp", options=dict(depth=4, width=256, batch_norm=True))
FIG3_LRS = [float(f"{v:.6g}") for v in np.geomspace(0.005, 0.1, 5)]
FIG3_SIZES = [int(round(v)) for v in np.geomspace(25, 1000, 5)]
FIG3_PROBES = CurvatureConfig(n_samples=2000, lanczos_iters=20, lanczos_tol=1e-4, hutchinson_probes=32)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _pack_rows(points, ds, model, train, dev, data, **kw) -> list[list[dict]]:
    rows: list[list[dict]] = [[] for _ in points]
    run_pack(
        points, ds, model, train, lambda rs, st: [rows[r["member"]].append(r) for r in rs], device=dev, data=data, **kw
    )
    return rows


def first_step_diff(points, data, dev) -> float:
    """Max relative difference of the members' weights after one SGD step, packed against alone."""
    from lrbs.trainables.pack_sgd import PackSGD
    from lrbs.trainables.packed_models import build_pack
    from lrbs.trainables.train_loop import Steps

    gen = torch.Generator().manual_seed(0)
    perms = torch.stack([torch.randperm(len(data.x_train), generator=gen) for _ in points]).to(dev)

    def step(pts, rows):
        mods = []
        for p in pts:
            torch.manual_seed(p.seed)
            mods.append(build_model(FIG3_MODEL, data.input_shape, data.n_classes).to(dev).train())
        pack = build_pack(mods, "stacked", len(data.input_shape))
        opt = PackSGD(pack, len(pts), dev)
        opt.set_lr([p.lr for p in pts])
        Steps(pack, opt, data.x_train, data.y_train, False).epoch(rows, 25, 1)
        return [pack.member_state(j) for j in range(len(pts))]

    together = step(points, perms)
    alone = [step([p], perms[j : j + 1])[0] for j, p in enumerate(points)]
    return max(
        ((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-12)).item()
        for a, b in zip(together, alone)
        for k in b
        if b[k].is_floating_point()
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes: a dry run of the script")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    q = args.quick
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    out: dict = {"device": name, "torch": torch.__version__}
    ok = True
    t_all = time.perf_counter()
    root = tempfile.mkdtemp()
    n_train, n_test = (3000, 500) if q else (60000, 10000)
    write_fashion_mnist(root, n_train, n_test)
    fmnist = DatasetConfig(name="fashion_mnist", data_dir=root, download=False)
    full = load_dataset(fmnist).to(dev)
    points = [TrialPoint(lr, 25, seed) for lr in FIG3_LRS for seed in range(5)]

    # 1-2. graphs vs eager, packed vs unpacked: one epoch of 300 steps (7,500 examples at S = 25).
    sub = dataclasses.replace(
        full, x_train=full.x_train[: 7500 if not q else 1000], y_train=full.y_train[: 7500 if not q else 1000]
    )
    one = TrainConfig(epochs=1)
    t = time.perf_counter()
    graphed = _pack_rows(points, fmnist, FIG3_MODEL, one, dev, sub)
    t_g = time.perf_counter() - t
    eager = _pack_rows(points, fmnist, FIG3_MODEL, dataclasses.replace(one, cuda_graphs=False), dev, sub)
    d = max(_rel(a[0][k], b[0][k]) for a, b in zip(graphed, eager) for k in ("train_loss", "val_loss"))
    good = d < 1e-4
    ok &= good
    steps = graphed[0][0]["steps"]
    print(
        f"1 graph vs eager: 25 members x {steps} steps, max rel. loss diff {d:.2e} {'ok' if good else 'FAIL'}",
        flush=True,
    )

    def separately(data):
        out = []
        for pt in points:
            r: list[dict] = []
            run_training(pt, fmnist, FIG3_MODEL, one, lambda row, st: r.append(row), device=dev, data=data)
            out.append(r)
        return out

    t = time.perf_counter()
    single = separately(sub)
    t_s = time.perf_counter() - t
    d_long = max(_rel(a[0][k], b[0][k]) for a, b in zip(graphed, single) for k in ("train_loss", "val_loss"))
    # The same after 30 steps: float32 round-off of batched vs single matmuls, before 300 SGD
    # steps amplify it (members are chaotic dynamical systems; graphs vs eager above are exact).
    short = dataclasses.replace(sub, x_train=sub.x_train[:750], y_train=sub.y_train[:750])
    d2 = max(
        _rel(a[0][k], b[0][k])
        for a, b in zip(_pack_rows(points, fmnist, FIG3_MODEL, one, dev, short), separately(short))
        for k in ("train_loss", "val_loss")
    )
    # What 30 steps make of a round-off-sized difference: one member alone, its initial weights
    # perturbed by 1e-6 (relative), against the unperturbed run.
    from lrbs.trainables import train_loop

    build = train_loop.build_model

    def perturbed(*a, **kw):
        m = build(*a, **kw)
        with torch.no_grad():
            for prm in m.parameters():
                prm.mul_(1 + 1e-6 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(1)).to(prm.device))
        return m

    sens = 0.0
    for pt in points[::5]:
        base_rows, pert_rows = [], []
        run_training(pt, fmnist, FIG3_MODEL, one, lambda row, st: base_rows.append(row), device=dev, data=short)
        train_loop.build_model = perturbed
        try:
            run_training(pt, fmnist, FIG3_MODEL, one, lambda row, st: pert_rows.append(row), device=dev, data=short)
        finally:
            train_loop.build_model = build
        sens = max(sens, *(_rel(pert_rows[0][k], base_rows[0][k]) for k in ("train_loss", "val_loss")))
    # The first step alone: the pack's members against 25 one-member packs on the same batches.
    d1 = first_step_diff(points, sub, dev)
    good = d1 < 1e-5
    ok &= good
    print(
        f"2 packed vs unpacked: member weights after 1 step max rel. diff {d1:.2e}; losses {d2:.2e} after 30 steps, "
        f"{d_long:.2e} after {steps} (a 1e-6 weight perturbation grows to {sens:.2e} in 30 steps); pack "
        f"{t_g:.2f} s vs 25 runs {t_s:.2f} s ({t_g / t_s:.3f}x) {'ok' if good else 'FAIL'}",
        flush=True,
    )
    out.update(
        graph_vs_eager_rel=d,
        packed_vs_unpacked_rel_1step_weights=d1,
        packed_vs_unpacked_rel_30=d2,
        packed_vs_unpacked_rel_300=d_long,
        perturbation_1e6_after_30=sens,
        pack_vs_separate=t_g / t_s,
    )

    # 3. per-step costs
    n_steps = 30 if q else 500
    costs = {}
    for s in FIG3_SIZES:
        costs[s] = pack_step_seconds(FIG3_MODEL, full, 25, s, dev, graphed=True, n_steps=n_steps)
        print(f"3 step K=25 S={s}: graphed {costs[s] * 1e3:.3f} ms", flush=True)
    extra = {}
    for k, s, g in ((1, 25, False), (1, 25, True), (25, 25, False), (64, 25, True), (64, 1000, True)):
        extra[f"K={k},S={s},{'graph' if g else 'eager'}"] = pack_step_seconds(FIG3_MODEL, full, k, s, dev, g, n_steps)
    for key, v in extra.items():
        print(f"3 step {key}: {v * 1e3:.3f} ms", flush=True)
    # Cost model for sweeps/step_costs.json: t(K, S) = floor + K*S*flops/rate (least squares over
    # the graphed steps measured above).
    from lrbs.sweeps.estimate import train_flops_per_example

    fl = train_flops_per_example(FIG3_MODEL, DatasetConfig(name="fashion_mnist"))
    xs = [(25 * s * fl, costs[s]) for s in FIG3_SIZES] + [(64 * s * fl, extra[f"K=64,S={s},graph"]) for s in (25, 1000)]
    a = np.array([[1.0, x] for x, _ in xs])
    floor, per_flop = np.linalg.lstsq(a / np.array([[t] for _, t in xs]), np.ones(len(xs)), rcond=None)[
        0
    ]  # relative error
    model_fit = {"step_floor_s": max(float(floor), 0.0), "flops_per_s": 1.0 / max(float(per_flop), 1e-18)}
    print(
        f"3 cost model: step floor {model_fit['step_floor_s'] * 1e3:.3f} ms, "
        f"{model_fit['flops_per_s'] / 1e12:.1f} TFLOP/s on packed MLP steps",
        flush=True,
    )
    probe_model = build_model(FIG3_MODEL, full.input_shape, full.n_classes).to(dev)
    run_probes(probe_model, full, FIG3_PROBES if not q else dataclasses.replace(FIG3_PROBES, n_samples=500))
    _sync(dev)
    t = time.perf_counter()
    probe = run_probes(probe_model, full, FIG3_PROBES if not q else dataclasses.replace(FIG3_PROBES, n_samples=500))
    _sync(dev)
    probe_s = time.perf_counter() - t
    from lrbs.trainables.packed_models import build_pack

    pack25 = build_pack([build_model(FIG3_MODEL, full.input_shape, 10).to(dev) for _ in range(25)], "stacked", 3)
    evaluate_pack(pack25, full.x_val, full.y_val, 2048)
    _sync(dev)
    t = time.perf_counter()
    evaluate_pack(pack25, full.x_val, full.y_val, 2048)
    _sync(dev)
    eval_s = time.perf_counter() - t
    print(
        f"3 probes per member (paper settings, {probe['lambda_max_n_hvp']} Lanczos HVPs): {probe_s:.2f} s; "
        f"evaluation of 25 members on {len(full.x_val)} examples: {eval_s * 1e3:.1f} ms",
        flush=True,
    )
    out.update(
        step_s={str(s): costs[s] for s in FIG3_SIZES},
        step_extra_s=extra,
        cost_model=model_fit,
        probe_s=probe_s,
        eval25_s=eval_s,
    )

    # 4. projection of fig3_grid.yaml
    from lrbs.sweeps.packing import plan_packs
    from lrbs.sweeps.spec_load import load_spec

    spec = load_spec("sweeps/fig3_grid.yaml")
    spec = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, gpu=1.0))
    total = 0.0
    per_pack = []
    for pack in plan_packs(spec):
        s = pack[0]["batch_size"]
        k = len(pack)
        step = costs[s] if k == 25 else pack_step_seconds(FIG3_MODEL, full, k, s, dev, True, n_steps)
        sec = spec.train.epochs * ((60000 // s) * step + eval_s * k / 25) + k * probe_s
        per_pack.append((k, s, sec))
        total += sec
    good_proj = total / 60 <= 10
    print(
        f"4 projection fig3_grid at paper scale: {len(per_pack)} packs "
        f"({', '.join(f'K={k} S={s}: {sec:.0f} s' for k, s, sec in per_pack)}), total {total / 60:.1f} GPU-min "
        f"(target <= 10) {'ok' if good_proj else 'MISSED'}",
        flush=True,
    )
    out.update(projection_fig3_min=total / 60, projection_packs=per_pack)

    # 5. one full-length pack (the S = 398 pack: 150 steps/epoch x 200 epochs), probes at the end
    s_check = FIG3_SIZES[3]
    epochs = 3 if q else spec.train.epochs
    pts = [TrialPoint(lr, s_check, seed) for lr in FIG3_LRS for seed in range(5)]
    _sync(dev)
    t = time.perf_counter()
    rows = _pack_rows(
        pts,
        fmnist,
        FIG3_MODEL,
        TrainConfig(epochs=epochs),
        dev,
        full,
        probes=FIG3_PROBES if not q else dataclasses.replace(FIG3_PROBES, n_samples=500),
    )
    _sync(dev)
    wall = time.perf_counter() - t
    projected = epochs * ((n_train // s_check) * costs[s_check] + eval_s) + 25 * probe_s
    statuses = sorted({r[-1]["status"] for r in rows})
    print(
        f"5 full pack K=25 S={s_check}, {epochs} epochs with probes: {wall:.1f} s measured vs {projected:.1f} s "
        f"projected ({wall / projected:.2f}x); final val acc {min(r[-1]['val_acc'] for r in rows):.3f}-"
        f"{max(r[-1]['val_acc'] for r in rows):.3f}; statuses {statuses}",
        flush=True,
    )
    out.update(full_pack_s=wall, full_pack_projected_s=projected)

    # 6. convnets: stacked (vmap) vs loop, graphed, per step
    g = torch.Generator().manual_seed(0)
    cifar = TensorData(
        torch.randn(2000, 3, 32, 32, generator=g).to(dev),
        torch.randint(0, 10, (2000,), generator=g).to(dev),
        torch.randn(200, 3, 32, 32, generator=g).to(dev),
        torch.randint(0, 10, (200,), generator=g).to(dev),
        10,
    )
    conv = {}
    for cfg in (
        ModelConfig(name="vgg11", options=dict(width_mult=0.25 if q else 1.0)),
        ModelConfig(name="resnet20", options=dict(width_mult=0.25 if q else 1.0)),
    ):
        for layout in ("stacked", "loop"):
            for graphed_ in (True, False) if dev.type == "cuda" else (False,):
                key = f"{cfg.name} K=5 S=50 {layout} {'graph' if graphed_ else 'eager'}"
                try:
                    conv[key] = pack_step_seconds(cfg, cifar, 5, 50, dev, graphed_, 5 if q else 40, layout=layout)
                    print(f"6 {key}: {conv[key] * 1e3:.2f} ms/step", flush=True)
                except Exception as e:  # report, keep going
                    print(f"6 {key}: failed {type(e).__name__}: {str(e)[:150]}", flush=True)
        one_conv = pack_step_seconds(cfg, cifar, 1, 50, dev, dev.type == "cuda", 5 if q else 40, layout="loop")
        conv[f"{cfg.name} K=1 S=50"] = one_conv
        print(f"6 {cfg.name} K=1 S=50: {one_conv * 1e3:.2f} ms/step", flush=True)
    out["convnets_step_s"] = conv

    # 7. resume and divergence on CUDA, graphs on
    small = dataclasses.replace(full, x_train=full.x_train[:2000], y_train=full.y_train[:2000])
    pts = [TrialPoint(0.05, 32, 0), TrialPoint(0.1, 32, 1), TrialPoint(0.2, 32, 2)]
    tr = TrainConfig(epochs=4, momentum=0.9)
    ref = _pack_rows(pts, fmnist, FIG3_MODEL, tr, dev, small)
    saved = {}

    def stop(rs, st):
        if rs[0]["epoch"] == 2:
            buf = io.BytesIO()
            torch.save(st(), buf)
            buf.seek(0)
            saved.update(torch.load(buf, weights_only=True))
            raise KeyboardInterrupt

    try:
        run_pack(pts, fmnist, FIG3_MODEL, tr, stop, device=dev, data=small)
    except KeyboardInterrupt:
        pass
    res = _pack_rows(pts, fmnist, FIG3_MODEL, tr, dev, small, start_state=saved)
    d_res = max(_rel(a[2 + i]["train_loss"], b[i]["train_loss"]) for a, b in zip(ref, res) for i in range(2))
    nobn = ModelConfig(name="mlp", options=dict(depth=4, width=256, batch_norm=False))
    div = _pack_rows(
        [TrialPoint(0.02, 32, 0), TrialPoint(50.0, 32, 1)], fmnist, nobn, TrainConfig(epochs=3), dev, small
    )
    alone = _pack_rows([TrialPoint(0.02, 32, 0)], fmnist, nobn, TrainConfig(epochs=3), dev, small)
    d_div = max(_rel(a["train_loss"], b["train_loss"]) for a, b in zip(div[0], alone[0]))
    good = d_res < 1e-6 and div[1][-1]["status"] == "diverged" and len(div[0]) == 3 and d_div < 1e-4
    ok &= good
    print(
        f"7 resume on {dev.type}: max rel. diff {d_res:.2e}; diverged member left after epoch "
        f"{div[1][-1]['epoch']}, survivor vs alone {d_div:.2e} {'ok' if good else 'FAIL'}",
        flush=True,
    )
    out.update(resume_rel=d_res, divergence_survivor_rel=d_div)
    out["total_s"] = time.perf_counter() - t_all
    print(f"total {out['total_s']:.0f} s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
