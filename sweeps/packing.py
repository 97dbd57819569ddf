"""Packs on the sweep side (spec key ``train.pack``): which points train together in one Tune trial.

Points can share a pack when every epoch gives them the same batch size (same S, same
batch-size schedule) and they train on the same ``n_train``: the pack's members then take the
same number of steps of the same shape, and differ only in per-member scalars (learning rate and
its schedule, seed, family labels). ``plan_packs`` groups the points of a spec by that key, in
spec order, and cuts each group into packs of at most K points (``auto``: ``AUTO_PACK_CAP`` for
the trial's device for a model whose entry says it stacks, ``lrbs.trainables.models.can_stack``;
1 for other models unless ``train.pack_layout: stacked``), so a pack that cannot be formed is
split, never refused.

Every point keeps its own trial id in the metric tables: the Tune trial id for a pack of one,
``<tune trial id>-m<j>`` for member j of a larger pack (``member_trial_id``), with a config that
looks exactly like the unpacked trial's (``member_config``).
"""

from __future__ import annotations

from typing import Any

from lrbs.sweeps.grid import expand_points
from lrbs.sweeps.spec import SweepSpec
from lrbs.trainables.models import can_stack
from lrbs.trainables.schedules import schedule_at, schedule_from_dict

# ``train.pack: auto`` packs at most this many points per Tune trial. On a GPU, 64 MLP members
# still run a step in about the time of one (launch-bound; docs/performance.md); on a CPU a pack
# is one process on resources.cpu threads, and smaller packs leave room for parallel trials.
AUTO_PACK_CAP = {"cpu": 32, "gpu": 64}


def pack_cap(spec: SweepSpec) -> int:
    """K for ``train.pack``. ``auto`` packs models that stack (and models put in the stacked layout)
    only: others run as members one after another in a pack (the loop layout), which measured no
    faster per step than separate trials (docs/performance.md) while it takes away parallel trials."""
    if spec.train.pack != "auto":
        return int(spec.train.pack)
    if not can_stack(spec.model) and spec.train.pack_layout != "stacked":
        return 1
    return AUTO_PACK_CAP["gpu" if spec.resources.gpu > 0 else "cpu"]


def pack_key(point: dict[str, Any], spec: SweepSpec) -> tuple[int | None, tuple[int, ...]]:
    """What members of one pack must share: n_train and the batch size of every epoch."""
    schedule = schedule_from_dict(point["schedule"]) if point.get("schedule") else spec.schedule
    sizes = tuple(schedule_at(schedule, e, point["lr"], point["batch_size"])[1] for e in range(spec.train.epochs))
    return point.get("n_train"), sizes


def plan_packs(spec: SweepSpec, points: list[dict[str, Any]] | None = None) -> list[list[dict[str, Any]]]:
    """The spec's points (``lrbs.sweeps.grid.expand_points``) grouped into packs, in spec order."""
    points = expand_points(spec) if points is None else points
    cap = pack_cap(spec)
    if cap == 1:
        return [[p] for p in points]
    groups: dict[tuple[int | None, tuple[int, ...]], list[list[dict[str, Any]]]] = {}
    for p in points:
        packs = groups.setdefault(pack_key(p, spec), [[]])
        if len(packs[-1]) == cap:
            packs.append([])
        packs[-1].append(p)
    return [pack for packs in groups.values() for pack in packs]
