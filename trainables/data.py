"""Data sets as whole in-memory tensors.

Every trial of a sweep trains on the same split: the validation carve-out and the ``n_train``
subset are seeded by ``DatasetConfig.split_seed`` only, never by the trial's own seed, so trials
differ only in learning rate, batch size and initialization.

The sets are small enough to live on the device as single tensors, so there are no DataLoaders
and no per-item transforms: inputs are scaled and standardized once, here.

``python -m lrbs.trainables.data download NAME --data-dir DIR`` fetches a torchvision set ahead of
time, for sweeps that run on machines without internet.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lrbs.trainables.config import DatasetConfig
from lrbs.trainables.plugins import is_import_path


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


N_CLASSES = 10  # every built-in set is 10-way classification

# Published split sizes, used by train_set_size when the files are not on this machine (the
# sweep driver need not hold the data that the trial workers read).
_DIGITS_SIZE = 1797
_DIGITS_DEFAULT_VAL_FRACTION = 0.2  # digits has no test split of its own
_TV_SIZES = {"fashion_mnist": (60000, 10000), "cifar10": (50000, 10000)}

_SYNTH_DIM = 32
_SYNTH_CLUSTERS = 4  # Gaussian clusters per class
_SYNTH_CENTER_SCALE = 0.8  # std of the cluster centres (the within-cluster std is 1)
_SYNTH_DEFAULT_N_TRAIN = 2000
_SYNTH_DEFAULT_VAL_FRACTION = 0.2
_SYNTH_LABEL_NOISE = 0.1  # share of labels replaced by a uniformly random class
_SYNTH_BLOCK = 1024  # examples per independently seeded block (see _synthetic_examples)

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch",)
_FMNIST_RAW = os.path.join("FashionMNIST", "raw")
_FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# --------------------------------------------------------------------------------------------
# Split arithmetic, shared by train_set_size and load_dataset so the two always agree.


def _check_name(name: str) -> None:
    if name not in DATASETS and not is_import_path(name):
        raise DataError(
            f"dataset.name: unknown data set {name!r} (built-in: {', '.join(DATASET_NAMES)}; "
            f"or your own as package.module:factory)"
        )


def _val_fraction(cfg: DatasetConfig, default: float | None) -> float | None:
    vf = cfg.val_fraction if cfg.val_fraction is not None else default
    if vf is not None and not (isinstance(vf, (int, float)) and 0.0 < vf < 1.0):
        raise DataError(f"dataset.val_fraction: must be in (0, 1) or null, got {cfg.val_fraction!r}")
    return vf


def _check_n_train(cfg: DatasetConfig) -> None:
    n = cfg.n_train
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"dataset.n_train: must be a positive integer or null, got {n!r}")


def _split_sizes(cfg: DatasetConfig, n_pool: int, val_fraction: float | None) -> tuple[int, int]:
    """``(n_val, n_train)`` carved from a training pool of ``n_pool`` examples.

    ``n_val`` is 0 when validation comes from the set's own test split.
    """
    _check_n_train(cfg)
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


def _synthetic_sizes(cfg: DatasetConfig) -> tuple[int, int]:
    """``(n_train, n_val)`` for the synthetic set: n_train is generated, val is a share of the total."""
    _check_n_train(cfg)
    vf = _val_fraction(cfg, _SYNTH_DEFAULT_VAL_FRACTION)
    n_train = cfg.n_train if cfg.n_train is not None else _SYNTH_DEFAULT_N_TRAIN
    # total = n_train / (1 - vf), so n_val = total - n_train.
    n_val = int(round(n_train * vf / (1.0 - vf)))
    if n_val < 1:
        raise DataError(f"dataset.val_fraction: {vf} of {n_train} examples leaves an empty validation split")
    return n_train, n_val


def _root(cfg: DatasetConfig) -> str:
    return os.path.abspath(os.path.expanduser(cfg.data_dir))


def train_set_size(cfg: DatasetConfig) -> int:
    """Size of the training split that trials will see, without loading the data where possible.

    Uses the published sizes, except where the torchvision files are present under
    ``cfg.data_dir`` (then their headers decide, so reduced copies are counted right); a user's
    factory is called (once per process). Raises DataError for an unknown name or an
    ``n_train`` larger than what is available.
    """
    return dataset_entry(cfg.name).train_size(cfg)


def _digits_size(cfg: DatasetConfig) -> int:
    return _split_sizes(cfg, _DIGITS_SIZE, _val_fraction(cfg, _DIGITS_DEFAULT_VAL_FRACTION))[1]


def _tv_size(cfg: DatasetConfig) -> int:
    return _split_sizes(cfg, _tv_train_pool_size(cfg.name, _root(cfg)), _val_fraction(cfg, None))[1]


def _tv_train_pool_size(name: str, root: str) -> int:
    """Number of examples in the training files on disk, or the published size if absent."""
    if name == "fashion_mnist":
        path = os.path.join(root, _FMNIST_RAW, _FMNIST_FILES[True][1])
        if os.path.isfile(path):
            # IDX label file: 4-byte magic then the big-endian count; no need to read the rest.
            with open(path, "rb") as f:
                header = f.read(8)
            if len(header) == 8 and int.from_bytes(header[:4], "big") == 2049:
                return int.from_bytes(header[4:8], "big")
    else:
        paths = [os.path.join(root, _CIFAR_FOLDER, f) for f in _CIFAR_TRAIN_FILES]
        if all(os.path.isfile(p) for p in paths):
            try:
                return sum(_cifar_batch_len(p, os.path.getmtime(p), os.path.getsize(p)) for p in paths)
            except Exception:  # unreadable files: load_dataset will report them properly
                pass
    return _TV_SIZES[name][0]


@functools.lru_cache(maxsize=16)
def _cifar_batch_len(path: str, mtime: float, size: int) -> int:
    """Examples in one CIFAR pickle (cached by path, mtime and size; the pickle has no header)."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return len(entry["labels"])


# --------------------------------------------------------------------------------------------
# Loading.


def load_dataset(cfg: DatasetConfig, device: torch.device | str = "cpu") -> TensorData:
    """Load ``cfg.name`` as tensors on ``device``, split as ``cfg`` says.

    The split depends only on ``cfg`` (notably ``split_seed``), never on global RNG state.
    """
    return dataset_entry(cfg.name).load(cfg).to(device)


def _split_generator(cfg: DatasetConfig) -> torch.Generator:
    # A private CPU generator: deterministic for a given split_seed and immune to the trial's seeding.
    return torch.Generator().manual_seed(int(cfg.split_seed))


def _carve(
    cfg: DatasetConfig, x: torch.Tensor, y: torch.Tensor, val_fraction: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Split a training pool into (x_train, y_train, x_val, y_val); val is None without a carve-out.

    One seeded permutation serves both cuts: its head is validation and the next ``n_train`` are
    training. So the validation set does not move when ``n_train`` changes, and with the same seed a
    smaller subset is contained in a larger one.
    """
    n_val, n_train = _split_sizes(cfg, len(x), val_fraction)
    if n_val == 0 and n_train == len(x):
        return x, y, None, None  # nothing to cut: keep the pool (and its order) as is
    perm = torch.randperm(len(x), generator=_split_generator(cfg))
    # Sorted indices keep the file order within each part (order is irrelevant to training,
    # which shuffles, but makes the parts easy to compare with the source files).
    train_idx = perm[n_val : n_val + n_train].sort().values
    x_train, y_train = x[train_idx], y[train_idx]
    if n_val == 0:
        return x_train, y_train, None, None
    val_idx = perm[:n_val].sort().values
    return x_train, y_train, x[val_idx], y[val_idx]


def _standardize(x_train: torch.Tensor, x_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (offline), read from its CSV without importing scikit-learn:
    the import costs ~1.5 s, paid by every trial worker that loads digits."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits  # a layout we do not know: the public loader

        bunch = load_digits()
        return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)


def _load_digits(cfg: DatasetConfig) -> TensorData:
    vf = _val_fraction(cfg, _DIGITS_DEFAULT_VAL_FRACTION)
    data, target = _digits_arrays()
    x = torch.from_numpy(data.copy())
    y = torch.from_numpy(target.copy())
    x_train, y_train, x_val, y_val = _carve(cfg, x, y, vf)
    assert x_val is not None and y_val is not None  # vf is never None for digits
    x_train, x_val = _standardize(x_train, x_val)  # index copies: editing them in place is safe
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
    x_train, x_val = _standardize(x_train, x_val)
    return TensorData(x_train, y_train, x_val, y_val, N_CLASSES)


# --------------------------------------------------------------------------------------------
# torchvision sets (Fashion-MNIST, CIFAR-10).


def _download_hint(name: str, root: str) -> str:
    return (
        f"on a machine with internet run: python -m lrbs.trainables.data download {name} "
        f"--data-dir {root} and copy that folder here"
    )


def _not_found(name: str, root: str, why: str) -> DataError:
    return DataError(f"dataset {name} not found under {root} {why}: {_download_hint(name, root)}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _offline(name: str, root: str, e: BaseException) -> DataError:
    return _not_found(name, root, f"and could not be downloaded (offline? {_one_line(e)})")


def _unreadable(name: str, root: str, e: BaseException) -> DataError:
    why = _one_line(e)
    return DataError(f"dataset {name} under {root} is unreadable ({why}): {_download_hint(name, root)}")


def _fetch_fashion_mnist(root: str, train: bool, download: bool) -> Any:
    """torchvision FashionMNIST (it only checks that the raw files exist, no md5)."""
    from torchvision.datasets import FashionMNIST

    files = _FMNIST_FILES[True] + _FMNIST_FILES[False]
    present = all(os.path.isfile(os.path.join(root, _FMNIST_RAW, f)) for f in files)
    if not present:
        if not download:
            raise _not_found("fashion_mnist", root, "(dataset.download is false)")
        try:
            return FashionMNIST(root, train=train, download=True)
        except Exception as e:  # offline: URLError, RuntimeError, socket errors, ...
            raise _offline("fashion_mnist", root, e) from e
    try:
        return FashionMNIST(root, train=train, download=False)
    except Exception as e:  # truncated or malformed IDX files
        raise _unreadable("fashion_mnist", root, e) from e


def _lenient_cifar10_class() -> type:
    """CIFAR10 whose integrity check only asks that the files exist (for reduced or rebuilt copies)."""
    from torchvision.datasets import CIFAR10

    class LenientCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return all(
                os.path.isfile(os.path.join(self.root, self.base_folder, f))
                for f, _ in self.train_list + self.test_list
            )

        def _load_meta(self) -> None:
            # Class names are not needed for training; tolerate a missing or altered meta file.
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            self.classes = []
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    self.classes = pickle.load(f, encoding="latin1").get(self.meta["key"], [])
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return LenientCIFAR10


def _fetch_cifar10(root: str, need_test: bool, download: bool) -> tuple[Any, Any | None]:
    """torchvision CIFAR10 train (and test) sets; md5 mismatches warn instead of failing."""
    from torchvision.datasets import CIFAR10

    folder = os.path.join(root, _CIFAR_FOLDER)
    files = _CIFAR_TRAIN_FILES + _CIFAR_TEST_FILES
    present = all(os.path.isfile(os.path.join(folder, f)) for f in files)
    lenient = _lenient_cifar10_class()
    if not present:
        if not download:
            raise _not_found("cifar10", root, "(dataset.download is false)")
        try:
            train_set = CIFAR10(root, train=True, download=True)
        except Exception as e:  # offline: URLError, socket errors, ...
            raise _offline("cifar10", root, e) from e
    else:
        try:
            # Present files are never re-downloaded: that would overwrite a deliberate subset.
            train_set = CIFAR10(root, train=True, download=False)
        except RuntimeError:
            warnings.warn(
                f"cifar10 files under {folder} do not match the published md5 sums (a subset or "
                "a rebuilt copy?); loading them anyway",
                stacklevel=4,  # point at the caller of load_dataset
            )
            try:
                train_set = lenient(root, train=True, download=False)
            except Exception as e:
                raise _unreadable("cifar10", root, e) from e
    # The integrity of all files (test batch included) was checked or waived above; don't hash twice.
    test_set = None
    if need_test:
        try:
            test_set = lenient(root, train=False, download=False)
        except Exception as e:
            raise _unreadable("cifar10", root, e) from e
    return train_set, test_set


def _fmnist_uint8(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    # .data is already a uint8 tensor (N, 28, 28): add the channel axis.
    return ds.data.unsqueeze(1), torch.as_tensor(ds.targets, dtype=torch.int64)


def _cifar_uint8(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    # .data is a uint8 numpy array in HWC layout: view it channels first (copied in _to_float).
    x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
    return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def _to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> contiguous float32 NCHW in [0, 1] (a fresh tensor, safe to edit in place)."""
    return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


def _load_torchvision(cfg: DatasetConfig) -> TensorData:
    root = _root(cfg)
    vf = _val_fraction(cfg, None)
    _check_n_train(cfg)
    need_test = vf is None
    if cfg.name == "fashion_mnist":
        x, y = _fmnist_uint8(_fetch_fashion_mnist(root, True, cfg.download))
        test = _fmnist_uint8(_fetch_fashion_mnist(root, False, False)) if need_test else None
    else:
        train_set, test_set = _fetch_cifar10(root, need_test, cfg.download)
        x, y = _cifar_uint8(train_set)
        test = _cifar_uint8(test_set) if test_set is not None else None
    # Cut while still uint8: a quarter of the memory traffic of cutting float32 images.
    x_train, y_train, x_val, y_val = _carve(cfg, x, y, vf)
    if test is not None:
        x_val, y_val = test
    assert x_val is not None and y_val is not None
    x_train, x_val = _standardize(_to_float(x_train), _to_float(x_val))
    return TensorData(x_train, y_train, x_val, y_val, N_CLASSES)


# --------------------------------------------------------------------------------------------
# The registry.


@dataclass(frozen=True)
class NoOptions:
    """``dataset.options`` of a set that has none (any key is refused by name)."""


@dataclass(frozen=True)
class DatasetEntry:
    """A data set: how to load it, how big its training split is, and what one example looks like.

    ``options`` is the dataclass of ``dataset.options``; ``on_disk`` sets are read from (or
    generated into) ``data_dir``, so ``lrbs run`` loads them once on the driver before any trial
    starts (a missing set is one line, and parallel trials never race to fetch it); ``fetch``
    puts it there ahead of time (``python -m lrbs.trainables.data download``).
    """

    load: Callable[[DatasetConfig], TensorData]
    train_size: Callable[[DatasetConfig], int]
    input_shape: Callable[[DatasetConfig], tuple[int, ...]]
    n_classes: Callable[[DatasetConfig], int]
    options: type = NoOptions
    on_disk: bool = False
    fetch: Callable[[str], str] | None = None


def _fixed(value: Any) -> Callable[[DatasetConfig], Any]:
    return lambda cfg: value


def _fetch_tv(name: str) -> Callable[[str], str]:
    def fetch(root: str) -> str:
        if name == "fashion_mnist":
            _fetch_fashion_mnist(root, True, True)
        else:
            _fetch_cifar10(root, False, True)
        return f"{name} is ready under {root}"

    return fetch


def _mnist1d() -> DatasetEntry:
    from lrbs.trainables import mnist1d

    return DatasetEntry(
        mnist1d.load,
        mnist1d.train_size,
        _fixed((mnist1d.LENGTH,)),
        _fixed(N_CLASSES),
        mnist1d.Mnist1dOptions,
        on_disk=True,
        fetch=mnist1d.fetch,
    )


# The one registry of built-in data sets: spec validation, the trainable, the cost estimate and
# the pre-flight check all look names up here. Adding a set is one entry (docs/extending.md).
DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry(_load_digits, _digits_size, _fixed((64,)), _fixed(N_CLASSES)),
    "synthetic": DatasetEntry(
        _load_synthetic, lambda cfg: _synthetic_sizes(cfg)[0], _fixed((_SYNTH_DIM,)), _fixed(N_CLASSES)
    ),
    "fashion_mnist": DatasetEntry(
        _load_torchvision,
        _tv_size,
        _fixed((1, 28, 28)),
        _fixed(N_CLASSES),
        on_disk=True,
        fetch=_fetch_tv("fashion_mnist"),
    ),
    "cifar10": DatasetEntry(
        _load_torchvision, _tv_size, _fixed((3, 32, 32)), _fixed(N_CLASSES), on_disk=True, fetch=_fetch_tv("cifar10")
    ),
    "mnist1d": _mnist1d(),
}
DATASET_NAMES = tuple(DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry for ``dataset.name``; a ``package.module:factory`` gets one built on the fly."""
    _check_name(name)
    if name in DATASETS:
        return DATASETS[name]
    from lrbs.trainables import user_data

    return user_data.ENTRY


def _tv_files(name: str, root: str) -> list[str]:
    """The files a torchvision set loads from (training and test split), where ``_fetch_*`` look."""
    if name == "fashion_mnist":
        return [os.path.join(root, _FMNIST_RAW, f) for f in _FMNIST_FILES[True] + _FMNIST_FILES[False]]
    return [os.path.join(root, _CIFAR_FOLDER, f) for f in _CIFAR_TRAIN_FILES + _CIFAR_TEST_FILES]


def check_data_dir(cfg: DatasetConfig, files: bool = True) -> None:
    """``dataset.data_dir`` of a set read from or cached in it (``on_disk``: mnist1d and the
    torchvision sets) is a folder, or a path where one can be made (not a file, nor under one).
    With ``files`` (the trials run on this machine), a torchvision set with ``download: false``
    must have its files there already. A one-line DataError naming ``dataset.data_dir``; the other
    sets never read data_dir."""
    if cfg.name not in DATASETS or not DATASETS[cfg.name].on_disk:
        return
    root = _root(cfg)
    existing = root  # the nearest part of the path that exists decides
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = f"{root} is" if existing == root else f"{root} lies under {existing}, which is"
        raise DataError(f"dataset.data_dir: {where} a file, not a folder")
    if files and not cfg.download and cfg.name in _TV_SIZES:
        if not all(os.path.isfile(f) for f in _tv_files(cfg.name, root)):
            raise DataError(
                f"dataset.data_dir: dataset {cfg.name} not found under {root} and dataset.download is "
                f"false; on a machine with internet: python -m lrbs.trainables.data download {cfg.name} "
                f"--data-dir {root}, then copy the folder here"
            )


# --------------------------------------------------------------------------------------------
# CLI: pre-download for offline machines.


def download(name: str, data_dir: str) -> str:
    """Fetch ``name`` into ``data_dir`` (no-op for the bundled/generated sets); returns a status line."""
    _check_name(name)
    root = os.path.abspath(os.path.expanduser(data_dir))
    if name == "digits":
        return "digits ships with scikit-learn; nothing to download"
    fetch = dataset_entry(name).fetch
    if fetch is None:
        return f"{name} is generated or loaded on the fly; nothing to download"
    return fetch(root)


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
