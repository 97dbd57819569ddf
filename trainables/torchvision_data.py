"""Fashion-MNIST and CIFAR-10 through torchvision, read from (or downloaded into) ``dataset.data_dir``:
images scaled to [0, 1], then standardized per channel with the training split's statistics.
Files that are present are never downloaded again (that would overwrite a deliberate subset), and
their headers decide the training pool's size, so reduced copies are counted right.
"""

from __future__ import annotations

import functools
import os
import pickle
import warnings
from typing import Any

import numpy as np
import torch

from lrbs.trainables.config import DatasetConfig
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

# Published (train, test) sizes, used by train_size when the files are not on this machine (the
# sweep driver need not hold the data that the trial workers read).
SIZES = {"fashion_mnist": (60000, 10000), "cifar10": (50000, 10000)}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILES = ("test_batch",)
FMNIST_RAW = os.path.join("FashionMNIST", "raw")
FMNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def files(name: str, root: str) -> list[str]:
    """The files a set loads from (training and test split), where ``_fetch_*`` look."""
    if name == "fashion_mnist":
        return [os.path.join(root, FMNIST_RAW, f) for f in FMNIST_FILES[True] + FMNIST_FILES[False]]
    return [os.path.join(root, CIFAR_FOLDER, f) for f in CIFAR_TRAIN_FILES + CIFAR_TEST_FILES]


def train_size(cfg: DatasetConfig) -> int:
    return split_sizes(cfg, _train_pool_size(cfg.name, data_root(cfg)), val_fraction_of(cfg, None))[1]


def _train_pool_size(name: str, root: str) -> int:
    """Number of examples in the training files on disk, or the published size if absent."""
    if name == "fashion_mnist":
        path = os.path.join(root, FMNIST_RAW, FMNIST_FILES[True][1])
        if os.path.isfile(path):
            # IDX label file: 4-byte magic then the big-endian count; no need to read the rest.
            with open(path, "rb") as f:
                header = f.read(8)
            if len(header) == 8 and int.from_bytes(header[:4], "big") == 2049:
                return int.from_bytes(header[4:8], "big")
    else:
        paths = [os.path.join(root, CIFAR_FOLDER, f) for f in CIFAR_TRAIN_FILES]
        if all(os.path.isfile(p) for p in paths):
            try:
                return sum(_cifar_batch_len(p, os.path.getmtime(p), os.path.getsize(p)) for p in paths)
            except Exception:  # unreadable files: load will report them properly
                pass
    return SIZES[name][0]


@functools.lru_cache(maxsize=16)
def _cifar_batch_len(path: str, mtime: float, size: int) -> int:
    """Examples in one CIFAR pickle (cached by path, mtime and size; the pickle has no header)."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    return len(entry["labels"])


def _error(name: str, root: str, what: str) -> DataError:
    return DataError(
        f"dataset {name} {what}: on a machine with internet run: python -m lrbs.trainables.data download "
        f"{name} --data-dir {root} and copy that folder here"
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _not_found(name: str, root: str) -> DataError:
    return _error(name, root, f"not found under {root} (dataset.download is false)")


def _offline(name: str, root: str, e: BaseException) -> DataError:
    return _error(name, root, f"not found under {root} and could not be downloaded (offline? {_one_line(e)})")


def _unreadable(name: str, root: str, e: BaseException) -> DataError:
    return _error(name, root, f"under {root} is unreadable ({_one_line(e)})")


def _fetch_fashion_mnist(root: str, train: bool, download: bool) -> Any:
    """torchvision FashionMNIST (it only checks that the raw files exist, no md5)."""
    from torchvision.datasets import FashionMNIST  # seconds to import; only these sets need it

    if not all(os.path.isfile(f) for f in files("fashion_mnist", root)):
        if not download:
            raise _not_found("fashion_mnist", root)
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
    from torchvision.datasets import CIFAR10  # seconds to import; only these sets need it

    class LenientCIFAR10(CIFAR10):  # type: ignore[misc]  # torchvision has no type stubs
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
    from torchvision.datasets import CIFAR10  # seconds to import; only these sets need it

    lenient = _lenient_cifar10_class()
    if not all(os.path.isfile(f) for f in files("cifar10", root)):
        if not download:
            raise _not_found("cifar10", root)
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
                f"cifar10 files under {os.path.join(root, CIFAR_FOLDER)} do not match the published md5 "
                "sums (a subset or a rebuilt copy?); loading them anyway",
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


def load(cfg: DatasetConfig) -> TensorData:
    root = data_root(cfg)
    vf = val_fraction_of(cfg, None)
    check_n_train(cfg)
    test: tuple[torch.Tensor, torch.Tensor] | None = None
    if cfg.name == "fashion_mnist":
        x, y = _fmnist_uint8(_fetch_fashion_mnist(root, True, cfg.download))
        test = _fmnist_uint8(_fetch_fashion_mnist(root, False, False)) if vf is None else None
    else:
        train_set, test_set = _fetch_cifar10(root, vf is None, cfg.download)
        x, y = _cifar_uint8(train_set)
        test = _cifar_uint8(test_set) if test_set is not None else None
    # Cut while still uint8: a quarter of the memory traffic of cutting float32 images.
    x_train, y_train, x_val, y_val = carve(cfg, x, y, vf)
    if test is not None:
        x_val, y_val = test
    assert x_val is not None and y_val is not None
    x_train, x_val = standardize(_to_float(x_train), _to_float(x_val))
    return TensorData(x_train, y_train, x_val, y_val, N_CLASSES)


def fetch(name: str, root: str) -> str:
    """Download ``name`` into ``root`` (``python -m lrbs.trainables.data download``)."""
    if name == "fashion_mnist":
        _fetch_fashion_mnist(root, True, True)
    else:
        _fetch_cifar10(root, False, True)
    return f"{name} is ready under {root}"


def _entry(name: str, shape: tuple[int, ...]) -> DatasetEntry:
    get, paths = functools.partial(fetch, name), functools.partial(files, name)
    return DatasetEntry(load, train_size, lambda c: shape, lambda c: N_CLASSES, on_disk=True, fetch=get, files=paths)


ENTRIES = {"fashion_mnist": _entry("fashion_mnist", (1, 28, 28)), "cifar10": _entry("cifar10", (3, 32, 32))}
