"""Every private Ray API lrbs uses, imported here and nowhere else.

Ray may change any of these in any release, so pyproject.toml bounds Ray below the next minor
version after the one tested, and tests/test_packaging.py imports this module against the
installed Ray and checks the shapes lrbs relies on. To move to a new Ray: install it, run
``tests/test_packaging.py`` (and the tests of each user named below), then raise the bound.
Each import says what lrbs uses it for and from which Ray version on it has that shape (checked
in the Ray 2.7.0, 2.52.0 and 2.60.0 wheels).
"""

from __future__ import annotations

# ENABLE_RAY_CLUSTER (read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported): False makes
# Ray bind every server of the embedded cluster to 127.0.0.1 (sweeps.runner.loopback_only).
# This shape: Ray 2.4 and later (ray-project/ray#32409).
from ray._private import ray_constants

# RayConfig.initialize(""): Ray re-reads its config flags, RAY_AUTH_MODE among them, in this
# process, so token authentication is on for the embedded cluster (sweeps.runner.token_auth).
# initialize: in Ray 2.7.0 (the oldest checked) and later; RAY_AUTH_MODE among the flags: Ray 2.52
# and later (lrbs's floor).
from ray._raylet import Config as RayConfig  # type: ignore[attr-defined]  # missing from ray's _raylet.pyi

# prepare_config / validate_config: Ray's own checks of a cluster launcher file as `ray up` runs
# them (defaults filled in, then validated), offline (tests/sweeps/test_cluster.py). This shape: in Ray
# 2.7.0 (the oldest checked) and later.
from ray.autoscaler._private.util import prepare_config, validate_config

# get_session().storage, a StorageContext: where Tune persists the running trial's experiment
# (.storage_filesystem, a pyarrow filesystem, and .experiment_fs_path), for the fault-injection
# markers (trainables.faults). Ray 2.7 and later (ray-project/ray#37690).
from ray.train._internal.session import get_session

__all__ = ["RayConfig", "get_session", "prepare_config", "ray_constants", "validate_config"]
