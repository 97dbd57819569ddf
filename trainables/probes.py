"""The probes run on a trial's model at the end of an epoch: one registry, ``PROBES``.

A probe is ``probe(model, data, cfg, idx, seed) -> {column: value}``: ``model`` is a plain module
holding one member's weights (train mode; curvature functions switch batch norm to eval mode
themselves and restore it), ``data`` the trial's tensors, ``cfg`` the spec's ``curvature``
section and ``idx`` the fixed, seeded probe subset of the training set (the same examples in
every trial of a sweep), ``seed`` the trial's own seed for random vectors
(``trial_probe_seed``). Every column a probe returns must be declared in
``rundir/schema.py`` (PROBES): an undeclared one fails the trial by name
(``lrbs.rundir.schema.check_row``) instead of being dropped. Adding a probe is a function and an
entry here plus its columns there (docs/extending.md). A probe that raises leaves its columns
null and its error in ``probe_error``; the other probes still run and the trial goes on.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrbs.trainables import curvature
from lrbs.trainables.config import CurvatureConfig
from lrbs.trainables.tensor_data import TensorData

Probe = Callable[[nn.Module, TensorData, CurvatureConfig, torch.Tensor, int], dict[str, Any]]


# Characters of probe_error kept in a row (the first line of each error, "; "-joined).
MAX_ERROR_CHARS = 500


def error_text(exc: BaseException) -> str:
    """``"<Type>: <first line of the message>"``: torch names the op that lacks a derivative there."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def trial_probe_seed(base_seed: int, *point_key: Any) -> int:
    """The seed of a trial's random probe vectors: ``curvature.seed`` mixed with what identifies
    the point (lr, S, seed, family labels), stable across processes and restarts. Every trial
    keeps the same probe *examples* (``curvature.seed``), but not the same Hutchinson/Lanczos
    vectors: shared vectors make every trial's estimate err the same way, a bias no comparison
    between trials could see."""
    return zlib.crc32(repr((int(base_seed), *point_key)).encode()) & 0x7FFFFFFF


def probe_due(cfg: CurvatureConfig | None, epoch: int, last_epoch: int) -> bool:
    if cfg is None:
        return False
    if epoch == last_epoch:
        return True
    return isinstance(cfg.every, int) and epoch % cfg.every == 0


def sharpness(model: nn.Module, data: TensorData, cfg: CurvatureConfig, idx: torch.Tensor, seed: int) -> dict[str, Any]:
    """lambda_max (Lanczos), Tr(H) and ||H||_F (Hutchinson) of the mean loss on the probe subset,
    and that loss itself (``probe_loss``)."""
    batches = curvature.make_batches(data.x_train, data.y_train, idx, cfg.batch_size)
    eig = curvature.top_eigenvalue(
        model,
        F.cross_entropy,
        batches,
        max_iters=cfg.lanczos_iters,
        tol=cfg.lanczos_tol,
        seed=seed,
        retain_graph=cfg.retain_graph,
    )
    trace, fro = curvature.hessian_trace_and_frobenius(
        model,
        F.cross_entropy,
        batches,
        n_probes=cfg.hutchinson_probes,
        seed=seed,
        retain_graph=cfg.retain_graph,
        method=cfg.trace_method,
    )
    # Eq. 7 compares Tr(H) with the loss E(l): the same examples, mode and weights as the Hessian.
    return {
        "probe_loss": curvature.mean_loss(model, F.cross_entropy, batches),
        "lambda_max": eig.value,
        "lambda_max_converged": eig.converged,
        "lambda_max_n_hvp": eig.n_hvp,
        "hessian_trace": trace.value,
        "hessian_trace_stderr": trace.stderr,
        "hessian_fro": fro.value,
        "hessian_fro_stderr": fro.stderr,
    }


def noise_scale(
    model: nn.Module, data: TensorData, cfg: CurvatureConfig, idx: torch.Tensor, seed: int
) -> dict[str, Any]:
    """B_simple = tr(Sigma) / |G|^2 (examples) and its standard error, by ``cfg.noise_method``:
    of the whole training set (``full``, default), or two-batch on the probe subset."""
    # off, or two-batch on a probe subset smaller than its big batch: no value
    if not cfg.noise_scale or (cfg.noise_method != "full" and cfg.noise_b_big > len(idx)):
        return {"grad_noise_scale": None, "grad_noise_scale_stderr": None}
    if cfg.noise_method == "full":
        ns = curvature.gradient_noise_scale_full(
            model,
            F.cross_entropy,
            data.x_train,
            data.y_train,
            b_small=cfg.noise_b_small,
            n_batches=cfg.noise_pairs,
            seed=seed,
            chunk_size=cfg.batch_size,
        )
    else:
        xs, ys = data.x_train[idx.to(data.x_train.device)], data.y_train[idx.to(data.y_train.device)]
        ns = curvature.gradient_noise_scale(
            model,
            F.cross_entropy,
            xs,
            ys,
            b_small=cfg.noise_b_small,
            b_big=cfg.noise_b_big,
            n_pairs=cfg.noise_pairs,
            seed=seed,
            chunk_size=cfg.batch_size,
        )
    return {"grad_noise_scale": ns.b_simple, "grad_noise_scale_stderr": ns.b_simple_stderr}


# Run in this order on every probed epoch.
PROBES: dict[str, Probe] = {"sharpness": sharpness, "noise_scale": noise_scale}


def run_probes(model: nn.Module, data: TensorData, cfg: CurvatureConfig, seed: int | None = None) -> dict[str, Any]:
    """Every registered probe's columns for one epoch row, plus the subset size and their time.

    ``seed``: the trial's seed for random vectors (``trial_probe_seed``; default ``cfg.seed``).
    A probe that raises (a model with an op that has no double backward, memory) adds nothing
    but ``probe_error``, ``"<probe>: <Type>: <first line>"`` (several joined by ``"; "``): its
    columns stay null in the row, and the row is still reported, so the trial goes on."""
    t0 = time.perf_counter()
    n = len(data.x_train)
    idx = curvature.probe_subset(n, min(cfg.n_samples, n), cfg.seed)
    row: dict[str, Any] = {"probe_n_samples": len(idx)}
    errors = []
    for name, probe in PROBES.items():
        try:
            row.update(probe(model, data, cfg, idx, cfg.seed if seed is None else seed))
        except Exception as exc:  # noqa: BLE001 - any failure of a measurement, never of training
            errors.append(f"{name}: {error_text(exc)}")
    if errors:
        row["probe_error"] = "; ".join(errors)[:MAX_ERROR_CHARS]
    row["probe_s"] = time.perf_counter() - t0  # includes the GPU syncs of .item() inside the probes
    return row
