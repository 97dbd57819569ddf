"""Packs on the sweep side (spec key ``train.pack``): which points train together in one Tune trial.

Points can share a pack when every epoch gives them the same batch size (same S, same
batch-size schedule) and they train on the same ``n_train``: the pack's members then take the
same number of steps of the same shape, and differ only in per-member scalars (learning rate and
its schedule, seed, family labels). ``plan_packs`` groups the points of a spec by that key, in
spec order, and cuts each group into packs of at most K points (``auto``: ``AUTO_PACK_CAP`` for
the trial's device for a model whose entry says it stacks, ``lrbs.trainables.models.can_stack``;
1 for other models unless ``train.pack_layout: stacked``), so a pack that cannot be formed is
split, never refused. A pack is one process on ``resources.cpu`` threads, so one pack of 6 on a
2-core machine leaves a core idle that two packs of 3 would use: for CPU trials on this machine
``auto`` cuts each group into the number of packs (sizes differing by at most one) that ends the
sweep soonest on the trials that run side by side here (``parallel_slots``), from step costs the
pre-flight measured (``lrbs.sweeps.estimate.calibrate``), down to points alone where that ends
sooner. Without measured costs (GPU and cluster trials) it plans at least as many packs as slots
when there are points enough, the costliest group (members x steps) split first.

Every point keeps its own trial id in the metric tables: the Tune trial id for a pack of one,
``<tune trial id>-m<j>`` for member j of a larger pack (``member_trial_id``), with a config that
looks exactly like the unpacked trial's (``member_config``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
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


PackKey = tuple[int | None, tuple[int, ...]]  # (n_train, batch size of every epoch)


def pack_key(point: dict[str, Any], spec: SweepSpec) -> PackKey:
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


PackSeconds = Mapping[tuple[int, PackKey], float]  # (members, pack key) -> seconds of that pack's trial


def pack_groups(spec: SweepSpec, points: list[dict[str, Any]] | None = None) -> dict[PackKey, list[dict[str, Any]]]:
    """The points (default: the spec's) that may share a pack, by ``pack_key``, in spec order."""
    groups: dict[PackKey, list[dict[str, Any]]] = {}
    for p in expand_points(spec) if points is None else points:
        groups.setdefault(pack_key(p, spec), []).append(p)
    return groups


def plan_packs(
    spec: SweepSpec,
    points: list[dict[str, Any]] | None = None,
    slots: int | None = None,
    pack_seconds: PackSeconds | None = None,
) -> list[list[dict[str, Any]]]:
    """The spec's points (``lrbs.sweeps.grid.expand_points``) grouped into packs.

    ``slots``: parallel trials for ``auto`` (default ``parallel_slots(spec)``). ``pack_seconds``:
    what a pack of K members of a group costs, for every K up to the group's size (at most the
    cap), measured on this machine (``lrbs.sweeps.estimate.planned_packs``);
    with it ``auto`` cuts each group into the number of packs that ends the sweep soonest on
    ``slots`` (``fastest_counts``). Without it (GPU and cluster trials), at least ``slots`` packs
    when there are points enough (``filled_counts``). Packs come in spec order, the order Tune
    starts them in."""
    points = expand_points(spec) if points is None else points
    cap = pack_cap(spec)
    if cap == 1:
        return [[p] for p in points]
    groups = pack_groups(spec, points)
    if spec.train.pack != "auto":  # an explicit K: packs of exactly K, the last one holds the rest
        return [members[i : i + cap] for members in groups.values() for i in range(0, len(members), cap)]
    slots = parallel_slots(spec) if slots is None else slots
    fewest = {key: math.ceil(len(members) / cap) for key, members in groups.items()}
    if pack_seconds is not None:
        counts = fastest_counts(groups, fewest, slots, pack_seconds)
    else:
        counts = filled_counts(groups, fewest, slots)
    return [pack for key, members in groups.items() for pack in balanced(members, counts[key])]


def largest_pack(spec: SweepSpec, n: int) -> int:
    """The most members a pack of a group of ``n`` points can have under ``train.pack`` (``auto``
    cuts a group into the fewest packs of at most the cap, with sizes differing by at most one)."""
    cap = pack_cap(spec)
    if spec.train.pack != "auto":
        return min(n, cap)
    return max(balanced_sizes(n, math.ceil(n / cap)))


def filled_counts(
    groups: dict[PackKey, list[dict[str, Any]]], fewest: dict[PackKey, int], slots: int
) -> dict[PackKey, int]:
    """Packs per group without measured costs: at least ``slots`` packs when there are points
    enough, the costliest group split first, a pack's cost taken as members x steps (the steps
    one member takes: every epoch at its batch size)."""
    counts = dict(fewest)
    steps = {key: (key[0] or 1) * sum(1.0 / s for s in key[1]) for key in groups}
    while sum(counts.values()) < slots:
        splittable = [key for key, members in groups.items() if counts[key] < len(members)]
        if not splittable:
            break
        key = max(splittable, key=lambda k: len(groups[k]) * steps[k] / counts[k])
        counts[key] += 1
    return counts


# A plan with more packs than the fewest must end the sweep sooner by more than this fraction to
# be chosen: the planned time of a sweep scatters by up to ~8% between two calibrations (a
# fraction of a second of steps each; the quickstart's, three runs on a quiet machine), and near
# a tie the plan should not flip between `lrbs validate` and `lrbs run`.
PLAN_TOLERANCE = 0.10


def fastest_counts(
    groups: dict[PackKey, list[dict[str, Any]]], fewest: dict[PackKey, int], slots: int, pack_seconds: PackSeconds
) -> dict[PackKey, int]:
    """Packs per group that end the sweep soonest on ``slots``, from measured pack costs.

    From the fewest packs, the group whose packs take longest is cut into one pack more, again
    and again down to one point per pack, and the plan whose packs end soonest on the slots
    (``makespan``; fewer packs on a tie) is kept if it ends more than ``PLAN_TOLERANCE`` sooner
    than the fewest packs. A pack is cheaper than its members alone wherever a K-member step costs
    less than K single steps; where it does not, points alone (K = 1) balance the slots best."""
    sizes = {key: len(members) for key, members in groups.items()}

    def longest(key: PackKey, n: int) -> float:
        return pack_seconds[max(balanced_sizes(sizes[key], n)), key]

    def span(c: dict[PackKey, int]) -> float:
        return makespan([pack_seconds[k, key] for key, n in c.items() for k in balanced_sizes(sizes[key], n)], slots)

    counts = dict(fewest)
    plans = [(span(counts), sum(counts.values()), counts)]
    while splittable := [key for key in groups if counts[key] < sizes[key]]:
        key = max(splittable, key=lambda k: longest(k, counts[k]))  # ties: the first in spec order
        counts = {**counts, key: counts[key] + 1}
        plans.append((span(counts), sum(counts.values()), counts))
    best = min(plans, key=lambda plan: plan[:2])
    return best[2] if best[0] < plans[0][0] * (1.0 - PLAN_TOLERANCE) else fewest


def makespan(seconds: list[float], slots: int) -> float:
    """When the last of these jobs ends if each starts, in this order, on the slot that frees first
    (how Tune runs a grid's trials on ``slots`` parallel trial slots)."""
    ends = [0.0] * max(1, slots)
    for t in seconds:
        i = ends.index(min(ends))
        ends[i] += t
    return max(ends)


def balanced_sizes(n: int, packs: int) -> list[int]:
    """Sizes of ``n`` members cut into ``packs`` packs that differ by at most one."""
    size, extra = divmod(n, packs)
    return [size + (i < extra) for i in range(packs)]


def balanced(members: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """``members`` cut into ``n`` consecutive packs whose sizes differ by at most one."""
    cuts = [0]
    for size in balanced_sizes(len(members), n):
        cuts.append(cuts[-1] + size)
    return [members[cuts[i] : cuts[i + 1]] for i in range(n)]
