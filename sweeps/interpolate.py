"""``lrbs interpolate``: loss along the line between two trials' final weights (the paper's Fig. 4).

Reads each trial's config from Tune's ``params.json`` (JSON) and its weights from the last
checkpoint's ``state.pt`` (``torch.load(weights_only=True)``): nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
import torch.nn.functional as F

from lrbs.analysis.plots import interpolation_plot
from lrbs.rundir.layout import CHECKPOINT_GLOB, INTERPOLATION_DIR, TRIAL_PARAMS
from lrbs.rundir.points import member_config, split_member_id
from lrbs.rundir.records import read_ledger
from lrbs.rundir.safe_write import UnsafePathError, check_inside, make_dirs, open_for_write, write_file_safely
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.trust import code_names, require_trust, restore_plugin_folders
from lrbs.trainables.config import DatasetConfig, ModelConfig, TrainConfig, from_dict
from lrbs.trainables.curvature import interpolate, make_batches, probe_subset
from lrbs.trainables.data import load_dataset
from lrbs.trainables.models import build_model
from lrbs.trainables.plugins import PluginError
from lrbs.trainables.tensor_data import DataError
from lrbs.trainables.train_loop import TrialPoint, load_state

INTERP_SCHEMA = pa.schema(
    [
        ("alpha", pa.float64()),
        ("train_loss", pa.float64()),
        ("train_acc", pa.float64()),
        ("val_loss", pa.float64()),
        ("val_acc", pa.float64()),
        ("trial_a", pa.string()),
        ("trial_b", pa.string()),
        ("batch_norm", pa.string()),  # recompute | interpolate: how the running statistics were set at each alpha
    ]
)


def trial_dir(run_dir: Path, trial_id: str) -> Path:
    """Tune's folder of ``trial_id`` that holds its final weights: from the trial's record
    (``lrbs.rundir.records``), its newest folder with a checkpoint (a trial continued by ``lrbs resume``
    ends in ``RUN_DIR/resume-<session>/``); without a record, the one folder named after it."""
    record = read_ledger(run_dir)[0].get(trial_id)
    for logdir in reversed(record.logdirs if record is not None else []):
        directory = run_dir / logdir
        if (directory / TRIAL_PARAMS).is_file() and any(directory.glob(CHECKPOINT_GLOB)):
            return directory
    matches = [p for p in run_dir.glob(f"*_{trial_id}_*") if (p / TRIAL_PARAMS).is_file()]
    if len(matches) != 1:
        raise LrbsError(
            f"TRIAL: no trial {trial_id!r} in {run_dir} (trial ids are in `lrbs status` and the metric tables)"
            if not matches
            else f"TRIAL: {trial_id!r} matches several trial directories in {run_dir}"
        )
    return matches[0]


def last_checkpoint(directory: Path) -> Path:
    ckpts = sorted(directory.glob(CHECKPOINT_GLOB))
    if not ckpts:
        raise LrbsError(f"TRIAL: {directory.name} has no checkpoint to interpolate from")
    return ckpts[-1]


def member_checkpoint(run_dir: Path, trial_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, final weights) of one point: a Tune trial, or member j of a pack (``<id>-m<j>``)."""
    tune_id, j = split_member_id(trial_id)
    directory = trial_dir(run_dir, tune_id)
    try:
        config = json.loads((directory / TRIAL_PARAMS).read_text())
    except (OSError, ValueError) as exc:
        raise LrbsError(
            f"TRIAL: {directory / 'params.json'} is unreadable ({str(exc).splitlines()[0][:120]})"
        ) from None
    ckpt = last_checkpoint(directory)
    try:
        members = load_state(ckpt)["members"]
    except Exception as exc:  # truncated, overwritten or not a torch file: an unpickling error of any kind
        # No fallback to an older checkpoint here: interpolation needs the final weights.
        raise LrbsError(
            f"TRIAL: the final checkpoint {ckpt} does not load ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120] if str(exc) else ''})"
        ) from None
    j = 0 if j is None else j
    if j >= len(members) or ("members" in config["point"]) != (len(members) > 1):
        raise LrbsError(
            f"TRIAL: no trial {trial_id!r} in {run_dir} (trial ids are in `lrbs status` and the metric tables)"
        )
    if members[j]["model"] is None:
        raise LrbsError(f"TRIAL: {trial_id} diverged; it has no final weights to interpolate from")
    return member_config(config, j), members[j]["model"]


# Batch-norm statistics are re-estimated at every alpha on this many training examples (a fixed,
# seeded subset: the same for every alpha and every pair), in batches of train.eval_batch_size.
BN_SUBSET = 4096


def interpolate_trials(
    run_dir: str | Path,
    trial_a: str,
    trial_b: str,
    alphas: list[float],
    batch_norm: str = "recompute",
    trust_code: bool = False,
) -> pa.Table:
    """Loss and accuracy at each alpha. The trials' model and data set are built from their
    ``params.json``: user code they name (``package.module:factory``) is imported only with
    ``trust_code`` (``lrbs.sweeps.trust``); one line (LrbsError) otherwise."""
    run_dir = Path(run_dir)
    configs, states = zip(*(member_checkpoint(run_dir, t) for t in (trial_a, trial_b)))
    for key in ("dataset", "model"):
        if configs[0][key] != configs[1][key]:
            raise LrbsError(f"TRIAL: {trial_a} and {trial_b} differ in {key}; interpolation needs the same {key}")
    points = [TrialPoint.from_dict(c["point"]) for c in configs]
    if points[0].n_train != points[1].n_train:
        raise LrbsError(f"TRIAL: {trial_a} and {trial_b} trained on different n_train")
    dataset = from_dict(DatasetConfig, configs[0]["dataset"])
    if points[0].n_train is not None:
        dataset = dataclasses.replace(dataset, n_train=points[0].n_train)
    # Before any user module is looked for: a copied run directory may name someone else's code
    require_trust(code_names(configs[0]), f"{run_dir}: the params.json of {trial_a}", "interpolate", trust_code)
    restore_plugin_folders(run_dir)
    try:
        data = load_dataset(dataset)
        model = build_model(from_dict(ModelConfig, configs[0]["model"]), data.input_shape, data.n_classes)
    except (DataError, PluginError) as exc:
        raise LrbsError(str(exc).splitlines()[0]) from None
    batch = from_dict(TrainConfig, configs[0]["train"]).eval_batch_size
    n = len(data.x_train)
    bn_batches = make_batches(data.x_train, data.y_train, probe_subset(n, min(n, BN_SUBSET), 0), batch)
    rows = interpolate(
        model,
        states[0],
        states[1],
        torch.tensor(alphas),
        F.cross_entropy,
        make_batches(data.x_train, data.y_train, None, batch),
        make_batches(data.x_val, data.y_val, None, batch),
        batch_norm=batch_norm,
        bn_batches=bn_batches,
    )
    bn = "interpolated" if batch_norm == "interpolate" else "recomputed"
    labels = {"trial_a": trial_a, "trial_b": trial_b, "batch_norm": bn}
    return pa.Table.from_pylist([{**r, **labels} for r in rows], schema=INTERP_SCHEMA)


def write_interpolation(
    run_dir: str | Path,
    trial_a: str,
    trial_b: str,
    alphas: list[float],
    batch_norm: str = "recompute",
    trust_code: bool = False,
) -> tuple[Path, Path]:
    """Write ``interpolation/<A>__<B>.arrow`` (IPC stream) and ``.html`` (plotly) in the run
    directory (``lrbs.rundir.safe_write``: new files renamed into place, never through a link)."""
    run_dir = Path(run_dir)
    out = run_dir / INTERPOLATION_DIR
    try:
        check_inside(run_dir, out / "_")  # before the computation: a link out of the run is refused at once
    except UnsafePathError as exc:
        raise LrbsError(str(exc)) from None
    table = interpolate_trials(run_dir, trial_a, trial_b, alphas, batch_norm, trust_code)
    # Running statistics interpolated (to compare with recomputed ones) get their own file.
    stem = out / (f"{trial_a}__{trial_b}" + ("__bn-interpolated" if batch_norm == "interpolate" else ""))
    arrow_path, html_path = stem.with_suffix(".arrow"), stem.with_suffix(".html")
    try:
        make_dirs(out, run_dir)
        with open_for_write(arrow_path, run_dir) as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        write_file_safely(
            html_path, interpolation_plot({stem.name: table}).to_html(include_plotlyjs=True), root=run_dir
        )
    except UnsafePathError as exc:
        raise LrbsError(str(exc)) from None
    except OSError as exc:
        raise LrbsError(f"RUN_DIR: cannot write {out} ({exc.strerror or exc})") from None
    return arrow_path, html_path
