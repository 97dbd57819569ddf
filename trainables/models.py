"""Model builders. ``build_model(cfg, input_shape, n_classes)`` is the one entry point."""
from __future__ import annotations

import math

import torch
from torch import nn

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


MODEL_NAMES = ("mlp",)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if cfg.name == "mlp":
        return MLP(math.prod(input_shape), n_classes, cfg.depth, cfg.width, cfg.batch_norm)
    raise ValueError(f"model.name: unknown model {cfg.name!r} (known: {', '.join(MODEL_NAMES)})")
