"""Tests for trainables.data on real files in torchvision's formats (written by fixtures_tv)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lrbs.trainables.config import DatasetConfig
from lrbs.trainables.data import DATASET_NAMES, load_dataset, main, train_set_size
from lrbs.trainables.tensor_data import DataError, TensorData
from tests.trainables.fixtures_tv import write_cifar10, write_fashion_mnist

REPO = str(Path(__file__).resolve().parents[2])

FM_TRAIN, FM_TEST = 300, 100
CIFAR_PER_BATCH, CIFAR_TEST = 40, 50


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fm")
    arrays = write_fashion_mnist(root, FM_TRAIN, FM_TEST, seed=1)
    return str(root), arrays


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    arrays = write_cifar10(root, CIFAR_PER_BATCH, CIFAR_TEST, seed=2)
    return str(root), arrays


def load_quiet(cfg: DatasetConfig) -> TensorData:
    """load_dataset, swallowing the expected md5 warning of the reduced CIFAR files."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(cfg)


def pixels(d: TensorData) -> tuple[np.ndarray, np.ndarray]:
    """Recover uint8 images from standardized ones.

    Standardization is a per-channel increasing affine map, and random images of a few hundred
    examples contain both 0 and 255 in every channel, so train min/max pin the map down.
    """
    dims = (0, 2, 3)
    lo = d.x_train.amin(dim=dims, keepdim=True)
    hi = d.x_train.amax(dim=dims, keepdim=True)

    def back(x: torch.Tensor) -> np.ndarray:
        return torch.round((x - lo) / (hi - lo) * 255).to(torch.uint8).numpy()

    return back(d.x_train), back(d.x_val)


def row_index(images: np.ndarray) -> dict[bytes, int]:
    return {img.tobytes(): i for i, img in enumerate(images)}


def source_rows(recovered: np.ndarray, source: np.ndarray) -> list[int]:
    index = row_index(source)
    return [index[img.tobytes()] for img in recovered]


def assert_standardized(x: torch.Tensor) -> None:
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    mean, std = x.double().mean(dims), x.double().std(dims, unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    unit = (std - 1).abs() < 1e-3
    if x.dim() == 2:  # digits has constant (all-zero) border pixels: they stay 0, with std 0
        unit |= std < 1e-6
    assert torch.all(unit)


# ------------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_uses_test_split_as_validation(fmnist):
    root, a = fmnist
    d = load_dataset(DatasetConfig(name="fashion_mnist", data_dir=root, download=False))
    assert d.x_train.shape == (FM_TRAIN, 1, 28, 28) and d.x_val.shape == (FM_TEST, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.y_val.dtype == torch.int64
    assert d.input_shape == (1, 28, 28) and d.n_classes == 10
    assert_standardized(d.x_train)
    # Exactly the written pixels and labels, in file order, scaled then standardized with train stats.
    raw = torch.from_numpy(a["train_images"]).double().div(255).unsqueeze(1)
    mean, std = raw.mean(), raw.std(unbiased=False)
    assert torch.allclose(d.x_train.double(), (raw - mean) / std, atol=1e-5)
    raw_val = torch.from_numpy(a["test_images"]).double().div(255).unsqueeze(1)
    assert torch.allclose(d.x_val.double(), (raw_val - mean) / std, atol=1e-5)
    assert torch.equal(d.y_train, torch.from_numpy(a["train_labels"]))
    assert torch.equal(d.y_val, torch.from_numpy(a["test_labels"]))


def test_fashion_mnist_val_fraction_carves_from_train(fmnist):
    root, a = fmnist
    d = load_dataset(DatasetConfig(name="fashion_mnist", data_dir=root, download=False, val_fraction=0.25))
    assert len(d.x_val) == 75 and len(d.x_train) == FM_TRAIN - 75
    train_px, val_px = pixels(d)
    tr, va = source_rows(train_px[:, 0], a["train_images"]), source_rows(val_px[:, 0], a["train_images"])
    assert sorted(tr + va) == list(range(FM_TRAIN))  # disjoint, covers the train file, no test images
    assert tr == sorted(tr)  # file order kept within the part
    assert torch.equal(d.y_train, torch.from_numpy(a["train_labels"][tr]))
    assert torch.equal(d.y_val, torch.from_numpy(a["train_labels"][va]))


def test_n_train_subset_is_seeded(fmnist):
    root, a = fmnist
    base = DatasetConfig(name="fashion_mnist", data_dir=root, download=False, n_train=50)

    def rows(cfg: DatasetConfig) -> list[int]:
        return source_rows(pixels(load_dataset(cfg))[0][:, 0], a["train_images"])

    first, again, other = rows(base), rows(base), rows(replace(base, split_seed=1))
    assert len(first) == 50 and first == again and first != other
    d = load_dataset(base)
    assert torch.equal(d.y_val, torch.from_numpy(a["test_labels"]))  # val untouched by n_train
    # With a carve-out, validation stays put as n_train varies and subsets are nested.
    small = load_dataset(replace(base, val_fraction=0.2, n_train=40))
    large = load_dataset(replace(base, val_fraction=0.2, n_train=120))
    small_tr, small_va = (source_rows(p[:, 0], a["train_images"]) for p in pixels(small))
    large_tr, large_va = (source_rows(p[:, 0], a["train_images"]) for p in pixels(large))
    assert small_va == large_va and len(small_va) == 60
    assert set(small_tr) <= set(large_tr) and not set(large_tr) & set(large_va)


# ------------------------------------------------------------------------------------ CIFAR-10


def test_cifar10_loads_reduced_files_with_md5_warning(cifar):
    root, a = cifar
    with pytest.warns(UserWarning, match="md5"):
        d = load_dataset(DatasetConfig(name="cifar10", data_dir=root, download=False))
    n = 5 * CIFAR_PER_BATCH
    assert d.x_train.shape == (n, 3, 32, 32) and d.x_val.shape == (CIFAR_TEST, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.is_contiguous() and d.input_shape == (3, 32, 32)
    assert_standardized(d.x_train)
    # Planar RGB rows become (3, 32, 32); per-channel statistics of the train split.
    raw = torch.from_numpy(a["train_data"]).double().div(255).view(n, 3, 32, 32)
    std, mean = torch.std_mean(raw, dim=(0, 2, 3), correction=0, keepdim=True)
    assert torch.allclose(d.x_train.double(), (raw - mean) / std, atol=1e-5)
    raw_val = torch.from_numpy(a["test_data"]).double().div(255).view(CIFAR_TEST, 3, 32, 32)
    assert torch.allclose(d.x_val.double(), (raw_val - mean) / std, atol=1e-5)
    assert torch.equal(d.y_train, torch.from_numpy(a["train_labels"]))
    assert torch.equal(d.y_val, torch.from_numpy(a["test_labels"]))


def test_cifar10_val_fraction_and_n_train(cifar):
    root, a = cifar
    base = DatasetConfig(name="cifar10", data_dir=root, download=False, val_fraction=0.1, n_train=100)
    d = load_quiet(base)
    assert len(d.x_val) == 20 and len(d.x_train) == 100
    src = a["train_data"].reshape(-1, 3, 32, 32)
    tr, va = (source_rows(p, src) for p in pixels(d))
    assert not set(tr) & set(va)
    assert torch.equal(d.y_train, torch.from_numpy(a["train_labels"][tr]))
    again = load_quiet(base)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_val, d.y_val)
    other = load_quiet(replace(base, split_seed=7))
    assert source_rows(pixels(other)[0], src) != tr


# ------------------------------------------------------------------------ digits and synthetic


def test_digits_split_is_seeded():
    d = load_dataset(DatasetConfig(name="digits"))
    assert d.x_train.shape == (1438, 64) and d.x_val.shape == (359, 64)  # default 20% validation
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.input_shape == (64,)
    assert_standardized(d.x_train)
    assert set(d.y_train.tolist()) == set(range(10))
    again = load_dataset(DatasetConfig(name="digits"))
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_val, d.y_val)
    other = load_dataset(DatasetConfig(name="digits", split_seed=1))
    assert not torch.equal(other.y_train, d.y_train)
    sub = load_dataset(DatasetConfig(name="digits", n_train=500, val_fraction=0.5))
    assert len(sub.x_train) == 500 and len(sub.x_val) == round(0.5 * 1797)


def test_synthetic_sizes_and_determinism():
    d = load_dataset(DatasetConfig(name="synthetic"))
    assert d.x_train.shape == (2000, 32) and d.x_val.shape == (500, 32)  # total 2500, 20% validation
    assert d.n_classes == 10 and d.input_shape == (32,)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert_standardized(d.x_train)
    counts = torch.bincount(d.y_train, minlength=10)
    assert counts.min() > 100  # roughly balanced classes
    again = load_dataset(DatasetConfig(name="synthetic"))
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_val, d.y_val)
    other = load_dataset(DatasetConfig(name="synthetic", split_seed=3))
    assert not torch.equal(other.y_train, d.y_train)
    half = load_dataset(DatasetConfig(name="synthetic", n_train=1000, val_fraction=0.5))
    assert len(half.x_train) == 1000 and len(half.x_val) == 1000
    # Examples are drawn per seeded block: a smaller set is the head of a larger one.
    assert torch.equal(half.y_train, d.y_train[:1000])


def test_synthetic_has_generalization_gap():
    """A nearest-neighbour rule memorizes train (100%) but stays far below that on validation."""
    d = load_dataset(DatasetConfig(name="synthetic"))
    nearest = torch.cdist(d.x_val, d.x_train).argmin(1)
    val_acc = (d.y_train[nearest] == d.y_val).float().mean().item()
    assert 0.3 < val_acc < 0.85  # learnable, yet clearly below the 100% a memorizer gets on train


def test_to_device_returns_tensor_data():
    d = load_dataset(DatasetConfig(name="digits"), device="cpu")
    moved = d.to(torch.device("cpu"))
    assert isinstance(moved, TensorData) and moved.x_train.device.type == "cpu" and moved.n_classes == 10


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_missing_files_without_download(tmp_path, name):
    root = str(tmp_path / "empty")
    with pytest.raises(DataError) as err:
        load_dataset(DatasetConfig(name=name, data_dir=root, download=False))
    msg = str(err.value)
    assert "\n" not in msg and name in msg and root in msg
    assert f"python -m lrbs.trainables.data download {name} --data-dir {root}" in msg


def _online() -> bool:
    try:
        socket.getaddrinfo("www.cs.toronto.edu", 443)
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="would really download; this checks the offline message")
@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_missing_files_offline_download_fails_cleanly(tmp_path, name):
    root = str(tmp_path)
    with pytest.raises(DataError, match="could not be downloaded") as err:
        load_dataset(DatasetConfig(name=name, data_dir=root, download=True))
    assert "\n" not in str(err.value) and f"download {name} --data-dir {root}" in str(err.value)


def test_n_train_too_large(fmnist, cifar):
    cases = [
        DatasetConfig(name="digits", n_train=1439),
        DatasetConfig(name="fashion_mnist", data_dir=fmnist[0], download=False, n_train=FM_TRAIN + 1),
        DatasetConfig(name="fashion_mnist", data_dir=fmnist[0], download=False, n_train=FM_TRAIN, val_fraction=0.1),
        DatasetConfig(name="cifar10", data_dir=cifar[0], download=False, n_train=5 * CIFAR_PER_BATCH + 1),
    ]
    for cfg in cases:
        for fn in (train_set_size, load_quiet):
            with pytest.raises(DataError, match=r"^dataset\.n_train: "):
                fn(cfg)
    # Without files, the published sizes decide.
    with pytest.raises(DataError, match=r"^dataset\.n_train: 60001 exceeds"):
        train_set_size(DatasetConfig(name="fashion_mnist", data_dir="/nonexistent", n_train=60001))


def test_invalid_fields():
    with pytest.raises(DataError, match=r"^dataset\.name: unknown data set 'mnist' \(built-in: digits, "):
        load_dataset(DatasetConfig(name="mnist"))
    with pytest.raises(DataError, match=r"^dataset\.name: "):
        train_set_size(DatasetConfig(name="mnist"))
    with pytest.raises(DataError, match=r"^dataset\.n_train: "):
        train_set_size(DatasetConfig(name="synthetic", n_train=0))
    with pytest.raises(DataError, match=r"^dataset\.val_fraction: "):
        load_dataset(DatasetConfig(name="digits", val_fraction=1.5))


# ------------------------------------------------------------------------------ train_set_size


def test_train_set_size_agrees_with_load_dataset(fmnist, cifar, tmp_path):
    fm = dict(name="fashion_mnist", data_dir=fmnist[0], download=False)
    m1 = dict(name="mnist1d", data_dir=str(tmp_path), options={"n_samples": 1005})
    cf = dict(name="cifar10", data_dir=cifar[0], download=False)
    cfgs = [
        DatasetConfig(name="digits"),
        DatasetConfig(name="digits", n_train=1000),
        DatasetConfig(name="digits", val_fraction=0.3),
        DatasetConfig(name="synthetic"),
        DatasetConfig(name="synthetic", n_train=333, val_fraction=0.4),
        DatasetConfig(**fm),
        DatasetConfig(**fm, val_fraction=0.3),
        DatasetConfig(**fm, n_train=77),
        DatasetConfig(**cf),
        DatasetConfig(**cf, val_fraction=0.25, n_train=64),
        DatasetConfig(**m1),
        DatasetConfig(**m1, val_fraction=0.3, n_train=500),
    ]
    for cfg in cfgs:
        assert train_set_size(cfg) == len(load_quiet(cfg).x_train), cfg
    assert {c.name for c in cfgs} == set(DATASET_NAMES)


def test_train_set_size_without_files_uses_published_sizes():
    fm = DatasetConfig(name="fashion_mnist", data_dir="/nonexistent")
    assert train_set_size(fm) == 60000
    assert train_set_size(replace(fm, val_fraction=0.1)) == 54000
    assert train_set_size(replace(fm, name="cifar10")) == 50000
    assert train_set_size(replace(fm, name="cifar10", n_train=4096)) == 4096


# ----------------------------------------------------------------------------------------- CLI


def test_cli_download(fmnist, capsys):
    assert main(["download", "fashion_mnist", "--data-dir", fmnist[0]]) == 0  # present: no network
    assert "ready" in capsys.readouterr().out
    assert main(["download", "digits"]) == 0
    assert main(["download", "mnist"]) == 2
    assert "dataset.name" in capsys.readouterr().err


def test_cli_entry_point(fmnist):
    proc = subprocess.run(
        [sys.executable, "-m", "lrbs.trainables.data", "download", "fashion_mnist", "--data-dir", fmnist[0]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.returncode == 0, proc.stderr
    assert "fashion_mnist is ready" in proc.stdout


# ------------------------------------------------------------------------------ MNIST-1D


def test_mnist1d_generates_once_then_reads_the_cache(tmp_path):
    import random
    import time

    from lrbs.trainables import mnist1d

    cfg = DatasetConfig(name="mnist1d", data_dir=str(tmp_path), options={"n_samples": 1000, "seed": 3})
    np_state, py_state = np.random.get_state(), random.getstate()
    first = load_dataset(cfg)
    # The generator seeds numpy's and Python's global RNGs; the caller's streams are left as they were.
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    assert first.x_train.shape == (800, 40) and first.x_val.shape == (200, 40) and first.n_classes == 10
    assert first.x_train.dtype == torch.float32 and first.y_train.dtype == torch.int64
    assert set(first.y_train.tolist()) == set(range(10))
    path = mnist1d.cache_path(cfg)
    assert os.path.isfile(path) and "n1000" in path and "seed3" in path and "train0.8" in path
    t0 = time.perf_counter()
    again = load_dataset(cfg)
    assert time.perf_counter() - t0 < 0.5  # a cached read, not a second generation (seconds)
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_val, again.y_val)
    # Every option is in the cache key: another seed or split is another file and other data.
    other = DatasetConfig(name="mnist1d", data_dir=str(tmp_path), options={"n_samples": 1000, "seed": 4})
    assert mnist1d.cache_path(other) != path and not torch.equal(load_dataset(other).y_train, first.y_train)
    split = DatasetConfig(
        name="mnist1d", data_dir=str(tmp_path), options={"n_samples": 1000, "seed": 3}, val_fraction=0.5
    )
    assert mnist1d.cache_path(split) != path and train_set_size(split) == 500
    # n_train: a seeded subset of the training part; the validation split does not move.
    sub = load_dataset(
        DatasetConfig(name="mnist1d", data_dir=str(tmp_path), n_train=300, options={"n_samples": 1000, "seed": 3})
    )
    assert sub.x_train.shape == (300, 40) and torch.equal(sub.y_val, first.y_val)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"n_samples": 5}, "dataset.options.n_samples"),
        ({"samples": 5000}, "dataset.options.samples"),
        ({"seed": -1}, "dataset.options.seed"),
    ],
)
def test_mnist1d_bad_options_name_the_field(options, field, tmp_path):
    from lrbs.sweeps.spec import SpecError
    from lrbs.sweeps.spec_load import spec_from_dict
    from tests.conftest import tiny_spec

    with pytest.raises(SpecError) as err:
        spec_from_dict(tiny_spec(dataset={"name": "mnist1d", "data_dir": str(tmp_path), "options": options}))
    assert str(err.value).startswith(f"{field}:"), err.value


def test_mnist1d_replaces_a_damaged_cache_file(tmp_path):
    from lrbs.trainables import mnist1d

    cfg = DatasetConfig(name="mnist1d", data_dir=str(tmp_path), options={"n_samples": 200})
    good = load_dataset(cfg)
    path = mnist1d.cache_path(cfg)
    with open(path, "r+b") as f:  # a writer killed mid-file (or a full disk)
        f.truncate(100)
    again = load_dataset(cfg)
    assert torch.equal(again.x_train, good.x_train) and torch.equal(again.y_val, good.y_val)
    assert os.path.getsize(path) > 100 and not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]
