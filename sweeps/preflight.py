"""The pre-flight of a spec: what ``lrbs validate``, ``run``, ``resume`` and ``submit`` check on
this machine before anything starts, after the spec has been read (``lrbs.sweeps.spec_load``).

The spec's folder joins the plug-in search path (user modules next to the spec); the model is
built once and run on two examples (``lrbs.sweeps.estimate``), within ``limits``; with
``curvature:``, one Hessian-vector product through it; with ``local_data``, the data set's files
where the trials will read them. Each failure is one ``SpecError`` line naming the file and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from lrbs.sweeps.estimate import (
    CostEstimate,
    ModelProfile,
    calibrate,
    check_limits,
    estimate_cost,
    model_profile,
    planned_packs,
)
from lrbs.sweeps.spec import SpecError, SweepSpec
from lrbs.sweeps.spec_checks import check_precision_here
from lrbs.sweeps.spec_load import load_spec
from lrbs.trainables.data import check_data_dir
from lrbs.trainables.plugins import add_search_root
from lrbs.trainables.tensor_data import DataError


@dataclass(frozen=True)
class Preflight:
    """A spec that passed the pre-flight, and what building its model told."""

    spec: SweepSpec
    profile: ModelProfile
    local: bool = False  # the trials run on this machine: their step costs can be measured here

    @cached_property
    def calibration(self) -> dict[str, Any] | None:
        """This spec's step costs measured here for CPU trials on this machine (``calibrate``),
        else None (the fitted step costs stand in)."""
        return calibrate(self.spec) if self.local else None

    @cached_property
    def packs(self) -> list[list[dict[str, Any]]]:
        """The packs Tune runs (``lrbs.sweeps.packing.plan_packs``), sized from the calibration."""
        return planned_packs(self.spec, self.calibration)

    def estimate(self) -> CostEstimate:
        """The sweep's cost before it runs (``lrbs.sweeps.estimate``): for trials on this machine
        from a short calibration of the spec's model here, else from the fitted step costs."""
        return estimate_cost(self.spec, self.calibration, self.packs)


def preflight(source: SweepSpec | str | Path, *, local_data: bool = False, probe_check: bool = True) -> Preflight:
    """Check that ``source`` (a spec, or the path of a spec file to read) can run here.

    ``local_data``: the trials run on this machine (``lrbs validate``, ``lrbs run`` without
    ``--address``), so a torchvision set with ``download: false`` must already be in its
    ``data_dir`` here; a cluster's nodes have their own disks, checked when the trials load.
    ``probe_check``: with ``curvature:``, run one Hessian-vector product through the model before
    anything starts. ``lrbs resume`` turns it off: a run in progress cannot drop its curvature
    section, and a probe that fails during training is recorded in its row (``probe_error``).
    """
    if isinstance(source, SweepSpec):
        return _check(source, local_data, probe_check)
    path = Path(source)
    add_search_root(path.resolve().parent)  # plug-in modules next to the spec (trainables/plugins.py)
    spec = load_spec(path)
    try:
        return _check(spec, local_data, probe_check)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def _check(spec: SweepSpec, local_data: bool, probe_check: bool) -> Preflight:
    probes = probe_check and spec.curvature is not None
    profile = model_profile(spec.model, spec.dataset, max_params=spec.limits.max_params, probes=probes)
    check_limits(spec, profile)
    if probes and profile.probe_error:
        raise SpecError(profile.probe_error)
    if local_data:
        check_precision_here(spec)  # bf16 trials on this machine's GPU need bfloat16 support
        try:
            check_data_dir(spec.dataset)
        except DataError as exc:
            raise SpecError(str(exc)) from None
    return Preflight(spec, profile, local=local_data)
