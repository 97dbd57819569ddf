"""A spec's trial points: every axis and family expanded into explicit points, in a stable order.

``lrbs.sweeps.packing.plan_packs`` groups these points into the packs that Tune runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from lrbs.analysis.search_settings import SearchSettings, ladder
from lrbs.sweeps.spec import AxisRange, BetaConfig, BetaSearchConfig, SpecError, SweepSpec, plain
from lrbs.trainables.data import train_set_size


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
        factors: dict[str, Callable[[float], float]] = {"linear": lambda q: q, "sqrt": math.sqrt, "none": lambda q: 1.0}
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
                **({"schedule": plain(dataclasses.asdict(v.schedule))} if v.schedule is not None else {}),
            }
            for v in spec.variants
            for seed in seeds
        ]
    if spec.beta is not None:
        b = spec.beta
        # A search's points come from the search (sweeps/beta_searcher.py); these are the fixed
        # ladder it replaces, each candidate with grid.seed's seeds (estimates, validate).
        betas = search_ladder(spec) if b.search is not None else b.values
        return [beta_point(b, beta, seed, n) for n in (b.n_train or (None,)) for beta in betas for seed in seeds]
    lrs = axis_values(spec.grid.lr, "grid.lr")
    sizes = axis_values(spec.grid.batch_size, "grid.batch_size")
    return [{"lr": lr, "batch_size": s, "seed": seed} for lr, s, seed in itertools.product(lrs, sizes, seeds)]


def is_search(spec: SweepSpec) -> bool:
    """A ``beta.search`` spec: its points are proposed as the sweep runs, not expanded up front."""
    return spec.beta is not None and spec.beta.search is not None


def beta_point(b: BetaConfig, beta: float, seed: int, n_train: int | None) -> dict[str, Any]:
    """The trial point of family member ``beta`` (one seed, one training-set size). S is rounded
    to an integer; lr = lr0 * S / S0 then keeps eta/S exactly lr0/S0 for every member (beta 0.25
    of S0 = 50 is S = 13, 12.5 rounded; lr0 * beta would put eta/S 4% off)."""
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
            return int(search_settings(spec).budget)
        return seeds * len(spec.beta.values) * max(1, len(spec.beta.n_train))
    return seeds * len(axis_values(spec.grid.lr, "grid.lr")) * len(axis_values(spec.grid.batch_size, "grid.batch_size"))


def beta_search_of(spec: SweepSpec) -> tuple[BetaConfig, BetaSearchConfig]:
    """``beta`` and ``beta.search`` of a ``beta.search`` spec (``is_search``)."""
    assert spec.beta is not None and spec.beta.search is not None, f"{spec.name}: not a beta.search spec"
    return spec.beta, spec.beta.search


def search_ladder(spec: SweepSpec) -> tuple[float, ...]:
    """``beta.search``'s candidates: 1, r, r^2, ... up to max_beta (default: the largest whose S
    fits the smallest training set)."""
    b, q = beta_search_of(spec)
    if q.max_beta is not None:
        return ladder(q.resolution, q.max_beta)
    sizes = [train_set_size(dataclasses.replace(spec.dataset, n_train=n)) for n in b.n_train] or [
        train_set_size(spec.dataset)
    ]
    fits = [beta for beta in ladder(q.resolution, max(sizes) / b.batch_size0 + 1) if beta_size(b, beta) <= min(sizes)]
    return tuple(fits)


def search_settings(spec: SweepSpec) -> SearchSettings:
    """``lrbs.analysis.beta_search.SearchSettings`` of a ``beta.search`` spec."""
    b, q = beta_search_of(spec)
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


def axis_values(axis: tuple[Any, ...] | AxisRange, path: str) -> tuple[Any, ...]:
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
