"""Fashion-MNIST-format IDX files with synthetic content, so the benchmark needs no download.

Images are 28x28 uint8: a class-dependent blob plus noise (learnable, not trivially so); the
files are exactly what torchvision's FashionMNIST reads from ``<root>/FashionMNIST/raw``.
"""

from __future__ import annotations

import os
import struct

import numpy as np


def _write_idx(path: str, array: np.ndarray) -> None:
    # IDX: magic (0, 0, dtype 0x08 = uint8, ndim), then big-endian int32 dims, then the data.
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _examples(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, n).astype(np.uint8)
    yy, xx = np.mgrid[0:28, 0:28]
    centres = [(6 + 4 * (c % 5), 9 + 10 * (c // 5)) for c in range(10)]
    protos = np.stack([np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 40.0) for cx, cy in centres])
    images = 160 * protos[labels] + rng.normal(0, 40, (n, 28, 28)) + 40
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_fashion_mnist(root: str, n_train: int, n_test: int, seed: int = 0) -> str:
    """Write train and t10k image/label files under ``root/FashionMNIST/raw``; returns ``root``."""
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _examples(n, rng)
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels)
    return root
