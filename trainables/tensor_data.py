"""What every data set module shares: ``TensorData``, ``DataError``, ``DatasetEntry`` and the split
arithmetic, which a set's ``train_size`` and its loader both use, so the two always agree.

Every trial of a sweep trains on the same split: the validation carve-out and the ``n_train``
subset are seeded by ``DatasetConfig.split_seed`` only, never by the trial's own seed, so trials
differ only in learning rate, batch size and initialization.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lrbs.trainables.config import DatasetConfig

N_CLASSES = 10  # every built-in set is 10-way classification


class DataError(Exception):
    """One-line, user-facing error (the CLI prints it and exits 2)."""


@dataclass
class TensorData:
    """A train/validation split held as tensors.

    Inputs are float32, ``(N, D)`` for tabular sets or ``(N, C, H, W)`` for images, standardized
    per feature/channel with statistics of the training split; labels are int64 class indices.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> TensorData:
        """A copy with all tensors on ``device`` (no copy for tensors already there)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
        )


@dataclass(frozen=True)
class NoOptions:
    """``dataset.options`` of a set that has none (any key is refused by name)."""


@dataclass(frozen=True)
class DatasetEntry:
    """A data set: how to load it, how big its training split is, and what one example looks like.

    ``options`` is the dataclass of ``dataset.options``; ``on_disk`` sets are read from (or
    generated into) ``data_dir``, so ``lrbs run`` loads them once on the driver before any trial
    starts (a missing set is one line, and parallel trials never race to fetch it); ``fetch``
    puts it there ahead of time (``python -m lrbs.trainables.data download``); ``files(root)``
    lists the files it reads, which must be there when ``dataset.download`` is false.
    """

    load: Callable[[DatasetConfig], TensorData]
    train_size: Callable[[DatasetConfig], int]
    input_shape: Callable[[DatasetConfig], tuple[int, ...]]
    n_classes: Callable[[DatasetConfig], int]
    options: type = NoOptions
    on_disk: bool = False
    fetch: Callable[[str], str] | None = None
    files: Callable[[str], list[str]] | None = None


def data_root(cfg: DatasetConfig) -> str:
    """``dataset.data_dir`` as an absolute path."""
    return os.path.abspath(os.path.expanduser(cfg.data_dir))


def val_fraction_of(cfg: DatasetConfig, default: float | None) -> float | None:
    """``dataset.val_fraction``, or the set's ``default`` when unset; checked to lie in (0, 1)."""
    vf = cfg.val_fraction if cfg.val_fraction is not None else default
    if vf is not None and not (isinstance(vf, (int, float)) and 0.0 < vf < 1.0):
        raise DataError(f"dataset.val_fraction: must be in (0, 1) or null, got {cfg.val_fraction!r}")
    return vf


def check_n_train(cfg: DatasetConfig) -> None:
    n = cfg.n_train
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"dataset.n_train: must be a positive integer or null, got {n!r}")


def split_sizes(cfg: DatasetConfig, n_pool: int, val_fraction: float | None) -> tuple[int, int]:
    """``(n_val, n_train)`` carved from a training pool of ``n_pool`` examples.

    ``n_val`` is 0 when validation comes from the set's own test split.
    """
    check_n_train(cfg)
    n_val = int(round(val_fraction * n_pool)) if val_fraction is not None else 0
    if val_fraction is not None and not 1 <= n_val < n_pool:
        raise DataError(
            f"dataset.val_fraction: {val_fraction} of {n_pool} examples leaves an empty "
            f"{'validation' if n_val < 1 else 'training'} split"
        )
    available = n_pool - n_val
    if cfg.n_train is None:
        return n_val, available
    if cfg.n_train > available:
        where = f" after holding out {n_val} for validation" if n_val else ""
        raise DataError(
            f"dataset.n_train: {cfg.n_train} exceeds the {available} training examples of {cfg.name}{where}"
        )
    return n_val, cfg.n_train


def carve(
    cfg: DatasetConfig, x: torch.Tensor, y: torch.Tensor, val_fraction: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Split a training pool into (x_train, y_train, x_val, y_val); val is None without a carve-out.

    One seeded permutation serves both cuts: its head is validation and the next ``n_train`` are
    training. So the validation set does not move when ``n_train`` changes, and with the same seed a
    smaller subset is contained in a larger one.
    """
    n_val, n_train = split_sizes(cfg, len(x), val_fraction)
    if n_val == 0 and n_train == len(x):
        return x, y, None, None  # nothing to cut: keep the pool (and its order) as is
    # A private CPU generator: deterministic for a given split_seed and immune to the trial's seeding.
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(cfg.split_seed)))
    # Sorted indices keep the file order within each part (order is irrelevant to training,
    # which shuffles, but makes the parts easy to compare with the source files).
    train_idx = perm[n_val : n_val + n_train].sort().values
    x_train, y_train = x[train_idx], y[train_idx]
    if n_val == 0:
        return x_train, y_train, None, None
    val_idx = perm[:n_val].sort().values
    return x_train, y_train, x[val_idx], y[val_idx]


def standardize(x_train: torch.Tensor, x_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean / unit std per feature (N, D) or per channel (N, C, H, W), with train statistics.

    Works in place on float32 tensors (the image sets are large); constant features (e.g. the
    blank border pixels of digits) are left centred but unscaled instead of dividing by zero.
    """
    dims = (0,) if x_train.dim() == 2 else (0, *range(2, x_train.dim()))
    # float32 reductions (cascade-summed by torch) are accurate to ~1e-6 here; a float64 copy
    # of CIFAR-10 would cost 1.2 GB.
    std, mean = torch.std_mean(x_train, dim=dims, correction=0, keepdim=True)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return x_train.sub_(mean).div_(std), x_val.sub_(mean).div_(std)
