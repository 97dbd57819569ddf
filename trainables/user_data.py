"""A user's data set: ``dataset: {name: "package.module:factory", options: {...}}``.

``factory(**options)`` returns a mapping with ``x_train, y_train, x_val, y_val`` (numpy arrays
or tensors; labels integer class indices) and optionally ``n_classes`` (default: the largest
label + 1). Inputs are used as given (float32, any per-example shape; lrbs does not
standardize them), ``dataset.n_train`` takes a seeded subset of the training split as for the
built-ins, and ``dataset.val_fraction`` does not apply (the factory returns its own validation
split). Every check below is one line naming ``dataset.name`` or ``dataset.options``, so a bad
factory fails ``lrbs validate`` before any trial starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from lrbs.trainables.config import DatasetConfig, options_key
from lrbs.trainables.plugins import PluginError, call_error, load_object
from lrbs.trainables.tensor_data import DataError, DatasetEntry, TensorData, carve, split_sizes

KEYS = ("x_train", "y_train", "x_val", "y_val")


def check_signature(factory: Any, options: dict[str, Any], path: str) -> None:
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise PluginError(f"dataset.options: {path} does not take these options ({exc})") from None
    except ValueError:  # no signature to inspect (a builtin): let the call decide
        pass


_CACHE: dict[tuple[str, str], TensorData] = {}  # the last set only: reused workers skip the factory


def _raw(name: str, options: dict[str, Any]) -> TensorData:
    key = (name, options_key(options))
    if key in _CACHE:
        return _CACHE[key]
    factory = load_object(name, "dataset.name")
    check_signature(factory, options, name)
    try:
        out = factory(**options)
    except BaseException as exc:  # also sys.exit() / KeyboardInterrupt in user code (trainables/plugins.py)
        raise call_error(name, "dataset.name", exc) from None
    data = _tensors(name, out)
    _CACHE.clear()
    _CACHE[key] = data
    return data


def _tensors(name: str, out: Any) -> TensorData:
    field = "dataset.name"
    if not isinstance(out, Mapping):
        raise DataError(f"{field}: {name} returned a {type(out).__name__}, expected a mapping with {', '.join(KEYS)}")
    missing = [k for k in KEYS if k not in out]
    if missing:
        raise DataError(f"{field}: {name} returned no {', '.join(missing)} (expected {', '.join(KEYS)})")
    t: dict[str, torch.Tensor] = {}
    for k in KEYS:
        try:
            t[k] = torch.as_tensor(np.asarray(out[k]) if not isinstance(out[k], torch.Tensor) else out[k]).cpu()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{field}: {name}'s {k} is not an array ({type(exc).__name__})") from None
    for split in ("train", "val"):
        x, y = t[f"x_{split}"], t[f"y_{split}"]
        if x.dim() < 2 or len(x) == 0:
            raise DataError(f"{field}: {name}'s x_{split} must have shape (N, ...) with N >= 1 (got {tuple(x.shape)})")
        if x[0].numel() == 0:
            raise DataError(
                f"{field}: {name}'s x_{split} has no features: each example has shape "
                f"{tuple(x.shape[1:])} (got {tuple(x.shape)})"
            )
        if y.dim() != 1:
            raise DataError(
                f"{field}: {name}'s y_{split} must be one label per example, shape (N,) (got {tuple(y.shape)})"
            )
        if len(x) != len(y):
            raise DataError(f"{field}: {name}'s x_{split} and y_{split} differ in length ({len(x)} vs {len(y)})")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise DataError(f"{field}: {name}'s y_{split} must hold integer class labels (got {y.dtype})")
        if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise DataError(f"{field}: {name}'s x_{split} must be numeric (got {x.dtype})")
    if t["x_train"].shape[1:] != t["x_val"].shape[1:]:
        raise DataError(
            f"{field}: {name}'s x_train and x_val differ in example shape "
            f"({tuple(t['x_train'].shape[1:])} vs {tuple(t['x_val'].shape[1:])})"
        )
    x_train, x_val = t["x_train"].to(torch.float32), t["x_val"].to(torch.float32)
    for split, x in (("train", x_train), ("val", x_val)):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DataError(f"{field}: {name}'s x_{split} has {bad} non-finite values (NaN or inf)")
    y_train, y_val = t["y_train"].to(torch.int64), t["y_val"].to(torch.int64)
    top = int(max(y_train.max(), y_val.max()))
    n_classes = out.get("n_classes", top + 1)
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise DataError(f"{field}: {name}'s n_classes must be an integer >= 2 (got {n_classes!r})")
    n_classes = int(n_classes)
    for split, y in (("train", y_train), ("val", y_val)):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise DataError(f"{field}: {name}'s y_{split} has labels outside [0, {n_classes}) (min {lo}, max {hi})")
    return TensorData(x_train.contiguous(), y_train, x_val.contiguous(), y_val, n_classes)


def raw(cfg: DatasetConfig) -> TensorData:
    """The factory's whole split, checked (the factory runs once per process for these options)."""
    if cfg.val_fraction is not None:
        raise DataError(
            f"dataset.val_fraction: {cfg.name} returns its own validation split; leave "
            f"val_fraction unset (got {cfg.val_fraction})"
        )
    return _raw(cfg.name, cfg.options)


def load(cfg: DatasetConfig) -> TensorData:
    data = raw(cfg)
    x_train, y_train, _, _ = carve(cfg, data.x_train, data.y_train, None)
    # Copies: the cached split must not change when a trial edits its tensors in place.
    return TensorData(x_train.clone(), y_train.clone(), data.x_val.clone(), data.y_val.clone(), data.n_classes)


def train_size(cfg: DatasetConfig) -> int:
    return split_sizes(cfg, len(raw(cfg).x_train), None)[1]


# A factory's options are its keyword arguments (check_signature), so the entry has no options dataclass.
ENTRY = DatasetEntry(load, train_size, lambda cfg: tuple(raw(cfg).input_shape), lambda cfg: raw(cfg).n_classes)
