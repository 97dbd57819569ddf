"""Write small data sets in torchvision's on-disk formats, for tests that must run offline.

The files are what torchvision's own loaders read (no mocks): uncompressed IDX for Fashion-MNIST
and the CIFAR-10 "python version" pickles. Images are random, so every image is distinct and a
test can trace each loaded example back to its source row.
"""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension


def _write_idx(path: str, magic: int, array: np.ndarray) -> None:
    # IDX: big-endian magic, then one big-endian uint32 per dimension, then the raw bytes.
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fashion_mnist(root: str | os.PathLike, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    Returns the arrays written: ``train_images``/``test_images`` uint8 (N, 28, 28) and
    ``train_labels``/``test_labels`` int64 (N,) in 0..9.
    """
    rng = np.random.default_rng(seed)
    raw = os.path.join(os.fspath(root), "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), IDX_IMAGES_MAGIC, images)
        labels_u8 = labels.astype(np.uint8)
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), IDX_LABELS_MAGIC, labels_u8)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


CIFAR10_LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def write_cifar10(root: str | os.PathLike, n_per_batch: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

    The real files are Python 2 pickles whose ``str`` keys torchvision reads back as ``str``
    (``pickle.load(..., encoding="latin1")``, then ``entry["data"]``, ``entry["labels"]``,
    ``meta["label_names"]``), so the keys here are ``str`` too; ``b"data"`` would not be found.
    ``data`` rows are planar RGB: 1024 red, then 1024 green, then 1024 blue values, row-major.

    Returns ``train_data`` uint8 (5 * n_per_batch, 3072) in batch order, ``train_labels`` int64,
    ``test_data`` and ``test_labels``. Their md5 sums differ from the published ones, on purpose.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(os.fspath(root), "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)

    def batch(name: str, label: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        entry = {
            "batch_label": label,
            "labels": [int(v) for v in labels],
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f, protocol=2)
        return data, labels

    parts = [batch(f"data_batch_{i}", f"training batch {i} of 5", n_per_batch) for i in range(1, 6)]
    test_data, test_labels = batch("test_batch", "testing batch 1 of 1", n_test)
    meta = {"num_cases_per_batch": n_per_batch, "label_names": CIFAR10_LABEL_NAMES, "num_vis": 3072}
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return {
        "train_data": np.concatenate([d for d, _ in parts]),
        "train_labels": np.concatenate([l for _, l in parts]),
        "test_data": test_data,
        "test_labels": test_labels,
    }
