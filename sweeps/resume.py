"""``lrbs resume RUN_DIR``: continue a sweep whose driver died, or whose trials errored.

The Tuner is rebuilt from lrbs's own files: the spec copy ``RUN_DIR/spec.yaml`` (``yaml.safe_load``
and the same validation as ``lrbs run``) gives the trainable, its resources, the failure and
checkpoint settings and fresh callbacks. Ray Tune's ``Tuner.restore`` then reloads which trials
exist and where their checkpoints are from Ray's experiment state in the run directory.

Ray's experiment state (``tuner.pkl``, parts of ``experiment_state-*.json`` and the search state)
is cloudpickle, and Ray unpickles it on restore. lrbs therefore only resumes a run directory that
the current user owns and that nobody else can write to (``check_trusted``); ``lrbs status``
never restores anything (JSON, Arrow and YAML only).
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TextIO

from sweeps.errors import LrbsError
from sweeps.runner import (METRIC_DIR, SPEC_COPY, init_ray, plugin_runtime_env, print_outcome, resilience_settings,
                           restore_plugin_folders, trial_resources)

TUNER_STATE = "tuner.pkl"
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"


def check_run_dir(run_dir: str | Path) -> Path:
    """The resolved run directory, or LrbsError if it is not one that ``lrbs run`` made."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not a directory")
    missing = [name for name in (SPEC_COPY, METRIC_DIR, TUNER_STATE) if not (run_dir / name).exists()]
    if missing or not any(run_dir.glob(EXPERIMENT_STATE_GLOB)):
        what = ", ".join(missing) or EXPERIMENT_STATE_GLOB
        raise LrbsError(f"RUN_DIR: {run_dir} is not a resumable lrbs run directory (missing {what})")
    return run_dir


def check_trusted(run_dir: Path) -> None:
    """Refuse Ray state files (which Ray unpickles) that another user owns or could have written."""
    uid = os.getuid()
    paths = [run_dir, run_dir / TUNER_STATE, *run_dir.glob("*.json"), *run_dir.glob("*.pkl")]
    for path in paths:
        info = path.stat()
        if info.st_uid != uid:
            raise LrbsError(f"RUN_DIR: {path} belongs to another user; refusing to restore it "
                            f"(Ray unpickles its experiment state)")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LrbsError(f"RUN_DIR: {path} is writable by other users; refusing to restore it "
                            f"(Ray unpickles its experiment state; chmod go-w it if you trust it)")


def resume_sweep(run_dir: str | Path, restart_errored: bool = False, address: str | None = None,
                 out: TextIO | None = None, outcome: dict | None = None) -> Path:
    """Finish the sweep in ``run_dir``. Finished trials are left alone; unfinished ones continue
    from their last checkpoint; errored ones too, or from scratch with ``restart_errored``."""
    out = out or sys.stdout
    from ray import tune

    from sweeps.metrics_sink import ArrowMetricsSink
    from sweeps.progress import ProgressPrinter
    from sweeps.packing import plan_packs
    from sweeps.spec import expand_points, load_spec
    from trainables.train_loop import train_trial

    run_dir = check_run_dir(run_dir)
    check_trusted(run_dir)
    restore_plugin_folders(run_dir)  # user modules: found where `lrbs run` found them
    spec = load_spec(run_dir / SPEC_COPY)
    if spec.name != run_dir.name:
        raise LrbsError(f"RUN_DIR: {run_dir / SPEC_COPY} names sweep {spec.name!r}, not {run_dir.name!r}")
    init_ray(address, plugin_runtime_env(spec))
    n_trials, n_packs = len(expand_points(spec)), len(plan_packs(spec))
    mode = "restarting errored trials from scratch" if restart_errored else "errored trials from checkpoints"
    print(f"[lrbs] resume {spec.name}: {n_trials} trials in {n_packs} packs ({mode}) -> {run_dir}", file=out, flush=True)
    tuner = tune.Tuner.restore(
        str(run_dir),
        trainable=tune.with_resources(train_trial, trial_resources(spec)),
        resume_unfinished=True,
        resume_errored=not restart_errored,
        restart_errored=restart_errored,
    )
    # The restored RunConfig (callbacks included) was unpickled from tuner.pkl: replace what lrbs
    # owns with fresh objects built from the spec, so a moved run directory writes to where it is
    # now and the sink starts a new session (new files; it never reopens the old session's).
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks = [ArrowMetricsSink(run_dir / METRIC_DIR), ProgressPrinter(n_trials)]
    for key, value in resilience_settings(spec).items():
        setattr(run_config, key, value)
    results = tuner.fit()
    print_outcome(results, spec.name, str(run_dir / METRIC_DIR), out, outcome)
    return run_dir
