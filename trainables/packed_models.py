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
  A module with its own stacked forward (``StacksItself``: the MLP, one batched matmul per layer)
  runs it; any other ``nn.Module`` runs ``torch.func.vmap`` over ``functional_call`` (batch norm
  per member: its buffers are stacked too).
* ``LoopPack``: the K modules stepped one after another in one process (the default for models
  that do not say they stack, where ``vmap`` measured slower; see ``choose_layout`` and
  docs/performance.md).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.func import functional_call, vmap

from lrbs.trainables.config import ModelConfig
from lrbs.trainables.models import can_stack

LAYOUTS = ("auto", "stacked", "loop")


@runtime_checkable
class StacksItself(Protocol):
    """A module with its own forward on K members' stacked weights (``models.MLP``), which ``StackedPack``
    runs instead of ``torch.func.vmap``; it stacks the parameters ``stacked_transposed`` names transposed."""

    def stacked_transposed(self) -> set[str]: ...

    def stacked_forward(
        self, p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, training: bool
    ) -> torch.Tensor: ...


def choose_layout(model_cfg: ModelConfig, requested: str = "auto") -> str:
    """``requested``, or for ``auto``: ``stacked`` for a model that says it stacks (``can_stack``:
    the MLP, or a user's factory that opts in), ``loop`` for every other model.

    Measured (docs/performance.md): vmap's batched convolutions were slower than members stepped
    one after another in one process on an H100 with CUDA graphs (VGG11, K = 5, S = 50: 10.5 ms
    against 7.7 ms per step; ResNet20: 12.8 against 11.3 ms) and mixed on a CPU, so ``stacked``
    for other models (``train.pack_layout: stacked``) is opt-in."""
    if requested != "auto":
        return requested
    return "stacked" if can_stack(model_cfg) else "loop"


def build_pack(modules: Sequence[nn.Module], layout: str, example_rank: int) -> Pack:
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
        self.own = template if isinstance(template, StacksItself) else None
        # member_tensors / aligned_from_members transpose these back to the module's layout.
        self.transposed = self.own.stacked_transposed() if self.own is not None else set()
        states = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in modules]
        self.params = [
            torch.stack([self._out(n, s[n].detach()) for s in states]).contiguous().requires_grad_()
            for n in self.param_names
        ]
        self.buffers = [torch.stack([s[n].detach() for s in states]) for n in self.buffer_names]
        self.k = len(modules)
        self.rank = example_rank
        # vmap needs a module only for its structure: keep it on the meta device (no memory).
        self.base = None if self.own is not None else copy.deepcopy(template).to("meta")

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
        if not tensors:
            return []
        index = torch.tensor(keep, dtype=torch.long, device=tensors[0].device)
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
        """Per-member inputs (K, B, ...) or a shared input (B, ...) -> (K, B, C)."""
        shared = x.dim() == self.rank + 1
        if self.own is not None:
            if shared:
                # A shared input (evaluation) is copied per member: the same bmm kernels as training,
                # whose results do not depend on memory layout (a broadcast matmul's did, which made a
                # resumed run's val_loss differ from an uninterrupted one's in the 7th digit).
                x = x.unsqueeze(0).expand(self.k, *x.shape).contiguous()
            params, buffers = dict(zip(self.param_names, self.params)), dict(zip(self.buffer_names, self.buffers))
            return self.own.stacked_forward(params, buffers, x, training)
        base = self.base
        assert base is not None  # set whenever the module has no stacked forward of its own
        base.train(training)

        def one(params: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor], xm: torch.Tensor) -> torch.Tensor:
            state = (dict(zip(self.param_names, params)), dict(zip(self.buffer_names, buffers)))
            out: torch.Tensor = functional_call(base, state, (xm,))
            return out

        out: torch.Tensor = vmap(one, in_dims=(0, 0, None if shared else 0))(self.params, self.buffers, x)
        return out

    def count_batches(self, n: int) -> None:
        """Add ``n`` training batches to the MLP's ``num_batches_tracked`` (``nn.BatchNorm1d`` counts
        one per training forward; the pack counts an epoch's at its end, which saves a kernel per
        step; the counter feeds nothing while BN momentum is set). vmap's modules count themselves."""
        counts = [b for name, b in zip(self.buffer_names, self.buffers) if name.endswith("num_batches_tracked")]
        if self.own is not None and counts:
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


Pack = StackedPack | LoopPack
