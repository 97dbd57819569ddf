"""Data sets as whole in-memory tensors (no DataLoaders, no per-item transforms: inputs are
scaled and standardized once, at load time): the registry of built-ins (``DATASETS``) and the
entry points that dispatch on ``dataset.name``. Digits and the synthetic set are here; mnist1d,
the torchvision sets and a user's ``package.module:factory`` have modules of their own.

``python -m lrbs.trainables.data download NAME --data-dir DIR`` fetches a torchvision set ahead of
time, for sweeps that run on machines without internet.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from lrbs.trainables import mnist1d, torchvision_data, user_data
from lrbs.trainables.config import DatasetConfig
from lrbs.trainables.plugins import is_import_path
from lrbs.trainables.tensor_data import (
    N_CLASSES,
    DataError,
    DatasetEntry,
    TensorData,
    carve,
    check_n_train,
    data_root,
    split_sizes,
    standardize,
    val_fraction_of,
)

_DIGITS_SIZE = 1797  # examples in scikit-learn's digits: train_set_size without loading them
_DIGITS_DEFAULT_VAL_FRACTION = 0.2  # digits has no test split of its own

_SYNTH_DIM = 32
_SYNTH_CLUSTERS = 4  # Gaussian clusters per class
_SYNTH_CENTER_SCALE = 0.8  # std of the cluster centres (the within-cluster std is 1)
_SYNTH_DEFAULT_N_TRAIN = 2000
_SYNTH_DEFAULT_VAL_FRACTION = 0.2
_SYNTH_LABEL_NOISE = 0.1  # share of labels replaced by a uniformly random class
_SYNTH_BLOCK = 1024  # examples per independently seeded block (see _synthetic_examples)


def _synthetic_sizes(cfg: DatasetConfig) -> tuple[int, int]:
    """``(n_train, n_val)`` for the synthetic set: n_train is generated, val is a share of the total."""
    check_n_train(cfg)
    vf = val_fraction_of(cfg, _SYNTH_DEFAULT_VAL_FRACTION)
    assert vf is not None  # a default is given
    n_train = cfg.n_train if cfg.n_train is not None else _SYNTH_DEFAULT_N_TRAIN
    # total = n_train / (1 - vf), so n_val = total - n_train.
    n_val = int(round(n_train * vf / (1.0 - vf)))
    if n_val < 1:
        raise DataError(f"dataset.val_fraction: {vf} of {n_train} examples leaves an empty validation split")
    return n_train, n_val


def train_set_size(cfg: DatasetConfig) -> int:
    """Size of the training split that trials will see, without loading the data where possible.

    Uses the published sizes, except where the torchvision files are present under
    ``cfg.data_dir`` (then their headers decide, so reduced copies are counted right); a user's
    factory is called (once per process). Raises DataError for an unknown name or an
    ``n_train`` larger than what is available.
    """
    return dataset_entry(cfg.name).train_size(cfg)


def _digits_size(cfg: DatasetConfig) -> int:
    return split_sizes(cfg, _DIGITS_SIZE, val_fraction_of(cfg, _DIGITS_DEFAULT_VAL_FRACTION))[1]


def load_dataset(cfg: DatasetConfig, device: torch.device | str = "cpu") -> TensorData:
    """Load ``cfg.name`` as tensors on ``device``, split as ``cfg`` says.

    The split depends only on ``cfg`` (notably ``split_seed``), never on global RNG state.
    """
    return dataset_entry(cfg.name).load(cfg).to(device)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (offline), read from its CSV without importing scikit-learn:
    the import costs ~1.5 s, paid by every trial worker that loads digits."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        # A layout we do not know: the public loader (imported here: it costs ~1.5 s).
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


def _load_digits(cfg: DatasetConfig) -> TensorData:
    vf = val_fraction_of(cfg, _DIGITS_DEFAULT_VAL_FRACTION)
    data, target = _digits_arrays()
    x = torch.from_numpy(data.copy())
    y = torch.from_numpy(target.copy())
    x_train, y_train, x_val, y_val = carve(cfg, x, y, vf)
    assert x_val is not None and y_val is not None  # vf is never None for digits
    x_train, x_val = standardize(x_train, x_val)  # index copies: editing them in place is safe
    return TensorData(x_train, y_train, x_val, y_val, N_CLASSES)


# --------------------------------------------------------------------------------------------
# Synthetic data: Gaussian class clusters with label noise.
#
# A fixed random "teacher" (drawn from split_seed) places _SYNTH_CLUSTERS centres per class in 32
# dimensions, N(0, _SYNTH_CENTER_SCALE^2 I); an example picks a centre uniformly, adds N(0, I)
# noise and takes the centre's class, and 10% of labels (train and validation alike) are then
# replaced by a uniformly random class. Neighbouring clusters of different classes overlap, and
# the noisy labels can only be memorized, not predicted: a 4-layer MLP reaches ~100% train but
# ~75% validation accuracy at n_train=2000 (the noise alone caps validation near 91%), so there is
# a clear generalization gap for learning rate and batch size to move. Tuned by hand: a random
# ReLU-net teacher made validation ~50% (mostly unlearnable), wider-spread centres ~90% (no gap).
#
# Examples come in blocks of _SYNTH_BLOCK, each from its own numpy generator seeded by
# (split_seed, stream, block), so example i is the same whatever the total size: the training set
# for n_train=1000 is the head of the one for n_train=2000. Everything is generated on the CPU,
# independent of the device and of torch's global RNG.

_STREAM_TEACHER, _STREAM_TRAIN, _STREAM_VAL = 0, 1, 2


def _rng(seed: int, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, block])


def _synthetic_centres(seed: int) -> np.ndarray:
    """(n_classes * clusters, dim) cluster centres; centre k belongs to class k % n_classes."""
    g = _rng(seed, _STREAM_TEACHER)
    return _SYNTH_CENTER_SCALE * g.standard_normal((N_CLASSES * _SYNTH_CLUSTERS, _SYNTH_DIM))


def _synthetic_examples(seed: int, stream: int, n: int, centres: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of one stream: float32 inputs (n, dim) and int64 labels (n,)."""
    xs, ys = [], []
    for block in range(math.ceil(n / _SYNTH_BLOCK)):
        g = _rng(seed, stream, block)
        cluster = g.integers(0, len(centres), _SYNTH_BLOCK)
        x = centres[cluster] + g.standard_normal((_SYNTH_BLOCK, _SYNTH_DIM))
        noisy = g.random(_SYNTH_BLOCK) < _SYNTH_LABEL_NOISE
        y = np.where(noisy, g.integers(0, N_CLASSES, _SYNTH_BLOCK), cluster % N_CLASSES)
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs)[:n].astype(np.float32)
    y = np.concatenate(ys)[:n].astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _load_synthetic(cfg: DatasetConfig) -> TensorData:
    n_train, n_val = _synthetic_sizes(cfg)
    centres = _synthetic_centres(cfg.split_seed)
    x_train, y_train = _synthetic_examples(cfg.split_seed, _STREAM_TRAIN, n_train, centres)
    x_val, y_val = _synthetic_examples(cfg.split_seed, _STREAM_VAL, n_val, centres)
    x_train, x_val = standardize(x_train, x_val)
    return TensorData(x_train, y_train, x_val, y_val, N_CLASSES)


# The one registry of built-in data sets: spec validation, the trainable, the cost estimate and
# the pre-flight check all look names up here. Adding a set is one entry (docs/extending.md).
DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(_load_digits, _digits_size, lambda cfg: (64,), lambda cfg: N_CLASSES),
    "synthetic": DatasetEntry(
        _load_synthetic, lambda cfg: _synthetic_sizes(cfg)[0], lambda cfg: (_SYNTH_DIM,), lambda cfg: N_CLASSES
    ),
    **torchvision_data.ENTRIES,
    "mnist1d": mnist1d.ENTRY,
}
DATASET_NAMES = tuple(DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry for ``dataset.name``; a ``package.module:factory`` gets ``user_data``'s."""
    if name not in DATASETS and not is_import_path(name):
        raise DataError(
            f"dataset.name: unknown data set {name!r} (built-in: {', '.join(DATASET_NAMES)}; "
            f"or your own as package.module:factory)"
        )
    return DATASETS[name] if name in DATASETS else user_data.ENTRY


def check_data_dir(cfg: DatasetConfig, files: bool = True) -> None:
    """``dataset.data_dir`` of a set read from or cached in it (``on_disk``: mnist1d and the
    torchvision sets) is a folder, or a path where one can be made (not a file, nor under one).
    With ``files`` (the trials run on this machine), a torchvision set with ``download: false``
    must have its files there already. A one-line DataError naming ``dataset.data_dir``; the other
    sets never read data_dir."""
    entry = DATASETS.get(cfg.name)
    if entry is None or not entry.on_disk:
        return
    root = data_root(cfg)
    existing = root  # the nearest part of the path that exists decides
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = f"{root} is" if existing == root else f"{root} lies under {existing}, which is"
        raise DataError(f"dataset.data_dir: {where} a file, not a folder")
    if files and not cfg.download and entry.files is not None:
        if not all(os.path.isfile(f) for f in entry.files(root)):
            raise DataError(
                f"dataset.data_dir: dataset {cfg.name} not found under {root} and dataset.download is "
                f"false; on a machine with internet: python -m lrbs.trainables.data download {cfg.name} "
                f"--data-dir {root}, then copy the folder here"
            )


# --------------------------------------------------------------------------------------------
# CLI: pre-download for offline machines.


def download(name: str, data_dir: str) -> str:
    """Fetch ``name`` into ``data_dir`` (no-op for the bundled/generated sets); returns a status line."""
    fetch = dataset_entry(name).fetch
    if name == "digits":
        return "digits ships with scikit-learn; nothing to download"
    if fetch is None:
        return f"{name} is generated or loaded on the fly; nothing to download"
    return fetch(os.path.abspath(os.path.expanduser(data_dir)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrbs.trainables.data", description="Pre-download data")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("download", help="fetch a torchvision data set ahead of time")
    p.add_argument("name", help=f"one of: {', '.join(DATASET_NAMES)}")
    p.add_argument("--data-dir", default=DatasetConfig().data_dir, help="root folder (dataset.data_dir)")
    args = parser.parse_args(argv)
    try:
        print(download(args.name, args.data_dir))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
