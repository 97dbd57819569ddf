"""Convolutional networks for the CIFAR-10 experiments: VGG11 (batch norm) and CIFAR ResNets.

Both follow the widely used CIFAR reference implementations so that parameter counts and
behaviour are comparable with published numbers:

* ``vgg11``: the kuangliu/pytorch-cifar VGG ("VGG11" config, 3x3 convs with bias, BatchNorm,
  ReLU, five 2x2 max-pools, one ``Linear(512, n_classes)``). 9,231,114 parameters for
  10 classes and 3 input channels (derivation in ``tests/trainables/test_convnets.py``).
* ``resnet56`` / ``cifar_resnet(depth)``: He et al. 2016, Sec. 4.2 (depth = 6n + 2, three
  stages of n BasicBlocks with 16/32/64 channels, option A zero-padding identity shortcuts),
  as in akamaster/pytorch_resnet_cifar10. ResNet56: 853,018 parameters for 10 classes.

Small inputs (CPU twins on 8x8 sklearn digits, shape (1, 8, 8)): both networks end with an
adaptive average pool to 1x1, so the classifier sees a fixed number of features whatever the
input size. VGG's max-pools are ``_MaybeMaxPool2d``: a pool whose 2x2 window no longer fits
(feature map already 1 pixel high or wide) is skipped, so an 8x8 input is pooled
8 -> 4 -> 2 -> 1 and the last two pools are identities. For 32x32 inputs every pool applies and
the adaptive pool sees 1x1, so the network is exactly the reference one. ``width_mult`` scales
every channel count (e.g. 0.125 for a fast CPU twin) and leaves the topology unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# kuangliu/pytorch-cifar cfg['VGG11']: ints are 3x3 conv output channels, "M" a 2x2 max-pool.
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _scaled(channels: int, width_mult: float) -> int:
    """Channel count after width scaling; never below 1 so tiny multipliers still build."""
    return max(1, int(round(channels * width_mult)))


def _check_common(n_classes: int, in_channels: int, width_mult: float) -> None:
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")


class _MaybeMaxPool2d(nn.Module):
    """2x2/stride-2 max-pool that is skipped once the feature map is smaller than the window.

    The decision depends only on the input's spatial shape, so it is deterministic per input size
    (and static under tracing for a fixed size). Without this, VGG's five pools would fail on any
    input smaller than 32x32 (an 8x8 digit reaches 1x1 after three pools).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < 2 or x.shape[-1] < 2:
            return x
        return F.max_pool2d(x, kernel_size=2, stride=2)


class VGG(nn.Module):
    """CIFAR-style VGG: conv(3x3, bias) [+ BN] + ReLU blocks and pools, then one Linear layer."""

    def __init__(
        self,
        cfg: tuple[int | str, ...],
        n_classes: int = 10,
        in_channels: int = 3,
        batch_norm: bool = True,
        width_mult: float = 1.0,
    ):
        super().__init__()
        _check_common(n_classes, in_channels, width_mult)
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in cfg:
            if item == "M":
                layers.append(_MaybeMaxPool2d())
                continue
            c_out = _scaled(int(item), width_mult)
            # Conv bias kept (redundant under BN) to match the reference implementation and its
            # published parameter count exactly.
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        # Identity for 32x32 inputs (already 1x1 after five pools); makes other sizes work.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG init: Kaiming-normal (fan_out, ReLU gain) convs, zero biases, BN as
        # identity, small-normal classifier. (kuangliu's VGG leaves PyTorch defaults; Kaiming is
        # what the brief asks for and what torchvision uses for the BN variants.)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        out: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return out


def vgg11(n_classes: int = 10, in_channels: int = 3, batch_norm: bool = True, width_mult: float = 1.0) -> nn.Module:
    """VGG11 for CIFAR-10 (kuangliu/pytorch-cifar layout); 9,231,114 parameters at width 1 with BN.

    ``batch_norm=False`` drops the BatchNorm2d layers (9,225,610 parameters).
    """
    return VGG(VGG11_CFG, n_classes, in_channels, batch_norm, width_mult)


class _PadShortcut(nn.Module):
    """Option A shortcut (He et al. 2016): subsample by ``stride`` and zero-pad new channels.

    Parameter-free, which is why the CIFAR ResNets have 0.85M rather than ~0.86M parameters.
    The padding is split between both sides of the channel axis as in the reference
    (``planes // 4`` each side when channels double).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # x[..., ::2, ::2] has ceil(H/2) rows, matching a stride-2, pad-1, 3x3 conv on any H.
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with ReLU and an identity (option A) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016 CIFAR ResNet: conv 16, stages of n blocks at 16/32/64 channels, avg pool, Linear."""

    def __init__(self, depth: int, n_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0):
        super().__init__()
        _check_common(n_classes, in_channels, width_mult)
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        widths = [_scaled(c, width_mult) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                # Downsample in the first block of stages 2 and 3 only.
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)  # 8x8 -> 1x1 for CIFAR; any size otherwise
        self.linear = nn.Linear(widths[2], n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # akamaster/pytorch_resnet_cifar10: kaiming_normal_ (fan_in, ReLU gain) on every Conv2d
        # and Linear weight; BN and the Linear bias keep PyTorch defaults (BN = identity).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        logits: torch.Tensor = self.linear(torch.flatten(self.pool(out), 1))
        return logits


def cifar_resnet(depth: int, n_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """CIFAR ResNet of ``depth`` = 6n + 2 layers (8, 20, 32, 44, 56, 110, ...), option A shortcuts."""
    return CifarResNet(depth, n_classes, in_channels, width_mult)


def resnet56(n_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """ResNet56 (n = 9): 853,018 parameters for 10 classes at width 1."""
    return CifarResNet(56, n_classes, in_channels, width_mult)


def resnet20(n_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> nn.Module:
    """ResNet20 (n = 3): 269,722 parameters for 10 classes at width 1; a cheaper twin of ResNet56."""
    return CifarResNet(20, n_classes, in_channels, width_mult)


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
