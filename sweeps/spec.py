"""Sweep specs: YAML data -> validated dataclasses -> an explicit list of trial points.

A spec is data (as in AlgoPerf and init2winit): every axis is written out, and one tested
function (``expand_points``) turns it into the trials. Unknown keys and impossible values are
rejected with one line naming the field, before anything is launched.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sweeps.errors import LrbsError
from trainables.config import DatasetConfig, ModelConfig, TrainConfig


class SpecError(LrbsError):
    """A spec that cannot run. ``str()`` is ``"<file>: <field>: <problem>"``."""


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0   # Ray CPUs per trial (fractions allowed); also the trial's torch threads
    gpu: float = 0.0   # Ray GPUs per trial (fractions let several small trials share a card)


@dataclass(frozen=True)
class AxisRange:
    """``{min, max, num, scale}``: ``num`` values from min to max, log- or linearly spaced."""
    min: float
    max: float
    num: int
    scale: str = "log"


@dataclass(frozen=True)
class GridConfig:
    lr: tuple[float, ...] | AxisRange = (0.1,)
    batch_size: tuple[int, ...] | AxisRange = (128,)
    seed: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-safe) that ``spec_from_dict`` reads back to an equal spec."""
        return _plain(dataclasses.asdict(self))


SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "resources": ResourcesConfig,
}


# ---------------------------------------------------------------------------------------------
# Loading and type checking


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a YAML spec file; raises SpecError naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def spec_from_dict(data: Any) -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError("spec: the top level must be a mapping of keys (name, dataset, model, ...)")
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    _reject_unknown(data, known, "")
    if "name" not in data:
        raise SpecError("name: required (the run directory is <storage>/<name>)")
    name = _check_type(data["name"], str, "name")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise SpecError(f"name: must be a non-empty file name without '/' (got {name!r})")
    kwargs: dict[str, Any] = {"name": name}
    if "description" in data:
        kwargs["description"] = _check_type(data["description"], str, "description")
    for key, cls in SECTIONS.items():
        if key in data:
            kwargs[key] = _build(cls, data[key], key)
    if "grid" in data:
        kwargs["grid"] = _build_grid(data["grid"])
    spec = SweepSpec(**kwargs)
    validate(spec)
    return spec


def _reject_unknown(data: dict, known: set[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            where = f"{prefix}{key}"
            raise SpecError(f"{where}: unknown key (allowed here: {', '.join(sorted(known))})")


def _build(cls: type, data: Any, path: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: must be a mapping (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    _reject_unknown(data, {f.name for f in dataclasses.fields(cls)}, f"{path}.")
    return cls(**{k: _check_type(v, hints[k], f"{path}.{k}") for k, v in data.items()})


def _check_type(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, path)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0] if len(errors) == 1 else f"{path}: unexpected value {value!r}")
    if origin is tuple:
        if not isinstance(value, list) or not value:
            raise SpecError(f"{path}: must be a non-empty list (got {value!r})")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{path}: must be a number (got {value!r})")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{path}: must be an integer (got {value!r})")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{path}: must be true or false (got {value!r})")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(f"{path}: must be a string (got {value!r})")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    raise TypeError(f"unsupported type hint {hint!r} at {path}")  # a bug in this module, not input


def _build_grid(data: Any) -> GridConfig:
    if not isinstance(data, dict):
        raise SpecError(f"grid: must be a mapping with lr, batch_size, seed (got {type(data).__name__})")
    _reject_unknown(data, {"lr", "batch_size", "seed"}, "grid.")
    kwargs: dict[str, Any] = {}
    for key, item in (("lr", float), ("batch_size", int)):
        if key in data:
            value = data[key]
            if isinstance(value, dict):
                kwargs[key] = _build(AxisRange, value, f"grid.{key}")
            else:
                kwargs[key] = _check_type(value, tuple[item, ...], f"grid.{key}")
    if "seed" in data:
        kwargs["seed"] = _check_type(data["seed"], tuple[int, ...], "grid.seed")
    return GridConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Semantic validation


def validate(spec: SweepSpec) -> None:
    """Value checks that need more than types. Raises SpecError naming the field."""
    from trainables.data import DATASET_NAMES, DataError, train_set_size
    from trainables.models import MODEL_NAMES

    ds, model, train, res = spec.dataset, spec.model, spec.train, spec.resources
    if ds.name not in DATASET_NAMES:
        raise SpecError(f"dataset.name: unknown data set {ds.name!r} (known: {', '.join(DATASET_NAMES)})")
    if ds.n_train is not None and ds.n_train < 1:
        raise SpecError(f"dataset.n_train: must be >= 1 (got {ds.n_train})")
    if ds.val_fraction is not None and not 0.0 < ds.val_fraction < 1.0:
        raise SpecError(f"dataset.val_fraction: must be in (0, 1) (got {ds.val_fraction})")
    if model.name not in MODEL_NAMES:
        raise SpecError(f"model.name: unknown model {model.name!r} (known: {', '.join(MODEL_NAMES)})")
    if model.depth < 1:
        raise SpecError(f"model.depth: must be >= 1 (got {model.depth})")
    if model.width < 1:
        raise SpecError(f"model.width: must be >= 1 (got {model.width})")
    if train.epochs < 1:
        raise SpecError(f"train.epochs: must be >= 1 (got {train.epochs})")
    if not 0.0 <= train.momentum < 1.0:
        raise SpecError(f"train.momentum: must be in [0, 1) (got {train.momentum})")
    if train.weight_decay < 0:
        raise SpecError(f"train.weight_decay: must be >= 0 (got {train.weight_decay})")
    if train.divergence_factor <= 1:
        raise SpecError(f"train.divergence_factor: must be > 1 (got {train.divergence_factor})")
    if train.eval_batch_size < 1:
        raise SpecError(f"train.eval_batch_size: must be >= 1 (got {train.eval_batch_size})")
    if train.replicas < 1:
        raise SpecError(f"train.replicas: must be >= 1 (got {train.replicas})")
    if res.cpu <= 0:
        raise SpecError(f"resources.cpu: must be > 0 (got {res.cpu})")
    if res.gpu < 0:
        raise SpecError(f"resources.gpu: must be >= 0 (got {res.gpu})")
    if res.gpu > 1 and res.gpu != int(res.gpu):
        raise SpecError(f"resources.gpu: fractions are only allowed below 1 (got {res.gpu})")
    try:
        n_train = train_set_size(ds)
    except DataError as exc:
        raise SpecError(str(exc)) from None
    lrs = axis_values(spec.grid.lr, "grid.lr")
    sizes = axis_values(spec.grid.batch_size, "grid.batch_size")
    for i, lr in enumerate(lrs):
        if not (lr > 0 and math.isfinite(lr)):
            raise SpecError(f"grid.lr[{i}]: must be > 0 (got {lr})")
    for i, s in enumerate(sizes):
        if s < 1:
            raise SpecError(f"grid.batch_size[{i}]: must be >= 1 (got {s})")
        if s > n_train:
            raise SpecError(f"grid.batch_size[{i}]: {s} is larger than the training set ({n_train} examples)")
    for i, seed in enumerate(spec.grid.seed):
        if seed < 0:
            raise SpecError(f"grid.seed[{i}]: must be >= 0 (got {seed})")
    for key, values in (("lr", lrs), ("batch_size", sizes), ("seed", spec.grid.seed)):
        if len(set(values)) != len(values):
            raise SpecError(f"grid.{key}: repeated values {list(values)}")


def axis_values(axis: tuple | AxisRange, path: str) -> tuple:
    """The explicit values of one grid axis (a list, or a ``{min, max, num, scale}`` range)."""
    if not isinstance(axis, AxisRange):
        return tuple(axis)
    if axis.num < 1:
        raise SpecError(f"{path}.num: must be >= 1 (got {axis.num})")
    if axis.scale not in ("log", "linear"):
        raise SpecError(f"{path}.scale: must be log or linear (got {axis.scale!r})")
    if axis.min > axis.max:
        raise SpecError(f"{path}: min ({axis.min}) is larger than max ({axis.max})")
    if axis.scale == "log":
        if axis.min <= 0:
            raise SpecError(f"{path}.min: must be > 0 for a log scale (got {axis.min})")
        values = np.geomspace(axis.min, axis.max, axis.num)
    else:
        values = np.linspace(axis.min, axis.max, axis.num)
    if path.endswith("batch_size"):
        ints = [int(round(v)) for v in values]
        return tuple(dict.fromkeys(ints))  # rounding can merge neighbours: keep each size once
    return tuple(float(f"{v:.6g}") for v in values)  # 6 significant digits: readable, stable ids


# ---------------------------------------------------------------------------------------------
# Expansion


def expand_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trial points of a validated spec, in a stable order: lr, then batch size, then seed.

    Each point carries what varies between trials; everything else is shared by the sweep.
    With ``train.replicas`` K > 1 (MLP only) a point holds up to K seeds (``seeds``) trained
    together in one Tune trial; see ``sweeps.replica_points``.
    """
    lrs = axis_values(spec.grid.lr, "grid.lr")
    sizes = axis_values(spec.grid.batch_size, "grid.batch_size")
    points = [
        {"lr": lr, "batch_size": s, "seed": seed}
        for lr, s, seed in itertools.product(lrs, sizes, spec.grid.seed)
    ]
    from sweeps.replica_points import group_seeds

    return group_seeds(points, spec.train.replicas, spec.model.name)


def to_param_space(spec: SweepSpec, code_version: str) -> dict[str, Any]:
    """The Ray Tune ``param_space``: one ``grid_search`` over the explicit points.

    A single grid over whole points (rather than one per axis) lets later axes pair values
    (rescaling rules, beta families) without Tune crossing them.
    """
    from ray import tune

    shared = spec.to_dict()
    shared.pop("grid")
    shared.pop("description")
    return {
        "point": tune.grid_search(expand_points(spec)),
        "sweep": shared.pop("name"),
        "code_version": code_version,
        **shared,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
