"""Curvature and gradient-noise probes over a model, a loss and FIXED batches.

Everything here is a pure function of ``(model, loss_fn, batches)``:

* **Mode.** During a probe every module is put in inference mode (``model.eval()``), so batch
  norm uses its running statistics and the loss is a deterministic function of the parameters
  (the paper's notes: "batch norm in inference mode", the same for every run). Afterwards the
  ``training`` flag of *every* submodule is restored exactly as it was (also a mixed state,
  also when the probe raises).
* **State.** Parameters and buffers are never written (``interpolate`` writes them and puts the
  originals back bit for bit, also on exceptions); gradients are taken with
  ``torch.autograd.grad``, so no ``.grad`` attribute is touched.
* **Parameters.** Only parameters with ``requires_grad=True`` count; the Hessian is the one of
  the loss with respect to those, flattened in ``model.parameters()`` order.
* **Loss.** ``loss_fn(output, y)`` returns the *mean* loss of the examples of one batch; over a
  list of batches the loss is the mean over all examples (batches weighted by their size), so
  splitting a probe set into batches changes nothing but memory.
* **Randomness.** Probe vectors and sampled batches come from a seeded ``torch.Generator`` on
  the CPU and are then moved to the model's device: the same seed gives the same probes on CPU
  and GPU (results agree up to float error).
* **Errors.** Estimates come with their error in small frozen dataclasses: Hutchinson estimates
  carry a standard error, eigenvalue solvers say whether they converged (and never claim so
  when they ran out of iterations), the noise scale carries standard errors too. A standard
  error ``se`` is meant for ``value +- 1.96 se`` as a 95% interval: where the sampling
  distribution is skewed or the error estimate itself rests on few samples, ``se`` is the
  larger side of a 95% interval divided by 1.96 (measured coverage: docs/curvature.md).
* **Kernels.** Every probe runs its model under ``double_backward_kernels`` (entered by
  ``probe_mode``): attention through the math kernel and, in models with recurrent layers,
  cuDNN off, because the fused kernels have no double backward (docs/extending.md).
* **GPU.** Loops keep their values on the device; the host synchronisations that remain are
  marked ``# GPU sync`` (the eigen-solvers need one scalar pair per iteration for their
  convergence test; the Monte-Carlo estimators sync once at the end).

Sharpness convention: :func:`top_eigenvalue` returns the largest *algebraic* eigenvalue of the
Hessian (the paper's sharpness), not the largest in magnitude. Lanczos gives it directly (the
largest Ritz value); power iteration finds the eigenvalue of largest magnitude, and when that
one is negative a second, shifted power iteration on ``H - mu I`` finds the largest algebraic
one (its HVPs are counted too).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from scipy import special
from torch import nn
from torch.autograd.graph import Node
from torch.nn.attention import SDPBackend, sdpa_kernel

Tensor = torch.Tensor
Batches = list[tuple[Tensor, Tensor]]  # the fixed probe subset, already on the model's device
LossFn = Callable[[Tensor, Tensor], Tensor]
SqNorms = TypeVar("SqNorms", float, np.ndarray)  # one mean, or one value per pair


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Estimate:
    """A Monte-Carlo estimate with its standard error over ``n_probes`` probes."""

    value: float
    stderr: float
    n_probes: int


@dataclass(frozen=True)
class EigResult:
    """Largest algebraic Hessian eigenvalue.

    ``n_hvp``: Hessian-vector products spent. ``converged``: the convergence test passed within
    ``max_iters`` (False when the iterations ran out -- the value is then only a lower bound for
    Lanczos, and unreliable for power iteration). ``rel_change``: relative change of the estimate
    at the last iteration (inf after a single iteration). ``residual``: ``||H y - value y||`` for
    the returned unit vector ``y`` (some eigenvalue of H lies within it of ``value``).
    """

    value: float
    n_hvp: int
    converged: bool
    rel_change: float
    method: str
    residual: float = math.nan


@dataclass(frozen=True)
class NoiseScaleResult:
    """Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), in examples.

    ``g2``: estimate of |G|^2, the squared norm of the full-data mean gradient.
    ``trace_sigma``: estimate of tr(Sigma), Sigma the *per-example* gradient covariance over the
    data passed in, population convention (``mean_i ||g_i - G||^2``, divide by N).
    Both are unbiased; their ratio ``b_simple`` is consistent but biased for few pairs, and can
    be negative or infinite when the |G|^2 estimate is noise-dominated (small or negative g2).
    ``gradient_noise_scale``: standard errors over the ``n_pairs`` independent (small, big)
    batch pairs, the one of ``b_simple`` from Fieller's interval for a ratio of means (inf when
    the |G|^2 estimate cannot be told from 0). ``gradient_noise_scale_full``: |G|^2 exact
    (``g2_stderr`` 0), ``n_pairs`` small batches that cover the set in whole passes, the
    standard errors from products of neighbouring batches' gradient differences.
    """

    b_simple: float
    g2: float
    trace_sigma: float
    b_small: int
    b_big: int
    n_pairs: int
    n_samples: int  # examples drawn in all: n_pairs * (b_small + b_big)
    b_simple_stderr: float = math.nan
    g2_stderr: float = math.nan
    trace_sigma_stderr: float = math.nan
    g2_small: float = math.nan  # mean of |G_small|^2 over the pairs
    g2_big: float = math.nan  # mean of |G_big|^2 over the pairs
    replace: bool = True


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def double_backward_kernels(model: nn.Module) -> Iterator[None]:
    """Kernels that Hessian-vector products (a backward through a backward) can run through.

    * Attention (``F.scaled_dot_product_attention``, which ``nn.MultiheadAttention`` and
      ``nn.TransformerEncoderLayer`` call) through the math kernel: the fused ones (flash on CPU
      and GPU, memory-efficient, cuDNN) have no derivative of their backward.
    * cuDNN off while a model holds a recurrent layer (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``): cuDNN's
      RNN backward runs only in training mode, and probes run in eval mode. Convolutions of
      other models keep cuDNN (their double backward works, and is much faster with it).
    * Autocast off on the model's device: probes compute in float32 even when called inside an
      autocast region (a bf16 training step's, ``train.precision``).

    The first two are process-wide flags, restored on exit (also on exceptions).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        first = next(iter(model.parameters()), None)
        if first is not None:
            stack.enter_context(torch.autocast(first.device.type, enabled=False))
        if any(isinstance(m, nn.RNNBase) for m in model.modules()):
            # the one flag set directly: cudnn.flags() also reads the TF32 flags, which raises once
            # code has set them through both torch's old and new APIs
            enabled = torch.backends.cudnn.enabled
            torch.backends.cudnn.enabled = False
            stack.callback(setattr, torch.backends.cudnn, "enabled", enabled)
        yield


@contextlib.contextmanager
def probe_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in inference mode for a probe, under ``double_backward_kernels``; restore
    every submodule's flag afterwards.

    Flags are restored by direct assignment (not ``.train()``), so mixed states (a frozen
    submodule in eval inside a training model) come back exactly, also on exceptions.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with double_backward_kernels(model):
            yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _params(model: nn.Module) -> list[Tensor]:
    params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters with requires_grad=True")
    return params


def _check_batches(batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[list[tuple[Tensor, Tensor]], int]:
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty")
    sizes = [int(x.shape[0]) for x, _ in batches]
    if any(s <= 0 for s in sizes):
        raise ValueError("every batch needs at least one example")
    return batches, sum(sizes)


def _flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for p in like:
        n = p.numel()
        out.append(vec[i : i + n].view_as(p).to(p.dtype))
        i += n
    return out


def _grads_or_zeros(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def _flat_dtype(params: Sequence[Tensor]) -> torch.dtype:
    dtype = params[0].dtype
    for p in params[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Host -> device copy that does not block the host on CUDA (pinned, non_blocking); a copy
    from pageable memory would synchronise the stream first."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _rademacher(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Drawn on the CPU generator, then moved: identical probes on every device. The +-1 are
    # made on the host in int8 (a quarter of the bytes to move), cast on the device.
    v = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8).mul_(2).sub_(1)
    return _to_device(v, device).to(dtype)


def _gaussian_unit(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    v /= v.norm()
    return _to_device(v.to(dtype), device)


# ----------------------------------------------------------------------------- data


def probe_subset(n_total: int, n_samples: int, seed: int) -> Tensor:
    """Sorted indices (CPU int64) of a seeded random subset of ``n_samples`` out of ``n_total``."""
    if not 0 < n_samples <= n_total:
        raise ValueError(f"need 0 < n_samples <= n_total, got n_samples={n_samples}, n_total={n_total}")
    perm = torch.randperm(int(n_total), generator=_generator(seed))
    return perm[: int(n_samples)].sort().values


def make_batches(
    x: Tensor, y: Tensor, indices: Tensor | None = None, batch_size: int = 1000
) -> list[tuple[Tensor, Tensor]]:
    """Split ``(x[indices], y[indices])`` into consecutive batches of at most ``batch_size``.

    The batches live on ``x``'s device; ``indices=None`` takes all examples in order.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    if x.shape[0] != y.shape[0]:
        raise ValueError("x and y differ in their number of examples")
    if indices is not None:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x, y = x[idx.to(x.device)], y[idx.to(y.device)]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]


# ----------------------------------------------------------------------------- first and second order


def _loss_and_grad(
    model: nn.Module, loss_fn: LossFn, batches: Batches, params: Sequence[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """Weighted mean loss (0-d tensor, on device) and its gradient; assumes probe mode is on."""
    batches, total = _check_batches(batches)
    loss_sum: Tensor | None = None
    grad_sum = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        w = x.shape[0] / total
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            loss = loss_fn(model(x), y) * w
            grads = _grads_or_zeros(torch.autograd.grad(loss, params, allow_unused=True), params)
        torch._foreach_add_(grad_sum, grads)
        loss = loss.detach()
        loss_sum = loss if loss_sum is None else loss_sum + loss
    assert loss_sum is not None  # batches is not empty
    return loss_sum, grad_sum


def loss_and_grad(model: nn.Module, loss_fn: LossFn, batches: Batches) -> tuple[float, list[Tensor]]:
    """Mean loss over all examples in ``batches`` (batches weighted by size) and its gradient.

    Gradients are returned as new tensors, one per trainable parameter; ``.grad`` is untouched.
    """
    params = _params(model)
    with probe_mode(model):
        loss, grads = _loss_and_grad(model, loss_fn, batches, params)
    return float(loss), grads  # GPU sync: the loss as a Python float


def _check_twice_differentiable(grads: Sequence[Tensor | None]) -> None:
    """Raise where the graph of the first-order gradients holds a node that has no derivative of
    its own and that the double backward would skip: the output of a custom
    ``autograd.Function`` whose backward is marked ``@once_differentiable`` hangs off a stand-in
    leaf, so ``autograd.grad`` with respect to the parameters never reaches its error and leaves
    its terms out of ``H v`` without a word. The walk visits each node once: little next to
    the HVP that follows."""
    stack: list[Node | None] = [g.grad_fn for g in grads if g is not None and g.grad_fn is not None]
    # Nodes seen, kept alive: Python wrappers of graph nodes are made on demand, and the id of a
    # freed one can come back as another node's.
    seen: dict[int, object] = {}
    stop, once = False, set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        if type(node).__name__ in ("Error", "DelayedError"):  # torch's nodes that raise when differentiated
            stop = True
        cls: Any = getattr(node, "_forward_cls", None)  # a custom Function's backward node
        code = getattr(getattr(cls, "backward", None), "__code__", None)  # functools.wraps keeps only the name
        if code is not None and code.co_qualname.startswith("once_differentiable"):
            once.add(cls.__name__)
        stack.extend(f for f, _ in node.next_functions)
    if stop:
        raise RuntimeError(
            "trying to differentiate twice a function that was marked with @once_differentiable"
            + (f" (custom autograd.Function {', '.join(sorted(once))})" if once else "")
        )


class HessianOperator:
    """``H v`` of the example-weighted mean loss over fixed ``batches``: the one HVP routine
    every estimator here uses (double backward). Use it inside ``probe_mode`` (eval mode, and
    the kernels that have a double backward: ``double_backward_kernels``).

    With ``retain_graph`` the first-order gradient graph of every batch is built once and kept
    for all products, so each product is one double backward instead of a forward, a backward
    with ``create_graph`` and a double backward: about half the time on the quickstart model.
    The memory for those graphs grows with the number of probe examples, so big convnets on
    small GPUs may want it off (``curvature.retain_graph: false``).
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, batches: Batches, params: Sequence[Tensor], retain_graph: bool = False
    ):
        self.model, self.loss_fn, self.params = model, loss_fn, list(params)
        self.batches, self.total = _check_batches(batches)
        self._graphs = [self._first_order(x, y) for x, y in self.batches] if retain_graph else None

    def _first_order(self, x: Tensor, y: Tensor) -> tuple[Tensor | None, ...]:
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            loss = self.loss_fn(self.model(x), y) * (x.shape[0] / self.total)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        _check_twice_differentiable(grads)
        return grads

    def __call__(self, vecs: Sequence[Tensor]) -> list[Tensor]:
        vecs = [v.to(device=p.device, dtype=p.dtype) for v, p in zip(vecs, self.params)]
        out = [torch.zeros_like(p) for p in self.params]
        graphs = self._graphs if self._graphs is not None else (self._first_order(x, y) for x, y in self.batches)
        with torch.enable_grad():
            for grads in graphs:
                used = [(g, v) for g, v in zip(grads, vecs) if g is not None]
                if not used:
                    continue
                first, *rest = [(g * v).sum() for g, v in used]
                dot = sum(rest, first)
                if not dot.requires_grad:  # loss linear in every parameter: H = 0 on this batch
                    continue
                hv = torch.autograd.grad(dot, self.params, allow_unused=True, retain_graph=self._graphs is not None)
                torch._foreach_add_(out, _grads_or_zeros(hv, self.params))
        return out

    def flat(self, vec: Tensor) -> Tensor:
        return _flatten(self(_unflatten(vec, self.params))).to(vec.dtype)


def hvp(model: nn.Module, loss_fn: LossFn, batches: Batches, vecs: Sequence[Tensor]) -> list[Tensor]:
    """Hessian-vector product ``H v`` of the mean loss over ``batches`` (double backward).

    ``vecs`` holds one tensor per trainable parameter (shapes as the parameters). The Hessian
    is the one of the example-weighted mean loss, so it does not depend on how the probe set
    is cut into batches. A one-off ``HessianOperator`` product. No host sync.
    """
    params = _params(model)
    vecs = list(vecs)
    if len(vecs) != len(params) or any(v.shape != p.shape for v, p in zip(vecs, params)):
        raise ValueError("vecs must hold one tensor per trainable parameter, shaped like it")
    with probe_mode(model):
        return HessianOperator(model, loss_fn, batches, params)(vecs)


# ----------------------------------------------------------------------------- top eigenvalue


def _rel(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


def _lanczos(op: HessianOperator, params: Sequence[Tensor], *, max_iters: int, tol: float, seed: int) -> EigResult:
    n = sum(p.numel() for p in params)
    dtype, device = _flat_dtype(params), params[0].device
    m = min(int(max_iters), n)
    basis = torch.empty(m + 1, n, dtype=dtype, device=device)  # Lanczos vectors as rows
    basis[0] = _gaussian_unit(n, _generator(seed), dtype, device)
    alphas: list[float] = []
    betas: list[float] = []
    theta_prev = math.nan
    value, rel_change, residual, converged = math.nan, math.inf, math.inf, False
    n_hvp = 0
    for j in range(m):
        v = basis[j]
        w = op.flat(v)
        n_hvp += 1
        alpha = torch.dot(w, v)
        w = w - alpha * v
        if j > 0:
            w = w - betas[-1] * basis[j - 1]
        # Full reorthogonalisation against every Lanczos vector so far, twice (DGKS).
        for _ in range(2):
            q = basis[: j + 1]
            w = w - q.T @ (q @ w)
        beta = torch.linalg.vector_norm(w)
        ab = torch.stack([alpha, beta]).double().cpu()  # GPU sync: one per Lanczos step
        alphas.append(float(ab[0]))
        beta_f = float(ab[1])
        t = np.diag(alphas)
        if betas:
            off = np.asarray(betas)
            t += np.diag(off, 1) + np.diag(off, -1)
        evals, evecs = np.linalg.eigh(t)
        theta = float(evals[-1])
        residual = abs(beta_f * float(evecs[-1, -1]))  # ||H y - theta y|| for the Ritz vector y
        rel_change = math.inf if j == 0 else _rel(theta, theta_prev)
        value = theta
        scale = max(abs(theta), 1e-30)
        # Invariant subspace: beta ~ 0 (relative to the spectrum seen) means T_j's eigenvalues
        # are exact eigenvalues of H restricted to the Krylov space.
        eps = torch.finfo(dtype).eps
        invariant = beta_f <= 10 * eps * max(float(np.abs(evals).max()), 1e-30)
        if invariant or rel_change < tol or residual < tol * scale:
            converged = True
            break
        theta_prev = theta
        if j + 1 < m:
            basis[j + 1] = w / beta
            betas.append(beta_f)
    return EigResult(
        value=value, n_hvp=n_hvp, converged=converged, rel_change=rel_change, method="lanczos", residual=residual
    )


def _power(
    op: HessianOperator, params: Sequence[Tensor], *, max_iters: int, tol: float, seed: int, shift: float = 0.0
) -> tuple[float, int, bool, float, float]:
    """Power iteration on ``A = H - shift I``.

    Returns (Rayleigh quotient of H, n_hvp, converged, rel_change, residual): the convergence
    test is on the eigenvalue of H itself (``lam_A + shift``), so a shift does not loosen it;
    the residual ``||A v - lam_A v|| = ||H v - lam_H v||`` is the same for both.
    """
    n = sum(p.numel() for p in params)
    dtype, device = _flat_dtype(params), params[0].device
    v = _gaussian_unit(n, _generator(seed), dtype, device)
    lam_prev = math.nan
    lam, rel_change, residual, converged, n_hvp = math.nan, math.inf, math.inf, False, 0
    for k in range(int(max_iters)):
        w = op.flat(v)
        n_hvp += 1
        if shift:
            w = w - shift * v
        lam_t = torch.dot(w, v)  # Rayleigh quotient of A (v has unit norm)
        res_t = torch.linalg.vector_norm(w - lam_t * v)
        w_norm = torch.linalg.vector_norm(w)
        s = torch.stack([lam_t, res_t, w_norm]).double().cpu()  # GPU sync: one per iteration
        lam, residual, w_norm_f = float(s[0]) + shift, float(s[1]), float(s[2])
        rel_change = math.inf if k == 0 else _rel(lam, lam_prev)
        if w_norm_f == 0.0:  # A v = 0: v is an eigenvector of H with eigenvalue shift
            converged = True
            break
        if rel_change < tol or residual < tol * max(abs(lam), 1e-30):
            converged = True
            break
        lam_prev = lam
        v = w / w_norm
    return lam, n_hvp, converged, rel_change, residual


def top_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    max_iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    method: str = "lanczos",
    retain_graph: bool = False,
) -> EigResult:
    """Largest algebraic eigenvalue of the Hessian of the mean loss over ``batches``.

    ``method="lanczos"``: Lanczos with full reorthogonalisation, ``max_iters`` steps (one HVP
    each), from a seeded Gaussian start. ``method="power"``: power iteration, ``max_iters`` HVPs
    per phase; if the dominant eigenvalue is negative a second, shifted phase (at most another
    ``max_iters`` HVPs) finds the largest algebraic one.

    Converged when the estimate changes by less than ``tol`` (relative) between iterations, or
    the residual ``||H y - value y||`` drops below ``tol * |value|``. When neither happens within
    ``max_iters`` the result says ``converged=False``. ``tol`` bounds the last step's change, not
    the error: on the quickstart MLP, Lanczos at tol=1e-3 stopped after 6 HVPs at 1.3e-3 relative
    error (tol=1e-6: 11 HVPs, ~1e-7), so ask for tol ~ 1e-4 when 1e-3 accuracy matters. Caveat for
    power iteration: with a small
    eigen-gap the per-step change can fall below ``tol`` long before the error does (the error
    is about change / (1 - (lambda_2/lambda_1)^2)); check ``residual`` when it matters.
    """
    if max_iters < 1:
        raise ValueError("max_iters must be >= 1")
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    params = _params(model)
    with probe_mode(model):
        op = HessianOperator(model, loss_fn, batches, params, retain_graph=retain_graph)
        if method == "lanczos":
            return _lanczos(op, params, max_iters=max_iters, tol=tol, seed=seed)
        lam, n_hvp, conv, rel, res = _power(op, params, max_iters=max_iters, tol=tol, seed=seed)
        if lam < 0:
            # The dominant eigenvalue is negative: every eigenvalue of A = H - lam I is >= 0
            # (up to the error in lam) and A's dominant one is lambda_max - lam, so a second
            # power iteration on A finds the largest algebraic eigenvalue of H.
            lam2, n2, conv2, rel2, res2 = _power(op, params, max_iters=max_iters, tol=tol, seed=seed + 1, shift=lam)
            return EigResult(
                value=lam2, n_hvp=n_hvp + n2, converged=conv and conv2, rel_change=rel2, method="power", residual=res2
            )
        return EigResult(value=lam, n_hvp=n_hvp, converged=conv, rel_change=rel, method="power", residual=res)


# ----------------------------------------------------------------------------- trace and Frobenius

_Z95 = 1.959963984540054  # two-sided 95% quantile of the normal: a 95% half-width / _Z95 = stderr
# Fewest products of neighbouring batch-gradient differences the full-set noise scale estimates
# its standard error from (gradient_noise_scale_full): more passes over small training sets.
MIN_NEIGHBOUR_PRODUCTS = 8


def _mean_stderr(samples: Tensor) -> tuple[float, float]:
    s = samples.double().cpu().numpy()  # GPU sync: once, after all probes
    mean = float(s.mean())
    stderr = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else math.nan
    return mean, stderr


def _frobenius_and_stderr(top_sq: float, gram: np.ndarray) -> tuple[float, float]:
    """``||H||_F = sqrt(top_sq + mean_i ||H p_i||^2)`` and its standard error.

    ``gram[i, j] = (H p_i) . (H p_j)`` over the ``r`` random probes ``p_i = P g_i`` (``g_i``
    Rademacher, ``P`` the projection off the sketch; ``P = I`` for plain Hutchinson), so
    ``x_i = gram[i, i] = g_i^T A g_i`` with ``A = P H^2 P``: positive, right-skewed quadratic
    forms dominated by A's few largest eigenvalues. Their sample variance is small exactly when
    their mean is (the probes missed those directions), which made the old delta-method
    intervals too narrow and low (docs/curvature.md). Instead:

    * ``Var x = 2 (||A||_F^2 - sum_l A_ll^2) <= 2 ||A||_F^2``, and for independent probes
      ``E (g_i^T A g_j)^2 = ||A||_F^2``: ``2 mean_{i<j} gram_ij^2`` estimates that bound from
      all ``r (r - 1) / 2`` cross products, already computed (no extra HVP).
    * The mean of ``r`` such forms is close to a scaled chi-square (Satterthwaite):
      ``mean ~ E chi2_nu / nu`` with ``nu = 2 r mean^2 / Var x``, which gives a 95% interval
      for ``E = tr(A)``; the sketch's part ``top_sq`` is exact given the sketch.
    * The interval for ``||H||_F`` is the square root of the one for ``top_sq + E``; the
      standard error is its larger side (the upper one) over 1.96, so ``value +- 1.96 se``
      contains it, widened by ``sqrt((r - 1) / (r - 3))`` because ``Var x`` is estimated from
      the same ``r`` probes (as the trace's standard error is).

    NaN for fewer than 4 random probes (as the trace's).
    """
    r = gram.shape[0]
    x = np.diag(gram)
    mean = float(x.mean()) if r else 0.0
    frob = math.sqrt(max(top_sq + mean, 0.0))
    if r < 4:
        return frob, math.nan
    iu = np.triu_indices(r, 1)
    var_x = 2.0 * float(np.mean(gram[iu] ** 2))
    if var_x <= 0.0 or mean <= 0.0:  # H p = 0 for every probe: the rest of H is 0 on the probes' span
        return frob, 0.0
    nu = 2.0 * r * mean**2 / var_x
    lo = nu * mean / float(special.chdtri(nu, 0.025))  # chdtri(nu, p): the upper-p chi2_nu quantile
    hi = nu * mean / float(special.chdtri(nu, 0.975))
    f_lo, f_hi = math.sqrt(max(top_sq + lo, 0.0)), math.sqrt(top_sq + hi)
    # var_x is itself estimated from r probes: widen as the trace does (the variance of a t
    # statistic with r - 1 dof), or the interval undercovers when the sketch leaves a bulk-like rest
    return frob, max(f_hi - frob, frob - f_lo) / _Z95 * math.sqrt((r - 1) / (r - 3))


def hessian_trace_and_frobenius(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Batches,
    *,
    n_probes: int = 32,
    seed: int = 0,
    retain_graph: bool = False,
    method: str = "hutch++",
) -> tuple[Estimate, Estimate]:
    """Estimates of Tr(H) and ||H||_F from the SAME ``n_probes`` Hessian-vector products.

    ``method="hutchinson"``: for Rademacher ``v``, ``E v^T H v = Tr(H)`` and ``E ||H v||^2 =
    Tr(H^2) = ||H||_F^2``, averaged over ``n_probes`` probes.

    ``method="hutch++"`` (default; Meyer et al. 2021): ``k`` HVPs sketch the top of the spectrum
    (``Q = orth(H S)``, ``S`` Rademacher), ``k`` more give ``H Q``, whose part of the trace and of
    ``Tr(H^2)`` is exact (``tr(Q^T H Q)``, ``||H Q||_F^2``), and the remaining ``r = n_probes -
    2k`` Rademacher probes, projected off ``Q`` (``p = (I - Q Q^T) g``), estimate the rest without
    bias (``E p^T H p = tr(H (I - QQ^T))``, ``E ||H p||^2 = tr(H^2 (I - QQ^T))``). Where a few
    large outlier eigenvalues dominate the variance of plain Hutchinson and the sketch catches
    them, the error is several times smaller at the same HVP count; where they do not dominate,
    the HVPs spent on the sketch leave fewer probes for the rest and the error is about the same
    or somewhat larger (measured at 16 HVPs in docs/curvature.md: from 13x smaller to 1.3x
    larger). ``k`` is a quarter of the HVPs, cut so that ``r >= 8`` (``n_probes < 12``: plain
    Hutchinson).

    Standard errors are over the random probes (the exact part has none given ``Q``). The
    trace's: the sample standard error scaled by ``sqrt((r - 1) / (r - 3))`` (the variance of a
    t statistic with ``r - 1`` degrees of freedom) and floored by ``sqrt(2 mean ||H p||^2 /
    r)``, a bound on its true value. ``||H||_F``'s: a scaled chi-square interval for the mean
    of the skewed ``||H p||^2``, its variance from the cross products ``(H p_i) . (H p_j)``
    (``_frobenius_and_stderr``). Measured calibration (docs/curvature.md,
    remeasure/measurement_check.py): the trace's intervals are conservative, the Frobenius
    norm's cover ~95%. The ``r`` vectors ``H p`` are kept for those cross products (``r * n``
    values, fewer than Lanczos' basis at its default 20 steps). NaN for fewer than 4 random
    probes. No host sync until the end.
    """
    if n_probes < 1:
        raise ValueError("n_probes must be >= 1")
    if method not in ("hutch++", "hutchinson"):
        raise ValueError(f"method must be 'hutch++' or 'hutchinson', got {method!r}")
    params = _params(model)
    n = sum(p.numel() for p in params)
    dtype, device = _flat_dtype(params), params[0].device
    gen = _generator(seed)
    m = int(n_probes)
    # Sketch size: a quarter of the HVPs (Meyer et al. use a third), leaving >= 8 random probes:
    # an outlier eigenvalue the sketch misses makes the projected quadratic forms heavy-tailed,
    # and few of them then understate the standard error (measured: docs/curvature.md).
    k = max(0, min(m // 4, (m - 8) // 2, n - 1)) if method == "hutch++" else 0  # (n - 1: tiny models)
    top_trace = top_sq = torch.zeros((), dtype=dtype, device=device)
    quad, hvs = [], []
    with probe_mode(model):
        op = HessianOperator(model, loss_fn, batches, params, retain_graph=retain_graph)
        if k:
            hs = torch.stack([op.flat(_rademacher(n, gen, dtype, device)) for _ in range(k)], dim=1)
            q = torch.linalg.qr(hs).Q  # (n, k) orthonormal
            hq = torch.stack([op.flat(q[:, i].contiguous()) for i in range(k)], dim=1)
            top_trace = (q * hq).sum()  # tr(Q^T H Q)
            top_sq = hq.pow(2).sum()  # ||H Q||_F^2
        for _ in range(m - 2 * k):
            v = _rademacher(n, gen, dtype, device)
            if k:
                v = v - q @ (q.T @ v)
            hv = op.flat(v)
            quad.append(torch.dot(v, hv))
            hvs.append(hv)
    hv_rows = torch.stack(hvs)
    gram = (hv_rows.double() @ hv_rows.double().T).cpu().numpy()  # GPU sync: once, with the next line
    t_rest, t_se = _mean_stderr(torch.stack(quad))
    f2_rest = float(np.diag(gram).mean())
    r = m - 2 * k
    inflate = math.sqrt((r - 1) / (r - 3)) if r > 3 else math.nan
    t_mean = float(top_trace) + t_rest
    t_se = t_se * inflate
    if r > 0:
        # Var(p^T H p) <= 2 ||P H P||_F^2 <= 2 E||H p||^2 for Rademacher g: a floor on the trace's
        # standard error that a few heavy-tailed samples (an outlier the sketch missed) cannot
        # understate; it makes the trace's error bars conservative where the sketch caught them.
        t_se = max(t_se, math.sqrt(2.0 * max(f2_rest, 0.0) / r))
    frob, frob_se = _frobenius_and_stderr(float(top_sq), gram)
    return (Estimate(value=t_mean, stderr=t_se, n_probes=m), Estimate(value=frob, stderr=frob_se, n_probes=m))


# ----------------------------------------------------------------------------- gradient noise scale


def noise_scale_from_sq_norms(
    g2_small: SqNorms, g2_big: SqNorms, b_small: int, b_big: int, *, n_total: int | None = None, replace: bool = True
) -> tuple[SqNorms, SqNorms]:
    """Solve ``E|G_B|^2 = |G|^2 + c_B tr(Sigma) / B`` at two batch sizes for (|G|^2, tr(Sigma)).

    With replacement ``c_B = 1`` and this is McCandlish et al.'s pair of formulas:
    ``|G|^2 = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)``,
    ``tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)``.
    Without replacement from ``n_total`` examples, ``c_B = (N - B) / (N - 1)`` (finite-population
    correction). Sigma is the population per-example covariance (divide by N).
    """
    a_s, a_b = _inv_batch(b_small, n_total, replace), _inv_batch(b_big, n_total, replace)
    trace_sigma = (g2_small - g2_big) / (a_s - a_b)
    g2 = (a_s * g2_big - a_b * g2_small) / (a_s - a_b)
    return g2, trace_sigma


def _inv_batch(b: int, n_total: int | None, replace: bool) -> float:
    if replace:
        return 1.0 / b
    if n_total is None or n_total < 2:
        raise ValueError("sampling without replacement needs n_total >= 2")
    return (n_total - b) / ((n_total - 1) * b)


def _ratio_stderr(num: np.ndarray, den: np.ndarray) -> float:
    """Standard error of ``mean(num) / mean(den)`` from ``n`` independent pairs of values.

    Fieller's 95% interval: the ratios ``R`` with ``(mean(num) - R mean(den))^2 <= t^2 Var(mean(num)
    - R mean(den))``, t the 97.5% quantile with ``n - 1`` degrees of freedom and the variances and
    covariance of the two means from the pairs. Unlike the delta method or a jackknife, it keeps
    the noise of the denominator (|G|^2, small near a minimum) and its covariance with the
    numerator (both come from the same batches): the interval is asymmetric, and unbounded when
    the denominator cannot be told from 0 (then ``inf``). Returned: the larger side over 1.96.
    """
    n = len(num)
    if n < 2:
        return math.nan
    a, b = float(num.mean()), float(den.mean())
    (v_aa, v_ab), (_, v_bb) = np.cov(num, den) / n
    t2 = float(special.stdtrit(n - 1, 0.975)) ** 2
    qa = b * b - t2 * v_bb  # R^2 qa - 2 R qb + qc <= 0
    if qa <= 0 or b == 0:
        return math.inf
    qb, qc = a * b - t2 * v_ab, a * a - t2 * v_aa
    half = math.sqrt(max(qb * qb - qa * qc, 0.0)) / qa
    centre, ratio = qb / qa, a / b
    return float(max(centre + half - ratio, ratio - (centre - half))) / _Z95


def gradient_noise_scale(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    b_small: int,
    b_big: int,
    n_pairs: int = 16,
    seed: int = 0,
    replace: bool = True,
    chunk_size: int = 1000,
) -> NoiseScaleResult:
    """Simple gradient noise scale ``B_simple = tr(Sigma) / |G|^2`` from two batch sizes.

    Draws ``n_pairs`` independent pairs of a small (``b_small``) and a big (``b_big``) batch from
    ``(x, y)`` (seeded, indices drawn on the CPU), averages ``|G_small|^2`` and ``|G_big|^2`` over
    the pairs and only then forms the two unbiased estimators (ratio of means, as in the paper's
    appendix). ``replace=True`` (default) samples each batch with replacement, for which
    ``E|G_B|^2 = |G|^2 + tr(Sigma)/B`` holds exactly; ``replace=False`` samples each batch
    without replacement and applies the finite-population correction.

    Sigma is the per-example gradient covariance over ``(x, y)`` (population convention), so
    B_simple is in examples. Gradients are of the inference-mode loss (batch norm uses running
    statistics, which makes per-example gradients well defined). ``chunk_size`` bounds the
    examples per forward pass (memory only).

    Standard errors: ``g2`` and ``trace_sigma`` from their per-pair values; ``b_simple`` from
    Fieller's interval for the ratio of the two means (``_ratio_stderr``). Near a minimum a few
    examples carry most of tr(Sigma) and small batches drawn at random meet them rarely: with
    few pairs the estimate is often low while its spread over the pairs looks small, an error
    no interval computed from the drawn batches can see (measured: docs/curvature.md; the
    default ``gradient_noise_scale_full`` covers every example).
    """
    b_small, b_big, n_pairs = int(b_small), int(b_big), int(n_pairs)
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    if n_pairs < 1:
        raise ValueError("n_pairs must be >= 1")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    n_total = int(x.shape[0])
    if not replace and b_big > n_total:
        raise ValueError(f"b_big={b_big} exceeds the {n_total} examples (replace=False)")
    params = _params(model)
    gen = _generator(seed)

    def draw(b: int) -> Tensor:
        if replace:
            return torch.randint(0, n_total, (b,), generator=gen)
        return torch.randperm(n_total, generator=gen)[:b]

    # All batch indices are drawn up front on the CPU (small, then big, pair by pair) and moved
    # to the device in one copy, so the loop below has no host <-> device traffic.
    draws = torch.cat([draw(b) for _ in range(n_pairs) for b in (b_small, b_big)])
    draws = _to_device(draws, x.device)
    sq_small: list[Tensor] = []
    sq_big: list[Tensor] = []
    offset = 0
    with probe_mode(model):
        for _ in range(n_pairs):
            for b, store in ((b_small, sq_small), (b_big, sq_big)):
                batches = make_batches(x, y, draws[offset : offset + b], chunk_size)
                offset += b
                _, g = _loss_and_grad(model, loss_fn, batches, params)
                first, *rest = [gi.double().pow(2).sum() for gi in g]
                store.append(sum(rest, first))
    s = torch.stack(sq_small).cpu().numpy()  # GPU sync: once, after all pairs
    bg = torch.stack(sq_big).cpu().numpy()
    m_s, m_b = float(s.mean()), float(bg.mean())
    g2, tr_sigma = noise_scale_from_sq_norms(m_s, m_b, b_small, b_big, n_total=n_total, replace=replace)
    b_simple = tr_sigma / g2 if g2 != 0 else math.copysign(math.inf, tr_sigma)

    # Per-pair versions of the linear estimators give their standard errors; the ratio gets
    # Fieller's interval over the same pairs.
    g2_i, tr_i = noise_scale_from_sq_norms(s, bg, b_small, b_big, n_total=n_total, replace=replace)
    g2_se = float(np.std(g2_i, ddof=1) / math.sqrt(n_pairs)) if n_pairs > 1 else math.nan
    tr_se = float(np.std(tr_i, ddof=1) / math.sqrt(n_pairs)) if n_pairs > 1 else math.nan
    b_se = _ratio_stderr(np.asarray(tr_i, dtype=np.float64), np.asarray(g2_i, dtype=np.float64))
    return NoiseScaleResult(
        b_simple=float(b_simple),
        g2=float(g2),
        trace_sigma=float(tr_sigma),
        b_small=b_small,
        b_big=b_big,
        n_pairs=n_pairs,
        n_samples=n_pairs * (b_small + b_big),
        b_simple_stderr=b_se,
        g2_stderr=g2_se,
        trace_sigma_stderr=tr_se,
        g2_small=m_s,
        g2_big=m_b,
        replace=replace,
    )


def gradient_noise_scale_full(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    *,
    b_small: int,
    n_batches: int = 64,
    seed: int = 0,
    chunk_size: int = 1000,
) -> NoiseScaleResult:
    """``B_simple = tr(Sigma) / |G|^2`` of the whole set ``(x, y)``, every example's gradient taken.

    A pass draws a random permutation of the ``N`` examples and cuts it into ``m = max(ceil(N /
    b_small), 4)`` batches (sizes differ by at most one, none above ``b_small``); passes repeat,
    each with a new permutation, until at least ``n_batches`` batches are done. In each pass:

    * ``G``, the example-weighted mean of the batch gradients, is the full-batch gradient:
      ``|G|^2`` carries no sampling error.
    * A batch of ``b_k`` examples drawn without replacement has ``E |G_k - G|^2 = c_k tr(Sigma)
      / b_k`` with ``c_k = (N - b_k) / (N - 1)``, so ``tr_hat = (1/N) sum_k b_k^2 |G_k - G|^2 /
      c_k`` is unbiased. As every example sits in exactly one batch, the sum holds each
      example's own ``|g_i - G|^2`` (its part of tr(Sigma)) exactly once; only the pairings of
      examples inside batches are random. Near a minimum a handful of examples carry most of
      tr(Sigma) (a digits MLP at the end of training: 5 of 1,438 carry 71%, measured in
      remeasure/measurement_check.py), and batches drawn independently miss them at random,
      an error no standard error computed from the drawn batches can see.
    * Standard error: ``tr_hat``'s randomness is ``sum_k sum_{i != j in B_k} e_i . e_j / (c N)``
      (``e_i = g_i - G``), of variance ``~ 2 (b - 1) / (N - 1) S / (c N)^2`` with ``S = sum_{i !=
      j} (e_i . e_j)^2``. Differences of neighbouring batch gradients, ``d_p = G_{2p} -
      G_{2p+1}``, hold no ``G`` and products of two of them, ``Q_p = d_{p-1} . d_p``, hold only
      cross terms ``e_i . e_j`` of distinct examples: ``E Q^2 = 4 S / (b^2 N (N - 1))``. The
      standard error is that variance estimated from the mean of ``Q^2`` (over passes: divided
      by their number), times ``t_nu(97.5%) / 1.96`` with ``nu`` the Satterthwaite degrees of
      freedom of that mean (halved: neighbouring products share a ``d``), so that ``value +-
      1.96 se`` is a t interval.

    Sigma is the per-example covariance over ``(x, y)`` (population convention): pass the whole
    training set, not a subset, whose own gradient noise would cap ``B_simple`` near the subset
    size. Inference-mode loss, as the other probes. Costs ``N`` example gradients per pass, in
    batches of ``b_small``: at least one whole pass whatever ``n_batches`` (``ceil(N / b_small)``
    backward passes; on a GPU about one epoch at S = ``b_small``; a larger ``b_small`` is cheaper
    and its standard error grows about as its square root); ``chunk_size`` bounds the examples per forward pass (memory only).
    The result's ``n_pairs`` is the number of batches, ``n_samples`` the example gradients taken,
    ``g2_small`` the mean ``|G_k|^2``; ``replace`` is False (batches without replacement).
    """
    b_small, n_batches = int(b_small), int(n_batches)
    if b_small < 1 or n_batches < 2:
        raise ValueError(f"need b_small >= 1 and n_batches >= 2, got {b_small}, {n_batches}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    n_total = int(x.shape[0])
    if n_total < 4:
        raise ValueError(f"need at least 4 examples, got {n_total}")
    params = _params(model)
    m = max(math.ceil(n_total / b_small), 4)  # batches per pass
    # At least n_batches batches, and enough passes for MIN_NEIGHBOUR_PRODUCTS products Q (a pass
    # of m batches gives m // 2 - 1): the standard error is estimated from their squares.
    passes = max(math.ceil(n_batches / m), math.ceil(MIN_NEIGHBOUR_PRODUCTS / (m // 2 - 1)))
    sizes = [n_total // m + (1 if k < n_total % m else 0) for k in range(m)]
    weights = [b * b / ((n_total - b) / (n_total - 1)) for b in sizes]  # b_k^2 / c_k
    gen = _generator(seed)
    # Every pass's permutation is drawn up front on the CPU and moved in one copy.
    perms = _to_device(torch.cat([torch.randperm(n_total, generator=gen) for _ in range(passes)]), x.device)
    dev = params[0].device
    n_par = sum(p.numel() for p in params)
    tr_pass, g2_pass, q_vals, sq_sum = [], [], [], torch.zeros((), dtype=torch.float64, device=dev)
    offset = 0
    with probe_mode(model):
        for _ in range(passes):
            g_full = torch.zeros(n_par, dtype=torch.float64, device=dev)  # -> G
            v_sum = torch.zeros(n_par, dtype=torch.float64, device=dev)  # sum_k w_k G_k
            s_sum = torch.zeros((), dtype=torch.float64, device=dev)  # sum_k w_k |G_k|^2
            held = prev_d = None
            for k, b in enumerate(sizes):
                batches = make_batches(x, y, perms[offset : offset + b], chunk_size)
                offset += b
                _, g = _loss_and_grad(model, loss_fn, batches, params)
                gk = _flatten(g).double()
                sq = torch.dot(gk, gk)
                sq_sum += sq
                g_full.add_(gk, alpha=b / n_total)
                v_sum.add_(gk, alpha=weights[k])
                s_sum += weights[k] * sq
                if k % 2 == 0:
                    held = gk
                elif held is not None:
                    d = held - gk
                    if prev_d is not None:
                        q_vals.append(torch.dot(prev_d, d))
                    prev_d, held = d, None
            g2_p = torch.dot(g_full, g_full)
            # sum_k w_k |G_k - G|^2 = sum_k w_k |G_k|^2 - 2 G . sum_k w_k G_k + |G|^2 sum_k w_k
            tr_pass.append((s_sum - 2 * torch.dot(v_sum, g_full) + g2_p * sum(weights)) / n_total)
            g2_pass.append(g2_p)
    out = torch.stack([torch.stack(tr_pass).mean(), torch.stack(g2_pass).mean(), sq_sum])
    tr_sigma, g2, sq_total = out.cpu().tolist()  # GPU sync: once, with the next line
    q = torch.stack(q_vals).cpu().numpy()
    b_mean = n_total / m
    c_mean = (n_total - b_mean) / (n_total - 1)
    q2 = q * q
    mean_q2 = float(q2.mean())
    # Var(tr_hat) of one pass = 2 (b - 1)/(N - 1) S / (c N)^2 with S = b^2 N (N - 1) E Q^2 / 4,
    # times c: pairs within a batch drawn without replacement (Var of a pair's indicator p (1 - p)).
    var = (b_mean - 1) * b_mean**2 * mean_q2 / (2 * c_mean * n_total) / passes
    spread = float(q2.var(ddof=1)) if len(q2) > 1 else math.nan
    nu = len(q2) * mean_q2**2 / spread if spread > 0 else (math.inf if spread == 0 else 1.0)
    factor = float(special.stdtrit(max(nu, 1.0), 0.975)) / _Z95 if math.isfinite(nu) else 1.0
    tr_se = math.sqrt(max(var, 0.0)) * factor
    b_simple = tr_sigma / g2 if g2 > 0 else math.copysign(math.inf, tr_sigma)
    b_se = tr_se / g2 if g2 > 0 else math.nan
    return NoiseScaleResult(
        b_simple=float(b_simple),
        g2=g2,
        trace_sigma=tr_sigma,
        b_small=b_small,
        b_big=n_total,
        n_pairs=m * passes,
        n_samples=n_total * passes,
        b_simple_stderr=float(b_se),
        g2_stderr=0.0,
        trace_sigma_stderr=tr_se,
        g2_small=sq_total / (m * passes),
        g2_big=g2,
        replace=False,
    )


# ----------------------------------------------------------------------------- interpolation


def _eval_batches(model: nn.Module, loss_fn: LossFn, batches: Batches) -> tuple[Tensor, Tensor]:
    """(mean loss, accuracy) as 0-d device tensors; no host sync."""
    batches, total = _check_batches(batches)
    loss_sum: Tensor | None = None
    correct: Tensor | None = None
    for x, y in batches:
        out = model(x)
        loss = loss_fn(out, y).detach() * (x.shape[0] / total)
        if out.dim() == 2 and not torch.is_floating_point(y):
            c = (out.argmax(dim=1) == y).sum().to(loss.dtype)
        else:
            c = torch.full_like(loss, math.nan)
        loss_sum = loss if loss_sum is None else loss_sum + loss
        correct = c if correct is None else correct + c
    assert loss_sum is not None and correct is not None  # batches is not empty
    return loss_sum, correct / total


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Batches) -> None:
    """Set every batch-norm layer's running statistics to their mean over ``batches`` ("precise BN").

    Running means and (unbiased) variances are reset and re-estimated as averages over the
    batches weighted by their sizes, with only the batch-norm layers in training mode; the
    weights are not touched. Mutates the buffers on purpose: callers that must leave the model
    as it was (``interpolate``) save and restore them. Mode flags and momenta are restored.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return
    saved = [(m, m.momentum) for m in layers]
    flags = [(mod, mod.training) for mod in model.modules()]
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.train()
        seen = 0
        for x, _ in _check_batches(batches)[0]:
            b = int(x.shape[0])
            for m in layers:  # running = (1 - w) running + w batch: an average weighted by examples
                m.momentum = b / (seen + b)
            model(x)
            seen += b
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        for mod, flag in flags:
            mod.training = flag


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: LossFn, batches: Batches) -> float:
    """Mean loss over ``batches`` in inference mode (batch norm on its running statistics): the
    loss whose Hessian the probes measure, at the same weights. Mode flags are restored."""
    with probe_mode(model):
        loss, _ = _eval_batches(model, loss_fn, batches)
    return float(loss)  # GPU sync point


@torch.no_grad()
def interpolate(
    model: nn.Module,
    params_a: dict[str, Tensor],
    params_b: dict[str, Tensor],
    alphas: Sequence[float] | Tensor | None = None,
    loss_fn: LossFn | None = None,
    train_batches: Batches | None = None,
    val_batches: Batches | None = None,
    *,
    batch_norm: str = "recompute",
    bn_batches: Batches | None = None,
) -> list[dict[str, float]]:
    """Loss and accuracy along ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``.

    ``params_a``/``params_b`` are state_dict-like (name -> tensor) and must cover every entry of
    ``model.state_dict()``: floating parameters and buffers are interpolated; integer buffers
    (``num_batches_tracked``) are taken from the nearer endpoint. Batch-norm running statistics
    (``batch_norm``): ``"recompute"`` (default) re-estimates them at every alpha on
    ``bn_batches`` (default ``train_batches``; ``recompute_batch_norm``), because interpolated
    running variances extrapolate to negative values outside [0, 1] (NaN losses) and are not the
    statistics of the interpolated weights inside it; ``"interpolate"`` interpolates them like
    the weights (the endpoints then reproduce the two models exactly). ``alphas`` defaults to
    ``torch.linspace(-1, 2, 31)``; ``loss_fn`` to cross-entropy. Evaluated in inference mode.
    Accuracy is argmax accuracy for 2-D outputs and integer targets (NaN otherwise); a missing
    ``val_batches`` gives NaN validation entries. The model's own parameters, buffers and mode
    flags are restored bit for bit afterwards.
    """
    if train_batches is None:
        raise TypeError("interpolate() needs train_batches")
    if batch_norm not in ("recompute", "interpolate"):
        raise ValueError(f"interpolate(): batch_norm must be 'recompute' or 'interpolate', got {batch_norm!r}")
    if loss_fn is None:
        loss_fn = nn.functional.cross_entropy
    if alphas is None:
        alphas = torch.linspace(-1, 2, 31)
    alpha_list = [float(a) for a in (alphas.tolist() if isinstance(alphas, Tensor) else alphas)]
    state = model.state_dict(keep_vars=False)  # detached views sharing storage with the model
    keys = set(state)
    for name, d in (("params_a", params_a), ("params_b", params_b)):
        missing, extra = keys - set(d), set(d) - keys
        if missing or extra:
            raise ValueError(
                f"{name} does not match model.state_dict(): missing {sorted(missing)}, unexpected {sorted(extra)}"
            )
    a = {k: params_a[k].detach().to(device=t.device, dtype=t.dtype) for k, t in state.items()}
    b = {k: params_b[k].detach().to(device=t.device, dtype=t.dtype) for k, t in state.items()}
    saved = {k: t.clone() for k, t in state.items()}
    recompute = batch_norm == "recompute" and bool(batch_norm_layers(model))
    results = []
    try:
        with probe_mode(model):
            for alpha in alpha_list:
                for k, t in state.items():
                    if torch.is_floating_point(t) or torch.is_complex(t):
                        # Written out (not lerp) so alpha = 0 and 1 give the endpoints exactly.
                        t.copy_((1.0 - alpha) * a[k] + alpha * b[k])
                    else:
                        t.copy_(a[k] if alpha <= 0.5 else b[k])
                if recompute:
                    recompute_batch_norm(model, bn_batches if bn_batches is not None else train_batches)
                tl, ta = _eval_batches(model, loss_fn, train_batches)
                if val_batches is not None:
                    vl, va = _eval_batches(model, loss_fn, val_batches)
                else:
                    vl = va = torch.full_like(tl, math.nan)
                results.append(torch.stack([tl, ta, vl.to(tl.dtype), va.to(tl.dtype)]))
    finally:
        for k, t in state.items():
            t.copy_(saved[k])
    rows = torch.stack(results).double().cpu().tolist() if results else []  # GPU sync: once
    return [
        dict(alpha=al, train_loss=r[0], train_acc=r[1], val_loss=r[2], val_acc=r[3]) for al, r in zip(alpha_list, rows)
    ]
