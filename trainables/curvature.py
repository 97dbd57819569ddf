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
  when they ran out of iterations), the noise scale carries jackknife/plain standard errors.
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
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

Tensor = torch.Tensor
Batches = list  # list[tuple[Tensor, Tensor]]: the fixed probe subset, already on the model's device
LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "Batches", "EigResult", "Estimate", "NoiseScaleResult",
    "probe_mode", "probe_subset", "make_batches", "loss_and_grad", "hvp", "HessianOperator",
    "top_eigenvalue", "hessian_trace", "hessian_frobenius", "hessian_trace_and_frobenius",
    "gradient_noise_scale", "noise_scale_from_sq_norms", "interpolate",
]


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
    Standard errors are over the ``n_pairs`` independent (small, big) batch pairs; the one of
    ``b_simple`` is a jackknife over pairs.
    """
    b_simple: float
    g2: float
    trace_sigma: float
    b_small: int
    b_big: int
    n_pairs: int
    n_samples: int                 # examples drawn in all: n_pairs * (b_small + b_big)
    b_simple_stderr: float = math.nan
    g2_stderr: float = math.nan
    trace_sigma_stderr: float = math.nan
    g2_small: float = math.nan     # mean of |G_small|^2 over the pairs
    g2_big: float = math.nan       # mean of |G_big|^2 over the pairs
    replace: bool = True


# ----------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def probe_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in inference mode for a probe; restore every submodule's flag afterwards.

    Flags are restored by direct assignment (not ``.train()``), so mixed states (a frozen
    submodule in eval inside a training model) come back exactly, also on exceptions.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _params(model: nn.Module) -> list[Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
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
        out.append(vec[i:i + n].view_as(p).to(p.dtype))
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


def make_batches(x: Tensor, y: Tensor, indices: Tensor | None = None,
                 batch_size: int = 1000) -> list[tuple[Tensor, Tensor]]:
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
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]


# ----------------------------------------------------------------------------- first and second order

def _loss_and_grad(model, loss_fn, batches, params) -> tuple[Tensor, list[Tensor]]:
    """Weighted mean loss (0-d tensor, on device) and its gradient; assumes probe mode is on."""
    batches, total = _check_batches(batches)
    loss_sum = None
    grad_sum = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        w = x.shape[0] / total
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            loss = loss_fn(model(x), y) * w
            grads = _grads_or_zeros(torch.autograd.grad(loss, params, allow_unused=True), params)
        torch._foreach_add_(grad_sum, grads)
        loss = loss.detach()
        loss_sum = loss if loss_sum is None else loss_sum + loss
    return loss_sum, grad_sum


def loss_and_grad(model: nn.Module, loss_fn: LossFn, batches: Batches) -> tuple[float, list[Tensor]]:
    """Mean loss over all examples in ``batches`` (batches weighted by size) and its gradient.

    Gradients are returned as new tensors, one per trainable parameter; ``.grad`` is untouched.
    """
    params = _params(model)
    with probe_mode(model):
        loss, grads = _loss_and_grad(model, loss_fn, batches, params)
    return float(loss), grads  # GPU sync: the loss as a Python float


class HessianOperator:
    """``H v`` of the example-weighted mean loss over fixed ``batches``: the one HVP routine
    every estimator here uses (double backward). Use it inside ``probe_mode``.

    With ``retain_graph`` the first-order gradient graph of every batch is built once and kept
    for all products, so each product is one double backward instead of a forward, a backward
    with ``create_graph`` and a double backward: about half the time on the quickstart model.
    The memory for those graphs grows with the number of probe examples, so big convnets on
    small GPUs may want it off (``curvature.retain_graph: false``).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, batches: Batches, params: Sequence[Tensor],
                 retain_graph: bool = False):
        self.model, self.loss_fn, self.params = model, loss_fn, list(params)
        self.batches, self.total = _check_batches(batches)
        self._graphs = [self._first_order(x, y) for x, y in self.batches] if retain_graph else None

    def _first_order(self, x: Tensor, y: Tensor) -> tuple[Tensor | None, ...]:
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            loss = self.loss_fn(self.model(x), y) * (x.shape[0] / self.total)
            return torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)

    def __call__(self, vecs: Sequence[Tensor]) -> list[Tensor]:
        vecs = [v.to(device=p.device, dtype=p.dtype) for v, p in zip(vecs, self.params)]
        out = [torch.zeros_like(p) for p in self.params]
        graphs = self._graphs if self._graphs is not None else (self._first_order(x, y) for x, y in self.batches)
        with torch.enable_grad():
            for grads in graphs:
                used = [(g, v) for g, v in zip(grads, vecs) if g is not None]
                if not used:
                    continue
                dot = sum((g * v).sum() for g, v in used)
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


def _lanczos(op: HessianOperator, params, *, max_iters, tol, seed) -> EigResult:
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
    return EigResult(value=value, n_hvp=n_hvp, converged=converged, rel_change=rel_change,
                     method="lanczos", residual=residual)


def _power(op: HessianOperator, params, *, max_iters, tol, seed,
           shift: float = 0.0) -> tuple[float, int, bool, float, float]:
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
        lam_t = torch.dot(w, v)                       # Rayleigh quotient of A (v has unit norm)
        res_t = torch.linalg.vector_norm(w - lam_t * v)
        w_norm = torch.linalg.vector_norm(w)
        s = torch.stack([lam_t, res_t, w_norm]).double().cpu()  # GPU sync: one per iteration
        lam, residual, w_norm_f = float(s[0]) + shift, float(s[1]), float(s[2])
        rel_change = math.inf if k == 0 else _rel(lam, lam_prev)
        if w_norm_f == 0.0:           # A v = 0: v is an eigenvector of H with eigenvalue shift
            converged = True
            break
        if rel_change < tol or residual < tol * max(abs(lam), 1e-30):
            converged = True
            break
        lam_prev = lam
        v = w / w_norm
    return lam, n_hvp, converged, rel_change, residual


def top_eigenvalue(model: nn.Module, loss_fn: LossFn, batches: Batches, *, max_iters: int = 20,
                   tol: float = 1e-3, seed: int = 0, method: str = "lanczos",
                   retain_graph: bool = False) -> EigResult:
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
            lam2, n2, conv2, rel2, res2 = _power(op, params, max_iters=max_iters, tol=tol, seed=seed + 1,
                                                 shift=lam)
            return EigResult(value=lam2, n_hvp=n_hvp + n2, converged=conv and conv2,
                             rel_change=rel2, method="power", residual=res2)
        return EigResult(value=lam, n_hvp=n_hvp, converged=conv, rel_change=rel,
                         method="power", residual=res)


# ----------------------------------------------------------------------------- trace and Frobenius

def _mean_stderr(samples: Tensor) -> tuple[float, float]:
    s = samples.double().cpu().numpy()  # GPU sync: once, after all probes
    mean = float(s.mean())
    stderr = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else math.nan
    return mean, stderr


def hessian_trace_and_frobenius(model: nn.Module, loss_fn: LossFn, batches: Batches, *,
                                n_probes: int = 32, seed: int = 0, retain_graph: bool = False,
                                method: str = "hutch++") -> tuple[Estimate, Estimate]:
    """Estimates of Tr(H) and ||H||_F from the SAME ``n_probes`` Hessian-vector products.

    ``method="hutchinson"``: for Rademacher ``v``, ``E v^T H v = Tr(H)`` and ``E ||H v||^2 =
    Tr(H^2) = ||H||_F^2``, averaged over ``n_probes`` probes.

    ``method="hutch++"`` (default; Meyer et al. 2021): ``k`` HVPs sketch the top of the spectrum
    (``Q = orth(H S)``, ``S`` Rademacher), ``k`` more give ``H Q``, whose part of the trace and of
    ``Tr(H^2)`` is exact (``tr(Q^T H Q)``, ``||H Q||_F^2``), and the remaining ``r = n_probes -
    2k`` Rademacher probes, projected off ``Q`` (``p = (I - Q Q^T) g``), estimate the rest without
    bias (``E p^T H p = tr(H (I - QQ^T))``, ``E ||H p||^2 = tr(H^2 (I - QQ^T))``). A Hessian's
    few large outlier eigenvalues, which dominate the variance of plain Hutchinson, land in the
    exact part, so the error is several times smaller at the same HVP count. ``k`` is a quarter
    of the HVPs, cut so that ``r >= 8`` (``n_probes < 12``: plain Hutchinson).

    Standard errors are over the random probes (the exact part has none given ``Q``), scaled by
    ``sqrt((r - 1) / (r - 3))`` (the variance of a t statistic with ``r - 1`` degrees of
    freedom); the trace's is floored by ``sqrt(2 mean ||H p||^2 / r)``, a bound on its true
    value; ``||H||_F``'s by the delta method, ``se(m) / (2 sqrt(m))``. Measured calibration
    (docs/curvature.md): the trace's errors are never understated, and conservative where the
    sketch caught the outliers; the Frobenius norm's can be understated (z sd up to ~1.4) when
    the sketch misses a few dominant outliers. NaN for fewer than 4 random probes. No host sync
    until the end.
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
    quad, sq = [], []
    with probe_mode(model):
        op = HessianOperator(model, loss_fn, batches, params, retain_graph=retain_graph)
        if k:
            hs = torch.stack([op.flat(_rademacher(n, gen, dtype, device)) for _ in range(k)], dim=1)
            q = torch.linalg.qr(hs).Q                                   # (n, k) orthonormal
            hq = torch.stack([op.flat(q[:, i].contiguous()) for i in range(k)], dim=1)
            top_trace = (q * hq).sum()                                  # tr(Q^T H Q)
            top_sq = hq.pow(2).sum()                                    # ||H Q||_F^2
        for _ in range(m - 2 * k):
            v = _rademacher(n, gen, dtype, device)
            if k:
                v = v - q @ (q.T @ v)
            hv = op.flat(v)
            quad.append(torch.dot(v, hv))
            sq.append(torch.dot(hv, hv))
    t_rest, t_se = _mean_stderr(torch.stack(quad))
    f2_rest, f2_se = _mean_stderr(torch.stack(sq))
    r = m - 2 * k
    inflate = math.sqrt((r - 1) / (r - 3)) if r > 3 else math.nan
    t_mean, f2_mean = float(top_trace) + t_rest, float(top_sq) + f2_rest
    t_se, f2_se = t_se * inflate, f2_se * inflate
    if r > 0:
        # Var(p^T H p) <= 2 ||P H P||_F^2 <= 2 E||H p||^2 for Rademacher g: a floor on the trace's
        # standard error that a few heavy-tailed samples (an outlier the sketch missed) cannot
        # understate; it makes the trace's error bars conservative where the sketch caught them.
        t_se = max(t_se, math.sqrt(2.0 * max(f2_rest, 0.0) / r))
    frob = math.sqrt(max(f2_mean, 0.0))
    frob_se = f2_se / (2.0 * frob) if frob > 0 else (0.0 if f2_se == 0 else math.nan)
    return (Estimate(value=t_mean, stderr=t_se, n_probes=m),
            Estimate(value=frob, stderr=frob_se, n_probes=m))


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Batches, *, n_probes: int = 32,
                  seed: int = 0, method: str = "hutch++") -> Estimate:
    """Estimate of Tr(H) with its standard error (``hessian_trace_and_frobenius``)."""
    return hessian_trace_and_frobenius(model, loss_fn, batches, n_probes=n_probes, seed=seed, method=method)[0]


def hessian_frobenius(model: nn.Module, loss_fn: LossFn, batches: Batches, *, n_probes: int = 32,
                      seed: int = 0, method: str = "hutch++") -> Estimate:
    """Estimate of ||H||_F with its delta-method standard error (``hessian_trace_and_frobenius``)."""
    return hessian_trace_and_frobenius(model, loss_fn, batches, n_probes=n_probes, seed=seed, method=method)[1]


# ----------------------------------------------------------------------------- gradient noise scale

def noise_scale_from_sq_norms(g2_small: float, g2_big: float, b_small: int, b_big: int, *,
                              n_total: int | None = None, replace: bool = True) -> tuple[float, float]:
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


def gradient_noise_scale(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, b_small: int,
                         b_big: int, n_pairs: int = 16, seed: int = 0, replace: bool = True,
                         chunk_size: int = 1000) -> NoiseScaleResult:
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
    sq_small, sq_big = [], []
    offset = 0
    with probe_mode(model):
        for _ in range(n_pairs):
            for b, store in ((b_small, sq_small), (b_big, sq_big)):
                idx = draws[offset:offset + b]
                offset += b
                xb, yb = x[idx], y[idx.to(y.device)]
                batches = [(xb[i:i + chunk_size], yb[i:i + chunk_size]) for i in range(0, b, chunk_size)]
                _, g = _loss_and_grad(model, loss_fn, batches, params)
                store.append(sum(gi.double().pow(2).sum() for gi in g))
    s = torch.stack(sq_small).cpu().numpy()  # GPU sync: once, after all pairs
    bg = torch.stack(sq_big).cpu().numpy()
    m_s, m_b = float(s.mean()), float(bg.mean())
    g2, tr_sigma = noise_scale_from_sq_norms(m_s, m_b, b_small, b_big, n_total=n_total, replace=replace)
    b_simple = tr_sigma / g2 if g2 != 0 else math.copysign(math.inf, tr_sigma)

    # Per-pair versions of the linear estimators give their standard errors; the ratio gets a
    # jackknife over pairs.
    g2_i, tr_i = noise_scale_from_sq_norms(s, bg, b_small, b_big, n_total=n_total, replace=replace)
    g2_se = float(np.std(g2_i, ddof=1) / math.sqrt(n_pairs)) if n_pairs > 1 else math.nan
    tr_se = float(np.std(tr_i, ddof=1) / math.sqrt(n_pairs)) if n_pairs > 1 else math.nan
    if n_pairs > 1:
        loo_s = (s.sum() - s) / (n_pairs - 1)
        loo_b = (bg.sum() - bg) / (n_pairs - 1)
        g2_loo, tr_loo = noise_scale_from_sq_norms(loo_s, loo_b, b_small, b_big, n_total=n_total,
                                                   replace=replace)
        with np.errstate(divide="ignore", invalid="ignore"):
            b_loo = tr_loo / g2_loo
        b_se = float(math.sqrt((n_pairs - 1) / n_pairs * np.sum((b_loo - b_loo.mean()) ** 2)))
    else:
        b_se = math.nan
    return NoiseScaleResult(b_simple=float(b_simple), g2=float(g2), trace_sigma=float(tr_sigma),
                            b_small=b_small, b_big=b_big, n_pairs=n_pairs,
                            n_samples=n_pairs * (b_small + b_big), b_simple_stderr=b_se,
                            g2_stderr=g2_se, trace_sigma_stderr=tr_se, g2_small=m_s, g2_big=m_b,
                            replace=replace)


def gradient_noise_scale_full(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, *, b_small: int,
                              n_batches: int = 64, seed: int = 0, chunk_size: int = 1000) -> NoiseScaleResult:
    """``B_simple = tr(Sigma) / |G|^2`` of the whole set ``(x, y)``, with ``|G|^2`` computed exactly.

    ``G`` is the full-batch gradient over every example of ``(x, y)`` (one pass, in chunks);
    ``tr(Sigma)`` comes from ``n_batches`` batches of ``b_small`` examples drawn with replacement,
    for which ``E|G_b|^2 = |G|^2 + tr(Sigma) / b`` holds exactly, so each batch gives an unbiased
    ``t_i = b (|G_b,i|^2 - |G|^2)`` and ``tr(Sigma)`` is their mean. Compared with the two-batch
    estimator (``gradient_noise_scale``), ``|G|^2`` (small near a minimum, and the denominator)
    carries no sampling error, so ``B_simple``'s standard error is that of the mean of the
    ``t_i`` over ``|G|^2``. Sigma is the per-example covariance over ``(x, y)`` (population
    convention): pass the whole training set, not a subset, whose own gradient noise would cap
    ``B_simple`` near the subset size. Inference-mode loss, as the other probes.
    """
    b_small, n_batches = int(b_small), int(n_batches)
    if b_small < 1 or n_batches < 2:
        raise ValueError(f"need b_small >= 1 and n_batches >= 2, got {b_small}, {n_batches}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    n_total = int(x.shape[0])
    params = _params(model)
    gen = _generator(seed)
    draws = _to_device(torch.randint(0, n_total, (n_batches * b_small,), generator=gen), x.device)
    with probe_mode(model):
        full = [(x[i:i + chunk_size], y[i:i + chunk_size]) for i in range(0, n_total, chunk_size)]
        _, g_full = _loss_and_grad(model, loss_fn, full, params)
        sq = []
        for k in range(n_batches):
            idx = draws[k * b_small:(k + 1) * b_small]
            xb, yb = x[idx], y[idx.to(y.device)]
            _, g = _loss_and_grad(model, loss_fn, [(xb[i:i + chunk_size], yb[i:i + chunk_size])
                                                   for i in range(0, b_small, chunk_size)], params)
            sq.append(sum(gi.double().pow(2).sum() for gi in g))
    g2 = float(sum(gi.double().pow(2).sum() for gi in g_full))  # GPU sync: once, with the next line
    s = torch.stack(sq).cpu().numpy()
    t = b_small * (s - g2)
    tr_sigma, tr_se = float(t.mean()), float(np.std(t, ddof=1) / math.sqrt(n_batches))
    b_simple = tr_sigma / g2 if g2 > 0 else math.copysign(math.inf, tr_sigma)
    b_se = tr_se / g2 if g2 > 0 else math.nan
    return NoiseScaleResult(b_simple=float(b_simple), g2=g2, trace_sigma=tr_sigma, b_small=b_small,
                            b_big=n_total, n_pairs=n_batches, n_samples=n_total + n_batches * b_small,
                            b_simple_stderr=float(b_se), g2_stderr=0.0, trace_sigma_stderr=tr_se,
                            g2_small=float(s.mean()), g2_big=g2, replace=True)


# ----------------------------------------------------------------------------- interpolation

def _eval_batches(model, loss_fn, batches) -> tuple[Tensor, Tensor]:
    """(mean loss, accuracy) as 0-d device tensors; no host sync."""
    batches, total = _check_batches(batches)
    loss_sum = correct = None
    for x, y in batches:
        out = model(x)
        loss = loss_fn(out, y).detach() * (x.shape[0] / total)
        if out.dim() == 2 and not torch.is_floating_point(y):
            c = (out.argmax(dim=1) == y).sum().to(loss.dtype)
        else:
            c = torch.full_like(loss, math.nan)
        loss_sum = loss if loss_sum is None else loss_sum + loss
        correct = c if correct is None else correct + c
    return loss_sum, correct / total


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
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
    flags = [(m, m.training) for m in model.modules()]
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
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: LossFn, batches: Batches) -> float:
    """Mean loss over ``batches`` in inference mode (batch norm on its running statistics): the
    loss whose Hessian the probes measure, at the same weights. Mode flags are restored."""
    with probe_mode(model):
        loss, _ = _eval_batches(model, loss_fn, batches)
    return float(loss)  # GPU sync point


@torch.no_grad()
def interpolate(model: nn.Module, params_a: dict[str, Tensor], params_b: dict[str, Tensor],
                alphas: Sequence[float] | Tensor | None = None, loss_fn: LossFn | None = None,
                train_batches: Batches | None = None,
                val_batches: Batches | None = None, *, batch_norm: str = "recompute",
                bn_batches: Batches | None = None) -> list[dict[str, float]]:
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
            raise ValueError(f"{name} does not match model.state_dict(): missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
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
    return [dict(alpha=al, train_loss=r[0], train_acc=r[1], val_loss=r[2], val_acc=r[3])
            for al, r in zip(alpha_list, rows)]
