"""A Ray Tune trial: ``train_trial`` runs ``run_pack`` (the SGD loop, ``train_loop``) for the pack
of points in its config, reports each epoch's rows with ``tune.report`` and checkpoints through
Tune; a restarted or resumed trial continues from the newest checkpoint that loads. The only
trainables module that imports Ray, so the loop itself runs without it (benchmarks, a GPU box).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from ray import tune

from lrbs.rundir.points import from_config
from lrbs.rundir.records import resume_entry
from lrbs.trainables.config import CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig, from_dict
from lrbs.trainables.faults import maybe_fail
from lrbs.trainables.schedules import schedule_from_dict
from lrbs.trainables.train_loop import (
    CHECKPOINT_FILE,
    DIVERGED,
    FINISHED,
    RUNNING,
    TrialPoint,
    first_loadable_state,
    pick_device,
    run_pack,
)


def tune_start_state(config: dict[str, Any]) -> dict[str, Any] | None:
    """Where a trial continues from: Tune's latest checkpoint of this trial (after a failure in
    this session) and the kept checkpoints before it, then those ``lrbs resume`` found in earlier
    sessions (``config["resume"]``); the first that loads wins."""
    candidates: list[str | Path] = []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
            latest = Path(checkpoint.path)
            # the kept ones before it (never a newer orphan: its rows may not have been written)
            candidates += [
                latest,
                *(p for p in sorted(latest.parent.glob("checkpoint_*"), reverse=True) if p.name < latest.name),
            ]
        else:  # a remote store: no listing of older ones here
            with checkpoint.as_directory() as directory:
                state = first_loadable_state([directory])
                if state is not None:
                    return state
    if candidates:  # this session's own checkpoints: their rows were written by this driver
        state = first_loadable_state(candidates)
        if state is not None:
            return state

    entry = resume_entry(config)
    if entry:
        return first_loadable_state(entry.get("checkpoints", []), entry.get("max_epoch"))
    return None


class CheckpointClock:
    """When to save: every ``every`` epochs if set, and whenever ``every_s`` seconds have passed
    since the last save, so short epochs do not each pay a save; always when training stops."""

    def __init__(self, every: int | None, every_s: float | None):
        self.every, self.every_s = every, every_s
        self.last = time.monotonic()

    def due(self, epoch: int, status: str) -> bool:
        now = time.monotonic()
        if (
            status != RUNNING
            or (self.every and epoch % self.every == 0)
            or (self.every_s is not None and now - self.last >= self.every_s)
        ):
            self.last = now
            return True
        return False


def tune_report(result: dict[str, Any], state: Callable[[], dict[str, Any]], save: bool) -> None:
    """``tune.report(result)``, with the checkpoint ``state()`` when ``save``."""
    if not save:
        tune.report(result)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(state(), Path(tmp) / CHECKPOINT_FILE)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


def pack_summary(rows: list[dict[str, Any]]) -> str:
    """One status for Tune's bookkeeping: running while any member is, diverged if all did."""
    statuses = {r["status"] for r in rows}
    return DIVERGED if statuses == {DIVERGED} else (RUNNING if RUNNING in statuses else FINISHED)


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: ``config`` is the param space made by ``lrbs.sweeps.spec``.

    One ``tune.report`` per epoch carries ``pack_rows`` (member -> row, for the members still training; the
    driver's metric sink writes each under the member's own trial id) and, for Tune's own
    bookkeeping, the best val_acc and a summary status. A restarted trial continues from
    ``tune.get_checkpoint()``."""
    resources = config.get("resources", {})
    torch.set_num_threads(max(1, int(resources.get("cpu", 1))))
    resilience = config.get("resilience", {})
    clock = CheckpointClock(resilience.get("checkpoint_every"), resilience.get("checkpoint_every_s"))

    def report(rows: list[dict[str, Any]], state: Callable[[], dict[str, Any]]) -> None:
        epoch = rows[0]["epoch"]
        maybe_fail(config, epoch)  # test hook: resilience.fail_at_epoch (trainables/faults.py)
        accs = [r["val_acc"] for r in rows if math.isfinite(r["val_acc"])]
        summary = pack_summary(rows)
        # pack_rows keyed by member: Tune's loggers flatten it to per-member scalars
        # (pack_rows/<j>/train_loss in TensorBoard) instead of refusing a list.
        result = {
            "pack_rows": {str(r["member"]): r for r in rows},
            "epoch": epoch,
            "val_acc": max(accs) if accs else float("nan"),
            "status": summary,
        }
        tune_report(result, state, clock.due(epoch, summary))

    run_pack(
        points=[TrialPoint.from_dict(p) for p in from_config(config["point"])],
        dataset=from_dict(DatasetConfig, config["dataset"]),
        model_cfg=from_dict(ModelConfig, config["model"]),
        train=from_dict(TrainConfig, config["train"]),
        report=report,
        device=pick_device(float(resources.get("gpu", 0))),
        schedule=schedule_from_dict(config.get("schedule")),
        probes=from_dict(CurvatureConfig, config["curvature"]) if config.get("curvature") else None,
        start_state=tune_start_state(config),
    )
