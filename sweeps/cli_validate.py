"""``lrbs validate SPEC``: the spec read and pre-flighted, its points, pack plan and cost estimate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lrbs.sweeps.estimate import describe
from lrbs.sweeps.grid import is_search, search_settings
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.tracking import build_trackers


def add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the sweep spec (YAML)")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    checked = preflight(args.spec, local_data=True)  # validate answers for a run on this machine
    spec = checked.spec
    packs = checked.packs
    points = [(i, p) for i, pack in enumerate(packs) for p in pack]
    if is_search(spec):  # the points below are the ladder the search picks from, not its trials
        st = search_settings(spec)
        assert spec.beta is not None and spec.beta.search is not None  # is_search
        sizes = len(spec.beta.n_train) or 1
        print(
            f"{spec.name}: beta search over {len(st.betas)} betas (1 to {st.betas[-1]:g}, "
            f"x{spec.beta.search.resolution:.4g}) at {sizes} training-set size(s): at most {st.budget} trials; "
            f"a bisection trains about {(1 + st.probes) * len(st.seeds) * sizes} (beta = 1 and up to {st.probes} "
            f"probes per size, {len(st.seeds)} seeds each, tests at level {st.level:.3g}). The fixed ladder it "
            f"replaces, and the estimate below: {len(points)} trials ({spec.dataset.name}, {spec.model.name}, "
            f"{spec.train.epochs} epochs) in {len(packs)} packs"
        )
    else:
        print(
            f"{spec.name}: {len(points)} trials ({spec.dataset.name}, {spec.model.name}, "
            f"{spec.train.epochs} epochs) in {len(packs)} packs (train.pack: {spec.train.pack})"
        )
    extra = [k for k in ("variant", "rescale", "beta", "n_train") if any(k in p for _, p in points)]
    print(
        f"{'#':>4} {'pack':>5} {'lr':>10} {'batch_size':>10} {'eta/S':>11} {'seed':>5}"
        + "".join(f" {k:>10}" for k in extra)
    )
    for n, (i, p) in enumerate(points):
        print(
            f"{n:>4} {i:>5} {p['lr']:>10.4g} {p['batch_size']:>10d} {p['lr'] / p['batch_size']:>11.4g} "
            f"{p['seed']:>5}" + "".join(f" {str(p.get(k, '-')):>10}" for k in extra)
        )
    prof = checked.profile
    print(
        f"model: {spec.model.name} {_options(spec.model.options)}: {prof.n_params:,} parameters, "
        f"{prof.forward_flops_per_example / 1e6:.3g} MFLOP forward per example; data: {spec.dataset.name} "
        f"{_options(spec.dataset.options)}: input {prof.input_shape}, {prof.n_classes} classes"
    )
    print(describe(checked.estimate()))
    if spec.tracking:  # each tracker's package installed (one line naming the extra otherwise)
        build_trackers(spec.tracking, spec.name, Path("runs") / spec.name)
        print(f"tracking: {', '.join(spec.tracking)} (one run per point)")
    return 0


def _options(options: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in options.items()) + "}"
