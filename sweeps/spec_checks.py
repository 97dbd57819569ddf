"""Value checks of a spec that need more than types: ranges, conflicts, sizes against the
training set, limits. Each refusal is one ``SpecError`` line naming the field.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
from typing import Any

import torch

from lrbs.sweeps.grid import axis_values, beta_size, count_points, expand_points, search_ladder
from lrbs.sweeps.spec import (
    MAX_INT,
    RESCALE_RULES,
    AxisRange,
    BetaConfig,
    BetaSearchConfig,
    RescaleConfig,
    SpecError,
    SweepSpec,
    build_dataclass,
    schedule_message,
    short,
)
from lrbs.trainables.augment import AUGMENTATIONS
from lrbs.trainables.config import PRECISIONS, CurvatureConfig
from lrbs.trainables.data import DATASETS, check_data_dir, dataset_entry, train_set_size
from lrbs.trainables.models import MODELS, model_factory
from lrbs.trainables.packed_models import LAYOUTS
from lrbs.trainables.plugins import PluginError
from lrbs.trainables.schedules import ScheduleConfig, validate_schedule
from lrbs.trainables.tensor_data import DataError

# Ray counts resources in units of 1e-4 and refuses a smaller non-zero request ("the precision of
# the fractional quantity of resource ... cannot go beyond 0.0001").
MIN_RESOURCE = 1e-4


def validate(spec: SweepSpec) -> None:
    """Value checks that need more than types. Raises SpecError naming the field."""
    ds, train, res = spec.dataset, spec.train, spec.resources
    _at_least(1, "dataset", ds, "n_train")
    if ds.val_fraction is not None and not 0.0 < ds.val_fraction < 1.0:
        raise SpecError(f"dataset.val_fraction: must be in (0, 1) (got {ds.val_fraction})")
    _check_seed(ds.split_seed, "dataset.split_seed")
    _validate_plugin_options(spec)
    _at_least(1, "train", train, "epochs")
    if not 0.0 <= train.momentum < 1.0:
        raise SpecError(f"train.momentum: must be in [0, 1) (got {train.momentum})")
    if not (train.weight_decay >= 0 and math.isfinite(train.weight_decay)):
        raise SpecError(f"train.weight_decay: must be >= 0 (got {train.weight_decay})")
    if not (train.divergence_factor > 1 and math.isfinite(train.divergence_factor)):
        raise SpecError(f"train.divergence_factor: must be > 1 (got {train.divergence_factor})")
    _at_least(1, "train", train, "eval_batch_size", "train_eval_samples")
    check_pack_value(train.pack)  # also for specs built in code, not read from YAML
    if train.augment not in AUGMENTATIONS:
        raise SpecError(f"train.augment: must be one of {', '.join(AUGMENTATIONS)} (got {train.augment!r})")
    if train.pack_layout not in LAYOUTS:
        raise SpecError(f"train.pack_layout: must be one of {', '.join(LAYOUTS)} (got {train.pack_layout!r})")
    if not (res.cpu > 0 and math.isfinite(res.cpu)):
        raise SpecError(f"resources.cpu: must be > 0 (got {res.cpu})")
    if res.cpu < MIN_RESOURCE:
        raise SpecError(
            f"resources.cpu: must be >= {MIN_RESOURCE:g}, Ray's smallest unit of a resource (got {res.cpu:g})"
        )
    if not (res.gpu >= 0 and math.isfinite(res.gpu)):
        raise SpecError(f"resources.gpu: must be >= 0 (got {res.gpu})")
    if 0 < res.gpu < MIN_RESOURCE:
        raise SpecError(
            f"resources.gpu: must be 0 or >= {MIN_RESOURCE:g}, Ray's smallest unit of a resource (got {res.gpu:g})"
        )
    if res.gpu > 1 and res.gpu != int(res.gpu):
        raise SpecError(f"resources.gpu: fractions are only allowed below 1 (got {res.gpu})")
    if train.precision not in PRECISIONS:
        raise SpecError(f"train.precision: must be one of {', '.join(PRECISIONS)} (got {train.precision!r})")
    if train.precision == "tf32" and res.gpu == 0:
        raise SpecError(
            "train.precision: tf32 is a CUDA mode (TF32 tensor cores) and resources.gpu is 0 (trials on CPU); "
            "use fp32 or bf16 on CPU, or give trials a GPU"
        )
    try:
        check_data_dir(ds, files=False)
        n_train = train_set_size(ds)  # a user's data-set factory runs here, once per process
        if train.augment != "none":
            shape = tuple(dataset_entry(ds.name).input_shape(ds))
            if len(shape) != 3:
                raise SpecError(
                    f"train.augment: {train.augment} crops and flips images (C, H, W); "
                    f"{ds.name} gives examples of shape {shape}"
                )
    except (DataError, PluginError) as exc:
        raise SpecError(str(exc)) from None
    for i, seed in enumerate(spec.grid.seed):
        _check_seed(seed, f"grid.seed[{i}]")
    if len(set(spec.grid.seed)) != len(spec.grid.seed):
        raise SpecError(f"grid.seed: repeated values {list(spec.grid.seed)}")
    if spec.rescale is not None:
        _validate_rescale(spec.rescale, n_train)
    elif spec.beta is not None:
        _validate_beta(spec, spec.beta, n_train)
    elif spec.variants:
        for i, v in enumerate(spec.variants):
            if not (v.lr > 0 and math.isfinite(v.lr)):
                raise SpecError(f"variants[{i}].lr: must be > 0 (got {v.lr})")
            _check_batch_size(v.batch_size, n_train, f"variants[{i}].batch_size")
            if v.schedule is not None:
                try:
                    validate_schedule(v.schedule, spec.train.epochs, n_train)
                except (ValueError, TypeError) as exc:
                    raise SpecError(f"variants[{i}].{schedule_message(exc)}") from None
    else:
        for key in ("lr", "batch_size"):
            axis = getattr(spec.grid, key)
            if isinstance(axis, AxisRange) and axis.num > spec.limits.max_points:
                raise SpecError(
                    f"grid.{key}.num: {axis.num:,} values; limits.max_points is "
                    f"{spec.limits.max_points:,} (raise it if you mean it)"
                )
        lrs = axis_values(spec.grid.lr, "grid.lr")
        sizes = axis_values(spec.grid.batch_size, "grid.batch_size")
        for i, lr in enumerate(lrs):
            if not (lr > 0 and math.isfinite(lr)):
                raise SpecError(f"grid.lr[{i}]: must be > 0 (got {lr})")
        for i, size in enumerate(sizes):
            _check_batch_size(size, n_train, f"grid.batch_size[{i}]")
        for key, values in (("lr", lrs), ("batch_size", sizes)):
            if len(set(values)) != len(values):
                raise SpecError(f"grid.{key}: repeated values {list(values)}")
    try:
        validate_schedule(spec.schedule, spec.train.epochs, n_train)
    except (ValueError, TypeError) as exc:
        raise SpecError(schedule_message(exc)) from None
    if spec.curvature is not None:
        _validate_curvature(spec.curvature)
    _validate_limits(spec)
    _check_trained_lrs(spec)
    converged = spec.report.converged_train_acc
    if converged is not None and not 0.0 < converged <= 1.0:  # also NaN
        raise SpecError(f"report.converged_train_acc: must be an accuracy in (0, 1] or null (got {converged})")
    r = spec.resilience
    if r.checkpoint_every_s is not None and not (r.checkpoint_every_s > 0 and math.isfinite(r.checkpoint_every_s)):
        raise SpecError(
            f"resilience.checkpoint_every_s: must be a number of seconds > 0 or null (got {r.checkpoint_every_s})"
        )
    _at_least(0, "resilience", r, "max_failures")
    _at_least(1, "resilience", r, "checkpoint_every", "keep_checkpoints")
    if r.fail_at_epoch is not None and not 1 <= r.fail_at_epoch <= spec.train.epochs:
        raise SpecError(f"resilience.fail_at_epoch: must be an epoch in 1..{spec.train.epochs} (got {r.fail_at_epoch})")


def _at_least(minimum: int, section: str, config: Any, *keys: str) -> None:
    """Each of ``keys`` of ``config`` that is set (not None) is >= ``minimum``."""
    for key in keys:
        value = getattr(config, key)
        if value is not None and value < minimum:
            raise SpecError(f"{section}.{key}: must be >= {minimum} (got {value})")


def check_precision_here(spec: SweepSpec) -> None:
    """Trials on this machine's GPU in bf16 need a GPU that computes in bfloat16 (the pre-flight's
    check of the trials' machine; a cluster's GPUs are not known here). Raises SpecError."""
    if spec.train.precision == "bf16" and spec.resources.gpu > 0 and torch.cuda.is_available():
        if not torch.cuda.is_bf16_supported():
            raise SpecError(
                f"train.precision: bf16 needs a GPU with bfloat16 support; {torch.cuda.get_device_name(0)} "
                "has none (use fp32, or tf32)"
            )


def _check_seed(seed: int, where: str) -> None:
    # torch.Generator.manual_seed takes 64 bits (a negative seed wraps around to a large one) and
    # numpy's SeedSequence refuses negatives: seeds are 0..2**63-1 everywhere, as grid.seed.
    if not 0 <= seed <= MAX_INT:
        raise SpecError(f"{where}: must be in 0..2**63-1 (got {short(seed)})")


def _check_trained_lrs(spec: SweepSpec) -> None:
    """Every learning rate a trial will train at is a finite float: the lr a family derives
    (``rescale``/``beta``: lr0 x S/S0) and the largest a step schedule reaches (lr x factor^k,
    ``factor > 1``). Runs after the limits, so the points it expands are bounded."""
    points = expand_points(spec)
    family = "rescale" if spec.rescale is not None else "beta" if spec.beta is not None else None
    for p in points:
        if family and not (p["lr"] > 0 and math.isfinite(p["lr"])):
            raise SpecError(
                f"{family}.lr0: the point at S = {p['batch_size']} would train at lr = {p['lr']} "
                f"(lr0 x S/S0 is not a positive finite float)"
            )
    shared = [p["lr"] for p in points if "schedule" not in p]
    if shared:
        _check_step_peak(spec.schedule, max(shared), spec.train.epochs, "schedule")
    for i, v in enumerate(spec.variants):
        if v.schedule is not None:
            _check_step_peak(v.schedule, v.lr, spec.train.epochs, f"variants[{i}].schedule")


# log10 of the largest finite float (~1.8e308): a larger lr is inf.
_LOG10_FLOAT_MAX = math.log10(sys.float_info.max)


def _check_step_peak(schedule: ScheduleConfig, lr: float, epochs: int, where: str) -> None:
    """A step schedule's largest lr, lr x factor^k after its last decay within ``epochs``, is a
    finite float (and so is factor^k, which ``schedule_at`` computes first)."""
    if schedule.kind != "step" or not schedule.factor > 1:
        return
    last = epochs - 1  # the last 0-based epoch
    k = sum(m <= last for m in schedule.milestones) if schedule.milestones else last // (schedule.every or 1)
    grow = k * math.log10(schedule.factor)  # log10(factor^k)
    if max(grow, math.log10(lr) + grow) >= _LOG10_FLOAT_MAX:
        raise SpecError(
            f"{where}.factor: lr {lr:g} x {schedule.factor:g}^{k} (its {k} steps within "
            f"{epochs} epochs) overflows a float to inf"
        )


def _validate_limits(spec: SweepSpec) -> None:
    lim = spec.limits
    _at_least(1, "limits", lim, "max_points", "max_params", "max_epochs")
    if spec.train.epochs > lim.max_epochs:
        raise SpecError(
            f"train.epochs: {spec.train.epochs:,} epochs; limits.max_epochs is {lim.max_epochs:,} "
            f"(raise it if you mean it)"
        )
    if lim.memory_gb is not None and not (lim.memory_gb > 0 and math.isfinite(lim.memory_gb)):
        raise SpecError(f"limits.memory_gb: must be a number of GB > 0 or null (got {lim.memory_gb})")
    if not (lim.resource_wait_s >= 0 and math.isfinite(lim.resource_wait_s)):
        raise SpecError(f"limits.resource_wait_s: must be a number of seconds >= 0 (got {lim.resource_wait_s})")
    n = count_points(spec)
    if n > lim.max_points:
        raise SpecError(
            f"grid: the sweep has {n:,} trial points; limits.max_points is {lim.max_points:,} (raise it if you mean it)"
        )


def _validate_plugin_options(spec: SweepSpec) -> None:
    """``model`` and ``dataset``: a known name or an importable factory, and options it accepts.

    Built-ins check ``options`` against their options dataclass (types, unknown keys, values);
    a user's model factory against its signature. Building the model and calling it is the
    pre-flight's (``lrbs.sweeps.preflight``).
    """
    for section, cfg, registry in (("dataset", spec.dataset, DATASETS), ("model", spec.model, MODELS)):
        try:
            # A user's data-set factory is imported, checked and called by train_set_size below.
            factory: Any = model_factory(cfg.name) if section == "model" else dataset_entry(cfg.name)
        except (DataError, PluginError) as exc:
            raise SpecError(str(exc)) from None
        if cfg.name in registry:
            try:
                build_dataclass(registry[cfg.name].options, cfg.options, f"{section}.options")
            except ValueError as exc:  # the options dataclass's own value checks
                raise SpecError(f"{section}.options.{exc}") from None
        elif section == "model":
            try:
                inspect.signature(factory).bind((1,), 2, **cfg.options)
            except TypeError as exc:
                raise SpecError(f"model.options: {cfg.name} does not take these options ({exc})") from None
            except ValueError:
                pass  # no inspectable signature: building the model decides


def _check_batch_size(size: int, n_train: int, where: str) -> None:
    if size < 1:
        raise SpecError(f"{where}: must be >= 1 (got {size})")
    if size > n_train:
        raise SpecError(f"{where}: {size} is larger than the training set ({n_train} examples)")


def _validate_rescale(r: RescaleConfig, n_train: int) -> None:
    if not r.lr0 > 0:
        raise SpecError(f"rescale.lr0: must be > 0 (got {r.lr0})")
    _check_batch_size(r.batch_size0, n_train, "rescale.batch_size0")
    for i, rule in enumerate(r.rules):
        if rule not in RESCALE_RULES:
            raise SpecError(f"rescale.rules[{i}]: unknown rule {rule!r} (known: {', '.join(RESCALE_RULES)})")
    for i, size in enumerate(r.batch_sizes):
        _check_batch_size(size, n_train, f"rescale.batch_sizes[{i}]")
    _check_distinct(r.rules, "rescale.rules")
    _check_distinct(r.batch_sizes, "rescale.batch_sizes")


def _check_distinct(values: tuple[Any, ...], where: str) -> None:
    """A family's values are a set: a repeated one makes two identical points, which the run
    directory cannot tell apart (one of them loses its rows)."""
    seen: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            raise SpecError(f"{where}[{i}]: repeats {where}[{seen[value]}] ({value!r}); each value once")
        seen[value] = i


def _validate_beta(spec: SweepSpec, b: BetaConfig, n_train: int) -> None:
    if not b.lr0 > 0:
        raise SpecError(f"beta.lr0: must be > 0 (got {b.lr0})")
    _at_least(1, "beta", b, "batch_size0")
    if b.values and b.search is not None:
        raise SpecError("beta.values: conflicts with beta.search (the search picks the betas; keep one)")
    if not b.values and b.search is None:
        raise SpecError("beta.values: required (a list of betas), or beta.search to find beta* adaptively")
    if b.min_drop is not None and not 0 <= b.min_drop < 100:
        raise SpecError(f"beta.min_drop: must be a drop in accuracy points, >= 0 and < 100 (got {b.min_drop})")
    for i, value in enumerate(b.values):
        if not value > 0:
            raise SpecError(f"beta.values[{i}]: must be > 0 (got {value})")
    _check_distinct(b.values, "beta.values")
    _check_distinct(b.n_train, "beta.n_train")
    if spec.dataset.n_train is not None and b.n_train:
        raise SpecError("beta.n_train: conflicts with dataset.n_train (set the sizes in one place)")
    sizes = [n_train]
    for i, n in enumerate(b.n_train):
        try:
            sizes.append(train_set_size(dataclasses.replace(spec.dataset, n_train=n)))
        except DataError as exc:
            raise SpecError(f"beta.n_train[{i}]: {str(exc).split(': ', 1)[-1]}") from None
    smallest = min(sizes[1:] or sizes)
    same_size: dict[int, int] = {}
    for i, value in enumerate(b.values):
        if not b.batch_size0 * value <= MAX_INT:  # too large to round to an integer S
            raise SpecError(
                f"beta.values[{i}]: S = {b.batch_size0} x {value:g} is larger than the training set "
                f"({smallest} examples)"
            )
        size = beta_size(b, value)
        _check_batch_size(size, smallest, f"beta.values[{i}]")
        # Betas that round to the same S are one (lr, S) point twice under two labels.
        if size in same_size:
            j = same_size[size]
            raise SpecError(
                f"beta.values[{i}]: beta {value:g} and beta.values[{j}] ({b.values[j]:g}) both round "
                f"to S = {size} (batch_size0 = {b.batch_size0}); keep one"
            )
        same_size[size] = i
    if b.search is not None:
        _validate_beta_search(spec, b, b.search, smallest)


MAX_SEARCH_CANDIDATES = 1000  # a finer ladder than this is a typo (resolution 1.000001), not a study


def _validate_beta_search(spec: SweepSpec, b: BetaConfig, q: BetaSearchConfig, smallest: int) -> None:
    """``beta.search``: its knobs, then what the search needs to bracket beta* at all."""
    if b.batch_size0 > smallest:
        raise SpecError(
            f"beta.batch_size0: {b.batch_size0} is larger than the smallest training set ({smallest} "
            f"examples): the search would have no beta = 1 reference"
        )
    if not (q.resolution > 1 and math.isfinite(q.resolution)):
        raise SpecError(f"beta.search.resolution: must be a factor > 1 (got {q.resolution})")
    if q.max_beta is not None and not (q.max_beta >= q.resolution and math.isfinite(q.max_beta)):
        raise SpecError(
            f"beta.search.max_beta: must be >= the resolution {q.resolution:g} (got {q.max_beta}): "
            f"the search needs a beta above the reference beta = 1"
        )
    if q.max_beta is not None and b.batch_size0 * q.max_beta > 1e12:
        raise SpecError(
            f"beta.search.max_beta: beta = {q.max_beta:g} means S = {b.batch_size0} x {q.max_beta:g}, "
            f"larger than the smallest training set ({smallest} examples)"
        )
    top = q.max_beta if q.max_beta is not None else smallest / b.batch_size0 + 1
    n_candidates = math.floor(math.log(max(top, 1.0)) / math.log(q.resolution)) + 1
    if n_candidates > MAX_SEARCH_CANDIDATES:
        raise SpecError(
            f"beta.search.resolution: x{q.resolution:g} up to beta {top:g} is {n_candidates:,} candidates "
            f"(at most {MAX_SEARCH_CANDIDATES:,}; a coarser resolution or a smaller max_beta)"
        )
    if q.max_beta is not None and beta_size(b, q.max_beta) > smallest:
        raise SpecError(
            f"beta.search.max_beta: beta = {q.max_beta:g} means S = {beta_size(b, q.max_beta)}, larger "
            f"than the smallest training set ({smallest} examples)"
        )
    elif beta_size(b, q.resolution) > smallest:
        raise SpecError(
            f"beta.search.max_beta: even beta = {q.resolution:g} (S = {beta_size(b, q.resolution)}) "
            f"exceeds the smallest training set ({smallest} examples)"
        )
    betas = search_ladder(spec)
    sizes = [beta_size(b, beta) for beta in betas]
    same = next((i for i in range(1, len(sizes)) if sizes[i] == sizes[i - 1]), None)
    if same is not None:
        raise SpecError(
            f"beta.search.resolution: beta {betas[same - 1]:g} and {betas[same]:g} both round to "
            f"S = {sizes[same]} (batch_size0 = {b.batch_size0}); use a larger batch_size0 or resolution"
        )
    if len(spec.grid.seed) < 2:
        raise SpecError(
            f"grid.seed: beta.search needs >= 2 seeds per point for its Welch test (got {list(spec.grid.seed)})"
        )
    if q.max_seeds is not None and q.max_seeds < len(spec.grid.seed):
        raise SpecError(
            f"beta.search.max_seeds: must be >= the {len(spec.grid.seed)} seeds of grid.seed (got {q.max_seeds})"
        )
    if not 0 < q.undecided_p <= 1:
        raise SpecError(f"beta.search.undecided_p: must be in (0, 1] (got {q.undecided_p})")
    n_sizes = max(1, len(b.n_train))
    need = 2 * len(spec.grid.seed) * n_sizes
    if q.budget is not None and q.budget < need:
        raise SpecError(
            f"beta.search.budget: {q.budget} trials cannot bracket beta* (needs >= {need}: beta = 1 "
            f"and one probe, {len(spec.grid.seed)} seeds each, at {n_sizes} training-set size(s))"
        )


def _validate_curvature(c: CurvatureConfig) -> None:
    if not (c.every == "end" or (isinstance(c.every, int) and c.every >= 1)):
        raise SpecError(f"curvature.every: must be 'end' or an epoch count >= 1 (got {c.every!r})")
    _check_seed(c.seed, "curvature.seed")
    _at_least(1, "curvature", c, "n_samples", "lanczos_iters", "hutchinson_probes", "noise_pairs", "batch_size")
    if c.hutchinson_probes < 4:
        raise SpecError(f"curvature.hutchinson_probes: need >= 4 HVPs for a standard error (got {c.hutchinson_probes})")
    if not 0 < c.lanczos_tol < 1:
        raise SpecError(f"curvature.lanczos_tol: must be in (0, 1) (got {c.lanczos_tol})")
    if c.trace_method not in ("hutch++", "hutchinson"):
        raise SpecError(f"curvature.trace_method: must be hutch++ or hutchinson (got {c.trace_method!r})")
    if c.noise_method not in ("full", "two_batch"):
        raise SpecError(f"curvature.noise_method: must be full or two_batch (got {c.noise_method!r})")
    _at_least(1, "curvature", c, "noise_b_small")
    if c.noise_method == "full" and c.noise_pairs < 2:
        raise SpecError(f"curvature.noise_pairs: need >= 2 batches for a standard error (got {c.noise_pairs})")
    if c.noise_method == "two_batch" and not 0 < c.noise_b_small < c.noise_b_big:
        raise SpecError(
            f"curvature.noise_b_small: need 0 < noise_b_small < noise_b_big (got {c.noise_b_small}, {c.noise_b_big})"
        )


def check_pack_value(pack: Any) -> None:
    if pack != "auto" and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
        raise SpecError(f"train.pack: must be an integer >= 1 or auto (got {short(pack)})")
