"""train.precision: fp32 rows as they are, bf16 runs within the seed-to-seed spread of fp32 runs
(CPU twins of the paper's models), packs equal to runs alone under bf16, and bad input refused."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest
import torch

import lrbs
from lrbs.sweeps.cli import main
from lrbs.sweeps.spec import SpecError
from lrbs.sweeps.spec_checks import check_precision_here
from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.train_loop import TrialPoint, run_pack, run_training, step_numerics

DIGITS = DatasetConfig(name="digits", val_fraction=0.2)
MLP = ModelConfig(name="mlp", options=dict(depth=3, width=64, batch_norm=True))
# A VGG11 twin (batch norm, 1/16 of the channels) on the 8x8 digit images.
VGG = ModelConfig(name="vgg11", options=dict(width_mult=0.0625))
# lambda_max only (Lanczos on a fixed probe subset); the trace and noise scale are not compared.
PROBES = CurvatureConfig(n_samples=300, batch_size=300, hutchinson_probes=1, noise_scale=False)
KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "train_eval_loss", "train_eval_acc", "steps")


def _pack_rows(points, dataset, model, train, probes=None):
    rows: list[dict] = []
    run_pack(points, dataset, model, train, lambda rs, state: rows.extend(rs), probes=probes)
    return rows


def _final(rows, epochs):
    """Each member's last row: (val_acc, log10 lambda_max), in member order."""
    last = sorted((r for r in rows if r["epoch"] == epochs), key=lambda r: r["member"])
    return [r["val_acc"] for r in last], [math.log10(r["lambda_max"]) for r in last]


def _within_spread(values, reference):
    """Every value within the reference runs' seed-to-seed spread: their mean +- 2 sd, widened to
    their min..max; and the values' mean within one reference sd of the reference mean."""
    mean, sd = statistics.mean(reference), statistics.stdev(reference)
    lo, hi = min(min(reference), mean - 2 * sd), max(max(reference), mean + 2 * sd)
    assert all(lo <= v <= hi for v in values), (values, (lo, hi))
    assert abs(statistics.mean(values) - mean) <= sd, (statistics.mean(values), mean, sd)


@pytest.mark.parametrize(
    "model, dataset, seeds, epochs, lr, s",
    [
        (MLP, DIGITS, 8, 8, 0.05, 64),  # the Fig. 3 model's twin: the stacked layout
        (VGG, DatasetConfig(name="digits", val_fraction=0.2, n_train=600), 5, 4, 0.05, 32),  # a convnet: loop layout
    ],
    ids=["mlp", "vgg11"],
)
def test_bf16_runs_lie_within_the_seed_spread_of_fp32_runs(model, dataset, seeds, epochs, lr, s):
    torch.set_num_threads(1)
    points = [TrialPoint(lr=lr, batch_size=s, seed=seed) for seed in range(seeds)]
    final = {}
    for precision in ("fp32", "bf16"):
        train = TrainConfig(epochs=epochs, precision=precision, train_eval_samples=100)
        rows = _pack_rows(points, dataset, model, train, PROBES)
        assert {r["precision"] for r in rows} == {precision}
        final[precision] = _final(rows, epochs)
    (acc32, lam32), (acc16, lam16) = final["fp32"], final["bf16"]
    assert acc16 != acc32 or lam16 != lam32  # bf16 did change the arithmetic
    _within_spread(acc16, acc32)
    _within_spread(lam16, lam32)


def test_fp32_rows_are_the_rows_without_the_key_and_bf16_leaves_nothing_behind():
    torch.set_num_threads(1)
    point = TrialPoint(lr=0.1, batch_size=64, seed=0)
    small = DatasetConfig(name="digits", val_fraction=0.2, n_train=500)

    def rows(train):
        out: list[dict] = []
        run_training(point, small, MLP, train, lambda row, state: out.append(row))
        return [[r.get(k) for k in KEYS] for r in out], {r["precision"] for r in out}

    unset = rows(TrainConfig(epochs=2))
    assert unset[1] == {"fp32"}  # the default, written in every row's provenance
    assert rows(TrainConfig(epochs=2, precision="fp32")) == unset
    bf16 = rows(TrainConfig(epochs=2, precision="bf16"))
    assert bf16[1] == {"bf16"} and bf16[0] != unset[0]
    assert rows(TrainConfig(epochs=2)) == unset  # a bf16 trial before it changes no later fp32 trial


@pytest.mark.parametrize("model", [MLP, VGG], ids=["mlp-stacked", "vgg11-loop"])
def test_under_bf16_a_packed_member_equals_its_run_alone(model):
    torch.set_num_threads(1)
    small = DatasetConfig(name="digits", val_fraction=0.2, n_train=400)
    train = TrainConfig(epochs=2, precision="bf16", momentum=0.9, train_eval_samples=200)
    points = [TrialPoint(0.05, 32, 0), TrialPoint(0.1, 32, 1), TrialPoint(0.02, 32, 2)]
    packed = _pack_rows(points, small, model, train)
    for j, point in enumerate(points):
        alone = _pack_rows([point], small, model, train)
        assert [[r.get(k) for k in KEYS] for r in packed if r["member"] == j] == [
            [r.get(k) for k in KEYS] for r in alone
        ]


def test_tf32_is_set_for_the_steps_only_and_restored():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError, match="inside"):
        with step_numerics("tf32"):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            raise RuntimeError("inside")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == saved
    for precision in ("fp32", "bf16"):  # torch's defaults as they are
        with step_numerics(precision):
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == saved


NEW_API = """
import torch
from lrbs.trainables.train_loop import step_numerics
m, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
m.fp32_precision, conv.fp32_precision = "ieee", "ieee"  # torch then refuses to read the legacy flags
with step_numerics("tf32"):
    assert (m.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
assert (m.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
print("ok")
"""


def test_tf32_follows_torchs_newer_api_where_the_process_uses_it():
    # A fresh process: once the fp32_precision API is used, reading the legacy flags raises.
    out = subprocess.run([sys.executable, "-c", NEW_API], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize(
    "precision, needle", [("fp16", "must be one of fp32, tf32, bf16"), ("tf32", "tf32 is a CUDA mode")]
)
def test_a_trial_refuses_a_precision_it_cannot_train_in(precision, needle):
    with pytest.raises(ValueError, match=f"^train.precision: {needle}"):
        run_training(TrialPoint(0.1, 64, 0), DIGITS, MLP, TrainConfig(epochs=1, precision=precision), lambda r, s: None)


SPEC = {
    "name": "precision",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "options": {"depth": 2, "width": 16}},
    "grid": {"lr": [0.1], "batch_size": [64], "seed": [0]},
}


@pytest.mark.parametrize(
    "precision, gpu, needle",
    [
        ("fp16", 0, "must be one of fp32, tf32, bf16 (got 'fp16')"),
        ("tf32", 0, "tf32 is a CUDA mode"),
    ],
)
def test_spec_refuses_bad_precision_in_one_line_and_exit_2(tmp_path, capsys, precision, gpu, needle):
    spec = {**SPEC, "train": {"precision": precision}, "resources": {"cpu": 1, "gpu": gpu}}
    with pytest.raises(SpecError) as err:
        lrbs.load(spec)
    message = str(err.value)
    assert message.startswith("train.precision: ") and needle in message and "\n" not in message
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"name: bad\ndataset: {{name: digits}}\nmodel: {{name: mlp}}\ntrain: {{precision: {precision}}}\n"
        f"grid: {{lr: [0.1], batch_size: [64], seed: [0]}}\nresources: {{cpu: 1, gpu: {gpu}}}\n"
    )
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err_lines) == 1 and "train.precision" in err_lines[0], err_lines


def test_bf16_on_cpu_and_tf32_on_gpu_trials_are_accepted():
    for precision, gpu in (("bf16", 0), ("bf16", 1), ("tf32", 1), ("fp32", 0)):
        spec = lrbs.load({**SPEC, "train": {"precision": precision}, "resources": {"cpu": 1, "gpu": gpu}})
        assert spec.train.precision == precision
        if gpu == 0 or not torch.cuda.is_available() or torch.cuda.is_bf16_supported():
            check_precision_here(spec)  # this machine can train it


def test_probes_compute_in_float32_inside_an_autocast_region():
    torch.set_num_threads(1)
    from lrbs.trainables.curvature import mean_loss

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    plain = mean_loss(model, torch.nn.functional.cross_entropy, [(x, y)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # the region does autocast
        assert mean_loss(model, torch.nn.functional.cross_entropy, [(x, y)]) == plain
