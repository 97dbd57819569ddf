"""Configuration dataclasses shared by the sweep layer and the trainables.

The sweep spec (``sweeps/spec.py``) validates YAML into these; a Ray Tune trial receives them
as plain dicts (``dataclasses.asdict``) and rebuilds them with ``from_dict``, so the trainables
never import the sweep layer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def from_dict(cls, data: dict[str, Any] | None):
    """Rebuild a flat config dataclass from ``dataclasses.asdict`` output (unknown keys dropped)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "digits"               # digits | synthetic | fashion_mnist | cifar10
    n_train: int | None = None         # seeded subset of the training split (None: all of it)
    val_fraction: float | None = None  # carve validation out of train; None: the set's own test split
    data_dir: str = "~/.cache/lrbs/data"
    split_seed: int = 0                # fixes subset and split for every trial of a sweep
    download: bool = True              # torchvision sets only; offline failures say how to pre-download


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"                  # mlp (later: vgg11, resnet56)
    depth: int = 4                     # number of Linear layers (depth - 1 hidden layers)
    width: int = 256                   # hidden units per layer
    batch_norm: bool = True


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    momentum: float = 0.0
    weight_decay: float = 0.0
    # A trial is 'diverged' when its epoch's train loss is non-finite or exceeds
    # divergence_factor * log(n_classes) (the loss of a uniform guess, in nats per example).
    divergence_factor: float = 10.0
    eval_batch_size: int = 2048        # examples per forward pass in evaluation (memory only)
    # Seeds trained together in one trial (trainables/replicas.py): a Tune trial holds up to this
    # many seeds of one (lr, S) point, and every seed still gets its own trial id and rows.
    replicas: int = 1

