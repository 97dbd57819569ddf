"""Shared fixtures. Tests use real Ray, real Arrow files and real torch models (no mocks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Keep each trial and each test process on one thread: the suite targets a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray: no usage-stats prompt, no dashboard, quiet.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the in-process sweep tests (2 CPUs, dashboard off)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a new cluster, never one that another process on this machine
        # started (ray.init() without an address would join the newest one in /tmp/ray).
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_yaml(path: Path, data) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_spec(name: str = "tiny", **overrides) -> dict:
    """A spec that trains in about a second per trial. Sections in ``overrides`` are merged into
    the defaults (nested mappings too), except ``grid``, which is replaced whole."""
    spec = {
        "name": name,
        "dataset": {"name": "digits", "val_fraction": 0.2},
        "model": {"name": "mlp", "options": {"depth": 3, "width": 32, "batch_norm": True}},
        "train": {"epochs": 3},
        "grid": {"lr": [0.05, 0.2], "batch_size": [32, 128], "seed": [0]},
        "resources": {"cpu": 1},
    }
    for key, value in overrides.items():
        if key != "grid" and isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = _merge(spec[key], value)
        else:
            spec[key] = value
    return spec


def _merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``; nested mappings (``model.options``) are merged too."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
