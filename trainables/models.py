"""Models: the registry of built-ins (``MODELS``) and ``build_model(cfg, input_shape, n_classes)``,
the one entry point, which also builds a user's ``package.module:factory`` (trainables/plugins.py);
``can_stack(cfg)``: whether ``train.pack: auto`` packs the model (in the stacked layout).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrbs.trainables import convnets
from lrbs.trainables.config import ModelConfig
from lrbs.trainables.plugins import PluginError, call_error, is_import_path, load_object


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
        out: torch.Tensor = self.net(x)
        return out

    def stacked_transposed(self) -> set[str]:
        """The Linear weights, which the stacked layout of a pack (``packed_models.StacksItself``)
        holds transposed, (K, in, out): bmm's backward then yields contiguous gradients (a
        transposed view's gradient is strided, which made the update ~2x slower on CPU)."""
        return {f"net.{i}.weight" for i, m in enumerate(self.net) if isinstance(m, nn.Linear)}

    def stacked_forward(
        self, p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, training: bool
    ) -> torch.Tensor:
        """These layers on K members' stacked parameters ``p`` and buffers ``b``: one batched
        matmul per Linear layer and one fused ``batch_norm`` over (S, K*H) channels in training;
        x (K, B, ...) -> (K, B, C)."""
        h = x.flatten(2)
        for i, module in enumerate(self.net):
            if isinstance(module, nn.Linear):
                w = p[f"net.{i}.weight"]  # (K, in, out)
                bias = p.get(f"net.{i}.bias")
                h = torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)
            elif isinstance(module, nn.BatchNorm1d) and not training:
                # Inference: elementwise with the member's running statistics, in (K, B, H) layout.
                # Every element sees the same operations whatever K is (a fused batch_norm over
                # K*H channels rounded differently for K = 1 and K = 2), so a member's evaluation
                # does not depend on its pack.
                scale = torch.rsqrt(b[f"net.{i}.running_var"] + module.eps) * p[f"net.{i}.weight"]
                h = (h - b[f"net.{i}.running_mean"].unsqueeze(1)) * scale.unsqueeze(1) + p[f"net.{i}.bias"].unsqueeze(1)
            elif isinstance(module, nn.BatchNorm1d):
                k, n, width = h.shape
                assert module.momentum is not None  # the MLP's BatchNorm1d keeps the default 0.1
                flat = h.transpose(0, 1).reshape(n, k * width)  # channel = (member, feature)
                # Views of the stacked buffers: batch_norm updates each member's running stats in place.
                flat = F.batch_norm(
                    flat,
                    b[f"net.{i}.running_mean"].view(-1),
                    b[f"net.{i}.running_var"].view(-1),
                    p[f"net.{i}.weight"].reshape(-1),
                    p[f"net.{i}.bias"].reshape(-1),
                    training=training,
                    momentum=module.momentum,
                    eps=module.eps,
                )
                h = flat.view(n, k, width).transpose(0, 1)  # (K, S, H), strided
                if not h.is_cuda:
                    # On CPU, bmm and its backward measured faster on dense inputs; cuBLAS reads
                    # the strided batch as it is, so on CUDA the copy (a kernel each way) is saved.
                    h = h.contiguous()
            elif isinstance(module, nn.ReLU):
                h = torch.relu(h)
        return h


MAX_MLP_DEPTH = 1000


@dataclass(frozen=True)
class MLPOptions:
    depth: int = 4  # Linear layers (depth - 1 hidden layers)
    width: int = 256  # hidden units per layer
    batch_norm: bool = True

    def __post_init__(self) -> None:
        _at_least("depth", self.depth, 1)
        _at_least("width", self.width, 1)
        if self.depth > MAX_MLP_DEPTH:  # building and profiling 10^5 layers takes minutes before any check
            raise ValueError(f"depth: must be <= {MAX_MLP_DEPTH} (got {self.depth})")


@dataclass(frozen=True)
class VGGOptions:
    batch_norm: bool = True
    width_mult: float = 1.0  # channel multiplier (small CPU twins use < 1)

    def __post_init__(self) -> None:
        _positive("width_mult", self.width_mult)


@dataclass(frozen=True)
class ResNetOptions:
    width_mult: float = 1.0  # channel multiplier (the CIFAR ResNets always have batch norm)

    def __post_init__(self) -> None:
        _positive("width_mult", self.width_mult)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name}: must be >= {low} (got {value})")


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be > 0 (got {value})")


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(C, H, W) for image inputs; flat square inputs (sklearn digits: 64 = 8x8) become 1 channel."""
    if len(input_shape) == 3:
        return (input_shape[0], input_shape[1], input_shape[2])
    if len(input_shape) == 1 and math.isqrt(input_shape[0]) ** 2 == input_shape[0]:
        side = math.isqrt(input_shape[0])
        return (1, side, side)
    return None


def _convnet(build: Callable[..., nn.Module], name: str) -> Callable[..., nn.Module]:
    """A factory(input_shape, n_classes, **options) for a convnet of (n_classes, in_channels, ...)."""

    def factory(input_shape: tuple[int, ...], n_classes: int, **options: Any) -> nn.Module:
        shape = image_shape(input_shape)
        if shape is None:
            raise ValueError(f"model.name: {name} needs image inputs, the data set gives {tuple(input_shape)}")
        net = build(n_classes, shape[0], **options)
        return net if tuple(input_shape) == shape else nn.Sequential(nn.Unflatten(1, shape), net)

    return factory


def mlp(
    input_shape: tuple[int, ...], n_classes: int, depth: int = 4, width: int = 256, batch_norm: bool = True
) -> nn.Module:
    return MLP(math.prod(input_shape), n_classes, depth, width, batch_norm)


@dataclass(frozen=True)
class ModelEntry:
    """A built-in model: ``factory(input_shape, n_classes, **options)``, its options' dataclass, and
    whether ``train.pack: auto`` packs it, its members in the stacked layout (``can_stack``)."""

    factory: Callable[..., nn.Module]
    options: type
    stacked: bool = False


# The one registry of built-in models: spec validation, the trainable, the cost estimate and
# the pre-flight check all look names up here. Adding a model is one entry (docs/extending.md).
MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(mlp, MLPOptions, stacked=True),
    "vgg11": ModelEntry(_convnet(convnets.vgg11, "vgg11"), VGGOptions),
    "resnet20": ModelEntry(_convnet(convnets.resnet20, "resnet20"), ResNetOptions),
    "resnet56": ModelEntry(_convnet(convnets.resnet56, "resnet56"), ResNetOptions),
}


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory for ``model.name``: a built-in, or a user's ``package.module:factory``."""
    if name in MODELS:
        return MODELS[name].factory
    if is_import_path(name):
        factory: Callable[..., nn.Module] = load_object(name, "model.name")
        return factory
    raise PluginError(
        f"model.name: unknown model {name!r} (built-in: {', '.join(MODELS)}; or your own as package.module:factory)"
    )


def can_stack(cfg: ModelConfig) -> bool:
    """Whether ``train.pack: auto`` packs model ``cfg.name``, its members in the stacked layout: a
    built-in's entry says so (``ModelEntry.stacked``: the MLP), a user's factory opts in with the
    attribute ``stacked = True`` (docs/extending.md). The trial's layout and the sweep's packing
    both ask this one function."""
    if cfg.name in MODELS:
        return MODELS[cfg.name].stacked
    return getattr(model_factory(cfg.name), "stacked", False) is True


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The one entry point: ``cfg.name``'s factory called with ``cfg.options``."""
    factory = model_factory(cfg.name)
    if cfg.name in MODELS:  # the options dataclass fills in defaults (ValueError on bad values)
        return factory(tuple(input_shape), n_classes, **dataclasses.asdict(MODELS[cfg.name].options(**cfg.options)))
    try:
        model = factory(tuple(input_shape), n_classes, **cfg.options)
    except BaseException as exc:  # also sys.exit() / KeyboardInterrupt in user code (trainables/plugins.py)
        raise call_error(cfg.name, "model.name", exc) from None
    if not isinstance(model, nn.Module):
        raise PluginError(f"model.name: {cfg.name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
