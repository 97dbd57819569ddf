"""Vectorized seeds on the sweep side (spec key ``train.replicas``).

``group_seeds`` packs the seeds of each (lr, S) point into Tune trials of up to K seeds
(``{"lr", "batch_size", "seeds": [...]}``); ``replica_trial_id`` names the per-seed trials that
the metric sink writes, so the tables hold one ordinary trial per seed whatever K is.
"""
from __future__ import annotations

from typing import Any

from trainables.replicas import VECTORIZED_MODELS


def group_seeds(points: list[dict[str, Any]], replicas: int, model_name: str) -> list[dict[str, Any]]:
    """Merge consecutive points that differ only in seed into points of up to ``replicas`` seeds.

    With ``replicas`` 1, or a model without a vectorized path, the points are returned as they
    are (one seed per trial: the sequential fallback).
    """
    if replicas <= 1 or model_name not in VECTORIZED_MODELS:
        return points
    grouped: list[dict[str, Any]] = []
    for p in points:
        last = grouped[-1] if grouped else None
        if (last is not None and last["lr"] == p["lr"] and last["batch_size"] == p["batch_size"]
                and len(last["seeds"]) < replicas):
            last["seeds"].append(p["seed"])
        else:
            grouped.append({"lr": p["lr"], "batch_size": p["batch_size"], "seeds": [p["seed"]]})
    return grouped


def point_seeds(point: dict[str, Any]) -> list[int]:
    """The seeds a trial point trains (``seeds`` for a replica point, else ``[seed]``)."""
    return list(point["seeds"]) if "seeds" in point else [point["seed"]]


def replica_trial_id(tune_trial_id: str, seed: int) -> str:
    """Trial id of one seed of a replica trial in the metric tables."""
    return f"{tune_trial_id}-s{seed}"


def replica_config(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """The trial config as a one-seed trial would have it (``point.seed`` instead of ``seeds``)."""
    point = {k: v for k, v in config.get("point", {}).items() if k != "seeds"}
    point["seed"] = seed
    return {**config, "point": point}
