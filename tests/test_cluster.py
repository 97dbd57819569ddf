"""cluster.yaml (Ray cluster launcher) and fractional GPU requests of trials."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT, tiny_spec


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_matches_rays_schema(cluster):
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))
    assert cluster["provider"]["type"] == "aws"
    # Ray's own checks as `ray up` runs them (defaults filled in, then validated), offline.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_node_types(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m5.2xlarge" and "GPU" not in head["resources"]
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 for t in workers)
    assert all(t["max_workers"] <= cluster["max_workers"] for t in workers)


def test_cluster_token_auth_and_private_dashboard(cluster):
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert "RAY_AUTH_MODE=token ray start" in command, command
    (head_start,) = [c for c in cluster["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start and "--head" in head_start
    # The token reaches every node (file_mounts apply to all of them) at Ray's default path.
    assert cluster["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in cluster["setup_commands"])
    # ... readable by its owner only, before anything else runs (setup runs before ray start).
    assert cluster["setup_commands"][0] == "chmod 600 ~/.ray/auth_token"
    # Only SSH is opened, and not to the whole internet.
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])


def test_cluster_setup_installs_project_and_data(cluster):
    assert cluster["file_mounts"]["/home/ubuntu/lrbs"] == "."
    assert {".venv", "runs"} <= set(cluster["rsync_exclude"])
    setup = cluster["setup_commands"]
    install = [i for i, c in enumerate(setup) if "pip install" in c and "-e /home/ubuntu/lrbs" in c]
    downloads = {name: i for i, c in enumerate(setup) for name in ("cifar10", "fashion_mnist")
                 if f"python3 -m trainables.data download {name} --data-dir /home/ubuntu/data" in c}
    assert install and set(downloads) == {"cifar10", "fashion_mnist"}
    assert all(i > install[0] for i in downloads.values())  # the project (and torchvision) first


@pytest.mark.parametrize("gpu", [0.25, 0.5, 1.0])
def test_trials_ask_for_fractional_gpus(gpu):
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from sweeps.runner import trial_resources
    from sweeps.spec import spec_from_dict

    spec = spec_from_dict(tiny_spec("g", resources={"cpu": 1, "gpu": gpu}))
    assert trial_resources(spec) == {"cpu": 1.0, "gpu": gpu}

    def trainable(config):
        return None

    wrapped = tune.with_resources(trainable, trial_resources(spec))
    pgf = wrapped._resources
    assert isinstance(pgf, PlacementGroupFactory)
    assert pgf.required_resources == {"CPU": 1.0, "GPU": gpu}
