"""MNIST-1D (Greydanus 2020): 1-D signals of 40 points made from 10 digit templates, generated offline.

The ``mnist1d`` package (PyPI, Apache-2.0) builds the set from hard-coded templates with
random padding, translation, shear and correlated noise; its download helper needs the internet,
its generator (``mnist1d.data.make_dataset``) does not. With the package's defaults (5,000
samples, 80% train, seed 42) a 4-layer batch-norm MLP overfits within tens of epochs and its
validation accuracy moves with eta/S, which is why the quickstart uses it (README).

``dataset.options``: ``n_samples`` (total examples before the split; the generator makes
``n_samples // 10`` per class) and ``seed`` (the generator's). ``dataset.val_fraction`` (default
0.2) is the generator's held-out share, and ``dataset.n_train`` a seeded subset of the rest.
A generated set is cached under ``<data_dir>/mnist1d/`` in a file named by every option, written
atomically (parallel trials may generate the same file), so later loads read ~1 MB per 10,000
examples instead of generating again (seconds per 10,000 examples).
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch

from lrbs.trainables.config import DatasetConfig
from lrbs.trainables.tensor_data import (
    N_CLASSES,
    DataError,
    DatasetEntry,
    TensorData,
    carve,
    data_root,
    split_sizes,
    standardize,
    val_fraction_of,
)

LENGTH = 40  # points per signal (the generator's final_seq_length)
DEFAULT_VAL_FRACTION = 0.2  # the generator's default train_split is 0.8
MAX_SAMPLES = 1_000_000  # ~160 MB float32 and minutes to generate: beyond this, a typo


@dataclass(frozen=True)
class Mnist1dOptions:
    n_samples: int = 5000  # the package's default (4,000 train + 1,000 validation)
    seed: int = 42  # the generator's seed (the package's default)

    def __post_init__(self) -> None:
        if not N_CLASSES * 2 <= self.n_samples <= MAX_SAMPLES:
            raise ValueError(f"n_samples: must be in {N_CLASSES * 2}..{MAX_SAMPLES} (got {self.n_samples})")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed: must be in 0..2**32-1 (got {self.seed})")


def _sizes(cfg: DatasetConfig) -> tuple[Mnist1dOptions, float, int, int]:
    """(options, train_split, total, pool): the generator's arithmetic, exactly."""
    opts = Mnist1dOptions(**cfg.options)
    vf = val_fraction_of(cfg, DEFAULT_VAL_FRACTION)
    assert vf is not None  # a default is given
    train_split = 1.0 - vf
    total = N_CLASSES * (opts.n_samples // N_CLASSES)
    pool = int(total * train_split)  # make_dataset's split index
    if not 1 <= pool < total:
        raise DataError(
            f"dataset.val_fraction: {vf} of {total} examples leaves an empty "
            f"{'training' if pool < 1 else 'validation'} split"
        )
    return opts, train_split, total, pool


def train_size(cfg: DatasetConfig) -> int:
    _, _, _, pool = _sizes(cfg)
    return split_sizes(cfg, pool, None)[1]


def cache_path(cfg: DatasetConfig) -> str:
    opts, train_split, _, _ = _sizes(cfg)
    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        version = "none"
    name = f"mnist1d-n{opts.n_samples}-seed{opts.seed}-train{train_split!r}-pkg{version}.npz"
    return os.path.join(data_root(cfg), "mnist1d", name)


def _generate(n_samples: int, seed: int, train_split: float) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset  # ~1.5 s; only generating needs it
    except ImportError as exc:
        raise DataError(f"dataset.name: mnist1d needs the mnist1d package (pip install mnist1d): {exc}") from None
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = n_samples, seed, train_split
    # make_dataset seeds numpy's and Python's global RNGs: keep the caller's streams untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x_train": d["x"].astype(np.float32),
        "y_train": d["y"].astype(np.int64),
        "x_val": d["x_test"].astype(np.float32),
        "y_val": d["y_test"].astype(np.int64),
    }


def arrays(cfg: DatasetConfig) -> dict[str, np.ndarray]:
    """The generated split, from the cache when it is there (then in well under a second)."""
    path = cache_path(cfg)
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("x_train", "y_train", "x_val", "y_val")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent, truncated or a foreign file: generate and replace it
    opts, train_split, _, _ = _sizes(cfg)
    out = _generate(opts.n_samples, opts.seed, train_split)
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **out)  # type: ignore[arg-type]  # numpy's stub takes **arrays for allow_pickle
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none
    except OSError:  # a read-only or full data_dir: the set is still usable, just not cached
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(cfg: DatasetConfig) -> TensorData:
    a = arrays(cfg)
    x, y = torch.from_numpy(a["x_train"]), torch.from_numpy(a["y_train"])
    x_train, y_train, _, _ = carve(cfg, x, y, None)  # n_train: a seeded subset of the training part
    x_train, x_val = standardize(x_train.clone(), torch.from_numpy(a["x_val"]).clone())
    return TensorData(x_train, y_train.clone(), x_val, torch.from_numpy(a["y_val"]), N_CLASSES)


def fetch(root: str) -> str:
    path = cache_path(DatasetConfig(name="mnist1d", data_dir=root))
    arrays(DatasetConfig(name="mnist1d", data_dir=root))
    return f"mnist1d (default options) is generated and cached at {path}"


ENTRY = DatasetEntry(
    load, train_size, lambda cfg: (LENGTH,), lambda cfg: N_CLASSES, Mnist1dOptions, on_disk=True, fetch=fetch
)
