"""Spec validation and grid expansion (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lrbs.sweeps.grid import axis_values, expand_points
from lrbs.sweeps.param_space import to_param_space
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.spec import AxisRange, SpecError
from lrbs.sweeps.spec_load import load_spec, spec_from_dict
from tests.conftest import tiny_spec, write_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_spec_is_valid_and_spans_the_ratio():
    spec = load_spec(ROOT / "sweeps" / "quickstart.yaml")
    points = expand_points(spec)
    ratios = [p["lr"] / p["batch_size"] for p in points]
    assert max(ratios) / min(ratios) >= 20
    distinct = {(p["lr"], p["batch_size"]) for p in points}
    by_ratio: dict[float, set] = {}
    for lr, s in distinct:
        by_ratio.setdefault(round(lr / s, 12), set()).add((lr, s))
    assert sum(1 for pairs in by_ratio.values() if len(pairs) >= 2) >= 2
    assert len(spec.grid.seed) >= 2


def test_expand_points_is_the_ordered_cross_product():
    spec = spec_from_dict(tiny_spec(grid={"lr": [0.1, 0.2], "batch_size": [16, 32, 64], "seed": [0, 1]}))
    points = expand_points(spec)
    assert len(points) == 12
    assert points[0] == {"lr": 0.1, "batch_size": 16, "seed": 0}
    assert points[1] == {"lr": 0.1, "batch_size": 16, "seed": 1}
    assert points[-1] == {"lr": 0.2, "batch_size": 64, "seed": 1}
    assert len({tuple(sorted(p.items())) for p in points}) == 12


def test_range_axes_log_and_linear():
    assert axis_values(AxisRange(min=0.001, max=0.1, num=3), "grid.lr") == (0.001, 0.01, 0.1)
    assert axis_values(AxisRange(min=25, max=1000, num=4, scale="log"), "grid.batch_size") == (25, 85, 292, 1000)
    assert axis_values(AxisRange(min=0.1, max=0.3, num=3, scale="linear"), "grid.lr") == (0.1, 0.2, 0.3)
    spec = spec_from_dict(tiny_spec(grid={"lr": {"min": 0.01, "max": 0.1, "num": 2}, "batch_size": [32], "seed": [0]}))
    assert [p["lr"] for p in expand_points(spec)] == [0.01, 0.1]


def test_defaults_fill_missing_sections():
    spec = spec_from_dict({"name": "d"})
    assert spec.train.momentum == 0.0 and spec.train.weight_decay == 0.0
    assert spec.resources.cpu == 1.0 and spec.resources.gpu == 0.0
    assert len(expand_points(spec)) == 1


def test_fractional_resources_accepted():
    spec = spec_from_dict(tiny_spec(resources={"cpu": 0.5, "gpu": 0.25}))
    assert spec.resources.cpu == 0.5 and spec.resources.gpu == 0.25


def test_to_param_space_has_one_grid_over_packs_of_points():
    spec = spec_from_dict(tiny_spec())
    space = to_param_space(spec, "v1")
    # auto packs: the points that share S (and n_train) train together, one Tune trial each
    by_s = [[p for p in expand_points(spec) if p["batch_size"] == s] for s in (32, 128)]
    assert space["point"] == {"grid_search": [{"members": pack} for pack in by_s]}
    unpacked = to_param_space(spec_from_dict(tiny_spec(train={"pack": 1})), "v1")
    assert unpacked["point"] == {"grid_search": expand_points(spec)}
    assert space["sweep"] == "tiny" and space["code_version"] == "v1"
    assert space["dataset"]["name"] == "digits" and space["model"]["options"]["width"] == 32


def test_round_trip_through_dict():
    spec = spec_from_dict(tiny_spec(grid={"lr": {"min": 0.01, "max": 0.1, "num": 2}, "batch_size": [32], "seed": [0]}))
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"bogus": 1}, "bogus"),
        ({"train": {"epochs": 3, "lrate": 0.1}}, "train.lrate"),
        ({"grid": {"lr": [0.1], "batch_size": [32], "seed": [0], "momentum": [0.9]}}, "grid.momentum"),
        ({"grid": {"lr": [0.1, -0.1], "batch_size": [32], "seed": [0]}}, "grid.lr[1]"),
        ({"grid": {"lr": [0.0], "batch_size": [32], "seed": [0]}}, "grid.lr[0]"),
        ({"grid": {"lr": [0.1], "batch_size": [0], "seed": [0]}}, "grid.batch_size[0]"),
        ({"grid": {"lr": [0.1], "batch_size": [32, 5000], "seed": [0]}}, "grid.batch_size[1]"),
        ({"grid": {"lr": [0.1], "batch_size": [32.5], "seed": [0]}}, "grid.batch_size[0]"),
        ({"grid": {"lr": "fast", "batch_size": [32], "seed": [0]}}, "grid.lr"),
        ({"grid": {"lr": {"min": 0.1, "max": 0.01, "num": 3}, "batch_size": [32], "seed": [0]}}, "grid.lr"),
        (
            {"grid": {"lr": {"min": 0.1, "max": 1, "num": 3, "scale": "cubic"}, "batch_size": [32], "seed": [0]}},
            "grid.lr.scale",
        ),
        ({"dataset": {"name": "imagenet"}}, "dataset.name"),
        ({"dataset": {"name": "digits", "n_train": 10**6}}, "dataset.n_train"),
        ({"dataset": {"name": "digits", "val_fraction": 1.5}}, "dataset.val_fraction"),
        ({"model": {"name": "transformer"}}, "model.name"),
        ({"model": {"options": {"depth": "four"}}}, "model.options.depth"),
        ({"model": {"options": {"depth": 0}}}, "model.options.depth"),
        ({"model": {"options": {"heads": 4}}}, "model.options.heads"),
        ({"model": {"options": [1, 2]}}, "model.options"),
        ({"dataset": {"name": "digits", "options": {"size": 3}}}, "dataset.options.size"),
        ({"dataset": {"name": "mnist1d", "options": {"n_samples": 5}}}, "dataset.options.n_samples"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"epochs": 2, "momentum": 1.5}}, "train.momentum"),
        ({"resources": {"cpu": 0}}, "resources.cpu"),
        ({"resources": {"cpu": 1, "gpu": 1.5}}, "resources.gpu"),
        ({"name": "a/b"}, "name"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(SpecError) as err:
        spec_from_dict(tiny_spec(**overrides))
    message = str(err.value)
    assert message.startswith(f"{field}:"), message
    assert "\n" not in message


def test_missing_name_and_non_mapping():
    with pytest.raises(SpecError, match=r"^name: required"):
        spec_from_dict({"dataset": {"name": "digits"}})
    with pytest.raises(SpecError, match=r"^spec: the top level must be a mapping"):
        spec_from_dict([1, 2])


def test_load_spec_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: [unclosed\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert str(err.value).startswith(f"{bad}: malformed YAML at line")
    unknown = write_yaml(tmp_path / "unknown.yaml", tiny_spec(sheduler="asha"))
    with pytest.raises(SpecError, match=r"unknown\.yaml: sheduler: unknown key"):
        load_spec(unknown)
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")


def test_rescale_points_follow_each_rule():
    spec = spec_from_dict(
        tiny_spec(
            grid={"seed": [0, 1]},
            rescale={"lr0": 0.1, "batch_size0": 50, "batch_sizes": [50, 200, 800], "rules": ["linear", "sqrt", "none"]},
        )
    )
    points = expand_points(spec)
    assert len(points) == (1 + 2 * 3) * 2
    ref = [p for p in points if p["rescale"] == "reference"]
    assert [(p["lr"], p["batch_size"]) for p in ref] == [(0.1, 50)] * 2
    by = {(p["rescale"], p["batch_size"]): p["lr"] for p in points}
    assert by[("linear", 200)] == pytest.approx(0.4) and by[("linear", 800)] == pytest.approx(1.6)
    assert by[("sqrt", 200)] == pytest.approx(0.2) and by[("sqrt", 800)] == pytest.approx(0.4)
    assert by[("none", 800)] == 0.1


def test_beta_points_cross_training_set_sizes():
    spec = spec_from_dict(
        tiny_spec(
            grid={"seed": [0, 1]}, beta={"lr0": 0.1, "batch_size0": 16, "values": [0.5, 1, 4], "n_train": [400, 1000]}
        )
    )
    points = expand_points(spec)
    assert len(points) == 2 * 3 * 2
    assert {(p["n_train"], p["beta"], p["lr"], p["batch_size"]) for p in points} == {
        (n, b, 0.1 * b, int(16 * b)) for n in (400, 1000) for b in (0.5, 1.0, 4.0)
    }
    ratios = {p["lr"] / p["batch_size"] for p in points}
    assert max(ratios) == pytest.approx(min(ratios))  # a beta family keeps eta/S fixed


def test_beta_family_keeps_eta_over_s_exact_when_s_rounds():
    """Fig. 4's beta = 0.25 of S0 = 50: S = 13 (12.5 rounded), lr from S, so eta/S stays lr0/S0."""
    spec = spec_from_dict(tiny_spec(grid={"seed": [0]}, beta={"lr0": 0.1, "batch_size0": 50, "values": [0.25, 1, 4]}))
    points = expand_points(spec)
    assert [(p["lr"], p["batch_size"]) for p in points] == [(0.026, 13), (0.1, 50), (0.4, 200)]
    assert all(p["lr"] / p["batch_size"] == pytest.approx(0.1 / 50, rel=1e-12) for p in points)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rescale": {"lr0": 0.1, "batch_size0": 50, "batch_sizes": [100]}}, "rescale: conflicts with grid.lr"),
        (
            {
                "grid": {"seed": [0]},
                "rescale": {"lr0": 0.1, "batch_size0": 50, "batch_sizes": [100], "rules": ["cubic"]},
            },
            "rescale.rules[0]: unknown rule",
        ),
        ({"grid": {"seed": [0]}, "rescale": {"lr0": 0.1, "batch_sizes": [100]}}, "rescale.batch_size0: required"),
        (
            {"grid": {"seed": [0]}, "rescale": {"lr0": 0.1, "batch_size0": 50, "batch_sizes": [100000]}},
            "rescale.batch_sizes[0]: 100000 is larger than the training set",
        ),
        (
            {"grid": {"seed": [0]}, "beta": {"lr0": 0.1, "batch_size0": 50, "values": [1, 40], "n_train": [1000]}},
            "beta.values[1]: 2000 is larger than the training set (1000 examples)",
        ),
        (
            {"grid": {"seed": [0]}, "beta": {"lr0": 0.1, "batch_size0": 50, "values": [1], "n_train": [10**7]}},
            "beta.n_train[0]:",
        ),
        (
            {
                "grid": {"seed": [0]},
                "beta": {"lr0": 0.1, "batch_size0": 50, "values": [1]},
                "rescale": {"lr0": 0.1, "batch_size0": 50, "batch_sizes": [100]},
            },
            "beta: conflicts with rescale",
        ),
        ({"schedule": {"kind": "cyclic_batch", "low": 32}}, "schedule."),
        ({"schedule": {"kind": "warp"}}, "schedule.kind"),
        ({"schedule": {"knd": "step"}}, "schedule.knd: unknown key"),
        ({"curvature": {"every": "sometimes"}}, "curvature.every"),
        ({"curvature": {"n_samples": 0}}, "curvature.n_samples"),
        (
            {"curvature": {"noise_method": "two_batch", "noise_b_small": 512, "noise_b_big": 32}},
            "curvature.noise_b_small",
        ),
        ({"curvature": {"noise_method": "exact"}}, "curvature.noise_method"),
        ({"curvature": {"noise_b_small": 0}}, "curvature.noise_b_small"),
        ({"grid": {"lr": [0.1], "batch_size": [8], "seed": [2**70]}}, "grid.seed[0]"),
        ({"train": {"augment": "mixup"}}, "train.augment"),
        ({"train": {"augment": "crop_flip"}}, "train.augment"),
        ({"curvature": {"trace_method": "hutch"}}, "curvature.trace_method"),
        ({"curvature": {"hutchinson_probes": 3}}, "curvature.hutchinson_probes"),
        ({"curvature": {"lanczos_iter": 5}}, "curvature.lanczos_iter: unknown key"),
        ({"resilience": {"max_failures": -1}}, "resilience.max_failures"),
    ],
)
def test_family_schedule_and_probe_errors(overrides, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict(tiny_spec(**overrides))
    assert str(err.value).startswith(message), str(err.value)


def test_schedule_and_curvature_reach_the_param_space():
    spec = spec_from_dict(
        tiny_spec(schedule={"kind": "step", "milestones": [2], "factor": 0.1}, curvature={"n_samples": 500, "every": 1})
    )
    space = to_param_space(spec, "v")
    assert space["schedule"]["kind"] == "step" and space["schedule"]["milestones"] == [2]
    assert space["curvature"]["n_samples"] == 500 and space["curvature"]["every"] == 1
    assert space["resilience"]["max_failures"] == 3
    assert "rescale" not in space and "beta" not in space
    assert to_param_space(spec_from_dict(tiny_spec()), "v")["curvature"] is None


def test_variants_are_named_points_with_their_own_schedules():
    spec = spec_from_dict(
        tiny_spec(
            grid={"seed": [0, 1]},
            train={"epochs": 8},
            variants=[
                {
                    "label": "cbs",
                    "lr": 0.005,
                    "batch_size": 32,
                    "schedule": {"kind": "cyclic_batch", "low": 32, "high": 160, "cycle_epochs": 4},
                },
                {"label": "const", "lr": 0.001, "batch_size": 32},
            ],
        )
    )
    points = expand_points(spec)
    assert len(points) == 4
    assert points[0]["variant"] == "cbs" and points[0]["schedule"]["kind"] == "cyclic_batch"
    assert points[2] == {"lr": 0.001, "batch_size": 32, "seed": 0, "variant": "const"}


@pytest.mark.parametrize(
    "variants, message",
    [
        ([{"label": "a", "lr": 0.1}], "variants[0].batch_size: required"),
        ([{"label": "a", "lr": -1, "batch_size": 8}], "variants[0].lr: must be > 0"),
        ([{"label": "a", "lr": 0.1, "batch_size": 8, "colour": 1}], "variants[0].colour: unknown key"),
        ([{"label": "a", "lr": 0.1, "batch_size": 8, "schedule": {"kind": "cyclic_lr"}}], "variants[0].schedule"),
        (
            [{"label": "a", "lr": 0.1, "batch_size": 8}, {"label": "a", "lr": 0.2, "batch_size": 8}],
            "variants: repeated",
        ),
        ("nope", "variants: must be a non-empty list"),
    ],
)
def test_variant_errors(variants, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict(tiny_spec(grid={"seed": [0]}, variants=variants))
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("value", [0, -1.0, ".inf", "soon"])
def test_bad_checkpoint_every_s_is_a_one_line_error(value):
    import yaml

    with pytest.raises(SpecError, match=r"^resilience.checkpoint_every_s: "):
        spec_from_dict(tiny_spec(resilience={"checkpoint_every_s": yaml.safe_load(str(value))}))


def test_checkpoints_are_time_based_by_default():
    spec = spec_from_dict(tiny_spec())
    assert spec.resilience.checkpoint_every is None and spec.resilience.checkpoint_every_s == 30.0
    assert (
        spec_from_dict(
            tiny_spec(resilience={"checkpoint_every": 5, "checkpoint_every_s": None})
        ).resilience.checkpoint_every
        == 5
    )


def test_replicas_is_a_one_line_error_naming_pack():
    with pytest.raises(SpecError, match=r"^train.replicas: replaced by train.pack"):
        spec_from_dict(tiny_spec(train={"epochs": 3, "replicas": 2}))


@pytest.mark.parametrize("pack", [0, -1, 2.5, "many", True, [2]])
def test_bad_pack_is_a_one_line_error(pack):
    with pytest.raises(SpecError, match=r"^train.pack: must be an integer >= 1 or auto"):
        spec_from_dict(tiny_spec(train={"pack": pack}))


def test_bad_pack_exits_2_from_the_cli(tmp_path):
    from lrbs.sweeps.cli import main

    path = write_yaml(tmp_path / "s.yaml", tiny_spec(train={"pack": 0}))
    assert main(["validate", str(path)]) == 2


def test_plan_packs_groups_by_batch_size_schedule_and_n_train_and_splits_at_k():
    from lrbs.sweeps.packing import plan_packs

    # beta family: each beta has its own S, so packs are the seeds of one (beta, n_train)
    spec = spec_from_dict(
        tiny_spec(
            grid={"seed": [0, 1, 2]}, beta={"lr0": 0.05, "batch_size0": 16, "values": [1, 2], "n_train": [400, 800]}
        )
    )
    packs = plan_packs(spec)
    assert [len(p) for p in packs] == [3, 3, 3, 3]
    assert all(len({(m["batch_size"], m.get("n_train")) for m in p}) == 1 for p in packs)
    # a grid with an explicit K: groups of one S are cut into packs of at most K, never refused
    spec = spec_from_dict(
        tiny_spec(train={"pack": 3}, grid={"lr": [0.01, 0.02], "batch_size": [32], "seed": [0, 1, 2, 3]})
    )
    assert [len(p) for p in plan_packs(spec)] == [3, 3, 2]
    # points with different batch-size schedules never share a pack; lr-only schedules may
    spec = spec_from_dict(
        tiny_spec(
            grid={"seed": [0]},
            train={"epochs": 4},
            variants=[
                {
                    "label": "clr",
                    "lr": 0.1,
                    "batch_size": 32,
                    "schedule": {"kind": "cyclic_lr", "low": 0.01, "high": 0.05, "cycle_epochs": 2},
                },
                {"label": "const", "lr": 0.05, "batch_size": 32},
                {
                    "label": "cbs",
                    "lr": 0.05,
                    "batch_size": 32,
                    "schedule": {"kind": "cyclic_batch", "low": 32, "high": 64, "cycle_epochs": 2},
                },
            ],
        )
    )
    assert [[m["variant"] for m in p] for p in plan_packs(spec)] == [["clr", "const"], ["cbs"]]


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"name: x\ngrid: {lr: [0.1], lr: [0.2], batch_size: [8], seed: [0]}\n", "duplicate key 'lr'"),
        (b"name: x\nname: y\n", "duplicate key 'name'"),
        (b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)"),
        (
            b"name: x\ngrid: {lr: [0.1], batch_size: {min: .nan, max: 64, num: 3}, seed: [0]}\n",
            "grid.batch_size.min: must be a finite number",
        ),
        (
            b"name: x\ngrid: {lr: {min: 0.01, max: .inf, num: 3}, batch_size: [8], seed: [0]}\n",
            "grid.lr.max: must be a finite number",
        ),
        (b'name: "a\\0b"\n', "name: must be a file name of 1-100 printable characters"),
        (b"name: " + b"n" * 300 + b"\n", "name: must be a file name of 1-100 printable characters"),
        (b"name: x\n" + b"a: " * 0 + b"grid: " + b"[" * 20000 + b"]" * 20000 + b"\n", "malformed YAML"),
        # Limits: refused before anything is built or expanded.
        (
            b"name: x\ndataset: {name: synthetic, n_train: 512}\n"
            b"grid: {lr: {min: 0.01, max: 1, num: 1000000000}, batch_size: [8], seed: [0]}\n",
            "grid.lr.num: 1,000,000,000 values; limits.max_points is 10,000",
        ),
        (
            b"name: x\ndataset: {name: synthetic, n_train: 512}\ngrid: {lr: {min: 0.01, max: 1, num: 1000}, "
            b"batch_size: {min: 8, max: 512, num: 1000}, seed: [0]}\n",
            "the sweep has 415,000 trial points",
        ),
        (
            b"name: x\ndataset: {name: synthetic, n_train: 512}\nmodel: {name: mlp, options: {width: 100000, depth: 3}}\n"
            b"grid: {lr: [0.1], batch_size: [8], seed: [0]}\n",
            "would have 10,004,600,010 parameters; limits.max_params",
        ),
        (
            b"name: x\ndataset: {name: synthetic, n_train: 512}\nmodel: {name: mlp, options: {depth: 100000}}\n"
            b"grid: {lr: [0.1], batch_size: [8], seed: [0]}\n",
            "model.options.depth: must be <= 1000",
        ),
        (
            b"name: x\ndataset: {name: synthetic, n_train: 10000000000}\ngrid: {lr: [0.1], batch_size: [8], seed: [0]}\n",
            "limits.memory_gb: one trial needs ~",
        ),
        (
            b"name: x\ndataset: {name: synthetic, n_train: 512}\nlimits: {memory_gb: 0.0001}\n"
            b"grid: {lr: [0.1], batch_size: [8], seed: [0]}\n",
            "the limit is 0.0001 GB (limits.memory_gb)",
        ),
        (b"name: x\nlimits: {max_points: 0}\n", "limits.max_points: must be >= 1"),
        # NaN compares false with every bound: every number is checked finite where it is read.
        (b"name: x\ntrain: {weight_decay: .nan}\n", "train.weight_decay: must be a finite number (got nan)"),
        (b"name: x\ntrain: {divergence_factor: .nan}\n", "train.divergence_factor: must be a finite number"),
        (b"name: x\nresources: {cpu: .nan}\n", "resources.cpu: must be a finite number"),
        (b"name: x\nresources: {gpu: .nan}\n", "resources.gpu: must be a finite number"),
        (b"name: x\nlimits: {resource_wait_s: .inf}\n", "limits.resource_wait_s: must be a finite number (got inf)"),
    ],
)
def test_hostile_specs_are_one_line_errors(tmp_path, content, needle):
    """Red-team inputs: one line naming the problem, exit 2, nothing started."""
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as err:
        preflight(path)
    message = str(err.value)
    assert needle in message and "\n" not in message and len(message) <= SpecError.MAX_ERROR, message


def test_limits_can_be_raised(tmp_path):
    """Each limit is a key: a sweep that really is that big runs once the key says so."""
    path = tmp_path / "big.yaml"
    path.write_text(
        "name: big\ndataset: {name: synthetic, n_train: 512}\nlimits: {max_points: 20000}\n"
        "grid: {lr: {min: 0.01, max: 1, num: 150}, batch_size: {min: 8, max: 64, num: 100}, seed: [0, 1]}\n"
    )
    spec = preflight(path).spec
    assert spec.limits.max_points == 20000 and len(expand_points(spec)) > 10_000


def test_resources_beyond_this_machine_are_refused_before_anything_is_written(tmp_path, capsys):
    """``resources: {cpu: 64}`` on this machine: one line, exit 2, no run directory (Tune would
    wait forever for a node that never comes)."""
    import os

    from lrbs.sweeps.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: r\ndataset: {{name: synthetic, n_train: 256}}\ntrain: {{epochs: 1}}\n"
        f"resources: {{cpu: {4 * (os.cpu_count() or 1)}}}\ngrid: {{lr: [0.1], batch_size: [32], seed: [0]}}\n"
    )
    assert main(["run", str(path), "--storage", str(tmp_path / "runs"), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lrbs: error: resources: a trial asks for") and "this machine has" in err
    assert not (tmp_path / "runs" / "r").exists()


def test_alias_bomb_is_refused_quickly_and_huge_values_are_cut(tmp_path):
    import time

    bomb = ["name: x", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(bomb) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match="alias bomb"):
        load_spec(path)
    assert time.perf_counter() - t0 < 5
    path.write_text("name: x\ngrid: {lr: " + str(list(range(200_000))) + ", batch_size: [8], seed: [0], x: 1}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert len(str(err.value)) <= SpecError.MAX_ERROR


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_round_trips_through_its_copy(path):
    """``lrbs run`` writes ``spec.to_dict()`` as RUN_DIR/spec.yaml and ``lrbs resume`` rebuilds the
    run from it: it must read back to the same spec for every kind of sweep."""
    import yaml

    spec = spec_from_dict(yaml.safe_load(path.read_text()))  # load_spec's checks without building the model
    assert spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))) == spec


def test_report_converged_train_acc_defaults_and_reaches_every_trial_config():
    """``report.converged_train_acc``: 0.99 when the section is absent, a value in (0, 1] or null
    as given; the whole section rides in every trial's config (the trial table's cfg.report.*)."""
    import yaml

    assert spec_from_dict(tiny_spec()).report.converged_train_acc == 0.99
    for value in (0.9, 1, None):
        spec = spec_from_dict(tiny_spec(report={"converged_train_acc": value}))
        assert spec.report.converged_train_acc == value
        assert to_param_space(spec, "v")["report"] == {"converged_train_acc": value}
        # the run directory's spec copy (what lrbs resume reads) gives the same spec back
        assert spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))) == spec
    assert spec_from_dict(tiny_spec(report=None)).report.converged_train_acc == 0.99  # `report:` left empty
    # a spec copy written before the section existed still loads (lrbs resume of an older run)
    old_copy = spec_from_dict(tiny_spec()).to_dict()
    old_copy.pop("report")
    assert spec_from_dict(old_copy) == spec_from_dict(tiny_spec())


@pytest.mark.parametrize(
    "report, message",
    [
        ({"converged_train_acc": 0}, "report.converged_train_acc: must be an accuracy in (0, 1] or null"),
        ({"converged_train_acc": 1.5}, "report.converged_train_acc: must be an accuracy in (0, 1] or null"),
        ({"converged_train_acc": -0.2}, "report.converged_train_acc: must be an accuracy in (0, 1] or null"),
        ({"converged_train_acc": float("nan")}, "report.converged_train_acc: must be a finite number (got nan)"),
        ({"converged_train_acc": "99%"}, "report.converged_train_acc: must be a number"),
        (
            {"converged_train_loss": 0.05},
            "report.converged_train_loss: unknown key (allowed here: converged_train_acc)",
        ),
        ([0.99], "report: must be a mapping"),
    ],
)
def test_bad_report_section_is_a_one_line_error_naming_the_field(report, message):
    with pytest.raises(SpecError) as err:
        spec_from_dict(tiny_spec(report=report))
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


def test_bad_train_eval_samples_is_a_one_line_error():
    assert spec_from_dict(tiny_spec(train={"train_eval_samples": 100})).train.train_eval_samples == 100
    with pytest.raises(SpecError, match=r"^train.train_eval_samples: must be >= 1 \(got 0\)$"):
        spec_from_dict(tiny_spec(train={"train_eval_samples": 0}))


def test_report_section_from_a_yaml_file_exits_2_naming_the_field(tmp_path, capsys):
    from lrbs.sweeps.cli import main

    path = write_yaml(tmp_path / "s.yaml", tiny_spec(report={"converged_train_acc": 2}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "report.converged_train_acc: must be an accuracy in (0, 1] or null (got 2.0)" in err[0]


def _text_spec(**sections: str):
    """A spec file written as YAML text (``.inf``, 5,000-digit integers and other literals that
    only text can hold); each section's flow text replaces the base's, None leaves it out.
    ``TMP`` in a section is replaced by the test's folder."""
    base = {
        "name": "h",
        "dataset": "{name: digits, val_fraction: 0.2}",
        "model": "{name: mlp, options: {depth: 2, width: 8}}",
        "train": "{epochs: 2}",
        "grid": "{lr: [0.1], batch_size: [32], seed: [0]}",
    }

    def make(tmp: Path) -> Path:
        text = "".join(f"{k}: {v}\n" for k, v in {**base, **sections}.items() if v is not None)
        path = tmp / "spec.yaml"
        path.write_text(text.replace("TMP", str(tmp)))
        return path

    return make


def _special_path(kind: str):
    def make(tmp: Path) -> Path:
        import os

        if kind == "dev-zero":
            return Path("/dev/zero")
        path = tmp / "spec.yaml"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        else:  # one byte over the limit
            path.write_text("name: big\n" + "#" * SpecError.MAX_ERROR + "\n" + "#" * 1_000_000 + "\n")
        return path

    return make


FAMILY = "{seed: [0]}"  # grid of a rescale / beta / variants spec
# (case, how to write the spec, the field the one line names; None: it names the spec file)
HOSTILE_TWO = [
    ("epochs-5000-digits", _text_spec(train="{epochs: " + "9" * 5000 + "}"), "train.epochs"),
    ("lr-400-digits", _text_spec(grid="{lr: [" + "9" * 400 + "], batch_size: [32], seed: [0]}"), "grid.lr[0]"),
    ("cpu-2**2000", _text_spec(resources=f"{{cpu: {2**2000}}}"), "resources.cpu"),
    (
        "options-5000-digits",
        _text_spec(model="{name: mlp, options: {width: -" + "7" * 5000 + "}}"),
        "model.options.width",
    ),
    (
        "step-lr-overflows",
        _text_spec(train="{epochs: 3}", schedule="{kind: step, milestones: [1, 2], factor: 1.0e+300}"),
        "schedule.factor",
    ),
    (
        "variant-step-lr-overflows",
        _text_spec(
            train="{epochs: 40}",
            grid=FAMILY,
            variants=("[{label: a, lr: 0.1, batch_size: 32, schedule: {kind: step, every: 1, factor: 1.0e+10}}]"),
        ),
        "variants[0].schedule.factor",
    ),
    (
        "rescale-lr-overflows",
        _text_spec(grid=FAMILY, rescale="{lr0: 1.0e+308, batch_size0: 16, batch_sizes: [64]}"),
        "rescale.lr0",
    ),
    ("beta-value-inf", _text_spec(grid=FAMILY, beta="{lr0: 0.1, batch_size0: 16, values: [.inf]}"), "beta.values[0]"),
    (
        "beta-value-1e308",
        _text_spec(grid=FAMILY, beta="{lr0: 0.1, batch_size0: 16, values: [1.0e+308]}"),
        "beta.values[0]",
    ),
    ("beta-lr0-inf", _text_spec(grid=FAMILY, beta="{lr0: .inf, batch_size0: 16, values: [1]}"), "beta.lr0"),
    (
        "rescale-lr0-inf",
        _text_spec(grid=FAMILY, rescale="{lr0: .inf, batch_size0: 16, batch_sizes: [32]}"),
        "rescale.lr0",
    ),
    ("momentum-nan", _text_spec(train="{epochs: 2, momentum: .nan}"), "train.momentum"),
    ("memory-inf", _text_spec(limits="{memory_gb: .inf}"), "limits.memory_gb"),
    (
        "beta-values-repeated",
        _text_spec(grid=FAMILY, beta="{lr0: 0.1, batch_size0: 16, values: [1, 1]}"),
        "beta.values[1]",
    ),
    (
        "beta-values-same-S",
        _text_spec(grid=FAMILY, beta="{lr0: 0.1, batch_size0: 16, values: [1, 1.01]}"),
        "beta.values[1]",
    ),
    (
        "beta-n_train-repeated",
        _text_spec(
            grid=FAMILY,
            dataset="{name: digits, val_fraction: 0.2}",
            beta="{lr0: 0.1, batch_size0: 16, values: [1], n_train: [400, 400]}",
        ),
        "beta.n_train[1]",
    ),
    (
        "rescale-sizes-repeated",
        _text_spec(grid=FAMILY, rescale="{lr0: 0.1, batch_size0: 16, batch_sizes: [64, 64]}"),
        "rescale.batch_sizes[1]",
    ),
    (
        "rescale-rules-repeated",
        _text_spec(grid=FAMILY, rescale=("{lr0: 0.1, batch_size0: 16, batch_sizes: [64], rules: [linear, linear]}")),
        "rescale.rules[1]",
    ),
    ("grid-lr-repeated", _text_spec(grid="{lr: [0.1, 0.1], batch_size: [32], seed: [0]}"), "grid.lr"),
    ("grid-sizes-repeated", _text_spec(grid="{lr: [0.1], batch_size: [32, 32], seed: [0]}"), "grid.batch_size"),
    (
        "variant-labels-repeated",
        _text_spec(
            grid=FAMILY, variants=("[{label: a, lr: 0.1, batch_size: 32}, {label: a, lr: 0.2, batch_size: 32}]")
        ),
        "variants",
    ),
    (
        "split_seed-negative",
        _text_spec(dataset="{name: digits, val_fraction: 0.2, split_seed: -1}"),
        "dataset.split_seed",
    ),
    (
        "split_seed-2**70",
        _text_spec(dataset=f"{{name: digits, val_fraction: 0.2, split_seed: {2**70}}}"),
        "dataset.split_seed",
    ),
    ("curvature-seed-negative", _text_spec(curvature="{seed: -1}"), "curvature.seed"),
    ("cpu-1e-9", _text_spec(resources="{cpu: 1.0e-9}"), "resources.cpu"),
    ("gpu-1e-9", _text_spec(resources="{cpu: 1, gpu: 1.0e-9}"), "resources.gpu"),
    ("epochs-10**12", _text_spec(train="{epochs: 1000000000000}"), "train.epochs"),
    ("data_dir-a-file", _text_spec(dataset="{name: mnist1d, data_dir: TMP/spec.yaml}"), "dataset.data_dir"),
    ("data_dir-under-a-file", _text_spec(dataset="{name: mnist1d, data_dir: TMP/spec.yaml/data}"), "dataset.data_dir"),
    (
        "data_dir-empty-no-download",
        _text_spec(dataset="{name: fashion_mnist, data_dir: TMP, download: false}"),
        "dataset.data_dir",
    ),
    ("path-dev-zero", _special_path("dev-zero"), None),
    ("path-fifo", _special_path("fifo"), None),
    ("path-directory", _special_path("dir"), None),
    ("path-over-1MB", _special_path("big"), None),
]


@pytest.mark.timeout(60)  # a FIFO or /dev/zero that is read would otherwise block the suite
@pytest.mark.parametrize("make, field", [c[1:] for c in HOSTILE_TWO], ids=[c[0] for c in HOSTILE_TWO])
def test_hostile_specs_round_two_are_one_line_exit_2_from_validate_and_run(tmp_path, capsys, make, field):
    """Each bad spec (or spec path): ``lrbs validate`` and ``lrbs run`` exit 2 with one line on
    stderr naming the field (or the file), and write nothing (run: before Ray starts)."""
    from lrbs.sweeps.cli import main

    path = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for argv in (["validate", str(path)], ["run", str(path), "--storage", str(tmp_path / "runs"), "--no-report"]):
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lrbs: error: {path}: "), lines
        message = lines[0][len(f"lrbs: error: {path}: ") :]
        if field is not None:
            assert message.startswith(f"{field}: "), message
        assert len(message) <= SpecError.MAX_ERROR, message
    assert sorted(tmp_path.rglob("*")) == before  # no run directory, no data cache, nothing else


def test_hostile_messages_say_what_to_do():
    """The lines above name the fix: the limit to raise, the download command, the unit Ray takes
    (in a short folder, as a user's: a message over SpecError.MAX_ERROR characters is cut)."""
    import shutil
    import tempfile

    messages = {}
    for case, make, _ in HOSTILE_TWO:
        if case in (
            "epochs-10**12",
            "data_dir-empty-no-download",
            "cpu-1e-9",
            "beta-values-repeated",
            "path-dev-zero",
            "epochs-5000-digits",
        ):
            folder = Path(tempfile.mkdtemp(prefix="lrbs"))
            try:
                with pytest.raises(SpecError) as err:
                    preflight(make(folder), local_data=True)
            finally:
                shutil.rmtree(folder)
            messages[case] = str(err.value).replace(str(folder), "DIR")
    assert "limits.max_epochs is 100,000 (raise it if you mean it)" in messages["epochs-10**12"]
    assert (
        "python -m lrbs.trainables.data download fashion_mnist --data-dir DIR" in messages["data_dir-empty-no-download"]
    )
    assert "must be >= 0.0001, Ray's smallest unit" in messages["cpu-1e-9"]
    assert "beta.values[1]: repeats beta.values[0]" in messages["beta-values-repeated"]
    assert "is a character device, not a spec file" in messages["path-dev-zero"]
    assert "an integer of 5,000 digits is too large" in messages["epochs-5000-digits"]


def test_max_epochs_is_a_limit_that_can_be_raised():
    with pytest.raises(SpecError, match=r"^train.epochs: 200,000 epochs; limits.max_epochs is 100,000"):
        spec_from_dict(tiny_spec(train={"epochs": 200_000}))
    assert spec_from_dict(tiny_spec(train={"epochs": 200_000}, limits={"max_epochs": 200_000})).train.epochs == 200_000
    with pytest.raises(SpecError, match=r"^limits.max_epochs: must be >= 1"):
        spec_from_dict(tiny_spec(limits={"max_epochs": 0}))


def test_data_files_are_checked_only_where_the_trials_run(tmp_path):
    """``download: false`` and no files here: refused for a run on this machine (validate, run),
    accepted when the trials run on a cluster's nodes (``run --address``, submit, resume)."""
    path = _text_spec(dataset="{name: fashion_mnist, data_dir: TMP/nodata, download: false}")(tmp_path)
    assert load_spec(path).dataset.download is False
    with pytest.raises(SpecError, match="dataset.data_dir: dataset fashion_mnist not found"):
        preflight(path, local_data=True)
