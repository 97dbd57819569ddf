"""User code named by import path: ``"package.module:factory"`` in ``model.name`` or ``dataset.name``.

Like Hydra's ``_target_``, but explicit: the part before ``:`` is imported as a module, the part
after it is looked up in that module (dots walk attributes). Modules are found on ``sys.path``,
then in the current folder, then in the folder of the spec being read (``add_search_root``), so
a ``my_models.py`` next to the spec works without installing anything. On Ray workers the module
arrives through the job's ``runtime_env`` (``ship_paths``; sweeps/runner.py), not through these
folders.

Every failure is a ``PluginError`` whose text is one line naming the spec field. User code that
stops the process instead of raising an exception (``sys.exit()``, or a ``KeyboardInterrupt``
at import or in a factory) is such a failure too: caught as ``BaseException`` wherever lrbs runs
user code, it cannot end ``lrbs validate`` with exit 0 or a traceback. The price: a real Ctrl-C
that lands while a factory runs reads as that factory being interrupted (one line naming it,
exit 2); anywhere else Ctrl-C interrupts as usual.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

# lrbs' own top-level package: never shipped as user code (the workers have lrbs installed).
OWN_PACKAGES = ("lrbs",)
_OLD_TOP_LEVEL = ("sweeps", "trainables", "analysis")

_search_roots: list[str] = []


class PluginError(ValueError):
    """A plug-in that cannot be used; ``str()`` is one line starting with the spec field."""


def is_import_path(name: str) -> bool:
    return ":" in name


def add_search_root(folder: str | os.PathLike[str]) -> None:
    """Also look for plug-in modules in ``folder`` (``load_spec`` adds the spec's folder)."""
    folder = os.path.abspath(folder)
    if folder not in _search_roots:
        _search_roots.append(folder)


def _extend_sys_path() -> None:
    for folder in [os.getcwd(), *_search_roots]:
        if folder not in sys.path:
            sys.path.append(folder)  # appended: user folders never shadow installed packages


def _split(path: str, field: str) -> tuple[str, str]:
    module_name, _, attr = path.partition(":")
    parts = module_name.split(".") + attr.split(".")
    if not module_name or not attr or not all(p.isidentifier() for p in parts):
        raise PluginError(f"{field}: {path!r} is not an import path of the form package.module:factory")
    return module_name, attr


def _current_name(module_name: str) -> str:
    """lrbs' own modules under their names from before the one ``lrbs`` package (``trainables.x``):
    spec copies in older run directories name them so. A user's package of the same name wins."""
    top = module_name.split(".")[0]
    if top not in _OLD_TOP_LEVEL:
        return module_name
    found = importlib.util.find_spec(top)
    here = Path(__file__).resolve().parent.parent / top
    if found is None or [os.path.realpath(p) for p in found.submodule_search_locations or []] == [str(here)]:
        return f"lrbs.{module_name}"
    return module_name


def import_module(path: str, field: str) -> ModuleType:
    module_name, _ = _split(path, field)
    _extend_sys_path()
    module_name = _current_name(module_name)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            where = ", ".join(dict.fromkeys([os.getcwd(), *_search_roots]))
            raise PluginError(
                f"{field}: cannot import module {module_name!r} (not installed, and not found in {where})"
            ) from None
        raise PluginError(f"{field}: importing {module_name!r} failed: {_one_line(exc)}") from None
    except BaseException as exc:  # the user's module raised (or called sys.exit) while it was imported
        raise PluginError(f"{field}: importing {module_name!r} failed: {_one_line(exc)}") from None


def load_object(path: str, field: str) -> Any:
    """The callable named by ``path`` (``"package.module:factory"``)."""
    _, attr = _split(path, field)
    obj: Any = import_module(path, field)
    module_name = obj.__name__
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{field}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PluginError(f"{field}: {path} is a {type(obj).__name__}, not a callable factory")
    return obj


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        code = repr(exc.code)
        code = code if len(code) <= 40 else code[:37] + "..."
        return f"SystemExit (it called sys.exit({code}); user code must raise an exception instead)"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt (raised by the code, or a Ctrl-C while it ran)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def call_error(path: str, field: str, exc: BaseException) -> PluginError:
    """The one-line error for a factory that raised."""
    return PluginError(f"{field}: {path} raised {_one_line(exc)}")


def _installed(path: Path) -> bool:
    prefixes = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    return any(path.is_relative_to(p) for p in prefixes if p)


def ship_path(path: str) -> str | None:
    """The local folder (a package) or file (a single-file module) that holds ``path``'s top-level
    module, for Ray's ``runtime_env`` ``py_modules``; None when the workers already have it
    (an installed package, or lrbs itself)."""
    module = import_module(path, "plugin")
    top = module.__name__.split(".")[0]
    if top in OWN_PACKAGES:
        return None
    root = sys.modules[top]
    # Deduplicated: a namespace package lists its folder once per sys.path entry that reaches it.
    locations = list(dict.fromkeys(os.path.realpath(p) for p in getattr(root, "__path__", None) or []))
    if locations:
        if len(locations) != 1:  # a namespace package spread over folders: ship nothing, say so in docs
            return None
        target = Path(locations[0])
    elif file := getattr(root, "__file__", None):
        target = Path(file)
    else:
        return None
    return None if _installed(target.resolve()) else str(target.resolve())
