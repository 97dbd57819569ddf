"""The Ray Tune ``param_space`` of a spec: one ``grid_search`` over its packs of explicit points."""

from __future__ import annotations

from typing import Any

from ray import tune

from lrbs.analysis.search_settings import settings_to_dict
from lrbs.rundir.points import to_config
from lrbs.sweeps.grid import is_search, search_settings
from lrbs.sweeps.packing import plan_packs
from lrbs.sweeps.spec import SweepSpec


def to_param_space(
    spec: SweepSpec, code_version: str, packs: list[list[dict[str, Any]]] | None = None, resume: str | None = None
) -> dict[str, Any]:
    """The Ray Tune ``param_space``: one ``grid_search`` over the packs of explicit points.

    A single grid over whole points (rather than one per axis) lets later axes pair values
    (rescaling rules, beta families) without Tune crossing them; each pack is one Tune trial.
    ``lrbs resume`` passes the packs still to train and ``resume``: the path of its plan (per trial
    point, the trial id to keep and the checkpoints to continue from; ``lrbs.rundir.records.resume_entry``).
    """
    shared = spec.to_dict()
    for key in ("grid", "description", "rescale", "beta", "variants", "limits", "tracking"):
        shared.pop(key)
    if is_search(spec):  # each trial's point comes from the searcher (sweeps/beta_searcher.py); its
        # settings ride along in every trial's config, so the report replays the search from the rows
        points = {"beta_search": settings_to_dict(search_settings(spec))}
    else:
        packs = plan_packs(spec) if packs is None else packs
        points = {"point": tune.grid_search([to_config(pack) for pack in packs])}
        if spec.beta is not None and spec.beta.min_drop is not None:  # read back by the breakdown section
            points["beta_test"] = {"min_drop": spec.beta.min_drop}
    return {
        **points,
        "sweep": shared.pop("name"),
        "code_version": code_version,
        **shared,
        **({"resume": resume} if resume else {}),
    }
