"""cluster.yaml (Ray cluster launcher), k8s/ (KubeRay) and fractional GPU requests of trials."""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from lrbs.trainables.config import DatasetConfig
from lrbs.trainables.data import load_dataset
from tests.conftest import ROOT, tiny_spec
from tests.trainables.fixtures_tv import write_cifar10, write_fashion_mnist

SHARED = "/mnt/lrbs-shared"  # the shared folder of both cluster files (host, container, pod)
TV_SETS = {"cifar10", "fashion_mnist"}  # the built-in sets that need the internet to fetch
# Ray's image tags: <Ray version>-py<major><minor>-gpu (or -cuXYZ, a specific CUDA).
RAY_IMAGE = re.compile(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py3(?P<minor>\d+)-(?:gpu|cu\d+)")
RAY_PIN = re.compile(r'"(ray\[[^\]]*\][^"]*)"')  # the quoted ray requirement of a pip install
DOWNLOAD = "python -m lrbs.trainables.data download"
KUBERAY_SCHEMA = ROOT / "k8s" / "raycluster-v1.5.1.schema.json.gz"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def k8s():
    """k8s/raycluster.yaml's documents by kind."""
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "raycluster.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs) == 2
    return by_kind


@pytest.fixture(scope="module")
def dockerfile():
    """k8s/Dockerfile's instructions as (keyword, rest) pairs, comments dropped."""
    lines = [
        ln
        for ln in (ROOT / "k8s" / "Dockerfile").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [tuple(ln.split(maxsplit=1)) for ln in lines]


@pytest.fixture(scope="module")
def client():
    """What this checkout runs with: pyproject's Python and Ray requirements, the installed Ray."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    (ray_req,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "ray"]
    return SimpleNamespace(
        python=SpecifierSet(project["requires-python"]),
        ray_req=ray_req,
        ray=metadata.version("ray"),
        readme=project["readme"],
        packages=list(pyproject["tool"]["setuptools"]["package-dir"].values()),  # the folders
    )


def pod_specs(raycluster: dict) -> dict[str, dict]:
    """The head's and each worker group's pod spec, by group name."""
    spec = raycluster["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]})
    return pods


def worker_commands(cluster: dict) -> list[str]:
    """Every command that runs on a worker node other than those shared with the head."""
    commands = list(cluster["worker_setup_commands"]) + cluster["worker_start_ray_commands"]
    for name, node_type in cluster["available_node_types"].items():
        if name != cluster["head_node_type"]:
            commands += node_type.get("worker_setup_commands", [])
            commands += node_type.get("initialization_commands", cluster["initialization_commands"])
    return commands


# ------------------------------------------------------------------------------ cluster.yaml


def test_cluster_yaml_matches_rays_schema(cluster):
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))
    assert cluster["provider"]["type"] == "aws"
    # Ray's own checks as `ray up` runs them (defaults filled in, then validated), offline.
    from lrbs.trainables.ray_private import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_node_types(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m5.2xlarge" and "GPU" not in head["resources"]
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 for t in workers)
    assert all(t["max_workers"] <= cluster["max_workers"] for t in workers)
    # One host image for every node (Ray would otherwise fill in its Ubuntu 18.04 / CUDA 11.2 default).
    images = {t["node_config"]["ImageId"] for t in types.values()}
    assert len(images) == 1 and "" not in images
    # The workers' containers get their GPU; the head (no GPU) must not ask for one.
    assert cluster["docker"]["worker_run_options"] == ["--gpus all"]
    assert "--gpus all" not in cluster["docker"]["run_options"]


def test_cluster_token_auth_and_private_dashboard(cluster):
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert "RAY_AUTH_MODE=token ray start" in command, command
    (head_start,) = [c for c in cluster["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start and "--head" in head_start
    # The token reaches every node (file_mounts apply to all of them) at Ray's default path in
    # the container (user `ray`).
    assert cluster["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in cluster["setup_commands"])
    # ... readable by its owner only, before anything else runs (setup runs before ray start).
    assert cluster["setup_commands"][0] == "chmod 600 ~/.ray/auth_token"
    # Only SSH is opened, and not to the whole internet.
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])


def test_images_and_pins_agree_with_pyproject_and_installed_ray(cluster, k8s, dockerfile, client):
    """The container images, the Ray pins and the Ray version KubeRay is told are the Ray this
    checkout installed, for a Python that pyproject allows: bumping one alone fails here."""
    assert client.ray in client.ray_req.specifier  # the installed Ray is one pyproject allows
    (base,) = [rest for keyword, rest in dockerfile if keyword == "FROM"]
    for image in (cluster["docker"]["image"], base):
        match = RAY_IMAGE.fullmatch(image)
        assert match, f"{image}: not a Ray GPU image tag"
        assert match["ray"] == client.ray, image
        assert f"3.{match['minor']}" in client.python, f"{image}: pyproject requires {client.python}"
    assert k8s["RayCluster"]["spec"]["rayVersion"] == client.ray
    # pip installs lrbs with Ray pinned to the image's version and pyproject's extras.
    installs = [c for c in cluster["setup_commands"] if "pip install" in c]
    installs += [rest for keyword, rest in dockerfile if keyword == "RUN" and "pip install" in rest]
    assert len(installs) == 2
    for command in installs:
        (pin,) = RAY_PIN.findall(command)
        pin = Requirement(pin)
        assert pin.extras == client.ray_req.extras and str(pin.specifier) == f"=={client.ray}", command


def test_head_keeps_boto3_for_the_aws_autoscaler(cluster):
    # A head_setup_commands list replaces Ray's default (`pip install boto3`), without which the
    # head's autoscaler cannot launch a single worker.
    from lrbs.trainables.ray_private import prepare_config

    head = prepare_config(copy.deepcopy(cluster))["head_setup_commands"]
    assert any("pip install" in c and '"boto3>=' in c for c in head), head


def test_cluster_installs_the_synced_checkout(cluster, dockerfile, client):
    # cluster.yaml: every node installs the checkout that `ray up` synced (this one).
    assert cluster["file_mounts"]["/home/ray/lrbs"] == "."
    assert {".venv", "runs"} <= set(cluster["rsync_exclude"])
    (install,) = [c for c in cluster["setup_commands"] if "pip install" in c]
    assert "-e /home/ray/lrbs " in install
    # k8s/Dockerfile: the image holds what the package build reads, every listed package included.
    copied = [rest.split()[1:] for keyword, rest in dockerfile if keyword == "COPY"]
    sources = {src for args in copied for src in args[:-1]}
    assert {"pyproject.toml", client.readme, *client.packages} <= sources


def test_data_sets_are_fetched_once_by_the_head(cluster):
    head = cluster["head_setup_commands"]
    fetched = {c.split()[4] for c in head if c.startswith(DOWNLOAD)}
    assert fetched == TV_SETS
    assert all(c.endswith(f"--data-dir {SHARED}/data") for c in head if c.startswith(DOWNLOAD))
    # No other node downloads: not in the setup every node runs, not in the workers' own commands.
    everyone = cluster["setup_commands"] + worker_commands(cluster)
    assert not [c for c in everyone if "trainables.data download" in c]
    # Workers mount the head's folder over NFS before their container starts, and the container
    # sees it at the same path.
    (mount,) = [c for c in worker_commands(cluster) if "mount -t nfs4" in c]
    assert f"$RAY_HEAD_IP:{SHARED} {SHARED}" in mount
    assert f"--volume {SHARED}:{SHARED}" in cluster["docker"]["run_options"]
    assert any("exportfs" in c and SHARED in c for c in cluster["initialization_commands"])


def test_shared_data_commands_serve_the_default_data_dir(cluster, tmp_path, monkeypatch):
    """cluster.yaml's own commands, run here with the shared folder in tmp_path: the head's fetch
    finds the sets already there (no network), and a node's default data_dir reads them."""
    shared, home = tmp_path / "shared", tmp_path / "home"
    fm = write_fashion_mnist(shared / "data", n_train=60, n_test=20)
    cf = write_cifar10(shared / "data", n_per_batch=8, n_test=10)
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    link = [c for c in cluster["setup_commands"] if "~/.cache/lrbs/data" in c]
    fetch = [c for c in cluster["head_setup_commands"] if c.startswith(DOWNLOAD)]
    assert len(link) == 1 and len(fetch) == len(TV_SETS)
    for command in link + fetch:
        proc = subprocess.run(
            ["bash", "-c", command.replace(SHARED, str(shared))], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, (command, proc.stderr)
    monkeypatch.setenv("HOME", str(home))
    default_dir = DatasetConfig().data_dir
    assert default_dir.startswith("~/")
    fmnist = load_dataset(DatasetConfig(name="fashion_mnist", download=False))
    assert len(fmnist.x_train) == len(fm["train_labels"]) and len(fmnist.x_val) == len(fm["test_labels"])
    with pytest.warns(UserWarning, match="md5"):  # the fixture's files are not the published ones
        cifar = load_dataset(DatasetConfig(name="cifar10", download=False))
    assert len(cifar.x_train) == len(cf["train_labels"]) and len(cifar.x_val) == len(cf["test_labels"])
    assert (home / default_dir[2:]).resolve() == (shared / "data").resolve()


# ------------------------------------------------------------------------ k8s/raycluster.yaml


def undeclared_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Keys of ``obj`` that the OpenAPI ``schema`` does not declare (what `kubectl apply`'s
    strict field validation refuses; JSON Schema alone lets them through)."""
    if isinstance(obj, list) and "items" in schema:
        return [f for i, v in enumerate(obj) for f in undeclared_fields(v, schema["items"], f"{path}[{i}]")]
    if not isinstance(obj, dict) or "properties" not in schema and "additionalProperties" not in schema:
        return []
    found = []
    for key, value in obj.items():
        if key in schema.get("properties", {}):
            found += undeclared_fields(value, schema["properties"][key], f"{path}.{key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            found += undeclared_fields(value, schema["additionalProperties"], f"{path}.{key}")
        else:
            found.append(f"{path}.{key}")
    return found


def test_raycluster_matches_kuberays_crd(k8s):
    # The RayCluster schema of KubeRay v1.5.1's CRD (the first release with authOptions),
    # descriptions removed: types, enums and field names, as the API server checks them.
    schema = json.loads(gzip.decompress(KUBERAY_SCHEMA.read_bytes()))
    raycluster = k8s["RayCluster"]
    assert (raycluster["apiVersion"], raycluster["metadata"]["name"]) == ("ray.io/v1", "lrbs")
    jsonschema.validate(raycluster, schema)
    assert undeclared_fields(raycluster, schema) == []
    # The check has teeth: a misspelled field and a bad enum value are both caught.
    broken = copy.deepcopy(raycluster)
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert undeclared_fields(broken, schema) == [".spec.workerGroupSpecs[0].maxReplica"]
    broken["spec"]["authOptions"]["mode"] = "tokens"
    with pytest.raises(jsonschema.ValidationError, match="tokens"):
        jsonschema.validate(broken, schema)


def test_raycluster_gpus_auth_image_and_shared_volume(k8s):
    spec = k8s["RayCluster"]["spec"]
    assert spec["authOptions"]["mode"] == "token" and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # trials run on workers
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0
        (worker,) = group["template"]["spec"]["containers"]
        assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # Every container runs the one image k8s/Dockerfile builds (docs/cluster.md substitutes it).
    pods = pod_specs(k8s["RayCluster"])
    containers = [c for pod in pods.values() for c in pod.get("initContainers", []) + pod["containers"]]
    assert {c["image"] for c in containers} == {"lrbs:local"}
    # One ReadWriteMany claim, mounted by every Ray container at the shared path.
    pvc = k8s["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in pods.values():
        (volume,) = pod["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        for container in pod["containers"]:
            assert {"name": volume["name"], "mountPath": SHARED} in container["volumeMounts"]


def test_raycluster_head_fetches_the_data_once(k8s, dockerfile):
    pods = pod_specs(k8s["RayCluster"])
    (fetch,) = pods.pop("head")["initContainers"]
    script = fetch["command"][-1]
    assert {s for s in TV_SETS if f"{DOWNLOAD} {s} --data-dir {SHARED}/data" in script} == TV_SETS
    assert all("initContainers" not in pod for pod in pods.values())  # workers only read
    # The image's default data_dir is the shared data folder.
    assert ("RUN", f"mkdir -p /home/ray/.cache/lrbs && ln -sfn {SHARED}/data /home/ray/.cache/lrbs/data") in dockerfile


# --------------------------------------------------------------------------- fractional GPUs


@pytest.mark.parametrize("gpu", [0.25, 0.5, 1.0])
def test_trials_ask_for_fractional_gpus(gpu):
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from lrbs.sweeps.runner import trial_resources
    from lrbs.sweeps.spec_load import spec_from_dict

    spec = spec_from_dict(tiny_spec("g", resources={"cpu": 1, "gpu": gpu}))
    assert trial_resources(spec) == {"cpu": 1.0, "gpu": gpu}

    def trainable(config):
        return None

    wrapped = tune.with_resources(trainable, trial_resources(spec))
    pgf = wrapped._resources
    assert isinstance(pgf, PlacementGroupFactory)
    assert pgf.required_resources == {"CPU": 1.0, "GPU": gpu}
