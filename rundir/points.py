"""Points and packs as a Tune trial's config carries them, and the trial ids of a pack's members.

A point is a dict (``lr``, ``batch_size``, ``seed`` and optional family labels: ``n_train``, ``beta``,
``variant``, ``rescale``, ``schedule``). A Tune trial trains one pack of points; its config's
``point`` is the point itself for a pack of one, else ``{"members": [...]}``: ``to_config`` writes
it, ``from_config`` reads it back. Every point keeps its own trial id in the metric tables: the
Tune trial id for a pack of one, ``<tune trial id>-m<j>`` for member j of a larger pack.
"""

from __future__ import annotations

import json
from typing import Any


def point_key(point: dict[str, Any]) -> str:
    """A Tune trial's ``point`` (a point, or ``{"members": [...]}`` for a pack) as a key: the same
    JSON for the same point in every driver session (``lrbs resume`` matches trials by it)."""
    return json.dumps(point, sort_keys=True, default=str)


def from_config(point: dict[str, Any]) -> list[dict[str, Any]]:
    """The points a Tune trial's ``point`` trains (one, or a pack's members)."""
    return list(point["members"]) if "members" in point else [point]


def to_config(pack: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``point`` of a Tune trial's config: the point itself, or ``{"members": [...]}``."""
    return dict(pack[0]) if len(pack) == 1 else {"members": [dict(p) for p in pack]}


def member_trial_id(tune_trial_id: str, j: int, k: int) -> str:
    return tune_trial_id if k == 1 else f"{tune_trial_id}-m{j}"


def member_config(config: dict[str, Any], j: int) -> dict[str, Any]:
    """Member j's trial config as an unpacked trial would have it (its own ``point``)."""
    point = config.get("point") or {}
    if "members" not in point:
        return config
    return {**config, "point": dict(point["members"][j])}


def members(trial_id: str, config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(trial id, config) of every point a Tune trial trains."""
    k = len(from_config(config.get("point") or {}))
    return [(member_trial_id(trial_id, j, k), member_config(config, j)) for j in range(k)]


def split_member_id(trial_id: str) -> tuple[str, int | None]:
    """``<tune id>-m<j>`` -> (tune id, j); a plain Tune trial id -> (id, None)."""
    base, sep, j = trial_id.rpartition("-m")
    return (base, int(j)) if sep and j.isdigit() else (trial_id, None)
