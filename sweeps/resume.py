"""``lrbs resume RUN_DIR``: continue a sweep whose driver died, or whose trials errored.

The experiment is rebuilt from what lrbs wrote as data, never from Ray's experiment state
(``tuner.pkl`` and the search state are cloudpickle, which runs code when loaded; a truncated
``experiment_state-*.json`` made Ray start a bogus fresh experiment):

- ``RUN_DIR/spec.yaml`` (``yaml.safe_load`` and the validation of ``lrbs run``): the points, the
  trainable, its resources, the failure and checkpoint settings;
- the metric tables: which points wrote their last row (finished or diverged);
- ``RUN_DIR/trials/*.json`` (``sweeps.ledger``): which Tune trial trained which points, where its
  checkpoints are, and whether it ended in ERROR. A run directory without them (written before
  they existed) or with a damaged one is rebuilt from the trial folders' ``params.json``;
- checkpoints, loaded with ``torch.load(weights_only=True)`` (tensors and plain data only),
  newest first, falling back to the one before when one does not load.

Each unfinished trial runs again as a new Tune trial in a new Ray experiment
``RUN_DIR/resume-<session>/``, keeping its trial id (so its rows continue the same series) and
continuing from its newest checkpoint that loads; points never started get new trials. With
``--restart-errored`` the trials that ended in ERROR start from scratch under new ids and their old
rows are superseded. The run directory is locked (``sweeps.lock``) for the whole resume.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from sweeps.errors import LrbsError, SweepStopped
from sweeps.raylog import RayOutput
from sweeps.runner import (METRIC_DIR, SPEC_COPY, fit, init_ray, plugin_runtime_env, print_outcome,
                           resilience_settings, restore_plugin_folders, trial_resources,
                           wait_for_resources)


def check_run_dir(run_dir: str | Path) -> Path:
    """The resolved run directory, or LrbsError if it is not one that ``lrbs run`` made."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not a directory")
    missing = [name for name in (SPEC_COPY, METRIC_DIR) if not (run_dir / name).exists()]
    if missing:
        raise LrbsError(f"RUN_DIR: {run_dir} is not a resumable lrbs run directory (missing {', '.join(missing)})")
    return run_dir


def _recency(record) -> tuple:
    """Newer attempts first: by the record's time, then (rebuilt records) by their newest session."""
    sessions = [d.split("/")[0] for d in record.logdirs if d.startswith("resume-")]
    return record.updated_at, max(sessions, default="")


def plan_resume(spec, run_dir: Path, restart_errored: bool) -> tuple[list[list[dict]], dict[str, dict], dict, dict]:
    """What is left to train: the packs (each a list of points), the ``resume`` map for the
    param space (point key -> trial id and checkpoints), counts for the first line and the
    trial records (for the ledger to go on with)."""
    from sweeps.ledger import (ERROR, TERMINATED, last_rows, ledger_from_trial_dirs, member_points, points_done,
                               read_ledger, resumable_epoch)
    from sweeps.packing import plan_packs
    from sweeps.spec import expand_points
    from trainables.config import point_key

    points = expand_points(spec)
    by_key = {point_key(p): p for p in points}
    records, damaged = read_ledger(run_dir)
    rebuilt = ledger_from_trial_dirs(run_dir)
    for trial_id, record in rebuilt.items():  # old layout, or records that did not read
        records.setdefault(trial_id, record)
    if damaged:
        print(f"[lrbs] {len(damaged)} damaged trial record(s) in {run_dir / 'trials'} "
              f"({', '.join(sorted(damaged)[:3])}): rebuilt from the trial folders and the metric rows",
              file=sys.stderr)
    rows = last_rows(run_dir)
    done = points_done(run_dir, rows)
    started: set[str] = set()
    packs: list[list[dict]] = []
    resume: dict[str, dict[str, Any]] = {}
    counts = {"done": 0, "continued": 0, "restarted": 0, "new": 0}
    for record in sorted(records.values(), key=_recency, reverse=True):
        keys = [point_key(p) for p in member_points(record.point)]
        unknown = [k for k in keys if k not in by_key]
        if unknown:
            raise LrbsError(f"RUN_DIR: trial {record.trial_id} ({run_dir / 'trials'}) trains a point that "
                            f"{run_dir / SPEC_COPY} does not have; refusing to resume a mixed-up run directory")
        if started.intersection(keys):
            continue  # an older attempt of points a later record already covers
        started.update(keys)
        if record.status == TERMINATED or all(k in done for k in keys):
            counts["done"] += len(keys)
            continue
        packs.append([by_key[k] for k in keys])
        if record.status == ERROR and restart_errored:
            counts["restarted"] += len(keys)
            continue
        resume[point_key(record.point)] = {"trial_id": record.trial_id,
                                           "checkpoints": [str(p) for p in record.checkpoints(run_dir)],
                                           "max_epoch": resumable_epoch(record, rows)}
        counts["continued"] += len(keys)
    fresh = [p for k, p in by_key.items() if k not in started and k not in done]
    counts["done"] += sum(k in done and k not in started for k in by_key)
    counts["new"] = len(fresh)
    if fresh:
        packs += plan_packs(spec, fresh)
    return packs, resume, counts, records


def resume_sweep(run_dir: str | Path, restart_errored: bool = False, address: str | None = None,
                 out: TextIO | None = None, outcome: dict | None = None) -> Path:
    """Finish the sweep in ``run_dir``. Finished trials are left alone; unfinished ones continue
    from their last checkpoint that loads; errored ones too, or from scratch with ``restart_errored``."""
    out = out or sys.stdout
    from ray import tune

    from sweeps.lock import RunLock
    from sweeps.metrics_sink import ArrowMetricsSink, TrialLedger, session_tag
    from sweeps.progress import ProgressPrinter
    from sweeps.spec import load_spec, to_param_space
    from sweeps.version import code_version
    from trainables.train_loop import train_trial

    run_dir = check_run_dir(run_dir)
    with RunLock(run_dir, "lrbs resume"):  # before Ray starts: a second driver or a read-only folder is one line
        restore_plugin_folders(run_dir)  # user modules: found where `lrbs run` found them
        spec = load_spec(run_dir / SPEC_COPY)
        if spec.name != run_dir.name:
            raise LrbsError(f"RUN_DIR: {run_dir / SPEC_COPY} names sweep {spec.name!r}, not {run_dir.name!r}")
        packs, resume, counts, records = plan_resume(spec, run_dir, restart_errored)
        n_left = counts["continued"] + counts["restarted"] + counts["new"]
        print(f"[lrbs] resume {spec.name}: {counts['done']} trials done; {counts['continued']} continue from "
              f"checkpoints, {counts['restarted']} restart from scratch, {counts['new']} never started "
              f"({len(packs)} packs) -> {run_dir}", file=out, flush=True)
        if n_left:
            if address is None:
                wait_for_resources(spec, embedded=True, out=out, ray_started=False)
            raylog = RayOutput().start()
            tag = f"resume-{session_tag()}"  # this session's Ray experiment, inside RUN_DIR
            plan = run_dir / tag / "lrbs-resume-plan.json"  # the trials read their entry from it
            try:
                plan.parent.mkdir()
                plan.write_text(json.dumps(resume, indent=1))
            except OSError as exc:
                raise SweepStopped(f"RUN_DIR: cannot write {plan} ({exc.strerror or exc})") from None
            try:
                init_ray(address, plugin_runtime_env(spec))
                wait_for_resources(spec, embedded=address is None, out=out)
                print(f"[lrbs] Ray's log: {raylog.to_file(run_dir)}", file=out, flush=True)
                tuner = tune.Tuner(
                    tune.with_resources(train_trial, trial_resources(spec)),
                    param_space=to_param_space(spec, code_version(), packs=packs, resume=str(plan)),
                    tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
                    run_config=tune.RunConfig(
                        name=tag,
                        storage_path=str(run_dir),
                        callbacks=[ArrowMetricsSink(run_dir / METRIC_DIR), TrialLedger(run_dir, records),
                                   ProgressPrinter(n_left, n_left * spec.train.epochs,
                                                   unit="GPU" if spec.resources.gpu > 0 else "CPU", out=out)],
                        **resilience_settings(spec),
                        verbose=0,
                    ),
                )
                fit(tuner, run_dir, raylog)
            finally:
                raylog.stop()
        print_outcome(spec, run_dir, str(run_dir / METRIC_DIR), out, outcome)
    return run_dir
