"""The README's Python example, run as written on a small spec (in a fresh interpreter), and the
public names of ``import lrbs``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import lrbs

ROOT = Path(__file__).resolve().parents[1]
SMALL = """name: api_example
dataset: {name: digits}
model: {name: mlp, options: {depth: 2, width: 16}}
train: {epochs: 2}
grid: {lr: [0.05, 0.2], batch_size: [64], seed: [0]}
resources: {cpu: 1}
"""


def test_import_lrbs_names_its_public_api_without_loading_torch_or_ray():
    code = "import lrbs, sys; print(sorted(lrbs.__all__), 'torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("]")[1].split() == ["False", "False"]
    assert set(lrbs.__all__) == {"Run", "SweepSpec", "load", "open_run", "run"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lrbs.nope  # noqa: B018


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    block = re.search(r"## Python\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no ## Python example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 6  # `import lrbs` and five lines
    (tmp_path / "small.yaml").write_text(SMALL)
    code = code.replace('"sweeps/quickstart.yaml"', repr(str(tmp_path / "small.yaml")))
    code = code.replace('storage="runs"', f"storage={str(tmp_path / 'runs')!r}")
    code += "\nreopened = lrbs.open_run(run.path)\nprint('EPOCH ROWS', reopened.epochs().num_rows)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "final_val_acc" in out.stdout and "EPOCH ROWS 4" in out.stdout  # 2 points x 2 epochs
    for name in ("report.html", "fits.json", "report.md"):
        assert (tmp_path / "runs" / "api_example" / name).stat().st_size > 0
