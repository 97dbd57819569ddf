"""``lrbs resume RUN_DIR``: continue a sweep whose driver died, or whose trials errored.

The experiment is rebuilt from what lrbs wrote as data, never from Ray's experiment state
(``tuner.pkl`` and the search state are cloudpickle, which runs code when loaded; a truncated
``experiment_state-*.json`` made Ray start a bogus fresh experiment):

- ``RUN_DIR/spec.yaml`` (``yaml.safe_load`` and the validation of ``lrbs run``): the points, the
  trainable, its resources, the failure and checkpoint settings;
- the metric tables: which points wrote their last row (finished or diverged);
- ``RUN_DIR/trials/*.json`` (``lrbs.rundir.records``): which Tune trial trained which points, where its
  checkpoints are, and whether it ended in ERROR. A run directory without them (written before
  they existed) or with a damaged one is rebuilt from the trial folders' ``params.json``;
- checkpoints, loaded with ``torch.load(weights_only=True)`` (tensors and plain data only),
  newest first, falling back to the one before when one does not load.

Each unfinished trial runs again as a new Tune trial in a new Ray experiment
``RUN_DIR/resume-<session>/``, keeping its trial id (so its rows continue the same series) and
continuing from its newest checkpoint that loads; points never started get new trials. With
``--restart-errored`` the trials that ended in ERROR start from scratch under new ids and their old
rows are superseded. The run directory is locked (``lrbs.sweeps.lock``) for the whole resume.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from lrbs.rundir.layout import LEDGER_DIR, METRIC_DIR, SPEC_COPY, TRACKER_DIRS
from lrbs.rundir.points import from_config
from lrbs.rundir.safe_write import UnsafePathError, check_inside, write_file_safely
from lrbs.sweeps.errors import LrbsError, SweepStopped
from lrbs.sweeps.raylog import RayOutput
from lrbs.sweeps.runner import (
    fit,
    init_ray,
    plugin_runtime_env,
    print_outcome,
    resilience_settings,
    restore_plugin_folders,
    trial_resources,
    tune_settings,
    wait_for_resources,
)
from lrbs.sweeps.spec import is_search


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


def plan_resume(
    spec, run_dir: Path, restart_errored: bool, checkpoints=None
) -> tuple[list[list[dict]], dict[str, dict], dict, dict]:
    """What is left to train: the packs (each a list of points), the ``resume`` map for the
    param space (point key -> trial id and checkpoints), counts for the first line and the
    trial records (for the ledger to go on with). ``checkpoints(record)``: its checkpoint
    folders, newest first (default: local folders under ``run_dir``; URIs for a remote run)."""
    from lrbs.rundir.points import point_key
    from lrbs.rundir.records import (
        ERROR,
        TERMINATED,
        last_rows,
        ledger_from_trial_dirs,
        points_done,
        read_ledger,
        resumable_epoch,
    )
    from lrbs.sweeps.packing import plan_packs
    from lrbs.sweeps.spec import expand_points

    records, damaged = read_ledger(run_dir)
    rebuilt = ledger_from_trial_dirs(run_dir)
    for trial_id, record in rebuilt.items():  # old layout, or records that did not read
        records.setdefault(trial_id, record)
    # A beta search's points are those it launched (the records); the search proposes the rest.
    points = [p for r in records.values() for p in from_config(r.point)] if is_search(spec) else expand_points(spec)
    by_key = {point_key(p): p for p in points}
    if damaged:
        print(
            f"[lrbs] {len(damaged)} damaged trial record(s) in {run_dir / 'trials'} "
            f"({', '.join(sorted(damaged)[:3])}): rebuilt from the trial folders and the metric rows",
            file=sys.stderr,
        )
    rows = last_rows(run_dir)
    done = points_done(run_dir, rows)
    started: set[str] = set()
    packs: list[list[dict]] = []
    resume: dict[str, dict[str, Any]] = {}
    counts = {"done": 0, "continued": 0, "restarted": 0, "new": 0}
    for record in sorted(records.values(), key=_recency, reverse=True):
        keys = [point_key(p) for p in from_config(record.point)]
        unknown = [k for k in keys if k not in by_key]
        if unknown:
            raise LrbsError(
                f"RUN_DIR: trial {record.trial_id} ({run_dir / 'trials'}) trains a point that "
                f"{run_dir / SPEC_COPY} does not have; refusing to resume a mixed-up run directory"
            )
        if started.intersection(keys):
            continue  # an older attempt of points a later record already covers
        started.update(keys)
        if record.status == TERMINATED or all(k in done for k in keys):
            counts["done"] += len(keys)
            continue
        if is_search(spec) and record.status == ERROR and not restart_errored:
            # The search has replaced its seeds already (an errored trial is an ended one without
            # a value: sweeps/beta_searcher.py); continuing it would train the point twice.
            counts["done"] += len(keys)
            continue
        packs.append([by_key[k] for k in keys])
        if record.status == ERROR and restart_errored:
            counts["restarted"] += len(keys)
            continue
        resume[point_key(record.point)] = {
            "trial_id": record.trial_id,
            "checkpoints": (checkpoints(record) if checkpoints else [str(p) for p in record.checkpoints(run_dir)]),
            "max_epoch": resumable_epoch(record, rows),
        }
        counts["continued"] += len(keys)
    fresh = [p for k, p in by_key.items() if k not in started and k not in done]
    counts["done"] += sum(k in done and k not in started for k in by_key)
    counts["new"] = len(fresh)
    if fresh:
        packs += plan_packs(spec, fresh)
    return packs, resume, counts, records


def resume_sweep(
    run_dir: str | Path,
    restart_errored: bool = False,
    address: str | None = None,
    out: TextIO | None = None,
    outcome: dict | None = None,
    upload_interval_s: float | None = None,
    track: list[str] | None = None,
    trust_code: bool = False,
) -> Path:
    """Finish the sweep in ``run_dir``. Finished trials are left alone; unfinished ones continue
    from their last checkpoint that loads; errored ones too, or from scratch with ``restart_errored``.
    A spec naming user code (``package.module:factory``) is refused unless ``trust_code``
    (``lrbs.sweeps.trust``): a copied run directory may name someone else's code.

    ``run_dir`` may be a URI (``s3://``, ``gs://``; ``lrbs.sweeps.remote``): its data files are mirrored
    into a local staging directory (returned), the new rows and records are uploaded as the run
    goes (every ``upload_interval_s`` seconds and at each trial's end), and Tune writes the new
    checkpoints beside the old ones in the store."""
    out = out or sys.stdout
    from lrbs.sweeps.lock import RemoteRunLock, RunLock
    from lrbs.sweeps.metrics_sink import session_tag
    from lrbs.sweeps.remote import mirror, open_run
    from lrbs.sweeps.storage import cache_dir, resolve_storage

    if track:
        from lrbs.sweeps.tracking import with_tracks

        with_tracks(None, track)  # an unknown name: one line before anything is read
    remote = open_run(run_dir, need=(SPEC_COPY, METRIC_DIR))  # one line if unreachable or not a run
    if remote is None:
        local = check_run_dir(resolve_storage(run_dir).path)  # a path, or a file:// URI
    else:  # reading only: nothing is written to the store before the spec and trackers check out
        local = mirror(remote, cache_dir() / "staging" / f"{remote.name}-{session_tag()}")
    _check_write_folders(local)
    spec, trackers = _checked_spec(local, remote, track, trust_code)
    lock = RunLock(local, "lrbs resume") if remote is None else RemoteRunLock(remote, "lrbs resume")
    with lock:  # before Ray starts: a second driver or a read-only folder is one line
        if remote is not None:
            mirror(remote, local)  # again, under the lock: the store as the last driver left it
        _resume_locked(spec, trackers, local, remote, restart_errored, address, out, outcome, upload_interval_s)
    return local


# Folders a resume writes into (metric rows, trial records, the trackers' default folders)
RESUME_WRITES = (METRIC_DIR, LEDGER_DIR, *TRACKER_DIRS)


def _check_write_folders(local: Path) -> None:
    """One line (exit 2) before anything is written or imported if a folder a resume writes into
    is a link out of the run directory (``lrbs.rundir.safe_write``)."""
    try:
        for name in RESUME_WRITES:
            check_inside(local, local / name / "_")
        # TensorBoard and MLflow's file store write (MLflow appends) into existing folders and
        # files below theirs: every link down there must stay inside the run directory too. W&B
        # writes each session into a new offline folder, and links its own logs out of the run
        # (debug-core.log -> ~/.cache/wandb): its folder is checked at the top only.
        for name in ("tensorboard", "mlruns"):
            for folder, subdirs, files in os.walk(local / name):
                for entry in subdirs + files:
                    check_inside(local, Path(folder) / entry / "_")
    except UnsafePathError as exc:
        raise LrbsError(str(exc)) from None


def _checked_spec(local: Path, remote, track: list[str] | None, trust_code: bool = False):
    """The run's spec (with ``--track``'s trackers for this session) and its trackers, checked
    against the run directory's name; one line (exit 2) otherwise, before anything is written."""
    from lrbs.sweeps.spec import load_spec
    from lrbs.sweeps.tracking import build_trackers, with_tracks
    from lrbs.sweeps.trust import require_trust, spec_code_names

    # Before any user module is looked for (load_spec builds the model): refused unless trusted
    where = f"{remote.where if remote is not None else local}/{SPEC_COPY}"
    require_trust(spec_code_names(local / SPEC_COPY), where, "resume", trust_code)
    restore_plugin_folders(local)  # user modules: found where `lrbs run` found them
    spec = with_tracks(
        load_spec(local / SPEC_COPY, probe_check=False), track
    )  # the spec's trackers, and --track's for this session
    name = remote.name if remote is not None else local.name
    if spec.name != name:
        where = remote.where if remote is not None else str(local)
        raise LrbsError(f"RUN_DIR: {where}/{SPEC_COPY} names sweep {spec.name!r}, not {name!r}")
    if remote is not None:
        from lrbs.sweeps.remote import fetched_dir

        tracking_root = fetched_dir(remote, "local")  # the same folder in every session: resume re-attaches
    else:
        tracking_root = local
    return spec, build_trackers(spec.tracking, spec.name, tracking_root)


def _resume_locked(
    spec,
    trackers: list,
    local: Path,
    remote,
    restart_errored: bool,
    address: str | None,
    out: TextIO,
    outcome: dict | None,
    upload_interval_s: float | None,
) -> None:
    from ray import tune

    from lrbs.rundir.records import resume_plan
    from lrbs.sweeps.compaction import compact_earlier_sessions
    from lrbs.sweeps.metrics_sink import ArrowMetricsSink, MetricsUploader, TrackingCallback, TrialLedger, session_tag
    from lrbs.sweeps.progress import ProgressPrinter
    from lrbs.sweeps.spec import to_param_space
    from lrbs.sweeps.storage import DEFAULT_UPLOAD_INTERVAL_S
    from lrbs.sweeps.version import code_version
    from lrbs.trainables.train_loop import train_trial

    where = remote.where if remote is not None else str(local)
    checkpoints = None
    if remote is not None:
        from lrbs.sweeps.remote import remote_checkpoints

        checkpoints = functools.partial(remote_checkpoints, remote)
    packs, resume, counts, records = plan_resume(spec, local, restart_errored, checkpoints)
    n_left = counts["continued"] + counts["restarted"] + counts["new"]
    searcher: dict = {}
    if is_search(spec):  # the search goes on from the trials that ended (none is repeated)
        from lrbs.rundir.tables import load_trials
        from lrbs.sweeps.beta_searcher import search_resumption

        searcher = search_resumption(spec, load_trials(local), packs, records, restart_errored)
        n_left = max(n_left, searcher.pop("n_left"))
    compacted: list = []
    if n_left or remote is None:  # (a remote run's compacted files reach the store with this session's uploads)
        # Under the lock no earlier driver is alive: the streams a killed one left are compacted
        # now (it never got to its own end-of-session compaction).
        compacted = compact_earlier_sessions(local / METRIC_DIR)
    print(
        f"[lrbs] resume {spec.name}: {counts['done']} trials done; {counts['continued']} continue from "
        f"checkpoints, {counts['restarted']} restart from scratch, {counts['new']} never started "
        f"({len(packs)} packs) -> {where}",
        file=out,
        flush=True,
    )
    if n_left:
        if address is None:
            wait_for_resources(spec, embedded=True, out=out, ray_started=False)
        raylog = RayOutput().start()
        tag = f"resume-{session_tag()}"  # this session's Ray experiment, inside RUN_DIR
        plan = local / tag / "lrbs-resume-plan.json"  # the trials read their entry from it
        sink = ArrowMetricsSink(local / METRIC_DIR)
        callbacks = [
            sink,
            TrialLedger(local, records, trial_root=remote.path() if remote is not None else None),
            TrackingCallback(trackers),
        ]
        storage: dict = {"storage_path": str(local)}
        plan_ref = str(plan)
        if remote is not None:
            plan_ref = remote.uri_of(remote.path(tag, plan.name))  # trials on any node read it there
            uploader = MetricsUploader(
                local / METRIC_DIR,
                remote.target.fs,
                remote.path(METRIC_DIR),
                DEFAULT_UPLOAD_INTERVAL_S if upload_interval_s is None else upload_interval_s,
                also=[(local / LEDGER_DIR, remote.path(LEDGER_DIR), "*.json")],
            )
            uploader.mark_sent()  # the mirrored files are the remote's already (not the ones compacted here)
            for path in compacted:
                uploader.sent.pop(path.name, None)
            callbacks.append(uploader)
            storage = {"storage_path": remote.target.path, "storage_filesystem": remote.target.fs}
        callbacks.append(
            ProgressPrinter(
                n_left,
                n_left * spec.train.epochs,
                unit="GPU" if spec.resources.gpu > 0 else "CPU",
                out=out,
                at_most=is_search(spec),
            )
        )
        try:
            init_ray(address, plugin_runtime_env(spec))
            wait_for_resources(spec, embedded=address is None, out=out)
            # The plan, once Ray is up (a bad --address leaves no session folder behind).
            try:
                plan.parent.mkdir()
                write_file_safely(plan, json.dumps(resume, indent=1), root=local)
            except OSError as exc:
                raise SweepStopped(f"RUN_DIR: cannot write {plan} ({exc.strerror or exc})") from None
            if remote is not None:
                remote.put(plan, tag, plan.name)
                why = "it reads back different"
                try:  # read back as the trials will (and cached for the driver's callbacks)
                    readable = resume_plan(plan_ref) == resume
                except (OSError, ValueError) as exc:
                    readable, why = False, (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                if not readable:
                    raise LrbsError(f"RUN_DIR: the trials could not read the resume plan {plan_ref} ({why})")
            print(f"[lrbs] Ray's log: {raylog.to_file(local)}", file=out, flush=True)
            tuner = tune.Tuner(
                tune.with_resources(train_trial, trial_resources(spec)),
                param_space=to_param_space(spec, code_version(), packs=packs, resume=plan_ref),
                tune_config=tune.TuneConfig(**tune_settings(spec, out, **searcher)),
                run_config=tune.RunConfig(
                    name=tag, callbacks=callbacks, **storage, **resilience_settings(spec), verbose=0
                ),
            )
            fitted = False
            try:
                fit(tuner, local, raylog)
                fitted = True
            finally:  # also when the sweep stopped: what was written reaches the store (or stays staged)
                if remote is not None:
                    uploader.upload(strict=fitted)
        finally:
            raylog.stop()
    print_outcome(spec, local, f"{where}/{METRIC_DIR}", out, outcome)
