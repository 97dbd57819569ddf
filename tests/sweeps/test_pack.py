"""Packs: K points trained in lockstep give each point the rows it gets alone (no Ray, then with Ray).

Every comparison is against ``run_training`` of the point alone (a pack of one) on CPU, one
thread: same seed, same batch order, same schedule, same probes. The MLP's stacked layout and
the convnets' loop layout are exact on CPU; the vmap layout agrees to float32 round-off.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.data import load_dataset
from lrbs.trainables.schedules import ScheduleConfig
from lrbs.trainables.train_loop import DIVERGED, FINISHED, TrialPoint, run_pack, run_training

DIGITS = DatasetConfig(name="digits", val_fraction=0.2)
MLP = ModelConfig(name="mlp", options=dict(depth=3, width=32, batch_norm=True))
MLP_NOBN = ModelConfig(name="mlp", options=dict(depth=3, width=32, batch_norm=False))
CONV = ModelConfig(name="resnet20", options=dict(width_mult=0.25))
PROBES = CurvatureConfig(
    n_samples=200, lanczos_iters=8, hutchinson_probes=4, noise_b_small=16, noise_b_big=64, noise_pairs=4, every=2
)
KEYS = (
    "epoch",
    "lr",
    "batch_size",
    "ratio",
    "seed",
    "n_train",
    "beta",
    "variant",
    "schedule",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "steps",
    "examples_seen",
    "status",
    "lambda_max",
    "hessian_trace",
    "hessian_fro",
    "hessian_trace_stderr",
    "grad_noise_scale",
    "probe_n_samples",
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def packed(points, model, train, **kw) -> list[list[dict]]:
    rows: list[list[dict]] = [[] for _ in points]
    run_pack(points, DIGITS, model, train, lambda rs, state: [rows[r["member"]].append(r) for r in rs], **kw)
    return rows


def alone(point, model, train, **kw) -> list[dict]:
    rows: list[dict] = []
    run_training(point, DIGITS, model, train, lambda row, state: rows.append(row), **kw)
    return rows


def view(rows: list[dict]) -> list[dict]:
    """The compared columns; NaN (a diverged member's loss) as a string so that it equals itself."""
    nan = lambda v: "nan" if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    return [{k: nan(r.get(k)) for k in KEYS} for r in rows]


def test_mlp_pack_with_lr_schedules_probes_and_a_diverging_member_equals_each_point_alone():
    # Per-member lr schedules (one member's own step schedule, the others the shared one), probes
    # every 2 epochs, and a member whose loss explodes in its first epoch (no batch norm, lr 50).
    shared = ScheduleConfig(kind="step", every=2, factor=0.5)
    own = {"kind": "cyclic_lr", "low": 0.01, "high": 0.2, "cycle_epochs": 2}
    points = [
        TrialPoint(0.05, 32, 0),
        TrialPoint(0.2, 32, 1, variant="clr", schedule=own),
        TrialPoint(50.0, 32, 2),
        TrialPoint(0.1, 32, 0, beta=2.0),
    ]
    train = TrainConfig(epochs=4, momentum=0.9)
    data = load_dataset(DIGITS)
    rows = packed(points, MLP_NOBN, train, schedule=shared, probes=PROBES, data=data)
    assert rows[2][-1]["status"] == DIVERGED and len(rows[2]) < 4  # it left the pack
    assert [r["status"] for r in rows[0]][-1] == FINISHED and len(rows[0]) == 4
    assert [r["lr"] for r in rows[1]] == [0.01, 0.2, 0.01, 0.2] and rows[1][0]["schedule"] == "cyclic_lr"
    assert [r["lr"] for r in rows[0]] == [0.05, 0.05, 0.025, 0.025]
    assert "lambda_max" in rows[0][1] and "lambda_max" not in rows[0][0]
    for point, member_rows in zip(points, rows):
        assert view(member_rows) == view(alone(point, MLP_NOBN, train, schedule=shared, probes=PROBES, data=data))


def test_convnet_pack_equals_each_point_alone():
    points = [TrialPoint(0.05, 64, 0), TrialPoint(0.1, 64, 1)]
    train = TrainConfig(epochs=2, momentum=0.9)
    rows = packed(points, CONV, train)
    for point, member_rows in zip(points, rows):
        assert view(member_rows) == view(alone(point, CONV, train))


def test_vmap_layout_computes_what_the_loop_layout_computes():
    """The general stacked path (vmap over functional_call, batch norm per member), stepped with
    per-member rates and momentum. In float64, so that the check is of the math: in float32 the
    two layouts' round-off differs, and a ResNet on digits amplifies it within a few steps (batch
    norm of near-constant channels), as it would between any two convolution algorithms."""
    import torch.nn.functional as F

    from lrbs.trainables.models import build_model
    from lrbs.trainables.pack_sgd import PackSGD
    from lrbs.trainables.packed_models import build_pack

    data = load_dataset(DIGITS)
    x = data.x_train.double()
    states = {}
    for layout in ("stacked", "loop"):
        modules = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            modules.append(build_model(CONV, data.input_shape, 10).double().train())
        pack = build_pack(modules, layout, 1)
        opt = PackSGD(pack, 2, torch.device("cpu"), momentum=0.9)
        opt.neg_lr = opt.neg_lr.double()
        opt.bind(pack)
        opt.set_lr([0.05, 0.1])
        gen = torch.Generator().manual_seed(0)
        for _ in range(4):
            idx = torch.randint(0, len(x), (2, 32), generator=gen)
            logits = pack.forward(x[idx], training=True)
            loss = (
                F.cross_entropy(logits.flatten(0, 1), data.y_train[idx].flatten(), reduction="none").view(2, 32).mean(1)
            )
            opt.step(pack.params, torch.autograd.grad(opt.objective(loss), pack.params))
        states[layout] = [pack.member_state(j) for j in range(2)]
    for a, b in zip(states["stacked"], states["loop"]):
        assert a.keys() == b.keys()
        for name in a:  # weights, biases and batch-norm running statistics of each member
            assert torch.allclose(a[name].double(), b[name].double(), rtol=1e-10, atol=1e-12), name


def test_pack_checkpoint_resumes_with_the_uninterrupted_rows_after_a_member_diverged():
    points = [TrialPoint(0.05, 32, 0), TrialPoint(50.0, 32, 1), TrialPoint(0.1, 32, 2)]
    train = TrainConfig(epochs=4, momentum=0.9)
    full = packed(points, MLP_NOBN, train)
    assert full[1][-1]["status"] == DIVERGED and full[1][-1]["epoch"] < 2
    saved = {}

    def stop_after_two(rows, state):
        if rows[0]["epoch"] == 2:
            buf = io.BytesIO()
            torch.save(state(), buf)  # through bytes, as a checkpoint on disk
            buf.seek(0)
            saved.update(torch.load(buf, weights_only=True))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pack(points, DIGITS, MLP_NOBN, train, stop_after_two)
    assert [m["status"] for m in saved["members"]] == ["running", "diverged", "running"]
    assert (
        saved["members"][1]["model"] is None
        and saved["members"][0]["model"].keys() == saved["members"][2]["model"].keys()
    )
    resumed = packed(points, MLP_NOBN, train, start_state=saved)
    assert resumed[1] == []  # the diverged member stays out
    for j in (0, 2):
        assert [r["epoch"] for r in resumed[j]] == [3, 4]
        assert view(resumed[j]) == view(full[j][2:])


def test_pack_refuses_members_it_cannot_step_together():
    with pytest.raises(ValueError, match="n_train"):
        run_pack(
            [TrialPoint(0.1, 32, 0, n_train=400), TrialPoint(0.1, 32, 0, n_train=800)],
            DIGITS,
            MLP,
            TrainConfig(epochs=1),
            lambda rows, state: None,
        )
    with pytest.raises(ValueError, match="batch sizes differ"):
        run_pack(
            [TrialPoint(0.1, 32, 0), TrialPoint(0.1, 64, 0)],
            DIGITS,
            MLP,
            TrainConfig(epochs=1),
            lambda rows, state: None,
        )


# ---------------------------------------------------------------------------------------------
# With Ray: a packed sweep and the same sweep unpacked write the same rows and the same report


def _normalized_fits(run_dir) -> dict:
    """fits.json with every trial id replaced by its point (ids differ between the two runs)."""
    from lrbs.rundir.tables import load_trials

    text = (run_dir / "fits.json").read_text()
    for t in load_trials(run_dir).to_pylist():
        text = text.replace(t["trial_id"], f"P({t['lr']},{t['batch_size']},{t['seed']},{t['n_train']})")
    return json.loads(text)


def _close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        # lists of per-trial entries may come in trial-id order, which differs between runs
        assert len(a) == len(b), path
        key = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
        if all(isinstance(v, (dict, list)) for v in a):
            a, b = sorted(a, key=key), sorted(b, key=key)
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isfinite(a):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_packed_sweep_equals_unpacked_sweep_rows_status_and_report(ray_local, tmp_path):
    from lrbs.rundir.tables import load_metrics
    from lrbs.sweeps.cli import main
    from lrbs.sweeps.status import read_status
    from tests.conftest import tiny_spec, write_yaml

    base = dict(
        grid={"seed": [0, 1]},
        train={"epochs": 3},
        beta={"lr0": 0.05, "batch_size0": 16, "values": [1.0, 4.0], "n_train": [400, 800]},
        schedule={"kind": "step", "every": 2, "factor": 0.5},
        curvature={
            "n_samples": 200,
            "lanczos_iters": 8,
            "hutchinson_probes": 4,
            "noise_b_small": 16,
            "noise_b_big": 64,
            "noise_pairs": 4,
        },
    )
    runs = {}
    for name, pack in (("packed", "auto"), ("unpacked", 1)):
        spec = write_yaml(tmp_path / f"{name}.yaml", tiny_spec(name, **{**base, "train": {"epochs": 3, "pack": pack}}))
        assert main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 0
        runs[name] = tmp_path / "runs" / name
    statuses = {name: read_status(d) for name, d in runs.items()}
    assert len(statuses["packed"]) == len(statuses["unpacked"]) == 8
    assert {t.trial_id.rpartition("-m")[0] for t in statuses["packed"]}.__len__() == 4  # 4 packs of 2 seeds
    assert all(t.status == "TERMINATED" and t.row_status == "finished" for s in statuses.values() for t in s)

    def by_point(run_dir):
        out = {}
        for r in load_metrics(run_dir).to_pylist():
            out.setdefault((r["lr"], r["batch_size"], r["seed"], r["n_train"], r["beta"], r["epoch"]), r)
        return out

    a, b = by_point(runs["packed"]), by_point(runs["unpacked"])
    assert a.keys() == b.keys() and len(a) == 8 * 3
    for key in a:
        assert view([a[key]]) == view([b[key]]), key
    _close(_normalized_fits(runs["packed"])["fits"], _normalized_fits(runs["unpacked"])["fits"])
    packed_fits, unpacked_fits = _normalized_fits(runs["packed"]), _normalized_fits(runs["unpacked"])
    for fits in (packed_fits, unpacked_fits):  # when, where and how long each ran: not the same, by design
        assert fits["sections"].pop("provenance")["status"] == "ok"
    for section in ("sections", "notes"):
        _close(packed_fits[section], unpacked_fits[section], section)


def test_loop_layout_member_with_momentum_diverges_and_leaves_the_pack():
    """The loop layout (every model but the MLP) drops a diverged member's momentum buffers too."""
    points = [TrialPoint(0.05, 32, 0), TrialPoint(50.0, 32, 1), TrialPoint(0.1, 32, 2)]
    train = TrainConfig(epochs=3, momentum=0.9, pack_layout="loop")
    rows = packed(points, MLP_NOBN, train)
    assert [r[-1]["status"] for r in rows] == [FINISHED, DIVERGED, FINISHED]
    for j in (0, 2):
        assert view(rows[j]) == view(alone(points[j], MLP_NOBN, train))


def test_auto_plans_no_fewer_packs_than_parallel_slots_when_points_allow():
    """``train.pack: auto`` on CPU trials cuts a batch-size group into as many packs as trials run
    side by side (6 points, 2 slots: 2 packs of 3), the costliest group first; never more packs
    than points, and an explicit K is kept whatever the slots. Each packed point's rows equal its
    rows alone (the tests above), so a split changes the wall time only."""
    from lrbs.sweeps.packing import plan_packs
    from lrbs.sweeps.spec_load import spec_from_dict
    from tests.conftest import tiny_spec

    six = spec_from_dict(tiny_spec(grid={"lr": [0.01, 0.04, 0.16], "batch_size": [32], "seed": [0, 1]}))
    sizes = {slots: [len(p) for p in plan_packs(six, slots=slots)] for slots in (1, 2, 3, 4, 8)}
    assert sizes == {1: [6], 2: [3, 3], 3: [2, 2, 2], 4: [2, 2, 1, 1], 8: [1] * 6}
    packs = plan_packs(six, slots=2)  # every point once, in spec order
    assert sorted((p["lr"], p["seed"]) for pack in packs for p in pack) == sorted(
        (lr, seed) for lr in (0.01, 0.04, 0.16) for seed in (0, 1)
    )
    two = spec_from_dict(tiny_spec(grid={"lr": [0.01, 0.04, 0.16], "batch_size": [32, 128], "seed": [0, 1]}))
    assert [len(p) for p in plan_packs(two, slots=2)] == [6, 6]  # two groups already fill two slots
    # The costlier group (S = 32: 4x the steps of S = 128) is split first.
    assert [(len(p), p[0]["batch_size"]) for p in plan_packs(two, slots=3)] == [(3, 32), (3, 32), (6, 128)]
    fixed = spec_from_dict(
        tiny_spec(train={"pack": 4}, grid={"lr": [0.01, 0.04, 0.16], "batch_size": [32], "seed": [0, 1]})
    )
    assert [len(p) for p in plan_packs(fixed, slots=8)] == [4, 2]


def test_measured_pack_costs_choose_the_pack_count_that_finishes_soonest():
    """With measured pack costs, ``auto`` sizes each group's packs by the planned sweep's end on
    the parallel trial slots (``packing.makespan``): packs where a K-member step is cheaper than K
    single steps, points alone (K = 1) where it is not, a change only when it gains more than
    ``PLAN_TOLERANCE``; the packs stay in spec order (the order Tune starts them in)."""
    from lrbs.sweeps.packing import makespan, pack_groups, plan_packs
    from lrbs.sweeps.spec_load import spec_from_dict
    from tests.conftest import tiny_spec

    assert makespan([3.0, 3.0, 2.0, 2.0], 2) == 5.0 and makespan([5.0, 1.0], 1) == 6.0
    assert makespan([2.0, 3.0, 2.0, 3.0], 2) == 6.0  # in the plan's order, as Tune starts them (best: 5)
    six = spec_from_dict(tiny_spec(grid={"lr": [0.01, 0.04, 0.16], "batch_size": [32], "seed": [0, 1]}))

    def sizes(cost, slots):
        costs = {(k, key): cost(k) for key in pack_groups(six) for k in range(1, 7)}
        return [len(p) for p in plan_packs(six, slots=slots, pack_seconds=costs)]

    def shared(k):  # a pack step costs little more than one member's step
        return 1.0 + 0.1 * k

    def alone(k):  # no saving: a K-member pack costs K single trials
        return 1.0 * k

    def worse(k):  # a pack dearer per member than its points alone
        return 1.0 if k == 1 else 1.3 * k

    assert sizes(shared, 1) == [6] and sizes(shared, 2) == [3, 3]
    assert sizes(alone, 2) == [3, 3]  # 3 per slot either way: no change past the first that gains
    assert sizes(alone, 6) == [1] * 6 and sizes(worse, 1) == [1] * 6  # the K = 1 fallback
    assert sizes(lambda k: 1.0 + 0.01 * k, 2) == [6]  # two packs would gain under PLAN_TOLERANCE
    # Two groups of equal cost: splitting one alone does not end the sweep sooner, both together do.
    pair = spec_from_dict(tiny_spec(grid={"lr": [0.01, 0.04, 0.16], "batch_size": [32, 64], "seed": [0, 1]}))
    costs = {(k, key): 1.0 + 0.1 * k for key in pack_groups(pair) for k in range(1, 7)}
    assert [len(p) for p in plan_packs(pair, slots=4, pack_seconds=costs)] == [3, 3, 3, 3]
    assert [len(p) for p in plan_packs(pair, slots=2, pack_seconds=costs)] == [6, 6]
    two = spec_from_dict(tiny_spec(grid={"lr": [0.01, 0.04, 0.16], "batch_size": [128, 32], "seed": [0, 1]}))
    costs = {(k, key): (1.0 + 0.1 * k) * 128 / key[1][0] for key in pack_groups(two) for k in range(1, 7)}
    packs = plan_packs(two, slots=2, pack_seconds=costs)
    assert [(len(p), p[0]["batch_size"]) for p in packs] == [(6, 128), (6, 32)]


def test_calibration_costs_every_pack_of_the_plan_from_real_steps():
    """The pre-flight's calibration (sweeps/estimate.py) times this model's steps at K = 1 and at
    the largest pack of every batch size, evaluation and one Hessian-vector product; sizes between
    are interpolated, and the estimate counts steps, evaluation and probes of the planned packs."""
    from lrbs.sweeps.estimate import calibrate, estimate_cost, planned_packs, step_seconds
    from lrbs.sweeps.spec_load import spec_from_dict
    from tests.conftest import tiny_spec

    spec = spec_from_dict(tiny_spec(curvature={"n_samples": 200, "lanczos_iters": 8, "hutchinson_probes": 4}))
    cal = calibrate(spec, budget_s=0.02)
    assert cal is not None
    assert {"1,32", "2,32", "1,128", "2,128", f"1,{spec.curvature.noise_b_small}"} <= set(cal["step_s"])
    assert all(v > 0 for v in cal["step_s"].values()) and cal["hvp_s"] > 0
    lo, hi = cal["step_s"]["1,32"], cal["step_s"]["2,32"]
    assert step_seconds(cal, 4, 32) == pytest.approx(hi * 2)  # beyond the measured sizes: per member
    measured, fitted = estimate_cost(spec, cal), estimate_cost(spec)
    assert measured.device_hours > 0 and measured.costs is cal and "step_floor_s" in fitted.costs
    assert 0 < measured.wall_hours <= measured.device_hours and lo > 0
    alone = estimate_cost(spec, cal, packs=[[p] for pack in planned_packs(spec, cal) for p in pack])
    assert alone.packs == (1, 1, 1, 1) and alone.device_hours > 0  # the plan given, not its own
    assert calibrate(spec_from_dict(tiny_spec(resources={"cpu": 1, "gpu": 1}))) is None  # GPU trials: the fit


def test_the_calibration_times_the_largest_pack_auto_can_form():
    """``auto`` cuts a group into the fewest packs of at most the cap, with sizes differing by at
    most one: 40 points under a cap of 32 are packs of 20, and 20 is the largest K measured."""
    from lrbs.sweeps.packing import largest_pack
    from lrbs.sweeps.spec_load import spec_from_dict
    from tests.conftest import tiny_spec

    auto = spec_from_dict(tiny_spec())
    assert [largest_pack(auto, n) for n in (1, 6, 32, 33, 40, 64, 65)] == [1, 6, 32, 17, 20, 32, 22]
    fixed = spec_from_dict(tiny_spec(train={"pack": 8}))
    assert [largest_pack(fixed, n) for n in (3, 8, 40)] == [3, 8, 8]
