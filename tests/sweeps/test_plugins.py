"""Bring your own model and data set: import-path factories, their checks, packing, shipping.

The end-to-end run on a separate Ray head (the module shipped to its workers) is in
tests/sweeps/test_submit.py, beside the other test that starts a head.
"""

from __future__ import annotations

import json
import math
import os
import textwrap

import pyarrow as pa
import pytest
import torch

from lrbs.analysis.sections import section_probes
from lrbs.rundir.layout import PLUGIN_ROOTS
from lrbs.rundir.schema import METRIC_SCHEMA
from lrbs.rundir.tables import trials_from_metrics
from lrbs.sweeps.cli import main
from lrbs.sweeps.metrics_sink import row_from_result
from lrbs.trainables import plugins, probes
from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig
from lrbs.trainables.data import load_dataset
from lrbs.trainables.train_loop import TrialPoint, run_pack
from tests.conftest import ROOT, tiny_spec, write_yaml

USER_MODULE = textwrap.dedent("""
    import numpy as np
    import torch
    from torch import nn

    def tiny_net(input_shape, n_classes, hidden=8):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                             nn.Linear(hidden, n_classes))

    def raises(input_shape, n_classes):
        raise RuntimeError("no GPU kernels for this layer")

    def not_a_module(input_shape, n_classes):
        return 42

    def wrong_logits(input_shape, n_classes):
        return nn.Linear(int(np.prod(input_shape)), n_classes + 1)

    def crashes_forward(input_shape, n_classes):
        return nn.Linear(3, n_classes)

    def exits(input_shape, n_classes):
        import sys
        sys.exit(0)

    def interrupted(input_shape, n_classes):
        raise KeyboardInterrupt

    class _ExitingForward(nn.Linear):
        def forward(self, x):
            import sys
            sys.exit(0)

    def exits_in_forward(input_shape, n_classes):
        return _ExitingForward(int(np.prod(input_shape)), n_classes)

    class _Constant(nn.Module):
        def __init__(self, n_classes):
            super().__init__()
            self.n_classes = n_classes

        def forward(self, x):
            return torch.zeros(len(x), self.n_classes)

    def no_params(input_shape, n_classes):
        return _Constant(n_classes)

    class _Rounded(nn.Linear):
        def forward(self, x):
            return super().forward(x.flatten(1)).round().long()

    def integer_logits(input_shape, n_classes):
        return _Rounded(int(np.prod(input_shape)), n_classes)

    NOT_CALLABLE = 3

    def _blobs(n_train=60, n_val=20):
        g = np.random.default_rng(0)
        return {"x_train": g.standard_normal((n_train, 5)).astype(np.float32), "y_train": g.integers(0, 3, n_train),
                "x_val": g.standard_normal((n_val, 5)).astype(np.float32), "y_val": g.integers(0, 3, n_val)}

    def blobs(n_train=60, n_val=20):
        return _blobs(n_train, n_val)

    def blobs_tensors():
        return {k: torch.as_tensor(v) for k, v in _blobs().items()}

    def data_raises():
        raise OSError("bucket not mounted")

    def data_list():
        return [1, 2, 3]

    def data_missing():
        d = _blobs(); del d["y_val"]; return d

    def data_bad_labels():
        d = _blobs(); d["n_classes"] = 2; return d

    def data_negative_labels():
        d = _blobs(); d["y_train"] = d["y_train"] - 1; return d

    def data_lengths():
        d = _blobs(); d["y_train"] = d["y_train"][:-1]; return d

    def data_nan():
        d = _blobs(); d["x_train"][3, 1] = np.nan; return d

    def data_float_labels():
        d = _blobs(); d["y_val"] = d["y_val"].astype(np.float32); return d

    def data_shapes():
        d = _blobs(); d["x_val"] = d["x_val"][:, :4]; return d

    def data_no_features():
        d = _blobs(); d["x_train"] = d["x_train"][:, :0]; d["x_val"] = d["x_val"][:, :0]; return d

    def data_exits():
        import sys
        sys.exit(0)

    def data_interrupted():
        raise KeyboardInterrupt
""")


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A user's project folder: a module next to the specs, outside lrbs and outside sys.path.

    Each test gets a fresh folder, so the module (and what was built from it) is forgotten first:
    a process imports a module name once (docs/extending.md)."""
    import sys

    from lrbs.sweeps import estimate
    from lrbs.trainables import user_data

    for name in [
        m
        for m in sys.modules
        if m.startswith(
            ("usermods_lrbs_test", "broken_import_lrbs_test", "exit_import_lrbs_test", "interrupt_import_lrbs_test")
        )
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(user_data, "_CACHE", {})
    monkeypatch.setattr(estimate, "_PROFILES", {})
    monkeypatch.setattr(plugins, "_search_roots", [])  # earlier tests' spec folders
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "usermods_lrbs_test.py").write_text(USER_MODULE)
    (folder / "broken_import_lrbs_test.py").write_text("import numpy\nraise ImportError('needs cuda 13')\n")
    (folder / "exit_import_lrbs_test.py").write_text("import sys\nsys.exit(0)\n")
    (folder / "interrupt_import_lrbs_test.py").write_text("raise KeyboardInterrupt\n")
    return folder


def user_spec(name: str = "tiny", **sections) -> dict:
    """tiny_spec with ``model`` and ``dataset`` replaced whole (not merged into the MLP's options)."""
    spec = tiny_spec(name, **{k: v for k, v in sections.items() if k not in ("model", "dataset")})
    spec.update({k: v for k, v in sections.items() if k in ("model", "dataset")})
    return spec


def _validate(folder, capsys, **overrides):
    spec = write_yaml(folder / "spec.yaml", user_spec(**overrides))
    code = _main(["validate", str(spec)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _main(argv: list[str]):
    """``main(argv)``; user code's SystemExit or KeyboardInterrupt escaping lrbs is returned as
    its name (it must not end pytest's session, nor pass as an exit code)."""
    try:
        return main(argv)
    except (SystemExit, KeyboardInterrupt) as exc:
        return f"{type(exc).__name__} escaped"


M = "usermods_lrbs_test"
DATA = {"name": f"{M}:blobs"}


def test_user_model_and_data_validate_with_counts(user_dir, capsys, monkeypatch):
    monkeypatch.chdir(user_dir.parent)  # found through the spec's folder, not the current one
    code, out, err = _validate(
        user_dir,
        capsys,
        model={"name": f"{M}:tiny_net", "options": {"hidden": 16}},
        dataset={**DATA, "val_fraction": None, "options": {"n_train": 80}},
        grid={"lr": [0.1], "batch_size": [8, 16], "seed": [0]},
    )
    assert code == 0, err
    # 5*16 + 16 + 16*3 + 3 parameters, and the forward FLOPs the estimate uses.
    assert f"model: {M}:tiny_net {{hidden: 16}}: 147 parameters" in out
    assert "input (5,), 3 classes" in out and "estimated cost:" in out


@pytest.mark.parametrize(
    "model, dataset, field, words",
    [
        ({"name": "no_such_module_xyz:net"}, DATA, "model.name", "cannot import module 'no_such_module_xyz'"),
        ({"name": f"{M}:missing"}, DATA, "model.name", "has no attribute 'missing'"),
        ({"name": f"{M}:NOT_CALLABLE"}, DATA, "model.name", "not a callable"),
        ({"name": "broken_import_lrbs_test:net"}, DATA, "model.name", "ImportError: needs cuda 13"),
        ({"name": "not a path"}, DATA, "model.name", "unknown model"),
        ({"name": f"{M}:raises"}, DATA, "model.name", "RuntimeError: no GPU kernels"),
        ({"name": f"{M}:not_a_module"}, DATA, "model.name", "not a torch.nn.Module"),
        ({"name": f"{M}:wrong_logits"}, DATA, "model.name", "logits of shape (batch, 3)"),
        ({"name": f"{M}:crashes_forward"}, DATA, "model.name", "forward pass"),
        ({"name": f"{M}:tiny_net", "options": {"heads": 2}}, DATA, "model.options", "heads"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_raises"}, "dataset.name", "OSError: bucket not mounted"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_list"}, "dataset.name", "returned a list"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_missing"}, "dataset.name", "returned no y_val"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_bad_labels"}, "dataset.name", "outside [0, 2)"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_negative_labels"}, "dataset.name", "outside [0, 3)"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_lengths"}, "dataset.name", "differ in length"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_nan"}, "dataset.name", "non-finite"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_float_labels"}, "dataset.name", "integer class labels"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_shapes"}, "dataset.name", "differ in example shape"),
        ({"name": f"{M}:tiny_net"}, {**DATA, "options": {"n_test": 3}}, "dataset.options", "n_test"),
        ({"name": f"{M}:tiny_net"}, {**DATA, "val_fraction": 0.2}, "dataset.val_fraction", "own validation split"),
        # User code that stops the process instead of raising, at import, in a factory, in forward
        ({"name": f"{M}:exits"}, DATA, "model.name", "called sys.exit(0)"),
        ({"name": f"{M}:interrupted"}, DATA, "model.name", "KeyboardInterrupt"),
        ({"name": f"{M}:exits_in_forward"}, DATA, "model.name", "forward pass"),
        ({"name": "exit_import_lrbs_test:net"}, DATA, "model.name", "called sys.exit(0)"),
        ({"name": "interrupt_import_lrbs_test:net"}, DATA, "model.name", "KeyboardInterrupt"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_exits"}, "dataset.name", "called sys.exit(0)"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_interrupted"}, "dataset.name", "KeyboardInterrupt"),
        ({"name": f"{M}:tiny_net"}, {"name": "interrupt_import_lrbs_test:data"}, "dataset.name", "KeyboardInterrupt"),
        # Models and data SGD cannot train on
        ({"name": f"{M}:no_params"}, DATA, "model.name", "no trainable parameters"),
        ({"name": f"{M}:integer_logits"}, DATA, "model.name", "floating-point logits; it returned torch.int64"),
        ({"name": f"{M}:tiny_net"}, {"name": f"{M}:data_no_features"}, "dataset.name", "has no features"),
    ],
)
def test_bad_factories_are_one_line_exit_2(user_dir, capsys, tmp_path, model, dataset, field, words):
    """``lrbs validate`` and ``lrbs run``: one line naming the field, exit 2, nothing written."""
    overrides = {
        "model": model,
        "dataset": {"val_fraction": None, **dataset},
        "grid": {"lr": [0.1], "batch_size": [8], "seed": [0]},
    }
    code, out, err = _validate(user_dir, capsys, **overrides)
    assert code == 2, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrbs: error: "), err
    message = lines[0].split(": ", 2)[2]
    assert f": {field}: " in f": {message}" and words in message, message
    assert _main(["run", str(user_dir / "spec.yaml"), "--storage", str(tmp_path / "runs"), "--no-report"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == lines
    assert not (tmp_path / "runs").exists()


def test_run_refuses_a_broken_factory_before_ray_starts(user_dir, capsys, tmp_path):
    spec = write_yaml(user_dir / "bad.yaml", user_spec("bad", model={"name": f"{M}:raises"}))
    assert main(["run", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    assert "model.name:" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "bad").exists()  # nothing written


def test_user_data_set_loads_and_subsets(user_dir, monkeypatch):
    from lrbs.trainables.plugins import add_search_root

    add_search_root(user_dir)
    full = load_dataset(DatasetConfig(name=f"{M}:blobs_tensors"))
    assert full.x_train.shape == (60, 5) and full.n_classes == 3 and full.x_train.dtype == torch.float32
    sub = load_dataset(DatasetConfig(name=f"{M}:blobs", n_train=25, options={"n_train": 60}))
    assert sub.x_train.shape == (25, 5) and torch.equal(sub.y_val, full.y_val)
    # The subset is the built-ins' seeded carve: rows of the full training split, in file order.
    rows = [next(i for i in range(60) if torch.equal(full.x_train[i], x)) for x in sub.x_train]
    assert rows == sorted(rows)


def test_user_model_packs_through_the_general_path(tmp_path):
    """The example's 1-D convnet (a user model) packed 2 at a time gives the unpacked runs' rows."""
    data = load_dataset(DatasetConfig(name="mnist1d", n_train=256, options={"n_samples": 1000}, data_dir=str(tmp_path)))
    model = ModelConfig(name="examples.mnist1d_conv:conv1d", options={"channels": 8})
    train = TrainConfig(epochs=2, pack=2)
    points = [TrialPoint(lr=0.05, batch_size=32, seed=0), TrialPoint(lr=0.2, batch_size=32, seed=1)]

    def collect(store):
        return lambda rows, state: store.extend(rows)

    packed: list = []
    run_pack(points, DatasetConfig(), model, train, collect(packed), data=data)
    for j, p in enumerate(points):
        alone: list = []
        run_pack([p], DatasetConfig(), model, train, collect(alone), data=data)
        mine = [r for r in packed if r["member"] == j]
        assert [r["train_loss"] for r in mine] == pytest.approx([r["train_loss"] for r in alone], rel=1e-5)
        assert [r["val_acc"] for r in mine] == [r["val_acc"] for r in alone]


def test_undeclared_probe_column_is_an_error(monkeypatch):
    data = load_dataset(DatasetConfig(name="synthetic", n_train=64))
    monkeypatch.setitem(probes.PROBES, "bogus", lambda model, data, cfg, idx, seed: {"bogus_sharpness": 1.0})
    with pytest.raises(ValueError, match=r"\['bogus_sharpness'\] are not declared in rundir/schema.py"):
        run_pack(
            [TrialPoint(lr=0.1, batch_size=32, seed=0)],
            DatasetConfig(),
            ModelConfig(options={"depth": 2, "width": 8}),
            TrainConfig(epochs=1),
            lambda rows, state: None,
            data=data,
            probes=CurvatureConfig(n_samples=32, lanczos_iters=2, hutchinson_probes=4, noise_scale=False),
        )


def test_legacy_flat_model_keys_still_read(tmp_path):
    """Specs and run directories written before ``model.options`` keep working."""
    from lrbs.sweeps.spec_load import spec_from_dict
    from lrbs.trainables.config import from_dict

    spec = spec_from_dict(tiny_spec(model={"name": "mlp", "depth": 2, "width": 16, "options": None}))
    assert spec.model.options == {"depth": 2, "width": 16}
    # Old configs were written with asdict: all four flat keys, whatever the model.
    old = {"depth": 4, "width": 256, "batch_norm": True, "width_mult": 1.0}
    mlp = from_dict(ModelConfig, {"name": "mlp", **old})
    assert mlp.options == {"depth": 4, "width": 256, "batch_norm": True}
    assert from_dict(ModelConfig, {"name": "vgg11", **old}).options == {"batch_norm": True, "width_mult": 1.0}
    assert spec_from_dict(user_spec(model={"name": "mlp", **old})).model.options == mlp.options
    from lrbs.trainables.models import build_model

    assert sum(p.numel() for p in build_model(mlp, (64,), 10).parameters()) == 151_562  # the old quickstart MLP


def test_the_example_spec_validates_from_any_folder(tmp_path):
    """examples/mnist1d_conv.yaml finds its module next to it, whatever the current folder."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "lrbs", "validate", str(ROOT / "examples" / "mnist1d_conv.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert "mnist1d_conv: 6 trials" in out.stdout and "in 2 packs (train.pack: 3)" in out.stdout
    assert "model: mnist1d_conv:conv1d {channels: 32, batch_norm: True}" in out.stdout
    assert "input (1, 40), 10 classes" in out.stdout


def test_resume_finds_user_modules_where_run_found_them(user_dir, tmp_path, monkeypatch):
    """``plugins.json`` in the run directory: resume and interpolate add its folders to the search."""
    import sys

    from lrbs.sweeps.preflight import preflight
    from lrbs.sweeps.trust import record_plugin_folders, restore_plugin_folders

    spec_path = write_yaml(
        user_dir / "spec.yaml",
        user_spec(
            model={"name": f"{M}:tiny_net"},
            dataset={**DATA, "val_fraction": None},
            grid={"lr": [0.1], "batch_size": [8], "seed": [0]},
        ),
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    record_plugin_folders(preflight(spec_path).spec, run_dir)
    assert json.loads((run_dir / PLUGIN_ROOTS).read_text()) == {"search_roots": [str(user_dir)]}
    monkeypatch.setattr(plugins, "_search_roots", [])
    for name in [m for m in sys.modules if m.startswith(M)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(user_dir)])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(plugins.PluginError, match="cannot import module"):
        plugins.load_object(f"{M}:tiny_net", "model.name")
    restore_plugin_folders(run_dir)
    assert callable(plugins.load_object(f"{M}:tiny_net", "model.name"))


# ----------------------------------------------------------------------------- probes through user models

ATTENTION_MODULE = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn
    from torch.autograd.function import once_differentiable

    class _Encoder(nn.Module):
        def __init__(self, input_shape, n_classes, d_model, heads, token):
            super().__init__()
            n = int(np.prod(input_shape))
            self.token = token
            self.embed = nn.Linear(token, d_model)
            self.position = nn.Parameter(torch.zeros(n // token, d_model))
            layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2 * d_model, dropout=0.0,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, n_classes)

        def forward(self, x):
            tokens = x.flatten(1).unflatten(1, (-1, self.token))  # (batch, n / token, token)
            return self.head(self.encoder(self.embed(tokens) + self.position).mean(1))

    def encoder(input_shape, n_classes, d_model=16, heads=2, token=8):
        """A 1-layer transformer encoder over the example cut into tokens of `token` values."""
        return _Encoder(input_shape, n_classes, d_model, heads, token)

    class _SoftSign(torch.autograd.Function):
        """x / (1 + |x|), whose backward has no backward of its own."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x / (1 + x.abs())

        @staticmethod
        @once_differentiable
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad / (1 + x.abs()) ** 2

    class _SoftSignNet(nn.Module):
        def __init__(self, n_in, n_classes, hidden):
            super().__init__()
            self.hidden, self.out = nn.Linear(n_in, hidden), nn.Linear(hidden, n_classes)

        def forward(self, x):
            return self.out(_SoftSign.apply(self.hidden(x.flatten(1))))

    def no_double_backward(input_shape, n_classes, hidden=16):
        return _SoftSignNet(int(np.prod(input_shape)), n_classes, hidden)

    class _TokenNet(nn.Module):
        """Reads its float inputs as token ids (0-16 for digits' pixels) through an embedding."""

        def __init__(self, n_classes, d_model):
            super().__init__()
            self.embed, self.head = nn.Embedding(17, d_model), nn.Linear(d_model, n_classes)

        def forward(self, x):
            return self.head(self.embed(x.flatten(1).long()).mean(1))

    def tokens(input_shape, n_classes, d_model=8):
        return _TokenNet(n_classes, d_model)
''')
A = "attention_lrbs_test"
PROBE_CFG = {"n_samples": 64, "lanczos_iters": 6, "hutchinson_probes": 4, "noise_b_small": 32, "noise_pairs": 8}


@pytest.fixture
def attention_dir(user_dir, monkeypatch):
    """``user_dir`` with a module holding a transformer encoder and a model without double backward."""
    import sys

    from lrbs.sweeps import estimate

    for name in [m for m in sys.modules if m.startswith(A)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(estimate, "_PROFILES", {})
    (user_dir / f"{A}.py").write_text(ATTENTION_MODULE)
    plugins.add_search_root(user_dir)
    return user_dir


def test_probes_run_through_a_user_transformer(attention_dir):
    """nn.TransformerEncoder's attention runs a fused kernel without double backward: the probes
    run it through the math kernel and measure finite, positive curvature."""
    data = load_dataset(DatasetConfig(name="digits", n_train=256))
    rows: list = []
    status = run_pack(
        [TrialPoint(lr=0.1, batch_size=32, seed=0)],
        DatasetConfig(name="digits"),
        ModelConfig(name=f"{A}:encoder"),
        TrainConfig(epochs=2),
        lambda r, state: rows.extend(r),
        data=data,
        probes=CurvatureConfig(**PROBE_CFG),
    )
    assert status == ["finished"] and [r["epoch"] for r in rows] == [1, 2]
    last = rows[-1]
    assert "probe_error" not in last, last.get("probe_error")
    for col in ("lambda_max", "hessian_trace", "hessian_fro", "grad_noise_scale", "probe_loss"):
        assert isinstance(last[col], float) and math.isfinite(last[col]), (col, last[col])
    assert last["lambda_max"] > 0 and last["hessian_fro"] > 0


def test_validate_runs_one_hvp_when_probes_are_on(attention_dir, capsys, tmp_path):
    """With ``curvature:`` set, ``lrbs validate`` (and ``lrbs run``) runs one Hessian-vector
    product through the model: the transformer passes, a model whose op has no double backward
    is one line naming curvature and the op, exit 2, nothing written; without curvature it passes."""
    digits = {"name": "digits", "val_fraction": 0.2}
    grid = {"lr": [0.1], "batch_size": [32], "seed": [0]}
    code, out, err = _validate(
        attention_dir, capsys, model={"name": f"{A}:encoder"}, dataset=digits, grid=grid, curvature=PROBE_CFG
    )
    assert code == 0, err
    overrides = {"model": {"name": f"{A}:no_double_backward"}, "dataset": digits, "grid": grid}
    code, out, err = _validate(attention_dir, capsys, **overrides, curvature=PROBE_CFG)
    assert code == 2, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrbs: error: "), err
    assert (
        f"curvature: the probes need Hessian-vector products (a double backward) through model.name {A}:"
        "no_double_backward"
        in lines[0]
        and "once_differentiable" in lines[0]
    ), lines[0]
    assert _main(["run", str(attention_dir / "spec.yaml"), "--storage", str(tmp_path / "runs"), "--no-report"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == lines
    assert not (tmp_path / "runs").exists()
    code, out, err = _validate(attention_dir, capsys, **overrides)  # no curvature section: no HVP, no error
    assert code == 0, err
    # a model that reads its inputs as token ids passes: the check feeds inputs any data set could give
    code, out, err = _validate(
        attention_dir, capsys, model={"name": f"{A}:tokens"}, dataset=digits, grid=grid, curvature=PROBE_CFG
    )
    assert code == 0, err


def test_a_failing_probe_leaves_null_columns_and_the_error_and_the_trial_goes_on(attention_dir):
    """A probe that raises mid-training (validate's check bypassed: the config built in code) is
    recorded, not raised: each probed row has null sharpness columns and probe_error, the
    first-order noise scale still runs, the trial finishes with all its rows, and the report's
    probe section names the trial with its error."""
    data = load_dataset(DatasetConfig(name="digits", n_train=128))
    rows: list = []
    status = run_pack(
        [TrialPoint(lr=0.1, batch_size=32, seed=0)],
        DatasetConfig(name="digits"),
        ModelConfig(name=f"{A}:no_double_backward"),
        TrainConfig(epochs=3),
        lambda r, state: rows.extend(r),
        data=data,
        probes=CurvatureConfig(**PROBE_CFG, every=2),
    )
    assert status == ["finished"] and [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["status"] for r in rows] == ["running", "running", "finished"]
    assert "probe_error" not in rows[0] and "lambda_max" not in rows[0]  # no probe due at epoch 1
    for row in rows[1:]:
        assert (
            row["probe_error"].startswith("sharpness: RuntimeError: ") and "once_differentiable" in row["probe_error"]
        )
        assert "lambda_max" not in row and "hessian_trace" not in row  # null in the tables
        assert math.isfinite(row["grad_noise_scale"]) and row["probe_s"] > 0
    config = {
        "sweep": "s",
        "dataset": {"name": "digits"},
        "model": {"name": f"{A}:no_double_backward"},
        "point": {"lr": 0.1, "batch_size": 32, "seed": 0},
    }
    table = pa.Table.from_pylist([row_from_result(r, config, "t0") for r in rows], schema=METRIC_SCHEMA)
    assert table.column("probe_error").to_pylist() == [None, rows[1]["probe_error"], rows[2]["probe_error"]]
    trials = trials_from_metrics(table)
    assert trials.column("probe_epoch").to_pylist() == [3] and trials.column("lambda_max").to_pylist() == [None]
    sec = section_probes(trials)
    assert sec.status == "ok" and sec.data["probe_failed"] == {"t0": rows[2]["probe_error"]}
    assert "probes failed in 1/1 trials" in sec.headline
    assert any("t0: sharpness: RuntimeError" in note for note in sec.notes)
