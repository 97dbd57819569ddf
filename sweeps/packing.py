"""Packs on the sweep side (spec key ``train.pack``): which points train together in one Tune trial.

Points can share a pack when every epoch gives them the same batch size (same S, same
batch-size schedule) and they train on the same ``n_train``: the pack's members then take the
same number of steps of the same shape, and differ only in per-member scalars (learning rate and
its schedule, seed, family labels). ``plan_packs`` groups the points of a spec by that key, in
spec order, and cuts each group into packs of at most K points (``auto``: ``AUTO_PACK_CAP`` for
the trial's device for a model whose entry says it stacks, ``lrbs.trainables.models.can_stack``;
1 for other models unless ``train.pack_layout: stacked``), so a pack that cannot be formed is
split, never refused. ``auto`` on CPU trials also never plans fewer packs than the trials that can
run side by side on this machine (``parallel_slots``) when there are points enough: a pack is one
process on ``resources.cpu`` threads, so one pack of 6 on a 2-core machine leaves a core idle
that two packs of 3 use. The most expensive packs (members x steps) are split first, into packs
whose sizes differ by at most one.

Every point keeps its own trial id in the metric tables: the Tune trial id for a pack of one,
``<tune trial id>-m<j>`` for member j of a larger pack (``member_trial_id``), with a config that
looks exactly like the unpacked trial's (``member_config``).
"""

from __future__ import annotations

import math
import os
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


def parallel_slots(spec: SweepSpec) -> int:
    """Trials of this spec that run side by side on this machine: its CPUs (those this process may
    use) over ``resources.cpu`` for CPU trials; 1 for GPU trials (a GPU pack is launch-bound, so a
    bigger pack is nearly free there). A cluster (``--address``) is planned as this machine."""
    if spec.resources.gpu > 0:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, int(cpus // max(spec.resources.cpu, 1.0)))


def plan_packs(
    spec: SweepSpec, points: list[dict[str, Any]] | None = None, slots: int | None = None
) -> list[list[dict[str, Any]]]:
    """The spec's points (``lrbs.sweeps.grid.expand_points``) grouped into packs, in spec order.
    ``slots``: parallel trials for ``auto`` (default ``parallel_slots(spec)``)."""
    points = expand_points(spec) if points is None else points
    cap = pack_cap(spec)
    if cap == 1:
        return [[p] for p in points]
    groups: dict[tuple[int | None, tuple[int, ...]], list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(pack_key(p, spec), []).append(p)
    if spec.train.pack != "auto":  # an explicit K: packs of exactly K, the last one holds the rest
        return [members[i : i + cap] for members in groups.values() for i in range(0, len(members), cap)]
    slots = parallel_slots(spec) if slots is None else slots
    # Steps one member takes (every epoch at its batch size): a pack's cost is members x steps.
    steps = {key: (key[0] or 1) * sum(1.0 / s for s in key[1]) for key in groups}
    counts = {key: math.ceil(len(members) / cap) for key, members in groups.items()}
    while sum(counts.values()) < slots:
        splittable = [key for key, members in groups.items() if counts[key] < len(members)]
        if not splittable:
            break
        key = max(splittable, key=lambda k: len(groups[k]) * steps[k] / counts[k])
        counts[key] += 1
    return [pack for key, members in groups.items() for pack in balanced(members, counts[key])]


def balanced(members: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """``members`` cut into ``n`` consecutive packs whose sizes differ by at most one."""
    size, extra = divmod(len(members), n)
    cuts = [i * size + min(i, extra) for i in range(n + 1)]
    return [members[cuts[i] : cuts[i + 1]] for i in range(n)]
