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
pre-flight measured (``lrbs.sweeps.estimate.calibrate``), down to points alone where a pack's step
costs no less than its members' steps. Without measured costs (GPU and cluster trials) it plans
at least as many packs as slots when there are points enough, the costliest group (members x
steps) split first.

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
    with it ``auto`` cuts each group into the number of packs that finishes the sweep soonest on
    ``slots`` (``fastest_counts``). Without it (GPU and cluster trials), at least ``slots`` packs
    when there are points enough, the costliest group (members x steps) split first. Packs come
    in spec order, the order Tune starts them in."""
    points = expand_points(spec) if points is None else points
    cap = pack_cap(spec)
    if cap == 1:
        return [[p] for p in points]
    groups = pack_groups(spec, points)
    if spec.train.pack != "auto":  # an explicit K: packs of exactly K, the last one holds the rest
        return [members[i : i + cap] for members in groups.values() for i in range(0, len(members), cap)]
    slots = parallel_slots(spec) if slots is None else slots
    counts = {key: math.ceil(len(members) / cap) for key, members in groups.items()}
    if pack_seconds is not None:
        counts = fastest_counts(groups, counts, slots, pack_seconds)
        return [pack for key, members in groups.items() for pack in balanced(members, counts[key])]
    # Steps one member takes (every epoch at its batch size): a pack's cost is members x steps.
    steps = {key: (key[0] or 1) * sum(1.0 / s for s in key[1]) for key in groups}
    while sum(counts.values()) < slots:
        splittable = [key for key, members in groups.items() if counts[key] < len(members)]
        if not splittable:
            break
        key = max(splittable, key=lambda k: len(groups[k]) * steps[k] / counts[k])
        counts[key] += 1
    return [pack for key, members in groups.items() for pack in balanced(members, counts[key])]


# A different pack count must shorten the planned sweep by more than this fraction to be chosen:
# step costs measured in a fraction of a second scatter by a few percent, and near a tie the
# plan with fewer packs (the one the counts start from) should not flip between two runs.
PLAN_TOLERANCE = 0.05


def fastest_counts(
    groups: dict[PackKey, list[dict[str, Any]]], counts: dict[PackKey, int], slots: int, pack_seconds: PackSeconds
) -> dict[PackKey, int]:
    """Packs per group that finish soonest: each group in turn takes the count (from the fewest
    packs its members allow up to one pack per member) that most shortens ``makespan`` over
    ``slots``, until no group's change gains more than ``PLAN_TOLERANCE``. A pack's members
    share steps, so a pack is cheaper than its members alone wherever the measured K-member step
    costs less than K single steps; a point on its own (K = 1) wins where it does not."""
    lowest, counts = counts, dict(counts)
    sizes = {key: len(members) for key, members in groups.items()}

    def span(c: dict[PackKey, int]) -> float:
        jobs = [pack_seconds[k, key] for key, n in c.items() for k in balanced_sizes(sizes[key], n)]
        return makespan(jobs, slots)

    best = span(counts)
    for _ in range(4):  # a few rounds: a group's best count depends on the others' by little
        changed = False
        for key in groups:
            for n in range(lowest[key], sizes[key] + 1):
                trial = {**counts, key: n}
                t = span(trial)
                if t < best * (1.0 - PLAN_TOLERANCE):
                    counts, best, changed = trial, t, True
        if not changed:
            break
    return counts


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
