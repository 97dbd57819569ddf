"""The layers, read from the code's own imports (every import statement, at any depth).

rundir (the run directory: layout, schema, readers, records, points) imports no other lrbs package;
trainables and analysis stand on it side by side; sweeps stands on all three; the ``lrbs`` package's
public face may import anything. Inside functions only optional dependencies are imported.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "lrbs": "lrbs",
    "lrbs.rundir": "rundir",
    "lrbs.trainables": "trainables",
    "lrbs.analysis": "analysis",
    "lrbs.sweeps": "sweeps",
}
# What each package may import from lrbs (itself included).
ALLOWED = {
    "lrbs.rundir": {"lrbs.rundir"},
    "lrbs.trainables": {"lrbs.rundir", "lrbs.trainables"},
    "lrbs.analysis": {"lrbs.rundir", "lrbs.analysis"},
    "lrbs.sweeps": {"lrbs.rundir", "lrbs.trainables", "lrbs.analysis", "lrbs.sweeps"},
    "lrbs": {"lrbs", "lrbs.rundir", "lrbs.trainables", "lrbs.analysis", "lrbs.sweeps"},
}
# Imported inside a function on purpose: optional extras, or a package whose import costs seconds
# and that only some commands use. Each such import carries its reason in a comment on its line
# or the line above.
OPTIONAL = {
    "tensorboard",
    "mlflow",
    "wandb",
    "torch.utils.tensorboard",
    "sklearn",
    "mnist1d",
    "torchvision",
    "boto3",
    "moto",
    "kaleido",
    "pandas",
    "IPython",
}


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = (path, ast.parse(path.read_text(), str(path)))
    return out


MODULES = _modules()


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or module in PACKAGES else "lrbs"


def _in_functions(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a function body (``if TYPE_CHECKING:`` or ``try:`` at module level
    is module level)."""
    return {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }


def _imports(tree: ast.Module, module: str):
    """(imported module, line, at module level) for each import; ``from X import y`` names ``X.y``
    when that is a module."""
    inside = _in_functions(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) not in inside
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node.lineno, id(node) not in inside


def _internal_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, (_, tree) in MODULES.items():
        for target, _, _ in _imports(tree, module):
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def test_the_type_checker_sees_every_module():
    # mypy reads lrbs through .typecheck/lrbs (links to the package folders and lrbs/*.py).
    links = ROOT / ".typecheck" / "lrbs"
    for package, folder in PACKAGES.items():
        if package != "lrbs":
            assert (links / package.split(".")[1]).resolve() == ROOT / folder, package
    missing = [p.name for p in (ROOT / "lrbs").glob("*.py") if (links / p.name).resolve() != p]
    assert not missing, f"link these into .typecheck/lrbs: {missing}"


def test_no_import_of_the_old_top_level_names():
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {t}"
        for m, (p, tree) in MODULES.items()
        for t, line, _ in _imports(tree, m)
        if t.split(".")[0] in ("sweeps", "trainables", "analysis", "rundir")
    ]
    assert not bad, "\n".join(bad)


def test_packages_import_only_their_layer_and_below():
    bad = []
    for module, (path, tree) in MODULES.items():
        allowed = ALLOWED[_package(module)]
        for target, line, _ in _imports(tree, module):
            if target.startswith("lrbs") and _package(target) not in allowed and target != "lrbs":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    edges = _internal_edges()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_are_optional_dependencies_with_a_reason():
    bad = []
    for module, (path, tree) in MODULES.items():
        lines = path.read_text().splitlines()
        for target, line, at_top in _imports(tree, module):
            if at_top:
                continue
            root = target.split(".")[0]
            reason = "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")
            if target.startswith("lrbs") or not any(target == o or target.startswith(o + ".") for o in OPTIONAL):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} inside a function")
            elif not reason:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {root} inside a function without saying why")
    assert not bad, f"{len(bad)} imports inside functions:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    bad = []
    for module, (path, tree) in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lrbs"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}")
    assert not bad, "\n".join(bad)


def test_comments_say_what_the_code_does_not_its_history():
    folders = [*PACKAGES.values(), "tests", "benchmarks", "remeasure", "examples"]
    bad = []
    for path in sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bissues? \d+", line, re.I) and path.name != "test_architecture.py":
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


# Runs `lrbs run` on a one-point sweep under a profiler and records, for every call into an lrbs
# module on the way to Tuner.fit (module-level code run at import left out), the lrbs modules on
# the call stack. A climb back up is a call from lrbs module B straight into module A that is
# already lower on the stack (A -> B -> A); a hook that a library calls (torch's forward hooks and
# dispatch modes, Tune's callbacks) is not a call from lrbs, so not a climb.
TRACE = """
import json, sys
from lrbs.sweeps.cli import main
visited, climbs, done = [], set(), []
def profile(frame, event, arg):
    if done or event != "call":
        return
    module = frame.f_globals.get("__name__", "")
    if module == "ray.tune.tuner" and frame.f_code.co_name == "fit":
        done.append(1)
        return
    if not module.startswith("lrbs"):
        return
    stack, f = [], frame
    while f is not None:
        m, code = f.f_globals.get("__name__", ""), f.f_code.co_name
        if code == "<module>" and m != "__main__":
            return
        if m.startswith("lrbs") and (not stack or stack[-1] != m):
            stack.append(m)
        f = f.f_back
    visited.append(module) if module not in visited else None
    caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
    if caller.startswith("lrbs") and caller != module and stack.count(module) > 1:
        climbs.add(" -> ".join(reversed(stack)))
sys.setprofile(profile)
rc = main(sys.argv[1:])
sys.setprofile(None)
print("TRACE " + json.dumps({"rc": rc, "visited": visited, "climbs": sorted(climbs), "reached": bool(done)}))
"""


@pytest.mark.slow
def test_lrbs_run_enters_each_module_once_on_the_way_to_the_tuner(tmp_path):
    spec = tmp_path / "one_point.yaml"
    spec.write_text(
        "name: one_point\ndataset: {name: digits}\nmodel: {name: mlp, options: {depth: 2, width: 16}}\n"
        "train: {epochs: 1}\ngrid: {lr: [0.1], batch_size: [64], seed: [0]}\nresources: {cpu: 1}\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", TRACE, "run", str(spec), "--storage", str(tmp_path / "runs"), "--no-report"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("TRACE ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    trace = json.loads(line[-1][6:])
    assert trace["rc"] == 0 and trace["reached"]
    assert not trace["climbs"], "\n".join(trace["climbs"])
    print(f"{len(trace['visited'])} modules on the way to the Tuner: {' '.join(trace['visited'])}")
