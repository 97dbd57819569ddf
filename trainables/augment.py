"""Data augmentation on device tensors: random crop (zero padding) and horizontal flip.

``train.augment: crop_flip`` (off by default) is the usual CIFAR-10 recipe: pad each image by
``CROP_PAD`` pixels of zeros, take a random H x W crop, flip it left-right with probability 1/2.
Every example of every step gets its own draw; the draws of an epoch come from the member's own
batch-order generator (on the CPU, like its permutation), so a run is deterministic, a packed
member draws exactly what it would alone, and a restart from a checkpoint continues the same
stream. The draws travel to the device once per epoch and are sliced per step like the batch
indices, so a CUDA-graphed step replays with new draws. No DataLoader and no per-item Python.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "crop_flip")
CROP_PAD = 4  # pixels of zero padding on each side (the standard CIFAR-10 crop)


def draw(kind: str, n: int, gen: torch.Generator) -> torch.Tensor | None:
    """(n, 3) int64 draws for one member's epoch: crop row offset, column offset, flip bit."""
    if kind == "none":
        return None
    offsets = torch.randint(0, 2 * CROP_PAD + 1, (n, 2), generator=gen)
    flips = torch.randint(0, 2, (n, 1), generator=gen)
    return torch.cat([offsets, flips], dim=1)


def apply(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crop and flip a batch of images ``x`` (B, C, H, W) with ``params`` (B, 3) from ``draw``."""
    b, c, h, w = x.shape
    padded = F.pad(x, (CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD))
    rows = params[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = params[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    flip = params[:, 2:3].bool()
    cols = torch.where(flip, cols.flip(1), cols)  # a flip reverses the columns
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2)
