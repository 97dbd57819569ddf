"""Reading a spec: a YAML file or a dict -> a checked ``SweepSpec``.

Safe YAML (no duplicate keys, bounded alias expansion), the type of every field, unknown keys,
then the value checks of ``lrbs.sweeps.spec_checks``. Reading has no side effects: importing the
user's code from the spec's folder and building the model is the pre-flight's
(``lrbs.sweeps.preflight``).
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from lrbs.sweeps.spec import (
    OPTIONAL_SECTIONS,
    SECTIONS,
    AxisRange,
    GridConfig,
    HugeInt,
    SpecError,
    SweepSpec,
    VariantConfig,
    build_dataclass,
    check_numbers,
    check_type,
    reject_unknown,
    schedule_message,
    short,
)
from lrbs.sweeps.spec_checks import check_pack_value, validate
from lrbs.sweeps.tracking import check_options
from lrbs.trainables.config import LEGACY_MODEL_KEYS, legacy_options
from lrbs.trainables.schedules import schedule_from_dict

# YAML limits: a spec is a page of text; these only stop inputs built to exhaust the machine.
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # nodes after expanding aliases (a 496-byte alias bomb expands to ~10^9)


class _SpecLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]
    """``yaml.SafeLoader`` that refuses duplicate keys (YAML would keep the last one silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # complex keys: the spec's checks refuse them by name
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {short(key)}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> Any:
        # Python refuses to parse decimal integers of more than sys.get_int_max_str_digits()
        # (4,300) digits (a ValueError inside the loader): such a literal becomes a HugeInt,
        # which spec_from_dict refuses by the field it sits in.
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            return HugeInt(sum(c.isdigit() for c in self.construct_scalar(node)))


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _SpecLoader.construct_mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Nodes of the document with every alias expanded (memoized: linear in the written nodes)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a self-referencing alias counts once instead of recursing forever
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = min(size, MAX_YAML_NODES + 1)
    return memo[key]


def parse_yaml(text: str) -> Any:
    """The spec's data: safe YAML, no duplicate keys, bounded alias expansion and nesting."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise SpecError(
                f"malformed YAML: more than {MAX_YAML_NODES:,} values once aliases are expanded (an alias bomb?)"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a YAML spec file; raises SpecError naming the file and field. Reads only:
    the spec's folder on the plug-in search path, the model built and the data on disk are the
    pre-flight's (``lrbs.sweeps.preflight``)."""
    path = Path(path)
    raw = _read_spec_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        data = parse_yaml(text)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path}: malformed YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


_FILE_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


def _check_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS.items() if test(info.st_mode)), "a special file")
        raise SpecError(f"{path}: is {kind}, not a spec file (a spec is a YAML file)")


def _read_spec_bytes(path: Path) -> bytes:
    """The spec file's bytes: a regular file of at most MAX_SPEC_BYTES. A FIFO would block and a
    device (/dev/zero) never end, so only regular files are opened, and at most one byte past the
    limit is read (a file that grows after stat() is still cut off)."""
    try:
        info = path.stat()
        _check_regular(path, info)
        # O_NONBLOCK: a FIFO swapped in after stat() opens without waiting for a writer; fstat
        # then sees what was really opened.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            _check_regular(path, info)
            raw = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec ({exc.strerror or exc})") from None
    if len(raw) > MAX_SPEC_BYTES:
        size = f"{info.st_size:,} bytes" if info.st_size > MAX_SPEC_BYTES else f"more than {MAX_SPEC_BYTES:,} bytes"
        raise SpecError(f"{path}: {size}; a spec is at most {MAX_SPEC_BYTES:,}")
    return raw


def spec_from_dict(data: Any) -> SweepSpec:
    if not isinstance(data, dict):
        raise SpecError("spec: the top level must be a mapping of keys (name, dataset, model, ...)")
    check_numbers(data, "")
    known = {f.name for f in dataclasses.fields(SweepSpec)}
    reject_unknown(data, known, "")
    if "name" not in data:
        raise SpecError("name: required (the run directory is <storage>/<name>)")
    name = check_type(data["name"], str, "name")
    if not name or any(c in name for c in "/\\") or name.startswith(".") or not name.isprintable() or len(name) > 100:
        raise SpecError(f"name: must be a file name of 1-100 printable characters without '/' (got {short(name)})")
    kwargs: dict[str, Any] = {"name": name}
    if "description" in data:
        kwargs["description"] = check_type(data["description"], str, "description")
    _check_pack(data.get("train"))
    if isinstance(data.get("model"), dict):
        data = {**data, "model": _legacy_model_keys(data["model"])}
    for key, cls in SECTIONS.items():
        if data.get(key) is not None or (key in data and key not in OPTIONAL_SECTIONS):
            kwargs[key] = build_dataclass(cls, data[key], key)
    if "grid" in data:
        kwargs["grid"] = _build_grid(data["grid"])
    if data.get("variants") == []:  # what to_dict writes for "no variants"
        data = {k: v for k, v in data.items() if k != "variants"}
    if data.get("variants") is not None:
        kwargs["variants"] = _build_variants(data["variants"])
    if "schedule" in data:
        try:
            kwargs["schedule"] = schedule_from_dict(data["schedule"] or {})
        except (ValueError, TypeError) as exc:
            raise SpecError(schedule_message(exc)) from None
    if data.get("tracking") is not None:
        kwargs["tracking"] = _tracking_section(data["tracking"])
    families = [k for k in ("rescale", "beta", "variants") if data.get(k) is not None]
    grid = data.get("grid") or {}
    clash = [k for k in ("lr", "batch_size") if isinstance(grid, dict) and k in grid]
    if families and clash:
        key = families[0]
        raise SpecError(f"{key}: conflicts with grid.{clash[0]} ({key} derives lr and batch size; keep only grid.seed)")
    if len(families) > 1:
        raise SpecError(f"{families[1]}: conflicts with {families[0]} (one spec holds one family of points)")
    spec = SweepSpec(**kwargs)
    validate(spec)
    return spec


def _tracking_section(data: Any) -> dict[str, Any]:
    """``tracking:`` as a mapping of tracker name -> options: a list of names, and ``true``/``null``
    for "on with its defaults", are accepted too (``false`` leaves a tracker off)."""
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        data = {n: {} for n in data}
    if not isinstance(data, dict):
        raise SpecError(f"tracking: must be a mapping of tracker names to options (got {short(data)})")
    out = {}
    for name, options in data.items():
        if options is False:
            continue
        out[str(name)] = {} if options is None or options is True else options
    check_options(out)
    return out


def _check_pack(train: Any) -> None:
    """``train.pack``: an integer >= 1 or ``auto``; ``train.replicas`` (its old name) is refused by name."""
    if not isinstance(train, dict):
        return
    if "replicas" in train:
        raise SpecError(
            "train.replicas: replaced by train.pack (points trained together in one trial, "
            "seeds or any other points; default auto)"
        )
    check_pack_value(train.get("pack", "auto"))


def _legacy_model_keys(model: dict[str, Any]) -> dict[str, Any]:
    """``model: {name: mlp, depth: 4}`` (before ``options``) reads as ``options: {depth: 4}``."""
    legacy = {k: model[k] for k in LEGACY_MODEL_KEYS if k in model}
    if not legacy:
        return model
    options = model.get("options")
    if options is not None and not isinstance(options, dict):
        raise SpecError(f"model.options: must be a mapping of option names to values (got {type(options).__name__})")
    options = options or {}
    for key in legacy:
        if key in options:
            raise SpecError(f"model.{key}: conflicts with model.options.{key} (keep model.options.{key})")
    rest = {k: v for k, v in model.items() if k not in legacy}
    name = model.get("name", "mlp")
    return {**rest, "options": {**legacy_options(name if isinstance(name, str) else "", legacy), **options}}


def _build_variants(data: Any) -> tuple[VariantConfig, ...]:
    if not isinstance(data, list) or not data:
        raise SpecError("variants: must be a non-empty list of {label, lr, batch_size, schedule}")
    out = []
    for i, item in enumerate(data):
        path = f"variants[{i}]"
        if not isinstance(item, dict):
            raise SpecError(f"{path}: must be a mapping (got {type(item).__name__})")
        reject_unknown(item, {"label", "lr", "batch_size", "schedule"}, f"{path}.")
        for key in ("label", "lr", "batch_size"):
            if key not in item:
                raise SpecError(f"{path}.{key}: required")
        schedule = None
        if item.get("schedule") is not None:
            try:
                schedule = schedule_from_dict(item["schedule"])
            except (ValueError, TypeError) as exc:
                raise SpecError(f"{path}.{schedule_message(exc)}") from None
        out.append(
            VariantConfig(
                label=check_type(item["label"], str, f"{path}.label"),
                lr=check_type(item["lr"], float, f"{path}.lr"),
                batch_size=check_type(item["batch_size"], int, f"{path}.batch_size"),
                schedule=schedule,
            )
        )
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise SpecError(f"variants: repeated labels {labels}")
    return tuple(out)


def _build_grid(data: Any) -> GridConfig:
    if not isinstance(data, dict):
        raise SpecError(f"grid: must be a mapping with lr, batch_size, seed (got {type(data).__name__})")
    reject_unknown(data, {"lr", "batch_size", "seed"}, "grid.")
    kwargs: dict[str, Any] = {}
    for key, hint in (("lr", tuple[float, ...]), ("batch_size", tuple[int, ...])):
        if key in data:
            value = data[key]
            if isinstance(value, dict):
                kwargs[key] = build_dataclass(AxisRange, value, f"grid.{key}")
            else:
                kwargs[key] = check_type(value, hint, f"grid.{key}")
    if "seed" in data:
        kwargs["seed"] = check_type(data["seed"], tuple[int, ...], "grid.seed")
    return GridConfig(**kwargs)
