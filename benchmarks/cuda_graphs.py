"""CUDA-graph variants of the training step (GPU only; used by ``benchmarks.run --device cuda``).

Small-batch steps of a small MLP are launch-bound on a GPU: forward, backward and the SGD update
are ~40 kernels of a few microseconds each. Capturing the whole step (batch gather from a static
index buffer, forward, backward, optimizer update) in one CUDA graph replaces those launches by
one replay per step. This is the documented whole-network capture pattern: grads are set to
None before capture so backward allocates them from the graph's pool.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from trainables.replicas import StackedMLP, StackedSGD, cross_entropy_per_replica


def _capture(body: Callable[[], torch.Tensor], zero_grad: Callable[[], None]) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up outside the graph (cuBLAS workspaces, allocator)
            zero_grad()
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    zero_grad()
    with torch.cuda.graph(graph):
        body()
    return graph


def _time_steps(body, zero, idx: torch.Tensor, perm: torch.Tensor, batch_size: int, steps: int,
                graphed: bool) -> float:
    """Seconds for ``steps`` calls of zero-grad + ``body`` (eager, or one captured CUDA graph),
    copying the next ``batch_size`` indices of ``perm`` (last dim) into the static ``idx`` first."""
    per_epoch = perm.shape[-1] // batch_size
    if graphed:
        run = _capture(body, zero).replay
    else:
        def run() -> None:
            zero()
            body()
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for step in range(steps):
        j = step % per_epoch
        idx.copy_(perm[..., j * batch_size:(j + 1) * batch_size])
        run()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def time_single(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float,
                steps: int, graphed: bool) -> float:
    """Seconds for ``steps`` SGD steps of ``model`` on random batches, eager or as one CUDA graph."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = len(x)
    idx = torch.randperm(n, device=x.device)[:batch_size].clone()
    perm = torch.randperm(n, device=x.device)

    def body() -> torch.Tensor:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        return loss

    def zero() -> None:
        opt.zero_grad(set_to_none=True)

    return _time_steps(body, zero, idx, perm, batch_size, steps, graphed)


def time_replicas(stacked: StackedMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int, lr: float,
                  steps: int, graphed: bool) -> float:
    """Seconds for ``steps`` steps of all K stacked replicas (own batches each), eager or graphed."""
    opt = StackedSGD(stacked.parameters(), lr)
    n, k = len(x), stacked.k
    x = x.flatten(1)
    perms = torch.stack([torch.randperm(n, device=x.device) for _ in range(k)])
    idx = perms[:, :batch_size].clone()

    def body() -> torch.Tensor:
        loss = cross_entropy_per_replica(stacked(x[idx], training=True), y[idx]).sum()
        loss.backward()
        opt.step()
        return loss

    return _time_steps(body, opt.zero_grad, idx, perms, batch_size, steps, graphed)
