"""A worked example of bringing your own model and data set to lrbs (docs/extending.md).

Nothing here imports lrbs: a model factory is any ``factory(input_shape, n_classes, **options)``
that returns a ``torch.nn.Module`` mapping a batch of inputs to ``(batch, n_classes)`` logits,
and a data-set factory is any ``factory(**options)`` that returns a mapping with ``x_train,
y_train, x_val, y_val`` (numpy arrays or tensors, integer labels). The spec next to this file
(``mnist1d_conv.yaml``) names them as ``mnist1d_conv:conv1d`` and ``mnist1d_conv:signals``;
lrbs finds this module in the spec's folder and ships it to the Ray workers.
"""

from __future__ import annotations

import random

import numpy as np
from torch import nn


def conv1d(input_shape: tuple[int, ...], n_classes: int, channels: int = 32, batch_norm: bool = True) -> nn.Module:
    """A small 1-D convnet: three conv blocks (the last two stride 2), global average pool, linear.

    Takes inputs of shape (length,) or (1, length): MNIST-1D signals of 40 points.
    """
    if len(input_shape) not in (1, 2):
        raise ValueError(f"conv1d wants 1-D signals, (length,) or (channels, length); got {input_shape}")
    in_channels = 1 if len(input_shape) == 1 else input_shape[0]
    layers: list[nn.Module] = [nn.Unflatten(1, (1, input_shape[0]))] if len(input_shape) == 1 else []
    c_in = in_channels
    for stride in (1, 2, 2):
        layers.append(
            nn.Conv1d(
                c_in,
                channels,
                kernel_size=5 if stride == 1 else 3,
                stride=stride,
                padding=2 if stride == 1 else 1,
                bias=not batch_norm,
            )
        )
        if batch_norm:
            layers.append(nn.BatchNorm1d(channels))
        layers.append(nn.ReLU())
        c_in = channels
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, n_classes)]
    return nn.Sequential(*layers)


def signals(n_samples: int = 5000, seed: int = 42, shuffle_seq: bool = False) -> dict[str, np.ndarray]:
    """MNIST-1D from the mnist1d package's generator, as (N, 1, 40) float32 signals.

    ``shuffle_seq`` permutes the 40 positions (the same permutation for every signal): the
    variant on which a convnet loses its spatial prior and an MLP does not.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.shuffle_seq = n_samples, seed, shuffle_seq
    np_state, py_state = np.random.get_state(), random.getstate()  # the generator seeds global RNGs
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {
        "x_train": d["x"][:, None, :].astype(np.float32),
        "y_train": d["y"],
        "x_val": d["x_test"][:, None, :].astype(np.float32),
        "y_val": d["y_test"],
        "n_classes": 10,
    }
