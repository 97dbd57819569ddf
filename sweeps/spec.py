"""Sweep specs: YAML data -> validated dataclasses -> an explicit list of trial points.

This module holds the dataclasses (``SweepSpec`` and its sections), ``SpecError`` and how plain
data becomes a dataclass, each value checked against its type hint (``build_dataclass``);
``spec_load`` reads a YAML file or a dict into them, ``spec_checks`` checks their values and
``grid`` expands them into trial points. A spec is data (as in AlgoPerf and init2winit): every
axis is written out, and one tested function (``grid.expand_points``) turns it into the trials.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from lrbs.analysis.convergence import DEFAULT_CONVERGED_TRAIN_ACC
from lrbs.sweeps.errors import LrbsError
from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.schedules import ScheduleConfig


class SpecError(LrbsError):
    """A spec that cannot run. ``str()`` is ``"<file>: <field>: <problem>"``, one line of at most
    ``MAX_ERROR`` characters (a huge offending value is cut, never printed whole)."""

    MAX_ERROR = 400

    def __init__(self, message: str):
        message = " ".join(str(message).split("\n"))
        if len(message) > self.MAX_ERROR:
            message = message[: self.MAX_ERROR - 30] + f"... ({len(message)} characters)"
        super().__init__(message)


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
        data: dict[str, Any] = plain(dataclasses.asdict(self))
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


def plain(value: Any) -> Any:
    """``value`` with every tuple a list (YAML- and JSON-safe)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Plain data -> dataclasses, each value checked against its field's type hint


# Integers in a spec fit in a signed 64-bit integer (torch and numpy seeds, counts, sizes); a
# larger one is a typo that would overflow a float or a C integer downstream.
MAX_INT = 2**63 - 1


class HugeInt:
    """An integer literal of a spec too long for Python to parse; refused by ``check_numbers``."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits:,} digits>"


def short(value: Any, limit: int = 60) -> str:
    if isinstance(value, int) and value.bit_length() > 1000:  # repr of > 4,300 digits raises
        return f"<an integer of {value.bit_length():,} bits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_numbers(data: Any, path: str) -> None:
    """Every integer of the spec's data, under any key (options passed to a factory too), fits in
    64 bits: one line naming where one does not, before anything converts it to a float or a C
    integer (``2**2000`` as a float overflows; numpy and torch seeds are 64-bit)."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_numbers(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_numbers(value, f"{path}[{i}]")
    elif _is_too_large(data):
        _too_large(data, path)


def _is_too_large(value: Any) -> bool:
    return isinstance(value, HugeInt) or (isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT)


def _too_large(value: int | HugeInt, path: str) -> None:
    if isinstance(value, HugeInt):
        digits = f"{value.digits:,}"
    elif value.bit_length() < 14_000:  # str() of an int works up to 4,300 digits
        digits = f"{len(str(abs(value))):,}"
    else:
        digits = f"~{int(value.bit_length() * math.log10(2)):,}"
    raise SpecError(
        f"{path}: an integer of {digits} digits is too large (a spec's integers fit in 64 bits: -2**63..2**63-1)"
    )


def schedule_message(exc: Exception) -> str:
    message = str(exc).splitlines()[0]
    return message if message.startswith("schedule") else f"schedule: {message}"


def reject_unknown(data: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in data:
        if key not in known:
            where = f"{prefix}{key}"
            allowed = f"allowed here: {', '.join(sorted(known))}" if known else "none are allowed here"
            raise SpecError(f"{where}: unknown key ({allowed})")


def build_dataclass(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: must be a mapping (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    reject_unknown(data, {f.name for f in fields}, f"{path}.")
    for f in fields:
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{path}.{f.name}: required")
    return cls(**{k: check_type(v, hints[k], f"{path}.{k}") for k, v in data.items()})


PLAIN_TYPES = {int: "an integer", bool: "true or false", str: "a string"}  # hint -> what the error says


def check_type(value: Any, hint: Any, path: str) -> Any:
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
                return check_type(value, option, path)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(errors[0] if len(errors) == 1 else f"{path}: unexpected value {short(value)}")
    if origin is dict:  # options mappings: string keys, any YAML values (checked by their owner)
        if value is None:  # `options:` left empty
            return {}
        if not isinstance(value, dict):
            raise SpecError(f"{path}: must be a mapping of option names to values (got {type(value).__name__})")
        for key in value:
            if not isinstance(key, str):
                raise SpecError(f"{path}: option names must be strings (got {short(key)})")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list) or not value:
            raise SpecError(f"{path}: must be a non-empty list (got {short(value)})")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if _is_too_large(value):
        _too_large(value, path)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{path}: must be a number (got {short(value)})")
        # No field takes inf or NaN (NaN compares false with every bound: range checks miss it).
        if not math.isfinite(value):
            raise SpecError(f"{path}: must be a finite number (got {value})")
        return float(value)
    if hint in PLAIN_TYPES:
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):  # True is an int to Python
            raise SpecError(f"{path}: must be {PLAIN_TYPES[hint]} (got {short(value)})")
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, path)
    raise TypeError(f"unsupported type hint {hint!r} at {path}")  # a bug in this module, not input
