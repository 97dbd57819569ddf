"""Spec validation and grid expansion (no Ray needed)."""
from __future__ import annotations

import pytest

from sweeps.spec import SpecError, axis_values, expand_points, load_spec, spec_from_dict, to_param_space, AxisRange
from tests.conftest import tiny_spec, write_yaml
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def test_to_param_space_has_one_grid_over_points():
    spec = spec_from_dict(tiny_spec())
    space = to_param_space(spec, "v1")
    assert space["point"] == {"grid_search": expand_points(spec)}
    assert space["sweep"] == "tiny" and space["code_version"] == "v1"
    assert space["dataset"]["name"] == "digits" and space["model"]["width"] == 32


def test_round_trip_through_dict():
    spec = spec_from_dict(tiny_spec(grid={"lr": {"min": 0.01, "max": 0.1, "num": 2}, "batch_size": [32], "seed": [0]}))
    assert spec_from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("overrides, field", [
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
    ({"grid": {"lr": {"min": 0.1, "max": 1, "num": 3, "scale": "cubic"}, "batch_size": [32], "seed": [0]}}, "grid.lr.scale"),
    ({"dataset": {"name": "imagenet"}}, "dataset.name"),
    ({"dataset": {"name": "digits", "n_train": 10**6}}, "dataset.n_train"),
    ({"dataset": {"name": "digits", "val_fraction": 1.5}}, "dataset.val_fraction"),
    ({"model": {"name": "transformer"}}, "model.name"),
    ({"model": {"name": "mlp", "depth": "four"}}, "model.depth"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"epochs": 2, "momentum": 1.5}}, "train.momentum"),
    ({"resources": {"cpu": 0}}, "resources.cpu"),
    ({"resources": {"cpu": 1, "gpu": 1.5}}, "resources.gpu"),
    ({"name": "a/b"}, "name"),
])
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
