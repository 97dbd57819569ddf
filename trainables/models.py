"""Model builders. ``build_model(cfg, input_shape, n_classes)`` is the one entry point."""
from __future__ import annotations

import math

import torch
from torch import nn

from trainables import convnets
from trainables.config import ModelConfig


class MLP(nn.Module):
    """ReLU MLP: ``depth`` Linear layers, each hidden one followed by BatchNorm1d (optional) and ReLU.

    The paper's Fig. 3 model is the 4-layer batch-normalized ReLU MLP (depth=4: three hidden
    layers and the output layer). Inputs of any shape are flattened per example.
    """

    def __init__(self, in_features: int, n_classes: int, depth: int, width: int, batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for _ in range(depth - 1):
            # With batch norm the Linear bias is redundant (BN re-centres), so drop it.
            layers.append(nn.Linear(fan_in, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            fan_in = width
        layers.append(nn.Linear(fan_in, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


CONVNETS = {
    "vgg11": lambda cfg, c, k: convnets.vgg11(k, c, batch_norm=cfg.batch_norm, width_mult=cfg.width_mult),
    "resnet20": lambda cfg, c, k: convnets.resnet20(k, c, width_mult=cfg.width_mult),
    "resnet56": lambda cfg, c, k: convnets.resnet56(k, c, width_mult=cfg.width_mult),
}
MODEL_NAMES = ("mlp", *CONVNETS)


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(C, H, W) for image inputs; flat square inputs (sklearn digits: 64 = 8x8) become 1 channel."""
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    if len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        side = math.isqrt(input_shape[0])
        return (1, side, side)
    return None


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if cfg.name == "mlp":
        return MLP(math.prod(input_shape), n_classes, cfg.depth, cfg.width, cfg.batch_norm)
    if cfg.name in CONVNETS:
        shape = image_shape(input_shape)
        if shape is None:
            raise ValueError(f"model.name: {cfg.name} needs image inputs, the data set gives {tuple(input_shape)}")
        net = CONVNETS[cfg.name](cfg, shape[0], n_classes)
        if tuple(input_shape) != shape:
            net = nn.Sequential(nn.Unflatten(1, shape), net)
        return net
    raise ValueError(f"model.name: unknown model {cfg.name!r} (known: {', '.join(MODEL_NAMES)})")
