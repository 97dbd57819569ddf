"""K models trained in lockstep as one: the "pack" that ``lrbs.trainables.train_loop.run_pack`` steps.

A pack holds K members of one architecture (each initialized as its own unpacked run would be)
and offers what the training loop needs, whatever the architecture:

* ``params``: the leaf tensors to differentiate; ``lr_views(neg_lr)`` gives, per parameter, a
  view of the (K,) tensor of negative learning rates that broadcasts to it, so one SGD update
  applies each member's own rate (``lrbs.trainables.pack_sgd``).
* ``forward(x, training)``: per-member inputs (K, S, ...) or one shared input (B, ...) ->
  (K, B, classes) logits. Batch norm is per member: batch statistics of its own S examples and
  its own running statistics.
* ``select(keep)`` drops members (a diverged one leaves the pack) and ``select_aligned`` cuts
  tensors aligned with ``params`` (momentum buffers) the same way.
* ``member_state(j)`` / ``member_tensors(aligned, j)``: member j's weights, or any aligned tensors,
  under the ``state_dict`` names of the equivalent ``nn.Module``, so checkpoints, probes and
  interpolation never depend on how the pack is laid out.

Two layouts:

* ``StackedPack``: every parameter and buffer stacked on a leading member axis (the layout of
  ``torch.func.stack_module_state``: ``stacked[name][j]`` is member j's ``state_dict()[name]``).
  The MLP runs a hand-written forward (one batched matmul per layer, and one fused
  ``batch_norm`` over (S, K*H) channels); any other ``nn.Module`` runs ``torch.func.vmap`` over
  ``functional_call`` (batch norm per member: its buffers are stacked too).
* ``LoopPack``: the K modules stepped one after another in one process (the default for models
  other than the MLP, where ``vmap`` measured slower; see ``choose_layout`` and docs/performance.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lrbs.trainables.models import MLP

LAYOUTS = ("auto", "stacked", "loop")


def stackable(model: nn.Module) -> bool:
    """Whether ``model`` has the hand-written stacked layout (the MLP). The one rule: the layout
    here and ``train.pack: auto`` on the sweep side (sweeps/packing.py) both ask it."""
    return isinstance(model, MLP)


def choose_layout(model: nn.Module, device: torch.device, requested: str = "auto") -> str:
    """``stacked`` for the MLP (its hand-written batched forward), ``loop`` for every other model.

    Measured (docs/performance.md): vmap's batched convolutions were slower than members stepped
    one after another in one process on an H100 with CUDA graphs (VGG11, K = 5, S = 50: 10.5 ms
    against 7.7 ms per step; ResNet20: 12.8 against 11.3 ms) and mixed on a CPU, so ``stacked``
    for other models (``train.pack_layout: stacked``) is opt-in. ``device`` is kept for the rule
    to depend on it if a device ever measures the other way."""
    if requested != "auto":
        return requested
    return "stacked" if stackable(model) else "loop"


def build_pack(modules: Sequence[nn.Module], layout: str, example_rank: int) -> StackedPack | LoopPack:
    """``example_rank``: dims of one example (1 for flat features, 3 for images), which tells a
    shared input (B, ...) from per-member inputs (K, B, ...)."""
    return (StackedPack if layout == "stacked" else LoopPack)(modules, example_rank)


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # A copy with its own storage: saving a view of a stacked tensor would save all K members.
    return t.detach().to("cpu", copy=True)


class StackedPack:
    def __init__(self, modules: Sequence[nn.Module], example_rank: int):
        if not modules:
            raise ValueError("a pack needs at least one model")
        template = modules[0]
        self.param_names = [name for name, _ in template.named_parameters()]
        self.buffer_names = [name for name, _ in template.named_buffers()]
        self.mlp = template if isinstance(template, MLP) else None
        # The MLP's Linear weights are stacked transposed, (K, in, out): bmm's backward then
        # yields contiguous gradients (a transposed view's gradient is strided, which made the
        # update ~2x slower on CPU). member_tensors / aligned_from_members transpose them back.
        self.transposed = {
            n
            for n in self.param_names
            if self.mlp is not None
            and n.endswith("weight")
            and isinstance(self.mlp.net[int(n.split(".")[1])], nn.Linear)
        }
        states = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in modules]
        self.params = [
            torch.stack([self._out(n, s[n].detach()) for s in states]).contiguous().requires_grad_()
            for n in self.param_names
        ]
        self.buffers = [torch.stack([s[n].detach() for s in states]) for n in self.buffer_names]
        self.k = len(modules)
        self.rank = example_rank
        # vmap needs a module only for its structure: keep it on the meta device (no memory).
        self.base = None if self.mlp is not None else copy.deepcopy(template).to("meta")

    def _out(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Module layout <-> stacked layout of one member's tensor (its own inverse)."""
        return t.t() if name in self.transposed else t

    def lr_views(self, neg_lr: torch.Tensor) -> list[torch.Tensor]:
        return [neg_lr.view(-1, *([1] * (p.dim() - 1))) for p in self.params]

    def select(self, keep: list[int]) -> None:
        self.params = [t.requires_grad_() for t in self.select_aligned([p.detach() for p in self.params], keep)]
        self.buffers = self.select_aligned(self.buffers, keep)
        self.k = len(keep)

    @staticmethod
    def select_aligned(tensors: list[torch.Tensor], keep: list[int]) -> list[torch.Tensor]:
        index = torch.tensor(keep, dtype=torch.long, device=tensors[0].device) if tensors else None
        return [t.index_select(0, index).contiguous() for t in tensors]

    def member_tensors(self, aligned: list[torch.Tensor], j: int) -> dict[str, torch.Tensor]:
        return {name: _cpu_copy(self._out(name, t[j])) for name, t in zip(self.param_names, aligned)}

    def aligned_from_members(
        self, dicts: list[dict[str, torch.Tensor]], like: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        return [
            torch.stack([self._out(n, d[n]) for d in dicts]).to(p.device, p.dtype).contiguous()
            for n, p in zip(self.param_names, like)
        ]

    def member_state(self, j: int) -> dict[str, torch.Tensor]:
        out = self.member_tensors(self.params, j)
        out.update({name: _cpu_copy(b[j]) for name, b in zip(self.buffer_names, self.buffers)})
        return out

    def forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.mlp is not None:
            return self._mlp_forward(x, training)
        from torch.func import functional_call, vmap

        self.base.train(training)
        names = (self.param_names, self.buffer_names)

        def one(params, buffers, xm):
            return functional_call(self.base, (dict(zip(names[0], params)), dict(zip(names[1], buffers))), (xm,))

        shared = x.dim() == self.rank + 1
        return vmap(one, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)

    def _mlp_forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """The MLP's layers on stacked weights: (K, B, ...) or shared (B, ...) -> (K, B, C)."""
        p = dict(zip(self.param_names, self.params))
        b = dict(zip(self.buffer_names, self.buffers))
        if x.dim() == self.rank + 1:
            # A shared input (evaluation) is copied per member: the same bmm kernels as training,
            # whose results do not depend on memory layout (a broadcast matmul's did, which made a
            # resumed run's val_loss differ from an uninterrupted one's in the 7th digit).
            x = x.unsqueeze(0).expand(self.k, *x.shape).contiguous()
        h = x.flatten(2)
        for i, module in enumerate(self.mlp.net):
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

    def count_batches(self, n: int) -> None:
        """Add ``n`` training batches to the MLP's ``num_batches_tracked`` (``nn.BatchNorm1d`` counts
        one per training forward; the pack counts an epoch's at its end, which saves a kernel per
        step; the counter feeds nothing while BN momentum is set). vmap's modules count themselves."""
        counts = [b for name, b in zip(self.buffer_names, self.buffers) if name.endswith("num_batches_tracked")]
        if self.mlp is not None and counts:
            torch._foreach_add_(counts, n)


class LoopPack:
    def __init__(self, modules: Sequence[nn.Module], example_rank: int):
        if not modules:
            raise ValueError("a pack needs at least one model")
        self.modules = list(modules)
        self.rank = example_rank

    @property
    def k(self) -> int:
        return len(self.modules)

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for m in self.modules for p in m.parameters()]

    @property
    def _per_member(self) -> int:
        """Parameter tensors per member (one architecture: the same for all)."""
        return sum(1 for _ in self.modules[0].parameters())

    def lr_views(self, neg_lr: torch.Tensor) -> list[torch.Tensor]:
        return [neg_lr[j] for j in range(self.k) for _ in range(self._per_member)]

    def select(self, keep: list[int]) -> None:
        self.modules = [self.modules[j] for j in keep]

    def select_aligned(self, tensors: list[torch.Tensor], keep: list[int]) -> list[torch.Tensor]:
        # Split by the fixed count per member, not by the current modules: ``tensors`` may still
        # cover the members that ``select`` has just dropped.
        per = self._split(tensors)
        return [t for j in keep for t in per[j]]

    def _split(self, tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        c = self._per_member
        return [tensors[i : i + c] for i in range(0, len(tensors), c)]

    def member_tensors(self, aligned: list[torch.Tensor], j: int) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self.modules[j].named_parameters()]
        return {n: _cpu_copy(t) for n, t in zip(names, self._split(aligned)[j])}

    def aligned_from_members(
        self, dicts: list[dict[str, torch.Tensor]], like: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        names = [[n for n, _ in m.named_parameters()] for m in self.modules]
        flat = [d[n] for d, ns in zip(dicts, names) for n in ns]
        return [t.to(p.device, p.dtype) for t, p in zip(flat, like)]

    def member_state(self, j: int) -> dict[str, torch.Tensor]:
        return {n: _cpu_copy(t) for n, t in self.modules[j].state_dict().items()}

    def count_batches(self, n: int) -> None:
        """The modules count their own batches."""

    def forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        shared = x.dim() == self.rank + 1
        outs = []
        for j, m in enumerate(self.modules):
            m.train(training)
            outs.append(m(x if shared else x[j]))
        return torch.stack(outs)
