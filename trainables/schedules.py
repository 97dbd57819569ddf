"""Per-epoch learning-rate and batch-size schedules (the paper's Fig. 1 and Fig. 2).

A schedule maps a 0-based epoch to the ``(learning rate, batch size)`` used for that whole
epoch. It is a pure function of the config, so every trial (and every resume from a checkpoint)
recomputes the same values.

Kinds:

* ``constant``: ``(base_lr, base_batch_size)`` every epoch.
* ``step``: ``lr = base_lr * factor ** k`` with ``k`` the number of decays so far, batch size
  fixed. With ``milestones`` (PyTorch ``MultiStepLR`` semantics) ``k`` is the number of
  milestones ``<= epoch``: milestones ``(60, 100, 140, 180)`` with factor 0.1 train epochs
  0..59 at ``base_lr``, 60..99 at ``base_lr / 10``, ... (the paper's ResNet56). With ``every``
  (``StepLR`` semantics) ``k = epoch // every``: every 25 with factor 0.5 halves the rate at
  epochs 25, 50, ... (the paper's VGG11).
* ``cyclic_lr``: the learning rate follows the waveform between ``low`` and ``high``
  (learning-rate values, ``base_lr`` unused); batch size is ``base_batch_size``.
  Paper: 0.001 <-> 0.005 at S = 128.
* ``cyclic_batch``: the batch size follows the waveform between ``low`` and ``high`` (batch
  sizes), rounded half-up to an int; the learning rate is ``base_lr``.
  Paper: S = 128 <-> 640 at eta = 0.005.

Waveforms, with ``C = cycle_epochs`` and ``p = (epoch mod C) / C`` the phase in [0, 1):

* ``triangle``: ``low + (high - low) * (1 - |1 - 2p|)``: ``low`` at epoch 0, rising linearly to
  ``high`` at half a cycle (epoch C/2) and falling back linearly, reaching ``low`` again at
  epoch C. Symmetric: value(C/2 - d) == value(C/2 + d). With C = 8 and 128 <-> 640 the batch
  sizes over one cycle are 128, 256, 384, 512, 640, 512, 384, 256. For odd C the peak falls
  between two epochs, so ``high`` itself is never used (C = 5: phases 0, .4, .8, .8, .4).
* ``square``: ``low`` for the first half of each cycle (``epoch mod C < C / 2``), ``high`` for
  the second half. For odd C the low half is one epoch longer (C = 5: low, low, low, high, high).

``start`` (an addition to the fields above, default ``"low"``) shifts the wave by half a cycle:
``start="high"`` begins at ``high`` and reaches ``low`` at half a cycle (value = high + low -
the ``"low"`` value). It exists because eta/S *falls* when the batch size rises: a CBS run
starting at S = 128 begins at its largest eta/S, so the CLR run it is compared with must start
at lr = 0.005 (``start="high"``), or the two eta/S curves are half a cycle out of phase (the
paper does not state its phases; in-phase starts at ``low`` would make them opposite).

Why value space: the paper's cyclic batch size (eta fixed) and cyclic learning rate (S fixed) are
both triangles in their own variable, so even with matched phases their eta/S curves agree only
at the extremes (0.005/128 and 0.005/640 == 0.001/128); in between CBS's eta/S = 0.005/S(t) is
hyperbolic while CLR's is linear (a quarter cycle in: 0.005/384 = 1.30e-5 against
0.003/128 = 2.34e-5). For eta/S to match exactly, CLR would need the reciprocal shape
lr(t) = 128 * 0.005 / S(t). We keep the triangle in value space, as the paper did; ``ratio_at``
exposes eta/S to compare the two.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

KINDS = ("constant", "step", "cyclic_lr", "cyclic_batch")
WAVES = ("triangle", "square")
STARTS = ("low", "high")


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "constant"  # constant | step | cyclic_lr | cyclic_batch
    # step: lr multiplied by `factor` at each epoch in `milestones` (e.g. (60, 100, 140, 180),
    # factor 0.1) or every `every` epochs (e.g. every 25, factor 0.5); exactly one of the two.
    milestones: tuple[int, ...] = ()
    every: int | None = None
    factor: float = 0.1
    # cyclic: value moves between `low` and `high` (lr values for cyclic_lr, batch sizes for
    # cyclic_batch); one full cycle = `cycle_epochs` epochs; `wave` triangle | square.
    low: float | None = None
    high: float | None = None
    cycle_epochs: int = 8
    wave: str = "triangle"
    # cyclic: "low" starts the cycle at `low` (as described above); "high" shifts it half a cycle.
    start: str = "low"


def _is_int(x: Any) -> TypeGuard[int]:
    # bool is an int subclass; `every: true` in YAML is a mistake, not 1.
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> TypeGuard[float]:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _wave_fraction(wave: str, epoch: int, cycle_epochs: int) -> float:
    """Position in [0, 1] between low (0) and high (1) at ``epoch`` (see module docstring)."""
    pos = epoch % cycle_epochs
    if wave == "triangle":
        # Integer arithmetic until the final division keeps the waveform exactly symmetric.
        return 1.0 - abs(cycle_epochs - 2 * pos) / cycle_epochs
    if wave == "square":
        return 0.0 if 2 * pos < cycle_epochs else 1.0
    raise ValueError(f"schedule.wave: unknown wave {wave!r} (known: {', '.join(WAVES)})")


def _round_half_up(x: float) -> int:
    # Python's round() is banker's rounding (round(384.5) == 384); half-up is easier to predict.
    return int(math.floor(x + 0.5))


def schedule_at(cfg: ScheduleConfig, epoch: int, base_lr: float, base_batch_size: int) -> tuple[float, int]:
    """``(learning rate, batch size)`` for the 0-based ``epoch``. Pure and deterministic.

    ``base_lr`` / ``base_batch_size`` are the trial's own values; ``cyclic_lr`` ignores
    ``base_lr`` and ``cyclic_batch`` ignores ``base_batch_size`` (``low``/``high`` replace them).
    Assumes ``validate_schedule`` passed; only guards what would otherwise give nonsense.
    """
    if not _is_int(epoch) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
    if cfg.kind == "constant":
        return float(base_lr), int(base_batch_size)
    if cfg.kind == "step":
        if cfg.milestones:
            k = sum(1 for m in cfg.milestones if m <= epoch)
        elif cfg.every is not None:
            k = epoch // cfg.every
        else:
            raise ValueError("schedule.milestones: step schedule needs milestones or every")
        return float(base_lr) * cfg.factor**k, int(base_batch_size)
    if cfg.kind in ("cyclic_lr", "cyclic_batch"):
        if cfg.low is None or cfg.high is None:
            raise ValueError(f"schedule.{'low' if cfg.low is None else 'high'}: required for kind {cfg.kind!r}")
        frac = _wave_fraction(cfg.wave, epoch, cfg.cycle_epochs)
        if cfg.start == "high":
            frac = 1.0 - frac
        elif cfg.start != "low":
            raise ValueError(f"schedule.start: unknown start {cfg.start!r} (known: {', '.join(STARTS)})")
        value = cfg.low + (cfg.high - cfg.low) * frac
        if cfg.kind == "cyclic_lr":
            return float(value), int(base_batch_size)
        return float(base_lr), _round_half_up(value)
    raise ValueError(f"schedule.kind: unknown kind {cfg.kind!r} (known: {', '.join(KINDS)})")


def ratio_at(cfg: ScheduleConfig, epoch: int, base_lr: float, base_bs: int) -> float:
    """eta / S at ``epoch``: the quantity the paper argues sets the SGD dynamics."""
    lr, bs = schedule_at(cfg, epoch, base_lr, base_bs)
    return lr / bs


def validate_schedule(cfg: ScheduleConfig, epochs: int, train_size: int) -> None:
    """Raise ``ValueError("schedule.<field>: ...")`` for the first problem found in ``cfg``.

    ``epochs`` is the run length: a schedule that would never change anything within it
    (every milestone at or after the last epoch, ``every >= epochs``, or a cycle whose high half
    starts after the run ends) is rejected, since it silently turns into a constant run.
    ``train_size`` bounds cyclic batch sizes. Fields that the kind does not use (milestones and
    every outside ``step``, low and high outside the cyclic kinds) must be left unset, so a typo
    in ``kind`` cannot quietly drop a schedule (``factor``, ``cycle_epochs``, ``wave`` and
    ``start`` have non-empty defaults, so they are checked only for the kinds that use them).
    """
    kind = cfg.kind
    if kind not in KINDS:
        raise ValueError(f"schedule.kind: unknown kind {kind!r} (known: {', '.join(KINDS)})")

    if kind != "step":
        if cfg.milestones:
            raise ValueError(f"schedule.milestones: only used by kind 'step', not {kind!r}")
        if cfg.every is not None:
            raise ValueError(f"schedule.every: only used by kind 'step', not {kind!r}")
    if kind not in ("cyclic_lr", "cyclic_batch"):
        for name in ("low", "high"):
            if getattr(cfg, name) is not None:
                raise ValueError(f"schedule.{name}: only used by the cyclic kinds, not {kind!r}")

    if kind == "step":
        _validate_step(cfg, epochs)
    elif kind in ("cyclic_lr", "cyclic_batch"):
        _validate_cyclic(cfg, epochs, train_size)


def _validate_step(cfg: ScheduleConfig, epochs: int) -> None:
    if not _is_number(cfg.factor) or cfg.factor <= 0:
        raise ValueError(f"schedule.factor: must be a finite number > 0, got {cfg.factor!r}")
    if not isinstance(cfg.milestones, tuple):
        raise ValueError(f"schedule.milestones: must be a list of ints, got {cfg.milestones!r}")
    if cfg.milestones and cfg.every is not None:
        raise ValueError("schedule.every: give milestones or every, not both")
    if not cfg.milestones and cfg.every is None:
        raise ValueError("schedule.milestones: kind 'step' needs milestones or every")
    if cfg.milestones:
        prev = 0
        for m in cfg.milestones:
            if not _is_int(m) or m < 1:
                raise ValueError(f"schedule.milestones: entries must be ints >= 1, got {m!r}")
            if m <= prev:
                raise ValueError(f"schedule.milestones: must be strictly increasing, got {list(cfg.milestones)}")
            prev = m
        if cfg.milestones[0] >= epochs:
            raise ValueError(
                f"schedule.milestones: first milestone {cfg.milestones[0]} is not before epochs={epochs}, "
                "so the rate never changes"
            )
    else:
        if not _is_int(cfg.every) or cfg.every < 1:
            raise ValueError(f"schedule.every: must be an int >= 1, got {cfg.every!r}")
        if cfg.every >= epochs:
            raise ValueError(f"schedule.every: {cfg.every} is not below epochs={epochs}, so the rate never changes")


def _validate_cyclic(cfg: ScheduleConfig, epochs: int, train_size: int) -> None:
    for name in ("low", "high"):
        value = getattr(cfg, name)
        if value is None:
            raise ValueError(f"schedule.{name}: required for kind {cfg.kind!r}")
        if not _is_number(value):
            raise ValueError(f"schedule.{name}: must be a finite number, got {value!r}")
        if cfg.kind == "cyclic_lr":
            if value <= 0:
                raise ValueError(f"schedule.{name}: learning rate must be > 0, got {value!r}")
        else:
            if value != int(value):
                raise ValueError(f"schedule.{name}: batch size must be an integer, got {value!r}")
            if value < 1 or value > train_size:
                raise ValueError(f"schedule.{name}: batch size must be in [1, train_size={train_size}], got {value!r}")
    assert cfg.low is not None and cfg.high is not None  # each checked above
    if cfg.low >= cfg.high:
        raise ValueError(f"schedule.low: must be below high ({cfg.low!r} >= {cfg.high!r})")
    if not _is_int(cfg.cycle_epochs) or cfg.cycle_epochs < 2:
        raise ValueError(f"schedule.cycle_epochs: must be an int >= 2, got {cfg.cycle_epochs!r}")
    if cfg.wave not in WAVES:
        raise ValueError(f"schedule.wave: unknown wave {cfg.wave!r} (known: {', '.join(WAVES)})")
    if cfg.start not in STARTS:
        raise ValueError(f"schedule.start: unknown start {cfg.start!r} (known: {', '.join(STARTS)})")
    # First epoch whose value differs from epoch 0's: 1 for a triangle, ceil(C/2) for a square.
    first_change = 1 if cfg.wave == "triangle" else (cfg.cycle_epochs + 1) // 2
    if first_change >= epochs:
        raise ValueError(
            f"schedule.cycle_epochs: with {cfg.cycle_epochs} epochs per {cfg.wave} cycle the value "
            f"never leaves its start in a {epochs}-epoch run"
        )


def schedule_from_dict(d: Mapping[str, Any] | None) -> ScheduleConfig:
    """Build a ``ScheduleConfig`` from a plain mapping (YAML or ``dataclasses.asdict`` output).

    Unknown keys raise ``ValueError("schedule.<key>: unknown key")`` rather than being dropped,
    so a misspelt field cannot silently fall back to its default. ``milestones`` may be a list
    (as YAML gives it) and is stored as a tuple to keep the config hashable. Values are not
    checked here; call ``validate_schedule`` for that.
    """
    if d is None:
        return ScheduleConfig()
    if not isinstance(d, Mapping):
        raise ValueError(f"schedule: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(ScheduleConfig)}
    for key in d:
        if key not in names:
            raise ValueError(f"schedule.{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = dict(d)
    if isinstance(kwargs.get("milestones"), list):
        kwargs["milestones"] = tuple(kwargs["milestones"])
    return ScheduleConfig(**kwargs)
