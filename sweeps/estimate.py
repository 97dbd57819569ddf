"""What a sweep costs before it runs: its model built once on the driver, one trial's memory
against ``limits``, and the time of its packs (printed by ``lrbs validate``).

The model: a factory that raises, returns something else than a module, or whose output is not
(batch, n_classes) logits is one line naming ``model.name`` (exit 2) before Ray starts; its size,
FLOPs and activations are a ``ModelProfile``; with ``curvature:``, one Hessian-vector product
through the same model checks that the probes can run.

Compute: 3x the forward FLOPs per training example (forward + backward), counted with
``torch.utils.flop_counter``'s formulas on the real model. Time: every pack
(``lrbs.sweeps.packing``) takes the steps of its batch-size schedule, and one step of K members
at batch size S costs

    t(K, S) = step_floor_s + K * S * train_flops_per_example / flops_per_s

with ``step_floor_s`` (launch and Python cost of one step, paid once per pack) and
``flops_per_s`` fitted to graphed pack steps that ``benchmarks/gpu_check.py`` measured on a GPU
(``cuda``) or ``benchmarks/run.py`` on a CPU (``cpu``); ``sweeps/step_costs.json`` holds them
with the device and command they came from; probes and evaluation are not counted. That fit is
the fallback (a cluster's device cannot be measured from here; it was fitted on MLP steps).

A sweep whose CPU trials run on this machine is costed from a calibration instead
(``calibrate``, a second or two in the pre-flight of ``lrbs validate`` and ``lrbs run``): real
SGD steps of this spec's model at every batch size of its packs, alone and as the largest pack
its points allow (sizes between are interpolated), on ``resources.cpu`` threads as its trials
run, plus one evaluation forward and one Hessian-vector product on the probe subset. A pack then
costs its steps, an evaluation of the validation set per epoch, and each member's probes
(Lanczos and Hutchinson products, and for the full noise scale a pass of ``noise_b_small``
gradients over the training set). These costs also size ``train.pack: auto``'s packs
(``planned_packs``), and the packs on the parallel trial slots give the sweep's planned wall time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from lrbs.sweeps.packing import PackKey, largest_pack, makespan, pack_groups, pack_key, parallel_slots, plan_packs
from lrbs.sweeps.spec import SpecError, SweepSpec
from lrbs.trainables import curvature
from lrbs.trainables.config import DatasetConfig, ModelConfig, options_key
from lrbs.trainables.data import dataset_entry, train_set_size
from lrbs.trainables.models import build_model
from lrbs.trainables.pack_sgd import PackSGD
from lrbs.trainables.packed_models import build_pack, choose_layout
from lrbs.trainables.plugins import PluginError
from lrbs.trainables.probes import error_text
from lrbs.trainables.tensor_data import DataError

STEP_COSTS = Path(__file__).with_name("step_costs.json")


@dataclass(frozen=True)
class CostEstimate:
    trials: int
    packs: tuple[int, ...]  # members per pack
    forward_flops_per_example: float
    total_pflop: float
    device_hours: float
    device: str  # "cuda" or "cpu": which measured step costs were used
    costs: dict[str, Any]  # the step_costs.json entry used, or the calibration
    wall_hours: float = 0.0  # the packs started in plan order on ``slots`` parallel trials (``packing.makespan``)
    slots: int = 1


@dataclass(frozen=True)
class ModelProfile:
    """What the pre-flight check learned by building the model once on the driver."""

    n_params: int
    forward_flops_per_example: float
    input_shape: tuple[int, ...]
    n_classes: int
    activation_bytes_per_example: float = 0.0  # outputs of every leaf module, float32 (kept for backward)
    probed: bool = False  # a Hessian-vector product was run through the model (``probes=True``)
    probe_error: str | None = None  # why it failed (None: it ran, or was not tried)


class FlopCount(TorchDispatchMode):  # type: ignore[no-untyped-call,unused-ignore]
    """FLOPs of the ops run inside it that ``torch.utils.flop_counter`` has formulas for (matmuls
    and convolutions), summed: ``FlopCounterMode``'s count without its per-module table."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # False: torch would import torch._dynamo (about 1 s, a third of `lrbs validate`) on the
        # first op only to keep torch.compile out of this mode; nothing here is compiled.
        return False

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call,unused-ignore]
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def model_profile(
    model_cfg: ModelConfig, dataset: DatasetConfig, max_params: int | None = None, *, probes: bool = False
) -> ModelProfile:
    """Build the model for the data set's examples, run it on two of them and count its FLOPs.

    The pre-flight check of every model, built-in or a user's factory: a factory that raises,
    returns something else than a module, or whose output is not (batch, n_classes) logits is
    one line naming ``model.name``, before Ray starts. FLOPs by ``torch.utils.flop_counter``
    (``FlopCount``: matmuls and convolutions; elementwise ops are not counted). ``probes`` (a spec with
    ``curvature:``): also one Hessian-vector product through the same model by the probes' own
    code (``lrbs.trainables.curvature.hvp``: eval mode, ``double_backward_kernels``), on the CPU,
    on 2 examples of the data set's shape; a model with an op that has no double backward gets
    ``probe_error``, one line naming ``curvature`` and the op (docs/extending.md). Built once per
    process and model.
    """
    entry = dataset_entry(dataset.name)  # the shape: fixed for built-ins, from the factory for a user's set
    try:
        shape, classes = tuple(entry.input_shape(dataset)), int(entry.n_classes(dataset))
    except (DataError, PluginError) as exc:
        raise SpecError(str(exc)) from None
    key = (model_cfg.name, options_key(model_cfg.options), shape, classes)
    if key not in _PROFILES or (probes and not _PROFILES[key].probed):
        model, profile = _profile(model_cfg, shape, classes, max_params)
        if probes:
            error = _hvp_error(model, model_cfg.name, shape, classes)
            profile = dataclasses.replace(profile, probed=True, probe_error=error)
        _PROFILES[key] = profile
    return _PROFILES[key]


_PROFILES: dict[tuple[Any, ...], ModelProfile] = {}  # per process; the factory gets the spec's own options


def meta_param_count(cfg: ModelConfig, shape: tuple[int, ...], classes: int) -> int | None:
    """Parameters of the model built on torch's meta device (no memory, no initialization cost),
    so a typo like ``width: 100000`` is refused before a real build allocates it; None when the
    factory cannot build on the meta device (the real build then counts)."""
    try:
        with torch.device("meta"):
            model = build_model(cfg, shape, classes)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - a factory that needs real tensors: checked after the real build
        return None


def _profile(
    cfg: ModelConfig, shape: tuple[int, ...], classes: int, max_params: int | None = None
) -> tuple[nn.Module, ModelProfile]:
    name = cfg.name
    if max_params is not None:
        n = meta_param_count(cfg, shape, classes)
        if n is not None and n > max_params:
            raise SpecError(
                f"model.options: {name} would have {n:,} parameters; limits.max_params is "
                f"{max_params:,} (raise it if you mean it)"
            )
    state = torch.random.get_rng_state()
    try:
        model = build_model(cfg, shape, classes).eval()
    except (PluginError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(message if message.startswith("model.") else f"model.options: {message}") from None
    finally:
        torch.random.set_rng_state(state)  # building initializes weights: leave the caller's stream
    counter = FlopCount()
    x = torch.zeros(2, *shape)
    outputs = [0]

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            outputs[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), counter:
            out = model(x)
    except BaseException as exc:  # also sys.exit() / KeyboardInterrupt in a user's forward (trainables/plugins.py)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise SpecError(
            f"model.name: {name}'s forward pass on a batch of shape {tuple(x.shape)} raised "
            f"{type(exc).__name__}: {first}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(
            f"model.name: {name} must return logits of shape (batch, {classes}) for "
            f"{classes} classes; on a batch of 2 it returned {got}"
        )
    if not out.is_floating_point():  # cross-entropy and its gradient need floating-point logits
        raise SpecError(f"model.name: {name} must return floating-point logits; it returned {out.dtype}")
    if not any(p.requires_grad for p in model.parameters()):
        raise SpecError(
            f"model.name: {name} has no trainable parameters (none with requires_grad): SGD would have nothing to train"
        )
    n_params = sum(p.numel() for p in model.parameters())
    if max_params is not None and n_params > max_params:  # a factory that could not build on the meta device
        raise SpecError(
            f"model.options: {name} has {n_params:,} parameters; limits.max_params is "
            f"{max_params:,} (raise it if you mean it)"
        )
    return model, ModelProfile(
        n_params,
        counter.flops / 2,
        shape,
        classes,
        activation_bytes_per_example=4.0 * (outputs[0] + x[0].numel() * 2) / 2,
    )


def _hvp_error(model: nn.Module, name: str, shape: tuple[int, ...], classes: int) -> str | None:
    gen = torch.Generator().manual_seed(0)
    # zeros, as model_profile feeds: valid for every input a data set gives (token ids included)
    x, y = torch.zeros(2, *shape), torch.arange(2) % classes
    vecs = [torch.randn(p.shape, generator=gen) for p in model.parameters() if p.requires_grad]
    try:
        curvature.hvp(model, F.cross_entropy, [(x, y)], vecs)
    except (Exception, SystemExit) as exc:  # a user's backward is user code too (trainables/plugins.py)
        return (
            f"curvature: the probes need Hessian-vector products (a double backward) through model.name "
            f"{name}; one on 2 examples raised {error_text(exc)}. Drop the curvature section or replace "
            f"that op (docs/extending.md)"
        )
    return None


def trial_memory(spec: SweepSpec, profile: ModelProfile) -> tuple[float, str]:
    """Bytes one trial needs at its largest (most members, largest batch, largest n_train), and
    what they are made of: 4 float32 copies of the parameters per member (weights, gradient,
    momentum, a probe or evaluation copy), activations kept for backward at the largest batch
    per member, the training and validation sets as float32 on the device. Members: the largest
    pack any plan of this spec may form (``plan_packs`` sizes ``auto`` packs from measured costs)."""
    packs = plan_packs(spec, slots=1)
    k = max(len(p) for p in packs)
    batch = max(max(pack_key(pack[0], spec)[1]) for pack in packs)  # members share every epoch's S
    n_train = max(p.get("n_train") or train_set_size(spec.dataset) for pack in packs for p in pack)
    per_example = 4.0 * float(np.prod(profile.input_shape))
    state = 16.0 * profile.n_params * k
    acts = profile.activation_bytes_per_example * batch * k
    data = per_example * n_train * 1.25  # + the validation split (at most a quarter more, usually)
    why = (
        f"{k} member(s) x {profile.n_params:,} parameters, activations at batch {batch}, "
        f"{n_train:,} training examples of shape {profile.input_shape}"
    )
    return state + acts + data, why


def machine_memory_gb(gpu: float) -> tuple[float | None, str]:
    """Memory a trial may use here: RAM for CPU trials, this GPU's memory x ``gpu`` for GPU trials
    (None when this machine has no GPU: a cluster's GPUs cannot be seen from here)."""
    if gpu > 0:
        if not torch.cuda.is_available():
            return None, "GPU"
        return torch.cuda.get_device_properties(0).total_memory * min(gpu, 1.0) / 1e9, "GPU memory here"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9, "RAM here"
    except (OSError, ValueError, IndexError):
        pass
    return None, "RAM"


def check_limits(spec: SweepSpec, profile: ModelProfile) -> None:
    """``limits.memory_gb`` (default: this machine) against one trial's memory; one line naming the key."""
    need, why = trial_memory(spec, profile)
    limit, where = (
        (spec.limits.memory_gb, "limits.memory_gb")
        if spec.limits.memory_gb is not None
        else machine_memory_gb(spec.resources.gpu)
    )
    if limit is not None and need / 1e9 > limit:
        raise SpecError(
            f"limits.memory_gb: one trial needs ~{need / 1e9:.3g} GB ({why}); the limit is "
            f"{limit:.3g} GB ({where}): shrink the sweep, or set limits.memory_gb for bigger nodes"
        )


def train_flops_per_example(model_cfg: ModelConfig, dataset: DatasetConfig) -> float:
    """FLOPs of one training example: forward and backward, 3x the forward's."""
    return 3.0 * model_profile(model_cfg, dataset).forward_flops_per_example


def estimate_cost(
    spec: SweepSpec, calibration: dict[str, Any] | None = None, packs: list[list[dict[str, Any]]] | None = None
) -> CostEstimate:
    """The sweep's cost: from ``calibration`` (``calibrate``: steps, evaluation and probes as
    measured here) or, without one, from the fitted step costs of ``sweeps/step_costs.json``.
    ``packs``: the plan, if the caller has it (default ``planned_packs``)."""
    per_example = model_profile(spec.model, spec.dataset).forward_flops_per_example
    train_flops = 3.0 * per_example
    device = "cuda" if spec.resources.gpu > 0 else "cpu"
    costs: dict[str, Any] = calibration or json.loads(STEP_COSTS.read_text())[device]
    total_flops = 0.0
    seconds: list[float] = []
    packs = planned_packs(spec, calibration) if packs is None else packs
    for pack in packs:
        key = pack_key(pack[0], spec)  # members share n_train and every epoch's batch size
        n = pack_train_size(spec, key)
        flops = sum(train_flops * len(pack) * s * (n // s) for s in key[1])
        total_flops += flops
        if calibration is None:
            seconds.append(sum(n // s for s in key[1]) * costs["step_floor_s"] + flops / costs["flops_per_s"])
        else:
            seconds.append(pack_seconds(spec, calibration, len(pack), key))
    slots = parallel_slots(spec)
    return CostEstimate(
        trials=sum(len(p) for p in packs),
        packs=tuple(len(p) for p in packs),
        forward_flops_per_example=per_example,
        total_pflop=total_flops / 1e15,
        device_hours=sum(seconds) / 3600,
        device=device,
        costs=costs,
        wall_hours=makespan(seconds, slots) / 3600,
        slots=slots,
    )


def planned_packs(
    spec: SweepSpec, calibration: dict[str, Any] | None, points: list[dict[str, Any]] | None = None
) -> list[list[dict[str, Any]]]:
    """The pack plan (``lrbs.sweeps.packing.plan_packs``), with ``calibration`` sized by the
    measured cost of every pack size each group could take."""
    if calibration is None:
        return plan_packs(spec, points)
    costs = {
        (k, key): pack_seconds(spec, calibration, k, key)
        for key, members in pack_groups(spec, points).items()
        for k in range(1, largest_pack(spec, len(members)) + 1)
    }
    return plan_packs(spec, points, pack_seconds=costs)


def pack_train_size(spec: SweepSpec, key: PackKey) -> int:
    """Training examples of the packs with this key (its n_train, else the data set's)."""
    return train_set_size(
        dataclasses.replace(spec.dataset, n_train=key[0] if key[0] is not None else spec.dataset.n_train)
    )


def pack_seconds(spec: SweepSpec, calibration: dict[str, Any], k: int, key: PackKey) -> float:
    """One trial of K members with this key, from ``calibrate``: its steps, evaluations and each
    member's probes."""
    n = pack_train_size(spec, key)
    steps = sum((n // s) * step_seconds(calibration, k, s) for s in key[1])
    return steps + eval_seconds(spec, calibration, k, n) + k * probe_seconds(spec, calibration, n)


def step_seconds(calibration: dict[str, Any], k: int, s: int) -> float:
    """One step of K members at batch size S: measured, or linear in K between the nearest
    measured pack sizes at that S (per member beyond them)."""
    return _in_k({int(m.split(",")[0]): t for m, t in calibration["step_s"].items() if int(m.split(",")[1]) == s}, k)


def _in_k(measured: dict[int, float], k: int) -> float:
    if k in measured:
        return float(measured[k])
    below, above = [m for m in measured if m < k], [m for m in measured if m > k]
    if not below or not above:  # outside the measured sizes: the nearest one's cost per member
        m = max(below) if below else min(above)
        return float(measured[m]) * k / m
    lo, hi = max(below), min(above)
    return float(measured[lo] + (measured[hi] - measured[lo]) * (k - lo) / (hi - lo))


def eval_seconds(spec: SweepSpec, costs: dict[str, Any], k: int, n_train: int) -> float:
    """A pack's evaluations: the validation set every epoch (its size from ``val_fraction``; a
    quarter of the training set for a set's own test split) and the train-eval subset once."""
    vf = spec.dataset.val_fraction
    n_val = n_train * vf / (1.0 - vf) if vf is not None and vf < 1.0 else n_train / 4.0
    examples = spec.train.epochs * n_val + min(spec.train.train_eval_samples, n_train)
    return examples * _in_k({int(m): float(t) for m, t in costs["eval_s_per_example"].items()}, k)


def probe_events(spec: SweepSpec) -> int:
    """How often each member is probed: at the end, or every k epochs and at the end."""
    cfg = spec.curvature
    if cfg is None:
        return 0
    every = spec.train.epochs if cfg.every == "end" else int(cfg.every)
    return spec.train.epochs // every + (spec.train.epochs % every != 0)


def probe_seconds(spec: SweepSpec, costs: dict[str, Any], n_train: int) -> float:
    """One member's probes over its trial: Hessian-vector products on the probe subset (Lanczos at
    most ``lanczos_iters``, Hutchinson ``hutchinson_probes``) and, for the full noise scale, a
    pass of ``noise_b_small``-example gradients over the training set (costed as SGD steps)."""
    cfg = spec.curvature
    if cfg is None:
        return 0.0
    once = (cfg.lanczos_iters + cfg.hutchinson_probes) * float(costs["hvp_s"])
    if cfg.noise_scale and cfg.noise_method == "full":
        once += max(n_train // cfg.noise_b_small, cfg.noise_pairs) * step_seconds(costs, 1, cfg.noise_b_small)
    return probe_events(spec) * once


def calibrate(spec: SweepSpec, budget_s: float = 0.15) -> dict[str, Any] | None:
    """Per-step costs of this spec's model measured here, for the CPU trials of a sweep run on
    this machine (None for GPU trials: the fitted fallback). Real SGD steps (forward, per-member
    loss, backward, ``PackSGD`` update) of every batch size S of the plan at K = 1 and at the
    largest pack K its points allow, on ``resources.cpu`` threads; one evaluation forward per K;
    one Hessian-vector product on the probe subset. Each (K, S) takes one warm-up step and then
    steps for about ``budget_s``. Keys of ``step_s`` and ``eval_s_per_example`` are "K,S" and "K"."""
    if spec.resources.gpu > 0:
        return None
    profile = model_profile(spec.model, spec.dataset)
    shape, classes = profile.input_shape, profile.n_classes
    # Every batch size of a group at one member and at the largest pack the group allows: the
    # planner interpolates the sizes between (``step_seconds``), a step's cost being near linear in K.
    cases: set[tuple[int, int]] = set()
    for group, members in pack_groups(spec).items():
        cases.update((k, s) for k in {1, largest_pack(spec, len(members))} for s in group[1])
    cfg = spec.curvature
    if cfg is not None and cfg.noise_scale and cfg.noise_method == "full":
        cases.add((1, cfg.noise_b_small))
    key = (
        spec.model.name,
        options_key(spec.model.options),
        shape,
        classes,
        spec.train.pack_layout,
        spec.train.momentum,
        spec.resources.cpu,
        tuple(sorted(cases)),
        cfg.n_samples if cfg else 0,
    )
    if key in _CALIBRATIONS:
        return _CALIBRATIONS[key]
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    try:
        step_s: dict[str, float] = {}
        eval_s: dict[str, float] = {}
        for k, s in sorted(cases):
            step_s[f"{k},{s}"], per_example = _measure_step(spec, shape, classes, k, s, budget_s)
            eval_s.setdefault(str(k), per_example)
        hvp_s = 0.0
        if cfg is not None:
            model = build_model(spec.model, shape, classes)
            n = min(cfg.n_samples, cfg.batch_size)
            chunks = max(1, -(-cfg.n_samples // cfg.batch_size))
            batches = [(torch.zeros(n, *shape), torch.arange(n) % classes)]
            vecs = [torch.ones_like(p) for p in model.parameters() if p.requires_grad]
            hvp_s = chunks * _seconds(lambda: curvature.hvp(model, F.cross_entropy, batches, vecs), budget_s)
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(state)  # building initializes weights: leave the caller's stream
    _CALIBRATIONS[key] = {
        "device": f"this machine's CPU, {max(1, int(spec.resources.cpu))} thread(s)",
        "source": "measured in the pre-flight (sweeps/estimate.py: calibrate)",
        "step_s": step_s,
        "eval_s_per_example": eval_s,
        "hvp_s": hvp_s,
    }
    return _CALIBRATIONS[key]


_CALIBRATIONS: dict[tuple[Any, ...], dict[str, Any]] = {}  # per process


def _measure_step(
    spec: SweepSpec, shape: tuple[int, ...], classes: int, k: int, s: int, budget_s: float
) -> tuple[float, float]:
    """Seconds of one SGD step of K members at batch size S, and of evaluation per example."""
    pack = build_pack(
        [build_model(spec.model, shape, classes).train() for _ in range(k)],
        choose_layout(spec.model, spec.train.pack_layout),
        len(shape),
    )
    opt = PackSGD(pack, k, torch.device("cpu"), spec.train.momentum, spec.train.weight_decay)
    opt.set_lr([1e-3] * k)
    x, y = torch.zeros(k, s, *shape), torch.arange(k * s).view(k, s) % classes

    def step() -> None:
        logits = pack.forward(x, training=True)  # (K, S, C)
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, s).mean(1)
        opt.step(pack.params, torch.autograd.grad(opt.objective(losses), pack.params))

    xe = torch.zeros(min(spec.train.eval_batch_size, 512), *shape)
    with torch.no_grad():
        per_example = _seconds(lambda: pack.forward(xe, training=False), budget_s / 3) / len(xe)
    return _seconds(step, budget_s), per_example


def _seconds(fn: Any, budget_s: float) -> float:
    """Median seconds of ``fn`` after one warm-up call, over calls for about ``budget_s`` (at least 3)."""
    fn()
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def describe(cost: CostEstimate) -> str:
    """Two lines: the pack plan, then the estimate and where its per-step costs come from."""
    plan = ", ".join(f"{n} x {k}" for k, n in sorted(Counter(cost.packs).items(), reverse=True))
    unit = "GPU-hours" if cost.device == "cuda" else "CPU-hours"
    c = cost.costs
    if "step_s" in c:
        basis = f"from steps, evaluation and probes of this model {c['source']} on {c['device']}"
    else:
        basis = (
            f"from per-step costs measured on {c['device']} ({c['step_floor_s'] * 1e3:.3g} ms per step + "
            f"{c['flops_per_s'] / 1e12:.3g} TFLOP/s; {c['source']}); probes and evaluation not counted"
        )
    return (
        f"pack plan: {len(cost.packs)} Tune trials for {cost.trials} points (packs x members: {plan})\n"
        f"estimated cost: {cost.total_pflop:.3g} PFLOP of training "
        f"({cost.forward_flops_per_example / 1e6:.3g} MFLOP forward per example), "
        f"~{cost.device_hours:.3g} {unit} ({cost.device_hours * 60:.3g} min) with packs run one after another, "
        f"~{cost.wall_hours * 60:.3g} min of training on {cost.slots} parallel trial slot(s), " + basis
    )
