"""SGD for a pack: ``torch.optim.SGD``'s update (dampening 0, no Nesterov), each member at its own rate.

The update is elementwise, so applying it to stacked tensors is the same per member as K
separate optimizers. Learning rates live in one device tensor ``neg_lr`` (K,) that the training
loop overwrites in place each epoch: a captured CUDA graph reads the new rates without a
re-capture. Momentum buffers start at zero, which gives torch's first step (``buf = grad``)
exactly (0 * m + g == g) without a branch a graph could not hold.

Plain SGD (no momentum, no weight decay; the paper's setting) folds each member's rate into the
objective instead: the gradient of sum_k(-lr_k * L_k) with respect to member k's parameters is
-lr_k * grad L_k, its whole update, so one fused ``_foreach_add_`` applies every parameter's
update (on a GPU one kernel instead of one per parameter tensor). Same update, float32 round-off
apart (the rate multiplies at the top of the backward pass instead of at the end).
"""

from __future__ import annotations

import torch

from lrbs.trainables.packed_models import Pack


class PackSGD:
    def __init__(self, pack: Pack, k: int, device: torch.device, momentum: float = 0.0, weight_decay: float = 0.0):
        self.momentum, self.weight_decay = momentum, weight_decay
        self.neg_lr = torch.zeros(k, device=device)
        self.bufs: list[torch.Tensor] | None = None
        self.bind(pack)

    def bind(self, pack: Pack) -> None:
        """(Re)bind to the pack's parameters (after members left it)."""
        self.lr = pack.lr_views(self.neg_lr)
        if self.momentum and self.bufs is None:
            self.bufs = [torch.zeros_like(p) for p in pack.params]

    @property
    def folds_lr(self) -> bool:
        return not self.momentum and not self.weight_decay

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar to differentiate for the (K,) per-member mean losses."""
        return (losses * self.neg_lr).sum() if self.folds_lr else losses.sum()

    def set_lr(self, lrs: list[float]) -> None:
        self.neg_lr.copy_(torch.tensor([-lr for lr in lrs]), non_blocking=True)

    def select(self, pack: Pack, keep: list[int]) -> None:
        """Follow ``pack.select(keep)`` (call after it): rates and momentum of the kept members."""
        self.neg_lr = self.neg_lr[torch.tensor(keep, device=self.neg_lr.device)].contiguous()
        if self.bufs is not None:
            self.bufs = pack.select_aligned(self.bufs, keep)
        self.bind(pack)

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> None:
        """Apply the update; ``grads`` are of ``objective(losses)``."""
        grads = list(grads)
        if self.folds_lr:
            torch._foreach_add_(params, grads)
            return
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.bufs is not None:
            torch._foreach_mul_(self.bufs, self.momentum)
            torch._foreach_add_(self.bufs, grads)
            grads = self.bufs
        for p, g, neg_lr in zip(params, grads, self.lr):
            p.addcmul_(g, neg_lr)
