"""Packaging: Ray's version bound and the private Ray APIs behind it, dependency floors and extras,
and the JSON Schema of specs shipped with the package (sweeps/schema.py)."""

from __future__ import annotations

import copy
import re
import sys
import tomllib
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from lrbs.sweeps import schema
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.runner import LOOPBACK_ENV
from lrbs.sweeps.spec import BetaConfig, LimitsConfig, SpecError
from lrbs.sweeps.spec_load import spec_from_dict
from lrbs.trainables import ray_private
from lrbs.trainables.config import CurvatureConfig, TrainConfig
from lrbs.trainables.data import DATASETS
from lrbs.trainables.models import MODELS
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PYPROJECT["project"]["optional-dependencies"].items()}
SPECS = sorted([*ROOT.glob("sweeps/*.yaml"), *ROOT.glob("examples/*.yaml"), *ROOT.glob("tests/specs/*.yaml")])
# A private Ray module or name (one leading underscore): after "ray" and dots, or imported from a Ray module.
PRIVATE_RAY = re.compile(r"\bray(\.\w+)*\._(?!_)\w+|\bfrom\s+ray(\.\w+)*\s+import\s+\(?\s*_(?!_)\w+")


def ray_requirement() -> Requirement:
    (req,) = [r for r in DEPENDENCIES if r.name == "ray"]
    return req


def ray_requires() -> list[Requirement]:
    """What the installed Ray requires with the extras pyproject asks for (jsonschema and packaging,
    which these tests import, among them)."""
    env = [{"extra": extra} for extra in ray_requirement().extras] + [{"extra": ""}]
    return [
        r
        for r in map(Requirement, metadata.requires("ray") or [])
        if r.marker is None or any(r.marker.evaluate(e) for e in env)
    ]


def lower_bound(req: Requirement) -> Version:
    """The lowest version ``req`` admits by its >=, >, == or ~= clauses (0 when it has none)."""
    return max(
        (Version(s.version) for s in req.specifier if s.operator in (">=", ">", "==", "~=")), default=Version("0")
    )


# ---------------------------------------------------------------------------------------------
# Ray: one module for its private APIs, a bound that the installed Ray is tested against


def test_private_ray_apis_have_the_shapes_lrbs_uses():
    consts = ray_private.ray_constants
    assert consts.ENABLE_RAY_CLUSTERS_ENV_VAR == LOOPBACK_ENV and isinstance(consts.ENABLE_RAY_CLUSTER, bool)
    assert callable(ray_private.RayConfig.initialize)
    assert ray_private.get_session() is None  # outside a Tune trial (trainables.faults then fails every time)
    assert callable(ray_private.prepare_config) and callable(ray_private.validate_config)
    assert set(ray_private.__all__) == {n for n in vars(ray_private) if not n.startswith("_") and n != "annotations"}


def test_only_ray_private_imports_private_ray_apis():
    sources = [
        p
        for folder in ("sweeps", "trainables", "analysis", "benchmarks", "examples", "tests")
        for p in (ROOT / folder).rglob("*.py")
    ]
    users = {str(p.relative_to(ROOT)) for p in sources if PRIVATE_RAY.search(p.read_text())}
    assert users == {"trainables/ray_private.py"}


def test_ray_is_bounded_below_the_next_minor_after_the_installed_one():
    req, installed = ray_requirement(), Version(metadata.version("ray"))
    assert installed in req.specifier, f"Ray {installed} is outside pyproject's {req}"
    assert any(s.operator == "<" for s in req.specifier), f"{req}: no upper bound"
    # Nothing newer than the tested minor: the next one is outside the range.
    next_minor = Version(f"{installed.major}.{installed.minor + 1}")
    assert next_minor not in req.specifier, f"{req} admits Ray {next_minor}, newer than the {installed} tested"


# ---------------------------------------------------------------------------------------------
# Floors and extras


def test_installed_versions_satisfy_every_requirement():
    for req in DEPENDENCIES + [r for reqs in EXTRAS.values() for r in reqs if r.name != "lrbs"]:
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            assert req not in DEPENDENCIES, f"{req.name}: a dependency, not installed"
            continue  # an extra this environment left out
        assert version in req.specifier, f"{req}: installed {version}"


def test_floors_are_not_below_what_ray_requires_anyway():
    ray = ray_requirement()
    for ours in DEPENDENCIES:
        for theirs in (r for r in ray_requires() if r.name == ours.name):
            assert lower_bound(ours) >= lower_bound(theirs), f"{ours}: {ray.name}{sorted(ray.extras)} needs {theirs}"


def test_no_package_is_listed_twice():
    """An extra lists only what the dependencies (Ray's included) do not install; the test extra
    names the other extras instead of repeating them."""
    seen: dict[str, str] = {r.name: "dependencies" for r in DEPENDENCIES}
    seen.update({r.name: f"{ray_requirement()}'s requirements" for r in ray_requires() if r.name not in seen})
    for extra, reqs in EXTRAS.items():
        for req in reqs:
            if req.name == "lrbs":
                assert req.extras <= set(EXTRAS), req
                continue
            assert req.name not in seen, f"{req.name}: in [{extra}] and in {seen[req.name]}"
            seen[req.name] = f"[{extra}]"


def test_readme_cites_the_paper_not_a_folder_outside_the_clone():
    code = [p for folder in ("sweeps", "trainables", "analysis", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    texts = {p: p.read_text() for p in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *code]}
    assert [p for p, t in texts.items() if "shared/paper" in t] == []
    assert "arXiv:1711.04623" in texts[ROOT / "README.md"]


# ---------------------------------------------------------------------------------------------
# The spec schema


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft7Validator(schema.spec_schema())


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"Run the whole test suite.*?```bash\n(.*?)\n```", readme, re.S)
    assert command, "README.md: no test command"
    last = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert last == command.group(1).strip()
    for check in ("ruff check .", "ruff format --check .", "mypy", "pytest"):
        assert check in last


def test_shipped_schema_is_the_generated_one():
    shipped = schema.shipped_path()
    assert shipped.is_file(), f"{shipped}: missing (python -m lrbs.sweeps.schema > sweeps/spec.schema.json)"
    assert shipped.read_text() == schema.render(), "stale: python -m lrbs.sweeps.schema > sweeps/spec.schema.json"
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["lrbs.sweeps"]
    assert any(fnmatch(schema.SCHEMA_FILE, p) for p in patterns), f"not package data: {patterns}"


def test_schema_command_prints_the_schema_and_its_path(capsys):
    assert schema.main([]) == 0
    assert capsys.readouterr().out == schema.render()
    assert schema.main(["--path"]) == 0
    assert Path(capsys.readouterr().out.strip()) == Path(str(schema.shipped_path()))


def test_schema_is_draft7_and_every_object_refuses_unknown_keys():
    spec_schema = schema.spec_schema()
    jsonschema.Draft7Validator.check_schema(spec_schema)
    objects = [spec_schema, *spec_schema["definitions"].values()]
    assert all(o["type"] == "object" and o["additionalProperties"] is False for o in objects)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_spec_and_its_copy_match_the_schema(path, validator):
    """The spec as written, and the copy `lrbs run` writes of it (every key, defaults filled in)."""
    for data in (yaml.safe_load(path.read_text()), preflight(path).spec.to_dict()):
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
        assert errors == []


def mappings(data, path=()):
    """(path, mapping) of every mapping in ``data``, itself included."""
    if isinstance(data, dict):
        yield path, data
        for key, value in data.items():
            yield from mappings(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from mappings(value, (*path, i))


def nodes(data, path=()):
    """(path, value) of every value under ``data``."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield (*path, key), value
        yield from nodes(value, (*path, key))


def at(data, path):
    for key in path:
        data = data[key]
    return data


def test_schema_refuses_unknown_keys_where_lrbs_does(validator):
    checked = {}
    for spec in SPECS:
        data = yaml.safe_load(spec.read_text())
        for path, _ in mappings(data):
            # A user's model or data set takes the options its factory takes: open in the schema.
            if path[-1:] == ("options",) and at(data, path[:-1]).get("name") not in {**MODELS, **DATASETS}:
                continue
            bad = copy.deepcopy(data)
            at(bad, path)["no_such_key"] = 1
            assert not validator.is_valid(bad), path
            with pytest.raises(SpecError, match=r"no_such_key: unknown key"):
                spec_from_dict(bad)
            checked[spec] = checked.get(spec, 0) + 1
    assert set(checked) == set(SPECS)


# lrbs reads a schedule field only for the kinds that use it; the schema types every field.
SCHEDULE_FIELDS = {
    "constant": set(),
    "step": {"milestones", "every", "factor"},
    "cyclic_lr": {"low", "high", "cycle_epochs", "wave", "start"},
    "cyclic_batch": {"low", "high", "cycle_epochs", "wave", "start"},
}
WRONG = ("x", 1.5, True, [1], {"k": 1}, None)


def ignored_by_lrbs(data, path) -> bool:
    """``path`` is in a schedule field that the schedule's kind does not use (lrbs does not read it)."""
    if "schedule" not in path[:-1]:
        return False
    i = max(j for j, key in enumerate(path[:-1]) if key == "schedule")
    schedule, field = at(data, path[: i + 1]), path[i + 1]
    return field != "kind" and field not in SCHEDULE_FIELDS[schedule.get("kind", "constant")]


@pytest.mark.parametrize("name", ["quickstart", "fig1_cyclic_small", "fig2_rescaling_small", "fig5_search_small"])
def test_what_the_schema_refuses_lrbs_refuses(name, validator):
    """Every value replaced by values of other types: where the schema marks the spec, lrbs
    refuses it too (an editor never marks a spec that runs). On the spec and on its full copy."""
    path = ROOT / "sweeps" / f"{name}.yaml"
    refused = 0
    for data in (yaml.safe_load(path.read_text()), spec_from_dict(yaml.safe_load(path.read_text())).to_dict()):
        for where, _ in list(nodes(data)):
            if ignored_by_lrbs(data, where):
                continue
            for wrong in WRONG:
                bad = copy.deepcopy(data)
                at(bad, where[:-1])[where[-1]] = wrong
                if validator.is_valid(bad):
                    continue
                refused += 1
                with pytest.raises(SpecError):
                    spec_from_dict(bad)
    assert refused


def test_descriptions_come_from_the_field_comments():
    """Each field's end-of-line comment in the source is in its description (a sample of sections)."""
    definitions = schema.spec_schema()["definitions"]
    described = 0
    for cls in (TrainConfig, CurvatureConfig, BetaConfig, LimitsConfig):
        source = Path(sys.modules[cls.__module__].__file__).read_text()
        body = source.split(f"class {cls.__name__}:", 1)[1].split("\n\n\n", 1)[0]
        for field, comment in re.findall(r"^    (\w+): [^#\n]*#\s*(.+)$", body, re.M):
            text = " ".join(comment.replace("``", "`").split())
            assert text in definitions[cls.__name__]["properties"][field]["description"], (cls.__name__, field)
            described += 1
    assert described
    assert "Fig. 5" in definitions["BetaConfig"]["description"]  # the class docstring
