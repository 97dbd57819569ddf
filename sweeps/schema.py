"""The JSON Schema of a sweep spec, generated from the spec's own dataclasses.

``python -m lrbs.sweeps.schema > sweeps/spec.schema.json`` regenerates the file shipped with the
package (tests/test_packaging.py fails while it is stale); ``python -m lrbs.sweeps.schema --path``
prints where the installed one is. An editor with the YAML language server reads it to complete
and check spec keys as they are typed (README.md).

What it checks: the keys of every section (unknown keys refused, as ``lrbs validate`` refuses
them), the type of every value, the choices a value is checked against where validation takes
them from a constant (schedule kinds, rescale rules, ...), and the ``options`` of the built-in
models and data sets. What it leaves to ``lrbs validate``: ranges and relations between values,
and whether a user's model or data set can be imported and built. Whatever the schema refuses,
``lrbs validate`` refuses too (tests/test_packaging.py checks this on mutated specs), so an editor
does not mark a spec that runs; the one exception: lrbs reads a ``schedule`` field only for the
kinds that use it, so a wrongly typed value in a field the kind ignores (``factor: x`` in a
constant schedule) is marked by the editor and passed by ``lrbs validate``.

Descriptions come from each dataclass's docstring and the comments on its fields (the lines
right above a field and the comment at the end of its line).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import sys
import textwrap
import tokenize
import types
import typing
from importlib import resources
from typing import Any

from lrbs.sweeps.spec import RESCALE_RULES, SECTIONS, RescaleConfig, SweepSpec
from lrbs.sweeps.tracking import TRACKERS
from lrbs.trainables.augment import AUGMENTATIONS
from lrbs.trainables.config import LEGACY_MODEL_KEYS, PRECISIONS, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.data import DATASETS
from lrbs.trainables.models import MODELS
from lrbs.trainables.packed_models import LAYOUTS
from lrbs.trainables.schedules import KINDS, STARTS, WAVES, ScheduleConfig

SCHEMA_FILE = "spec.schema.json"  # beside this module, shipped as package data
# Draft 7: the newest draft the YAML language server (and VS Code's JSON support) implements fully.
DRAFT = "http://json-schema.org/draft-07/schema#"

# String fields whose values validation checks against a constant: the same constant, as an enum
# (for tracker options, the tracker's CHOICES).
CHOICES: dict[tuple[type, str], tuple[str, ...]] = {
    (TrainConfig, "augment"): AUGMENTATIONS,
    (TrainConfig, "pack_layout"): LAYOUTS,
    (TrainConfig, "precision"): PRECISIONS,
    (ScheduleConfig, "kind"): KINDS,
    (ScheduleConfig, "wave"): WAVES,
    (ScheduleConfig, "start"): STARTS,
    (RescaleConfig, "rules"): RESCALE_RULES,
    **{
        (tracker.Options, key): tuple(values)
        for tracker in TRACKERS.values()
        for key, values in getattr(tracker, "CHOICES", {}).items()
    },
}
# Dataclasses read without the spec's type check (schedule_from_dict): their lists may be empty.
EMPTY_LISTS_ALLOWED = (ScheduleConfig,)


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 7) of a sweep spec: SweepSpec's keys, each section's dataclass as a
    definition that refuses unknown keys."""
    defs: dict[str, dict[str, Any]] = {}
    top = _object(SweepSpec, defs)
    props = top["properties"]
    for key in (*SECTIONS, "schedule"):  # `section:` left empty (null): its defaults (curvature, rescale, beta: off)
        props[key] = _nullable(props[key])
    # variants: `[]` is what a spec copy writes for "no variants", null is the same
    props["variants"] = {**props["variants"], "type": ["array", "null"]}
    props["variants"].pop("minItems", None)
    props["tracking"] = {**_tracking(defs), **_describe(props["tracking"])}
    _registry_options(defs, ModelConfig, MODELS)
    _registry_options(defs, DatasetConfig, DATASETS)
    for key in LEGACY_MODEL_KEYS:  # still read, into model.options
        defs[ModelConfig.__qualname__]["properties"][key] = {
            "description": f"old spelling of model.options.{key}",
            "deprecationMessage": f"model.{key}: write it as model.options.{key}",
        }
    doc = (sys.modules[SweepSpec.__module__].__doc__ or "").strip().split("\n\n")[0]
    return {
        "$schema": DRAFT,
        "title": "lrbs sweep spec",
        "description": _clean(doc),
        **top,
        "definitions": dict(sorted(defs.items())),
    }


def render() -> str:
    """The schema as the shipped file holds it (sorted definitions, 2-space indents, final newline)."""
    return json.dumps(spec_schema(), indent=2, allow_nan=False) + "\n"


def shipped_path() -> resources.abc.Traversable:
    """The schema file shipped with the installed package."""
    return resources.files("lrbs.sweeps").joinpath(SCHEMA_FILE)


# ---------------------------------------------------------------------------------------------
# From dataclasses and type hints


def _ref(cls: type, defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A reference to ``cls``'s definition, added to ``defs`` on first use."""
    name = cls.__qualname__
    if name not in defs:
        defs[name] = {}  # reserved first: a dataclass that refers to itself ends here
        defs[name] = _object(cls, defs)
    return {"$ref": f"#/definitions/{name}"}


def _object(cls: type, defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``cls`` as an object: its fields (type, default, comment) and no other keys."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    properties, required = {}, []
    for f in dataclasses.fields(cls):
        schema = _type(hints[f.name], defs, empty_lists=cls in EMPTY_LISTS_ALLOWED)
        if (cls, f.name) in CHOICES:
            schema = _with_choices(schema, CHOICES[cls, f.name])
        default = _default(f)
        if default is not dataclasses.MISSING:
            schema = {**schema, "default": default}
        elif f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        if f.name in comments:
            schema = _describe(schema, comments[f.name])
        properties[f.name] = schema
    out: dict[str, Any] = {"type": "object"}
    doc = class_docstring(cls)
    if doc:
        out["description"] = doc
    out.update({"properties": properties, "additionalProperties": False})
    if required:
        out["required"] = required
    return out


def _type(hint: Any, defs: dict[str, dict[str, Any]], empty_lists: bool = False) -> dict[str, Any]:
    """The JSON Schema of one type hint, as the spec's type check reads it (``lrbs.sweeps.spec.check_type``):
    ints where floats are expected, non-empty lists for tuples, any mapping for ``dict``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        options = [_type(a, defs, empty_lists) for a in args if a is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return _nullable(schema) if type(None) in args else schema
    if origin is dict:  # an options mapping; left empty (null) it is no options
        return {"type": ["object", "null"]}
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return {"type": "array", "items": _type(item, defs, empty_lists), **({} if empty_lists else {"minItems": 1})}
    simple = {float: "number", int: "integer", bool: "boolean", str: "string"}
    if hint in simple:
        return {"type": simple[hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _ref(hint, defs)
    raise TypeError(f"no JSON Schema for the type hint {hint!r}")  # a new kind of field: teach _type


def _default(f: dataclasses.Field[Any]) -> Any:
    """``f``'s default as JSON (tuples as lists), or MISSING where it has none or it is a section."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return dataclasses.MISSING
    if dataclasses.is_dataclass(value):
        return dataclasses.MISSING
    return json.loads(json.dumps(value))


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null (its description and default kept beside)."""
    null = {"type": "null"}
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "null" in kinds:
            return schema
        out = {**schema, "type": [*kinds, "null"]}
        return {**out, "enum": [*schema["enum"], None]} if "enum" in schema else out
    if "anyOf" in schema:
        return schema if null in schema["anyOf"] else {**schema, "anyOf": [*schema["anyOf"], null]}
    beside = {k: v for k, v in schema.items() if k in ("description", "default")}
    core = {k: v for k, v in schema.items() if k not in beside}
    if list(core) == ["allOf"] and len(core["allOf"]) == 1:  # a described $ref (see _describe)
        core = core["allOf"][0]
    return {"anyOf": [core, null], **beside}


def _describe(schema: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    """``schema`` with a description (draft 7 ignores keys beside a ``$ref``: it moves into allOf).
    Without ``text``: only ``schema``'s own description, as a dict to merge."""
    if text is None:
        return {"description": schema["description"]} if "description" in schema else {}
    if "$ref" in schema:
        schema = {"allOf": [schema]}
    return {**schema, "description": text}


def _with_choices(schema: dict[str, Any], values: tuple[str, ...]) -> dict[str, Any]:
    """``schema`` with its strings (a list's items too) limited to ``values``."""
    if schema.get("type") == "string":
        return {**schema, "enum": list(values)}
    if schema.get("type") == "array":
        return {**schema, "items": _with_choices(schema["items"], values)}
    raise TypeError(f"choices for a field that is not a string: {schema}")


def _tracking(defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``tracking:``: tracker name -> its options (or true / null: defaults, false: off), a list of
    names, or null (``lrbs.sweeps.spec_load``)."""
    names = list(TRACKERS)
    by_name = {name: {"anyOf": [_ref(t.Options, defs), {"type": ["boolean", "null"]}]} for name, t in TRACKERS.items()}
    return {
        "anyOf": [
            {"type": "object", "properties": by_name, "additionalProperties": False},
            {"type": "array", "items": {"type": "string", "enum": names}},
            {"type": "null"},
        ]
    }


def _registry_options(defs: dict[str, dict[str, Any]], section: type, registry: dict[str, Any]) -> None:
    """``options`` of ``section`` (model or dataset) checked against the built-in ``name``'s options
    dataclass; any mapping for a user's ``package.module:factory``. A built-in that shares its
    dataclass with others shares one if/then."""
    definition = defs[section.__qualname__]
    default = next(f.default for f in dataclasses.fields(section) if f.name == "name")
    groups: dict[type, list[str]] = {}
    for name, entry in registry.items():
        groups.setdefault(entry.options, []).append(name)
    rules = []
    for options, names in groups.items():
        condition: dict[str, Any] = {"properties": {"name": {"enum": names}}}
        if default not in names:  # a spec that leaves `name` out gets the default's options
            condition["required"] = ["name"]
        rules.append({"if": condition, "then": {"properties": {"options": _nullable(_ref(options, defs))}}})
    definition["allOf"] = rules
    definition["properties"]["name"]["examples"] = list(registry)


# ---------------------------------------------------------------------------------------------
# Descriptions from the source


@functools.cache
def _class_source(cls: type) -> tuple[str, ast.ClassDef]:
    source = textwrap.dedent(inspect.getsource(cls))
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef), cls
    return source, node


def class_docstring(cls: type) -> str | None:
    """``cls``'s own docstring, one paragraph per line (None for a dataclass without one: not the
    signature dataclasses puts in ``__doc__``)."""
    _, node = _class_source(cls)
    doc = ast.get_docstring(node)
    return _clean(doc) if doc else None


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in ``cls``'s source: the comment lines right above the field and
    the comment at the end of its line, joined."""
    source, node = _class_source(cls)
    lines = source.splitlines()
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        line = stmt.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        parts = above + ([comments[stmt.end_lineno]] if stmt.end_lineno in comments else [])
        if parts:
            out[stmt.target.id] = _clean(" ".join(parts))
    return out


def _clean(text: str) -> str:
    """Docstring or comment text for an editor's hover: paragraphs on one line, rST ``code`` as `code`."""
    paragraphs = [" ".join(p.split()) for p in text.replace("``", "`").split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lrbs.sweeps.schema", description="Print the JSON Schema of a sweep spec (from its dataclasses)."
    )
    parser.add_argument("--path", action="store_true", help="print where the installed package's schema file is")
    args = parser.parse_args(argv)
    sys.stdout.write(f"{shipped_path()}\n" if args.path else render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
