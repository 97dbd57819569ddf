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
rows are superseded. The run directory is locked (``lrbs.sweeps.lock``) for the whole resume; the
Tune run is built by the same driver as ``lrbs run``'s (``lrbs.sweeps.runner.Driver``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from lrbs.rundir.layout import (
    LEDGER_DIR,
    METRIC_DIR,
    PROVENANCE_FILE,
    RESUME_PLAN,
    SESSION_GLOB,
    SPEC_COPY,
    TRACKER_DIRS,
)
from lrbs.rundir.location import RunDir, first_line
from lrbs.rundir.points import from_config, point_key
from lrbs.rundir.records import (
    ERROR,
    TERMINATED,
    TrialRecord,
    last_rows,
    ledger_from_trial_dirs,
    points_done,
    read_ledger,
    resumable_epoch,
    resume_plan,
)
from lrbs.rundir.safe_write import UnsafePathError, check_inside, write_file_safely
from lrbs.rundir.tables import load_trials
from lrbs.sweeps.beta_searcher import search_resumption
from lrbs.sweeps.compaction import compact_earlier_sessions
from lrbs.sweeps.errors import LrbsError, SweepStopped
from lrbs.sweeps.estimate import planned_packs
from lrbs.sweeps.grid import expand_points, is_search
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.runner import Driver, GridPoints, PointSource
from lrbs.sweeps.spec import SweepSpec
from lrbs.sweeps.storage import (
    mirror,
    open_run,
    remote_checkpoints,
    resolve_storage,
    session_tag,
    staging_dir,
    tracking_root,
)
from lrbs.sweeps.tracking import build_trackers, with_tracks
from lrbs.sweeps.trust import require_trust, restore_plugin_folders, spec_code_names

# Folders a resume writes into (metric rows, trial records, the trackers' default folders)
RESUME_WRITES = (METRIC_DIR, LEDGER_DIR, *TRACKER_DIRS)


def check_run_dir(run_dir: str | Path) -> Path:
    """The resolved run directory, or LrbsError if it is not one that ``lrbs run`` made."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise LrbsError(f"RUN_DIR: {run_dir} is not a directory")
    missing = [name for name in (SPEC_COPY, METRIC_DIR) if not (run_dir / name).exists()]
    if missing:
        raise LrbsError(f"RUN_DIR: {run_dir} is not a resumable lrbs run directory (missing {', '.join(missing)})")
    return run_dir


def _recency(record: TrialRecord) -> tuple[float, str]:
    """Newer attempts first: by the record's time, then (rebuilt records) by their newest session."""
    sessions = fnmatch.filter([d.split("/")[0] for d in record.logdirs], SESSION_GLOB)
    return record.updated_at, max(sessions, default="")


def plan_resume(
    spec: SweepSpec,
    run_dir: Path,
    restart_errored: bool,
    checkpoints: Callable[[TrialRecord], list[str]] | None = None,
) -> tuple[list[list[dict[str, Any]]], dict[str, dict[str, Any]], dict[str, int], dict[str, TrialRecord]]:
    """What is left to train: the packs (each a list of points), the ``resume`` map for the
    param space (point key -> trial id and checkpoints), counts for the first line and the
    trial records (for the ledger to go on with). ``checkpoints(record)``: its checkpoint
    folders, newest first (default: local folders under ``run_dir``; URIs for a run in a store)."""
    records, damaged = read_ledger(run_dir)
    rebuilt = ledger_from_trial_dirs(run_dir)
    for trial_id, record in rebuilt.items():  # old layout, or records that did not read
        records.setdefault(trial_id, record)
    # A beta search's points are those it launched (the records); the search proposes the rest.
    points = [p for r in records.values() for p in from_config(r.point)] if is_search(spec) else expand_points(spec)
    by_key = {point_key(p): p for p in points}
    if damaged:
        print(
            f"[lrbs] {len(damaged)} damaged trial record(s) in {run_dir / LEDGER_DIR} "
            f"({', '.join(sorted(damaged)[:3])}): rebuilt from the trial folders and the metric rows",
            file=sys.stderr,
        )
    rows = last_rows(run_dir)
    done = points_done(run_dir, rows)
    started: set[str] = set()
    packs: list[list[dict[str, Any]]] = []
    resume: dict[str, dict[str, Any]] = {}
    counts = {"done": 0, "continued": 0, "restarted": 0, "new": 0}
    for record in sorted(records.values(), key=_recency, reverse=True):
        keys = [point_key(p) for p in from_config(record.point)]
        unknown = [k for k in keys if k not in by_key]
        if unknown:
            raise LrbsError(
                f"RUN_DIR: trial {record.trial_id} ({run_dir / LEDGER_DIR}) trains a point that "
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
        packs += planned_packs(spec, stored_calibration(run_dir), fresh)
    return packs, resume, counts, records


def stored_calibration(run_dir: Path) -> dict[str, Any] | None:
    """The step costs the run's pre-flight measured (``provenance.json``), which size the packs of
    points that never started as ``lrbs run`` sized the others; None when the run had none (GPU
    or cluster trials, or a run directory from before they were kept)."""
    try:
        costs = json.loads((run_dir / PROVENANCE_FILE).read_text())["estimate"]["costs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return costs if isinstance(costs, dict) and "step_s" in costs else None


def resume_sweep(
    run_dir: str | Path,
    restart_errored: bool = False,
    address: str | None = None,
    out: TextIO | None = None,
    outcome: dict[str, int] | None = None,
    upload_interval_s: float | None = None,
    track: list[str] | None = None,
    trust_code: bool = False,
) -> Path:
    """Finish the sweep in ``run_dir``. Finished trials are left alone; unfinished ones continue
    from their last checkpoint that loads; errored ones too, or from scratch with ``restart_errored``.
    A spec naming user code (``package.module:factory``) is refused unless ``trust_code``
    (``lrbs.sweeps.trust``): a copied run directory may name someone else's code.

    ``run_dir`` may be a URI (``s3://``, ``gs://``; ``lrbs.sweeps.storage``): its data files are
    mirrored into a local staging directory (returned), the new rows and records are uploaded as
    the run goes (every ``upload_interval_s`` seconds and at each trial's end), and Tune writes the
    new checkpoints beside the old ones in the store."""
    out = out or sys.stdout
    if track:
        with_tracks(None, track)  # an unknown name: one line before anything is read
    run = open_run(run_dir, need=(SPEC_COPY, METRIC_DIR)) or resolve_storage(run_dir)  # one line if not a run
    # reading only: nothing is written to a store before the spec and trackers check out
    local = check_run_dir(run.local) if run.is_local else mirror(run, staging_dir(run))
    _check_write_folders(local)
    spec, trackers = _checked_spec(run, local, track, trust_code)
    with Driver(spec, run, address, out, upload_interval_s, local) as driver:
        driver.lock("lrbs resume")  # before Ray starts: a second driver or a read-only folder is one line
        driver.mirror()  # again, under the lock: the store as the last driver left it
        _resume_locked(driver, trackers, restart_errored, outcome)
    return local


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


def _checked_spec(run: RunDir, local: Path, track: list[str] | None, trust_code: bool) -> tuple[SweepSpec, list[Any]]:
    """The run's spec (with ``--track``'s trackers for this session) and its trackers, checked
    against the run directory's name; one line (exit 2) otherwise, before anything is written."""
    # Before any user module is looked for (the pre-flight builds the model): refused unless trusted
    require_trust(spec_code_names(local / SPEC_COPY), f"{run.where}/{SPEC_COPY}", "resume", trust_code)
    restore_plugin_folders(local)  # user modules: found where `lrbs run` found them
    # the spec's trackers, and --track's for this session
    spec = with_tracks(preflight(local / SPEC_COPY, probe_check=False).spec, track)
    if spec.name != run.name:
        raise LrbsError(f"RUN_DIR: {run.where}/{SPEC_COPY} names sweep {spec.name!r}, not {run.name!r}")
    # (in a store: the trackers' folder is the same in every session, so a resume re-attaches)
    return spec, build_trackers(spec.tracking, spec.name, tracking_root(run))


def _resume_locked(driver: Driver, trackers: list[Any], restart_errored: bool, outcome: dict[str, int] | None) -> None:
    spec, run, local = driver.spec, driver.run, driver.local
    checkpoints = None if run.is_local else lambda record: remote_checkpoints(run, record)
    packs, resume, counts, records = plan_resume(spec, local, restart_errored, checkpoints)
    # A search goes on from the trials that ended (none is repeated)
    source: PointSource = (
        search_resumption(spec, load_trials(local), packs, records, restart_errored)
        if is_search(spec)
        else GridPoints(packs)
    )
    if source.total or run.is_local:  # (a store's compacted files reach it with this session's uploads)
        # Under the lock no earlier driver is alive: the streams a killed one left are compacted
        # now (it never got to its own end-of-session compaction).
        compact_earlier_sessions(local / METRIC_DIR)
    print(
        f"[lrbs] resume {spec.name}: {counts['done']} trials done; {counts['continued']} continue from "
        f"checkpoints, {counts['restarted']} restart from scratch, {counts['new']} never started "
        f"({len(packs)} packs) -> {run.where}",
        file=driver.out,
        flush=True,
    )
    if source.total:
        driver.start_ray()
        tag = SESSION_GLOB.replace("*", session_tag())  # this session's Ray experiment, inside RUN_DIR
        plan = _write_plan(run, local, tag, resume)  # once Ray is up: a bad --address leaves no session folder
        print(f"[lrbs] Ray's log: {driver.raylog.to_file(local)}", file=driver.out, flush=True)
        driver.fit(source, run.child(tag), trackers, records=records, resume=plan)
    driver.print_outcome(outcome)


def _write_plan(run: RunDir, local: Path, tag: str, resume: dict[str, dict[str, Any]]) -> str:
    """Write the session's plan into its experiment folder ``tag``; returns where the trials read
    it (a URI for a run in a store, read back here as they will)."""
    plan = local / tag / RESUME_PLAN
    try:
        plan.parent.mkdir()
        write_file_safely(plan, json.dumps(resume, indent=1), root=local)
    except OSError as exc:
        raise SweepStopped(f"RUN_DIR: cannot write {plan} ({exc.strerror or exc})") from None
    if run.is_local:
        return str(plan)
    plan_ref = run.uri_of(run.join(tag, RESUME_PLAN))  # trials on any node read it there
    try:
        run.put(plan, tag, RESUME_PLAN)
    except OSError as exc:
        raise LrbsError(f"RUN_DIR: cannot write {run.where}/{tag}/{RESUME_PLAN} ({first_line(exc)[:300]})") from None
    why = "it reads back different"
    try:  # read back as the trials will (and cached for the driver's callbacks)
        readable = resume_plan(plan_ref) == resume
    except (OSError, ValueError) as exc:
        readable, why = False, first_line(exc)[:200]
    if not readable:
        raise LrbsError(f"RUN_DIR: the trials could not read the resume plan {plan_ref} ({why})")
    return plan_ref
