"""Sweep specs: YAML data -> validated dataclasses -> an explicit list of trial points.

A spec is data (as in AlgoPerf and init2winit): every axis is written out, and one tested
function (``expand_points``) turns it into the trials. Unknown keys and impossible values are
rejected with one line naming the field, before anything is launched.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import stat
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lrbs.analysis.convergence import DEFAULT_CONVERGED_TRAIN_ACC
from lrbs.sweeps.errors import LrbsError
from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.schedules import ScheduleConfig, schedule_from_dict, validate_schedule


class SpecError(LrbsError):
    """A spec that cannot run. ``str()`` is ``"<file>: <field>: <problem>"``, one line of at most
    ``MAX_ERROR`` characters (a huge offending value is cut, never printed whole)."""

    MAX_ERROR = 400

    def __init__(self, message: str):
        message = " ".join(str(message).split("\n"))
        if len(message) > self.MAX_ERROR:
            message = message[: self.MAX_ERROR - 30] + f"... ({len(message)} characters)"
        super().__init__(message)


# YAML limits: a spec is a page of text; these only stop inputs built to exhaust the machine.
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # nodes after expanding aliases (a 496-byte alias bomb expands to ~10^9)


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys: the spec's checks refuse them by name
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_short(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        # Python refuses to parse decimal integers of more than sys.get_int_max_str_digits()
        # (4,300) digits (a ValueError inside the loader): such a literal becomes a _HugeInt,
        # which spec_from_dict refuses by the field it sits in.
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            return _HugeInt(sum(c.isdigit() for c in self.construct_scalar(node)))


class _HugeInt:
    """An integer literal of a spec too long for Python to parse; refused by ``_check_numbers``."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits:,} digits>"


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _SpecLoader.construct_mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)

# Integers in a spec fit in a signed 64-bit integer (torch and numpy seeds, counts, sizes); a
# larger one is a typo that would overflow a float or a C integer downstream.
MAX_INT = 2**63 - 1
# Ray counts resources in units of 1e-4 and refuses a smaller non-zero request ("the precision of
# the fractional quantity of resource ... cannot go beyond 0.0001").
MIN_RESOURCE = 1e-4


def _expanded_size(node, memo: dict) -> int:
    """Nodes of the document with every alias expanded (memoized: linear in the written nodes)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a self-referencing alias counts once instead of recursing forever
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = min(size, MAX_YAML_NODES + 1)
    return memo[key]


def parse_yaml(text: str) -> Any:
    """The spec's data: safe YAML, no duplicate keys, bounded alias expansion and nesting."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise SpecError(
                f"malformed YAML: more than {MAX_YAML_NODES:,} values once aliases are expanded (an alias bomb?)"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1.0  # Ray CPUs per trial (fractions allowed); also the trial's torch threads
    gpu: float = 0.0  # Ray GPUs per trial (fractions let several small trials share a card)


@dataclass(frozen=True)
class LimitsConfig:
    """Sizes ``lrbs validate`` (and ``run``) checks before anything starts (docs/resilience.md).
    Each guards against a typo that would otherwise hang or exhaust a machine; raise one when the
    sweep really is that big."""

    max_points: int = 10_000  # trial points in the sweep (grid size)
    max_params: int = 2_000_000_000  # parameters of one model
    max_epochs: int = 100_000  # train.epochs (the cost and memory estimates walk every epoch)
    # Memory one trial may use, GB: the model's state (weights, gradients, momentum) per pack
    # member, activations at the largest batch and the data set on the device. null: this
    # machine's RAM for CPU trials, this machine's GPU memory (times resources.gpu) for GPU trials
    # (not checked when this machine has no GPU).
    memory_gb: float | None = None
    # `--address`: how long `lrbs run` waits for a node that can hold one trial's resources
    # (an autoscaler adding it) before it stops with one line; nodes that fit start at once.
    resource_wait_s: float = 600.0


@dataclass(frozen=True)
class ReportConfig:
    """``report:``: settings of the analysis (``lrbs report``) that travel with every trial's config
    (the trial table's ``cfg.report.*`` columns); training never reads them."""

    # A trial counts as converged, and enters the sharpness, Eq. 7 and collapse fits, when its
    # final eval-mode train accuracy (final_train_eval_acc, a fraction) is >= this; null: no filter.
    converged_train_acc: float | None = DEFAULT_CONVERGED_TRAIN_ACC


@dataclass(frozen=True)
class AxisRange:
    """``{min, max, num, scale}``: ``num`` values from min to max, log- or linearly spaced."""

    min: float
    max: float
    num: int
    scale: str = "log"


@dataclass(frozen=True)
class ResilienceConfig:
    max_failures: int = 3  # restarts of a trial whose worker died (from its last checkpoint)
    # A checkpoint is saved at the end of an epoch when `checkpoint_every` epochs (if set) or
    # `checkpoint_every_s` seconds (if set) have passed since the last one; always when training
    # stops. Time-based by default, so a sweep of short epochs does not pay a save per epoch.
    checkpoint_every: int | None = None
    checkpoint_every_s: float | None = 30.0
    keep_checkpoints: int = 2  # checkpoints kept per trial (older ones are deleted)
    fail_at_epoch: int | None = None  # test hook: each trial raises once at this epoch (trainables/faults.py)


@dataclass(frozen=True)
class RescaleConfig:
    """Fig. 2: from a reference (lr0, S0), derive lr for each batch size by each rule.

    linear: lr = lr0 * S/S0 (eta/S constant); sqrt: lr = lr0 * sqrt(S/S0) (eta/sqrt(S) constant);
    none: lr = lr0. The reference point itself is one trial per seed, labelled ``reference``.
    """

    lr0: float
    batch_size0: int
    batch_sizes: tuple[int, ...]
    rules: tuple[str, ...] = ("linear", "sqrt", "none")


@dataclass(frozen=True)
class BetaSearchConfig:
    """``beta.search``: find beta* per training-set size adaptively instead of training a fixed
    ladder (``analysis/beta_search.py``): candidates 1, r, r^2, ... (r = ``resolution``) up to
    ``max_beta``; each point starts with ``grid.seed``'s seeds."""

    max_beta: float | None = None  # None: the largest candidate whose S fits the smallest training set
    resolution: float = 2**0.5  # the ratio of neighbouring candidates: beta* is bracketed to this factor
    # seeds a point may grow to where its test is undecided (None: grid.seed's, no added seeds; more
    # than that holds every test to alpha / looks: analysis/beta_search.py)
    max_seeds: int | None = None
    budget: int | None = None  # trials (points x seeds) over all sizes (None: the fixed ladder's count)
    undecided_p: float = 0.25  # Holm p in [level, undecided_p): add seeds before calling it "holds"


@dataclass(frozen=True)
class BetaConfig:
    """Fig. 5: S = round(S0 * beta), lr = lr0 * S / S0 (= lr0 * beta up to S's rounding, so eta/S is
    exactly lr0/S0 for every member), for each beta, crossed with training-set sizes. ``values``
    (a fixed ladder) or ``search`` (beta* found adaptively), not both."""

    lr0: float
    batch_size0: int
    values: tuple[float, ...] = ()
    n_train: tuple[int, ...] = ()  # empty: dataset.n_train for every trial
    search: BetaSearchConfig | None = None
    # accuracy points (x100) a beta's drop from beta = 1 must significantly exceed to count as a
    # breakdown (one-sided Welch of the drop > min_drop; analysis/breakdown.py); None: any drop
    min_drop: float | None = None


@dataclass(frozen=True)
class VariantConfig:
    """One named explicit point (Fig. 1: a cyclic-batch run beside a cyclic-lr run beside constants).

    ``schedule`` (optional) replaces the spec's ``schedule`` for this variant only.
    """

    label: str
    lr: float
    batch_size: int
    schedule: ScheduleConfig | None = None


RESCALE_RULES = ("linear", "sqrt", "none")


@dataclass(frozen=True)
class GridConfig:
    lr: tuple[float, ...] | AxisRange = (0.1,)
    batch_size: tuple[int, ...] | AxisRange = (128,)
    seed: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    curvature: CurvatureConfig | None = None  # no probes unless the spec has this section
    rescale: RescaleConfig | None = None  # replaces grid.lr and grid.batch_size
    beta: BetaConfig | None = None  # replaces grid.lr and grid.batch_size
    variants: tuple[VariantConfig, ...] = ()  # named explicit points; replace grid.lr and grid.batch_size
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Experiment trackers fed by the driver, tracker name -> its options (sweeps.tracking):
    # tensorboard, mlflow, wandb. The trials never see this section.
    tracking: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-safe) that ``spec_from_dict`` reads back to an equal spec (the spec
        copy ``lrbs resume`` rebuilds a run from): a family of points (rescale, beta, variants)
        keeps only ``grid.seed``, and ``beta.n_train`` is left out when empty, as a spec writes them."""
        data = _plain(dataclasses.asdict(self))
        if self.rescale is not None or self.beta is not None or self.variants:
            data["grid"] = {"seed": data["grid"]["seed"]}
        if self.beta is not None:
            for key in ("n_train", "values", "search"):
                if not data["beta"][key]:  # empty / None: as a spec leaves it out
                    data["beta"].pop(key)
            if data["beta"]["min_drop"] is None:  # (0 is a value: kept)
                data["beta"].pop("min_drop")
        return data


SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "resources": ResourcesConfig,
    "curvature": CurvatureConfig,
    "rescale": RescaleConfig,
    "beta": BetaConfig,
    "resilience": ResilienceConfig,
    "limits": LimitsConfig,
    "report": ReportConfig,
}
# Sections whose absence (or null) means "off" rather than "defaults".
OPTIONAL_SECTIONS = ("curvature", "rescale", "beta")


# ---------------------------------------------------------------------------------------------
# Loading and type checking


def load_spec(path: str | Path, *, local_data: bool = False, probe_check: bool = True) -> SweepSpec:
    """Read and validate a YAML spec file; raises SpecError naming the file and field.

    ``local_data``: the trials run on this machine (``lrbs validate``, ``lrbs run`` without
    ``--address``), so a torchvision set with ``download: false`` must already be in its
    ``data_dir`` here; a cluster's nodes have their own disks, checked when the trials load.
    ``probe_check``: with ``curvature:``, run one Hessian-vector product through the model before
    anything starts. ``lrbs resume`` turns it off: a run in progress cannot drop its curvature
    section, and a probe that fails during training is recorded in its row (``probe_error``).
    """
    path = Path(path)
    raw = _read_spec_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        data = parse_yaml(text)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: malformed YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    from lrbs.sweeps.estimate import check_limits, check_probes, model_profile
    from lrbs.trainables.plugins import add_search_root

    add_search_root(path.resolve().parent)  # plug-in modules next to the spec (trainables/plugins.py)
    try:
        spec = spec_from_dict(data)
        # The pre-flight check: build the model once and run it on two examples (a broken
        # factory is this one line, exit 2, before anything starts), within spec.limits.
        check_limits(spec, model_profile(spec.model, spec.dataset, max_params=spec.limits.max_params))
        if probe_check:
            check_probes(spec)  # with curvature: one Hessian-vector product through the model
        if local_data:
            from lrbs.trainables.data import DataError, check_data_dir

            try:
                check_data_dir(spec.dataset)
            except DataError as exc:
                raise SpecError(str(exc)) from None
        return spec
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


_FILE_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def _check_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS.items() if test(info.st_mode)), "a special file")
        raise SpecError(f"{path}: is {kind}, not a spec file (a spec is a YAML file)")


def _read_spec_bytes(path: Path) -> bytes:
    """The spec file's bytes: a regular file of at most MAX_SPEC_BYTES. A FIFO would block and a
    device (/dev/zero) never end, so only regular files are opened, and at most one byte past the
    limit is read (a file that grows after stat() is still cut off)."""
    try:
        info = path.stat()
        _check_regular(path, info)
        # O_NONBLOCK: a FIFO swapped in after stat() opens without waiting for a writer; fstat
        # then sees what was really opened.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            _check_regular(path, info)
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    if len(raw) > MAX_SPEC_BYTES:
        size = f"{info.st_size:,} bytes" if info.st_size > MAX_SPEC_BYTES else f"more than {MAX_SPEC_BYTES:,} bytes"
        raise SpecError(f"{path}: {size}; a spec is at most {MAX_SPEC_BYTES:,}")
    return raw


def spec_from_dict(data: Any) -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError("spec: the top level must be a mapping of keys (name, dataset, model, ...)")
    _check_numbers(data, "")
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    _reject_unknown(data, known, "")
    if "name" not in data:
        raise SpecError("name: required (the run directory is <storage>/<name>)")
    name = _check_type(data["name"], str, "name")
    if not name or any(c in name for c in "/\\") or name.startswith(".") or not name.isprintable() or len(name) > 100:
        raise SpecError(f"name: must be a file name of 1-100 printable characters without '/' (got {_short(name)})")
    kwargs: dict[str, Any] = {"name": name}
    if "description" in data:
        kwargs["description"] = _check_type(data["description"], str, "description")
    _check_pack(data.get("train"))
    if isinstance(data.get("model"), dict):
        data = {**data, "model": _legacy_model_keys(data["model"])}
    for key, cls in SECTIONS.items():
        if data.get(key) is not None or (key in data and key not in OPTIONAL_SECTIONS):
            kwargs[key] = _build(cls, data[key], key)
    if "grid" in data:
        kwargs["grid"] = _build_grid(data["grid"])
    if data.get("variants") == []:  # what to_dict writes for "no variants"
        data = {k: v for k, v in data.items() if k != "variants"}
    if data.get("variants") is not None:
        kwargs["variants"] = _build_variants(data["variants"])
    if "schedule" in data:
        try:
            kwargs["schedule"] = schedule_from_dict(data["schedule"] or {})
        except (ValueError, TypeError) as exc:
            raise SpecError(_schedule_message(exc)) from None
    if data.get("tracking") is not None:
        kwargs["tracking"] = _tracking_section(data["tracking"])
    families = [k for k in ("rescale", "beta", "variants") if data.get(k) is not None]
    for key in families:
        if data.get(key) is not None:
            grid = data.get("grid") or {}
            clash = [k for k in ("lr", "batch_size") if isinstance(grid, dict) and k in grid]
            if clash:
                raise SpecError(
                    f"{key}: conflicts with grid.{clash[0]} ({key} derives lr and batch size; keep only grid.seed)"
                )
    if len(families) > 1:
        raise SpecError(f"{families[1]}: conflicts with {families[0]} (one spec holds one family of points)")
    spec = SweepSpec(**kwargs)
    validate(spec)
    return spec


def _tracking_section(data: Any) -> dict[str, Any]:
    """``tracking:`` as a mapping of tracker name -> options: a list of names, and ``true``/``null``
    for "on with its defaults", are accepted too (``false`` leaves a tracker off)."""
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        data = {n: {} for n in data}
    if not isinstance(data, dict):
        raise SpecError(f"tracking: must be a mapping of tracker names to options (got {_short(data)})")
    out = {}
    for name, options in data.items():
        if options is False:
            continue
        out[str(name)] = {} if options is None or options is True else options
    from lrbs.sweeps.tracking import check_options

    check_options(out)
    return out


def _check_pack(train: Any) -> None:
    """``train.pack``: an integer >= 1 or ``auto``; ``train.replicas`` (its old name) is refused by name."""
    if not isinstance(train, dict):
        return
    if "replicas" in train:
        raise SpecError(
            "train.replicas: replaced by train.pack (points trained together in one trial, "
            "seeds or any other points; default auto)"
        )
    _check_pack_value(train.get("pack", "auto"))


def _legacy_model_keys(model: dict) -> dict:
    """``model: {name: mlp, depth: 4}`` (before ``options``) reads as ``options: {depth: 4}``."""
    from lrbs.trainables.config import LEGACY_MODEL_KEYS, legacy_options

    legacy = {k: model[k] for k in LEGACY_MODEL_KEYS if k in model}
    if not legacy:
        return model
    options = model.get("options")
    if options is not None and not isinstance(options, dict):
        raise SpecError(f"model.options: must be a mapping of option names to values (got {type(options).__name__})")
    options = options or {}
    for key in legacy:
        if key in options:
            raise SpecError(f"model.{key}: conflicts with model.options.{key} (keep model.options.{key})")
    rest = {k: v for k, v in model.items() if k not in legacy}
    name = model.get("name", "mlp")
    return {**rest, "options": {**legacy_options(name if isinstance(name, str) else "", legacy), **options}}


def _check_pack_value(pack: Any) -> None:
    if pack != "auto" and (isinstance(pack, bool) or not isinstance(pack, int) or pack < 1):
        raise SpecError(f"train.pack: must be an integer >= 1 or auto (got {_short(pack)})")


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, int) and value.bit_length() > 1000:  # repr of > 4,300 digits raises
        return f"<an integer of {value.bit_length():,} bits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_numbers(data: Any, path: str) -> None:
    """Every integer of the spec's data, under any key (options passed to a factory too), fits in
    64 bits: one line naming where one does not, before anything converts it to a float or a C
    integer (``2**2000`` as a float overflows; numpy and torch seeds are 64-bit)."""
    if isinstance(data, dict):
        for key, value in data.items():
            _check_numbers(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_numbers(value, f"{path}[{i}]")
    elif _is_too_large(data):
        _too_large(data, path)


def _is_too_large(value: Any) -> bool:
    return isinstance(value, _HugeInt) or (isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT)


def _too_large(value: int | _HugeInt, path: str) -> None:
    if isinstance(value, _HugeInt):
        digits = f"{value.digits:,}"
    elif value.bit_length() < 14_000:  # str() of an int works up to 4,300 digits
        digits = f"{len(str(abs(value))):,}"
    else:
        digits = f"~{int(value.bit_length() * math.log10(2)):,}"
    raise SpecError(
        f"{path}: an integer of {digits} digits is too large (a spec's integers fit in 64 bits: -2**63..2**63-1)"
    )


def _build_variants(data: Any) -> tuple[VariantConfig, ...]:
    if not isinstance(data, list) or not data:
        raise SpecError("variants: must be a non-empty list of {label, lr, batch_size, schedule}")
    out = []
    for i, item in enumerate(data):
        path = f"variants[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{path}: must be a mapping (got {type(item).__name__})")
        _reject_unknown(item, {"label", "lr", "batch_size", "schedule"}, f"{path}.")
        for key in ("label", "lr", "batch_size"):
            if key not in item:
                raise SpecError(f"{path}.{key}: required")
        schedule = None
        if item.get("schedule") is not None:
            try:
                schedule = schedule_from_dict(item["schedule"])
            except (ValueError, TypeError) as exc:
                raise SpecError(f"{path}.{_schedule_message(exc)}") from None
        out.append(
            VariantConfig(
                label=_check_type(item["label"], str, f"{path}.label"),
                lr=_check_type(item["lr"], float, f"{path}.lr"),
                batch_size=_check_type(item["batch_size"], int, f"{path}.batch_size"),
                schedule=schedule,
            )
        )
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise SpecError(f"variants: repeated labels {labels}")
    return tuple(out)


def _schedule_message(exc: Exception) -> str:
    message = str(exc).splitlines()[0]
    return message if message.startswith("schedule") else f"schedule: {message}"


def _reject_unknown(data: dict, known: set[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            where = f"{prefix}{key}"
            allowed = f"allowed here: {', '.join(sorted(known))}" if known else "none are allowed here"
            raise SpecError(f"{where}: unknown key ({allowed})")


def _build(cls: type, data: Any, path: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: must be a mapping (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    _reject_unknown(data, {f.name for f in fields}, f"{path}.")
    for f in fields:
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{path}.{f.name}: required")
    return cls(**{k: _check_type(v, hints[k], f"{path}.{k}") for k, v in data.items()})


def _check_type(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against a simple type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, path)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0] if len(errors) == 1 else f"{path}: unexpected value {_short(value)}")
    if origin is dict:  # options mappings: string keys, any YAML values (checked by their owner)
        if value is None:  # `options:` left empty
            return {}
        if not isinstance(value, dict):
            raise SpecError(f"{path}: must be a mapping of option names to values (got {type(value).__name__})")
        for key in value:
            if not isinstance(key, str):
                raise SpecError(f"{path}: option names must be strings (got {_short(key)})")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list) or not value:
            raise SpecError(f"{path}: must be a non-empty list (got {_short(value)})")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if _is_too_large(value):
        _too_large(value, path)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{path}: must be a number (got {_short(value)})")
        # No field takes inf or NaN (NaN compares false with every bound: range checks miss it).
        if not math.isfinite(value):
            raise SpecError(f"{path}: must be a finite number (got {value})")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{path}: must be an integer (got {_short(value)})")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{path}: must be true or false (got {_short(value)})")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(f"{path}: must be a string (got {_short(value)})")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    raise TypeError(f"unsupported type hint {hint!r} at {path}")  # a bug in this module, not input


def _build_grid(data: Any) -> GridConfig:
    if not isinstance(data, dict):
        raise SpecError(f"grid: must be a mapping with lr, batch_size, seed (got {type(data).__name__})")
    _reject_unknown(data, {"lr", "batch_size", "seed"}, "grid.")
    kwargs: dict[str, Any] = {}
    for key, item in (("lr", float), ("batch_size", int)):
        if key in data:
            value = data[key]
            if isinstance(value, dict):
                kwargs[key] = _build(AxisRange, value, f"grid.{key}")
            else:
                kwargs[key] = _check_type(value, tuple[item, ...], f"grid.{key}")
    if "seed" in data:
        kwargs["seed"] = _check_type(data["seed"], tuple[int, ...], "grid.seed")
    return GridConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# Semantic validation


def validate(spec: SweepSpec) -> None:
    """Value checks that need more than types. Raises SpecError naming the field."""
    from lrbs.trainables.data import DataError, check_data_dir, train_set_size
    from lrbs.trainables.plugins import PluginError

    ds, train, res = spec.dataset, spec.train, spec.resources
    if ds.n_train is not None and ds.n_train < 1:
        raise SpecError(f"dataset.n_train: must be >= 1 (got {ds.n_train})")
    if ds.val_fraction is not None and not 0.0 < ds.val_fraction < 1.0:
        raise SpecError(f"dataset.val_fraction: must be in (0, 1) (got {ds.val_fraction})")
    _check_seed(ds.split_seed, "dataset.split_seed")
    _validate_plugin_options(spec)
    if train.epochs < 1:
        raise SpecError(f"train.epochs: must be >= 1 (got {train.epochs})")
    if not 0.0 <= train.momentum < 1.0:
        raise SpecError(f"train.momentum: must be in [0, 1) (got {train.momentum})")
    if not (train.weight_decay >= 0 and math.isfinite(train.weight_decay)):
        raise SpecError(f"train.weight_decay: must be >= 0 (got {train.weight_decay})")
    if not (train.divergence_factor > 1 and math.isfinite(train.divergence_factor)):
        raise SpecError(f"train.divergence_factor: must be > 1 (got {train.divergence_factor})")
    if train.eval_batch_size < 1:
        raise SpecError(f"train.eval_batch_size: must be >= 1 (got {train.eval_batch_size})")
    if train.train_eval_samples < 1:
        raise SpecError(f"train.train_eval_samples: must be >= 1 (got {train.train_eval_samples})")
    from lrbs.trainables.packed_models import LAYOUTS

    _check_pack_value(train.pack)  # also for specs built in code, not read from YAML

    from lrbs.trainables.augment import AUGMENTATIONS

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
    try:
        check_data_dir(ds, files=False)
        n_train = train_set_size(ds)  # a user's data-set factory runs here, once per process
        if train.augment != "none":
            from lrbs.trainables.data import dataset_entry

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
        _validate_beta(spec, n_train)
    elif spec.variants:
        for i, v in enumerate(spec.variants):
            if not (v.lr > 0 and math.isfinite(v.lr)):
                raise SpecError(f"variants[{i}].lr: must be > 0 (got {v.lr})")
            _check_batch_size(v.batch_size, n_train, f"variants[{i}].batch_size")
            if v.schedule is not None:
                try:
                    validate_schedule(v.schedule, spec.train.epochs, n_train)
                except (ValueError, TypeError) as exc:
                    raise SpecError(f"variants[{i}].{_schedule_message(exc)}") from None
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
        raise SpecError(_schedule_message(exc)) from None
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
    for key in ("max_failures", "checkpoint_every", "keep_checkpoints"):
        minimum = 0 if key == "max_failures" else 1
        if getattr(r, key) is not None and getattr(r, key) < minimum:
            raise SpecError(f"resilience.{key}: must be >= {minimum} (got {getattr(r, key)})")
    if r.fail_at_epoch is not None and not 1 <= r.fail_at_epoch <= spec.train.epochs:
        raise SpecError(f"resilience.fail_at_epoch: must be an epoch in 1..{spec.train.epochs} (got {r.fail_at_epoch})")


def _check_seed(seed: int, where: str) -> None:
    # torch.Generator.manual_seed takes 64 bits (a negative seed wraps around to a large one) and
    # numpy's SeedSequence refuses negatives: seeds are 0..2**63-1 everywhere, as grid.seed.
    if not 0 <= seed <= MAX_INT:
        raise SpecError(f"{where}: must be in 0..2**63-1 (got {_short(seed)})")


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
    k = sum(m <= last for m in schedule.milestones) if schedule.milestones else last // schedule.every
    grow = k * math.log10(schedule.factor)  # log10(factor^k)
    if max(grow, math.log10(lr) + grow) >= _LOG10_FLOAT_MAX:
        raise SpecError(
            f"{where}.factor: lr {lr:g} x {schedule.factor:g}^{k} (its {k} steps within "
            f"{epochs} epochs) overflows a float to inf"
        )


def count_points(spec: SweepSpec) -> int:
    """The number of trial points ``expand_points`` will make, without making them."""
    seeds = len(spec.grid.seed)
    if spec.rescale is not None:
        r = spec.rescale
        return seeds * (1 + len(r.rules) * sum(s != r.batch_size0 for s in r.batch_sizes))
    if spec.variants:
        return seeds * len(spec.variants)
    if spec.beta is not None:
        if spec.beta.search is not None:  # the budget: at most this many (the ladder's count by default)
            return search_settings(spec).budget
        return seeds * len(spec.beta.values) * max(1, len(spec.beta.n_train))
    return seeds * len(axis_values(spec.grid.lr, "grid.lr")) * len(axis_values(spec.grid.batch_size, "grid.batch_size"))


def _validate_limits(spec: SweepSpec) -> None:
    lim = spec.limits
    for key in ("max_points", "max_params", "max_epochs"):
        if getattr(lim, key) < 1:
            raise SpecError(f"limits.{key}: must be >= 1 (got {getattr(lim, key)})")
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
    pre-flight check's (``lrbs.sweeps.estimate.model_profile``, run by ``load_spec``).
    """
    import inspect

    from lrbs.trainables.data import DATASETS, DataError, dataset_entry
    from lrbs.trainables.models import MODELS, model_factory
    from lrbs.trainables.plugins import PluginError

    for section, cfg, registry in (("dataset", spec.dataset, DATASETS), ("model", spec.model, MODELS)):
        try:
            # A user's data-set factory is imported, checked and called by train_set_size below.
            factory = model_factory(cfg.name) if section == "model" else dataset_entry(cfg.name)
        except (DataError, PluginError) as exc:
            raise SpecError(str(exc)) from None
        if cfg.name in registry:
            try:
                _build(registry[cfg.name].options, cfg.options, f"{section}.options")
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


def _check_distinct(values: tuple, where: str) -> None:
    """A family's values are a set: a repeated one makes two identical points, which the run
    directory cannot tell apart (one of them loses its rows)."""
    seen: dict = {}
    for i, value in enumerate(values):
        if value in seen:
            raise SpecError(f"{where}[{i}]: repeats {where}[{seen[value]}] ({value!r}); each value once")
        seen[value] = i


def _validate_beta(spec: SweepSpec, n_train: int) -> None:
    from lrbs.trainables.data import DataError, train_set_size

    b = spec.beta
    if not b.lr0 > 0:
        raise SpecError(f"beta.lr0: must be > 0 (got {b.lr0})")
    if b.batch_size0 < 1:
        raise SpecError(f"beta.batch_size0: must be >= 1 (got {b.batch_size0})")
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
        _validate_beta_search(spec, smallest)


MAX_SEARCH_CANDIDATES = 1000  # a finer ladder than this is a typo (resolution 1.000001), not a study


def _validate_beta_search(spec: SweepSpec, smallest: int) -> None:
    """``beta.search``: its knobs, then what the search needs to bracket beta* at all."""
    b, q = spec.beta, spec.beta.search
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


def search_ladder(spec: SweepSpec) -> tuple[float, ...]:
    """``beta.search``'s candidates: 1, r, r^2, ... up to max_beta (default: the largest whose S
    fits the smallest training set)."""
    from lrbs.analysis.beta_search import ladder
    from lrbs.trainables.data import train_set_size

    b, q = spec.beta, spec.beta.search
    if q.max_beta is not None:
        return ladder(q.resolution, q.max_beta)
    sizes = [train_set_size(dataclasses.replace(spec.dataset, n_train=n)) for n in b.n_train] or [
        train_set_size(spec.dataset)
    ]
    fits = [beta for beta in ladder(q.resolution, max(sizes) / b.batch_size0 + 1) if beta_size(b, beta) <= min(sizes)]
    return tuple(fits)


def search_settings(spec: SweepSpec):
    """``lrbs.analysis.beta_search.SearchSettings`` of a ``beta.search`` spec."""
    from lrbs.analysis.beta_search import SearchSettings

    b, q = spec.beta, spec.beta.search
    seeds = tuple(spec.grid.seed)
    betas = search_ladder(spec)
    ladder_trials = len(betas) * len(seeds) * max(1, len(b.n_train))
    return SearchSettings(
        betas=betas,
        seeds=seeds,
        max_seeds=q.max_seeds or len(seeds),
        budget=q.budget or ladder_trials,
        undecided_p=q.undecided_p,
        min_drop=b.min_drop,
    )


def _validate_curvature(c: CurvatureConfig) -> None:
    if not (c.every == "end" or (isinstance(c.every, int) and c.every >= 1)):
        raise SpecError(f"curvature.every: must be 'end' or an epoch count >= 1 (got {c.every!r})")
    _check_seed(c.seed, "curvature.seed")
    for key in ("n_samples", "lanczos_iters", "hutchinson_probes", "noise_pairs", "batch_size"):
        if getattr(c, key) < 1:
            raise SpecError(f"curvature.{key}: must be >= 1 (got {getattr(c, key)})")
    if c.hutchinson_probes < 4:
        raise SpecError(f"curvature.hutchinson_probes: need >= 4 HVPs for a standard error (got {c.hutchinson_probes})")
    if not 0 < c.lanczos_tol < 1:
        raise SpecError(f"curvature.lanczos_tol: must be in (0, 1) (got {c.lanczos_tol})")
    if c.trace_method not in ("hutch++", "hutchinson"):
        raise SpecError(f"curvature.trace_method: must be hutch++ or hutchinson (got {c.trace_method!r})")
    if c.noise_method not in ("full", "two_batch"):
        raise SpecError(f"curvature.noise_method: must be full or two_batch (got {c.noise_method!r})")
    if c.noise_b_small < 1:
        raise SpecError(f"curvature.noise_b_small: must be >= 1 (got {c.noise_b_small})")
    if c.noise_method == "full" and c.noise_pairs < 2:
        raise SpecError(f"curvature.noise_pairs: need >= 2 batches for a standard error (got {c.noise_pairs})")
    if c.noise_method == "two_batch" and not 0 < c.noise_b_small < c.noise_b_big:
        raise SpecError(
            f"curvature.noise_b_small: need 0 < noise_b_small < noise_b_big (got {c.noise_b_small}, {c.noise_b_big})"
        )


def axis_values(axis: tuple | AxisRange, path: str) -> tuple:
    """The explicit values of one grid axis (a list, or a ``{min, max, num, scale}`` range)."""
    if not isinstance(axis, AxisRange):
        return tuple(axis)
    if axis.num < 1:
        raise SpecError(f"{path}.num: must be >= 1 (got {axis.num})")
    if axis.scale not in ("log", "linear"):
        raise SpecError(f"{path}.scale: must be log or linear (got {axis.scale!r})")
    for key in ("min", "max"):
        if not math.isfinite(getattr(axis, key)):
            raise SpecError(f"{path}.{key}: must be a finite number (got {getattr(axis, key)})")
    if axis.min > axis.max:
        raise SpecError(f"{path}: min ({axis.min}) is larger than max ({axis.max})")
    if axis.scale == "log":
        if axis.min <= 0:
            raise SpecError(f"{path}.min: must be > 0 for a log scale (got {axis.min})")
        values = np.geomspace(axis.min, axis.max, axis.num)
    else:
        values = np.linspace(axis.min, axis.max, axis.num)
    if path.endswith("batch_size"):
        ints = [int(round(v)) for v in values]
        return tuple(dict.fromkeys(ints))  # rounding can merge neighbours: keep each size once
    return tuple(float(f"{v:.6g}") for v in values)  # 6 significant digits: readable, stable ids


# ---------------------------------------------------------------------------------------------
# Expansion


def expand_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trial points of a spec, in a stable order (seed varies fastest).

    Each point carries what varies between trials; everything else is shared by the sweep.
    ``grid``: lr x batch_size x seed. ``rescale``: the reference (lr0, S0) once, then every
    batch size under every rule. ``beta``: every n_train x beta.
    ``lrbs.sweeps.packing.plan_packs`` groups these points into the packs that Tune runs.
    """
    seeds = spec.grid.seed
    if spec.rescale is not None:
        r = spec.rescale
        factors = {"linear": lambda q: q, "sqrt": math.sqrt, "none": lambda q: 1.0}
        base = [(r.lr0, r.batch_size0, "reference")]
        for size in r.batch_sizes:
            if size == r.batch_size0:
                continue
            base += [(float(f"{r.lr0 * factors[rule](size / r.batch_size0):.6g}"), size, rule) for rule in r.rules]
        return [{"lr": lr, "batch_size": s, "seed": seed, "rescale": rule} for lr, s, rule in base for seed in seeds]
    if spec.variants:
        return [
            {
                "lr": v.lr,
                "batch_size": v.batch_size,
                "seed": seed,
                "variant": v.label,
                **({"schedule": _plain(dataclasses.asdict(v.schedule))} if v.schedule is not None else {}),
            }
            for v in spec.variants
            for seed in seeds
        ]
    if spec.beta is not None:
        b = spec.beta
        if b.search is not None:  # its points come from the search (sweeps/beta_searcher.py); these
            # are the fixed ladder it replaces, each candidate with grid.seed's seeds (estimates, validate)
            return [
                beta_point(b, beta, seed, n)
                for n in (b.n_train or (None,))
                for beta in search_ladder(spec)
                for seed in seeds
            ]
        # S is rounded to an integer; lr = lr0 * S / S0 then keeps eta/S exactly lr0/S0 for every
        # member (beta 0.25 of S0 = 50 is S = 13, 12.5 rounded; lr0 * beta would put eta/S 4% off).
        return [beta_point(b, beta, seed, n) for n in (b.n_train or (None,)) for beta in b.values for seed in seeds]
    lrs = axis_values(spec.grid.lr, "grid.lr")
    sizes = axis_values(spec.grid.batch_size, "grid.batch_size")
    return [{"lr": lr, "batch_size": s, "seed": seed} for lr, s, seed in itertools.product(lrs, sizes, seeds)]


def is_search(spec: SweepSpec) -> bool:
    """A ``beta.search`` spec: its points are proposed as the sweep runs, not expanded up front."""
    return spec.beta is not None and spec.beta.search is not None


def beta_point(b: BetaConfig, beta: float, seed: int, n_train: int | None) -> dict[str, Any]:
    """The trial point of family member ``beta`` (one seed, one training-set size)."""
    return {
        "lr": float(f"{b.lr0 * beta_size(b, beta) / b.batch_size0:.6g}"),
        "batch_size": beta_size(b, beta),
        "seed": seed,
        "beta": beta,
        **({"n_train": n_train} if n_train is not None else {}),
    }


def beta_size(b: BetaConfig, beta: float) -> int:
    """The batch size of family member ``beta``: S0 * beta rounded to the nearest integer (>= 1)."""
    return max(1, int(math.floor(b.batch_size0 * beta + 0.5)))


def to_param_space(
    spec: SweepSpec, code_version: str, packs: list[list[dict[str, Any]]] | None = None, resume: str | None = None
) -> dict[str, Any]:
    """The Ray Tune ``param_space``: one ``grid_search`` over the packs of explicit points.

    A single grid over whole points (rather than one per axis) lets later axes pair values
    (rescaling rules, beta families) without Tune crossing them; each pack is one Tune trial.
    ``lrbs resume`` passes the packs still to train and ``resume``: the path of its plan (per trial
    point, the trial id to keep and the checkpoints to continue from; ``lrbs.rundir.records.resume_entry``).
    """
    from ray import tune

    from lrbs.rundir.points import to_config
    from lrbs.sweeps.packing import plan_packs

    shared = spec.to_dict()
    for key in ("grid", "description", "rescale", "beta", "variants", "limits", "tracking"):
        shared.pop(key)
    if is_search(spec):  # each trial's point comes from the searcher (sweeps/beta_searcher.py); its
        # settings ride along in every trial's config, so the report replays the search from the rows
        from lrbs.analysis.beta_search import settings_to_dict

        points = {"beta_search": settings_to_dict(search_settings(spec))}
    else:
        packs = plan_packs(spec) if packs is None else packs
        points = {"point": tune.grid_search([to_config(pack) for pack in packs])}
        if spec.beta is not None and spec.beta.min_drop is not None:  # read back by the breakdown section
            points["beta_test"] = {"min_drop": spec.beta.min_drop}
    return {
        **points,
        "sweep": shared.pop("name"),
        "code_version": code_version,
        **shared,
        **({"resume": resume} if resume else {}),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
