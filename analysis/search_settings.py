"""The beta search's settings: the spec's ``beta.search`` resolved against the rest of the spec.

Read by ``lrbs validate`` and the driver (which plan the search) and by the report (which replays it
from every search trial's config), so this module needs no statistics library.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.05  # the family-wise level of the drop tests (the breakdown section's and the search's)


@dataclass(frozen=True)
class SearchSettings:
    """What the policy needs: the spec's ``beta.search`` resolved against the rest of the spec."""

    betas: tuple[float, ...]  # the candidate ladder, betas[0] == 1
    seeds: tuple[int, ...]  # the seeds every point starts with (>= 2: Welch)
    max_seeds: int  # seeds a point may grow to while its test is undecided
    budget: int  # trials (points x seeds) over all training-set sizes
    undecided_p: float = 0.25
    alpha: float = ALPHA
    min_drop: float | None = None  # accuracy points a drop must significantly exceed (None: any drop)

    @property
    def looks(self) -> int:
        """Tests a point can get: the first, and one per round of added seeds."""
        n = len(self.seeds)
        return 1 + max(0, math.ceil((self.max_seeds - n) / n))

    @property
    def probes(self) -> int:
        """The most betas one bisection tests: ceil(log2(K + 1)) for candidates 0..K."""
        return max(1, math.ceil(math.log2(len(self.betas))))

    @property
    def level(self) -> float:
        """The level every test is held to: alpha over the probes and the looks (Bonferroni)."""
        return self.alpha / (self.probes * self.looks)


def ladder(resolution: float, max_beta: float) -> tuple[float, ...]:
    """1, r, r^2, ... up to the largest power <= max_beta (6 significant digits, as labels)."""
    # max_beta as printed (6 digits, e.g. 45.2548 for sqrt(2)^11 = 45.2548339...) still includes it
    k_max = int(math.floor(math.log(max_beta * (1 + 1e-5)) / math.log(resolution)))
    return tuple(float(f"{resolution**k:.6g}") for k in range(k_max + 1))


def settings_to_dict(settings: SearchSettings) -> dict[str, Any]:
    """Plain data, kept in every search trial's config (``beta_search``): the report replays the
    search from the trial table with it, without the spec or the data set. ``min_drop`` is left
    out when None: a resume rebuilds the same config as the trials it continues (attempts are
    matched by config, ``lrbs.rundir.tables``) whether or not they were written with the key."""
    data = {**asdict(settings), "betas": list(settings.betas), "seeds": list(settings.seeds)}
    if data["min_drop"] is None:
        data.pop("min_drop")
    return data


def settings_from_dict(data: dict[str, Any]) -> SearchSettings:
    return SearchSettings(**{**data, "betas": tuple(data["betas"]), "seeds": tuple(data["seeds"])})
