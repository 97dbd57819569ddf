"""Turn a validated spec into a Ray Tune run: ``tune.Tuner`` over the trial points."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import yaml

from lrbs.rundir.layout import METRIC_DIR, PLUGIN_ROOTS, PROVENANCE_FILE, SPEC_COPY
from lrbs.rundir.points import from_config
from lrbs.rundir.safe_write import write_file_safely
from lrbs.sweeps.errors import LrbsError, SweepStopped
from lrbs.sweeps.raylog import RayOutput
from lrbs.sweeps.spec import SweepSpec, to_param_space
from lrbs.sweeps.trust import resume_command


def storage_root(storage: str | None) -> Path:
    """The directory that holds run directories; refused before anything starts when it is a file,
    lies under a file, or cannot be created or written (the first existing folder above it decides)."""

    root = Path(storage or "runs").expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise LrbsError(f"--storage: {root} is a file, not a directory")
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LrbsError(f"--storage: {root} lies under {existing}, which is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LrbsError(f"--storage: cannot write under {existing} (read-only or not yours)")
    return root


def free_run_dir(spec: SweepSpec, storage: str | None) -> Path:
    """``<storage>/<name>/`` if it can be created; LrbsError if storage is a file or it exists."""
    run_dir = storage_root(storage) / spec.name
    if run_dir.exists():
        raise LrbsError(
            f"run directory {run_dir} already exists: pick another name or --storage (nothing was changed there)"
        )
    return run_dir


def prepare_run_dir(spec: SweepSpec, storage: str | None) -> Path:
    """Create ``<storage>/<name>/`` with a copy of the spec; never reuse an existing one."""
    run_dir = free_run_dir(spec, storage)
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        raise LrbsError(f"--storage: cannot create {run_dir} ({exc.strerror or exc})") from None
    (run_dir / METRIC_DIR).mkdir()
    (run_dir / SPEC_COPY).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return run_dir


def plugin_runtime_env(spec: SweepSpec) -> dict | None:
    """Ray ``runtime_env`` that ships the user's model and data-set modules to every worker.

    Each ``package.module:factory`` in ``model.name`` or ``dataset.name`` that is not an
    installed package goes as its top-level package folder (or single-file module) in
    ``py_modules``: Ray uploads it once per job and puts it on the workers' ``sys.path``, on
    this machine and on every node of a cluster alike (docs/extending.md).
    """
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        # Inside a Ray job (`lrbs submit`): the job's runtime_env already ships them, and Ray
        # refuses a second runtime_env that sets py_modules again.
        return None
    paths = ship_paths(spec)
    return {"py_modules": paths} if paths else None


def ship_paths(spec: SweepSpec) -> list[str]:
    """The local package folders or single-file modules of the spec's user factories (installed
    packages and lrbs itself excluded: trainables.plugins.ship_path)."""
    from lrbs.trainables.plugins import is_import_path, ship_path

    paths = [ship_path(name) for name in (spec.model.name, spec.dataset.name) if is_import_path(name)]
    return list(dict.fromkeys(p for p in paths if p))


def plugin_folders(spec: SweepSpec) -> list[str]:
    """The folders the spec's user modules were imported from (their sys.path entries)."""
    return list(dict.fromkeys(str(Path(p).parent) for p in ship_paths(spec)))


def record_plugin_folders(spec: SweepSpec, run_dir: Path) -> None:
    """Write where the user modules came from, so ``lrbs resume`` and ``lrbs interpolate`` find
    them again from any folder (plain JSON data; nothing in it is executed)."""
    import json

    folders = plugin_folders(spec)
    if folders:
        (run_dir / PLUGIN_ROOTS).write_text(json.dumps({"search_roots": folders}, indent=1))


def restore_plugin_folders(run_dir: Path) -> None:
    """Add the folders ``record_plugin_folders`` wrote to the plug-in search path (if they exist)."""
    import json

    from lrbs.trainables.plugins import add_search_root

    try:
        roots = json.loads((run_dir / PLUGIN_ROOTS).read_text())["search_roots"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no user modules, or an unreadable file: the usual search path applies
    for folder in roots if isinstance(roots, list) else []:
        if isinstance(folder, str) and Path(folder).is_dir():
            add_search_root(folder)


PACKAGES = ("torch", "torchvision", "ray", "pyarrow", "numpy", "scipy", "plotly", "mnist1d")


def provenance(spec: SweepSpec, address: str | None) -> dict:
    """Where and with what a sweep ran (the report's provenance section reads it back)."""
    import datetime
    import platform
    from importlib import metadata

    from lrbs.sweeps.estimate import estimate_cost
    from lrbs.sweeps.spec import is_search, search_settings
    from lrbs.sweeps.version import code_version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    device = "cpu"
    if spec.resources.gpu > 0:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU (not visible to the driver)"
    cost = estimate_cost(spec)
    return {
        "code_version": code_version(),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "driver_device": device,
        "ray_address": address or "embedded local Ray",
        "resources_per_trial": {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        "packages": packages,
        "estimate": {"device_hours": cost.device_hours, "device": cost.device, "total_pflop": cost.total_pflop},
        "points": cost.trials,
        "epochs": spec.train.epochs,
        **({"beta_search": True, "points": search_settings(spec).budget} if is_search(spec) else {}),
    }


def _cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def init_ray(address: str | None, runtime_env: dict | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    extra = {"runtime_env": runtime_env} if runtime_env else {}
    if address:
        try:
            ray.init(address=address, log_to_driver=False, **extra)
        except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError, ValueError: all bad input here
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LrbsError(f"--address: cannot connect to a Ray cluster at {address} ({first})") from None
    else:
        # An embedded local cluster, on loopback only and with token auth (issue 13).
        # address="local": a new cluster even when another one runs on this machine.
        with loopback_only(), token_auth():
            ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False, **extra)


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only():
    """Ray picks 127.0.0.1 as the node address, and then binds every server (GCS, raylet, object
    manager, workers, agents) to loopback, when it believes it runs a single-machine cluster
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; read at import, so the constant is set too). Only for
    the embedded cluster, and only while it starts: a driver joining a real cluster must advertise
    a reachable address. The processes started here keep the setting."""
    from lrbs.trainables.ray_private import ray_constants

    before_env, before_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = before_env


@contextlib.contextmanager
def token_auth():
    """Token authentication on for the embedded cluster, set here rather than left to Ray's
    default (which a future Ray, or RAY_AUTH_MODE in the environment, may change); the token
    file (``~/.ray/auth_token``, made by Ray if missing) readable by its owner only."""
    from lrbs.trainables.ray_private import RayConfig

    os.environ["RAY_AUTH_MODE"] = "token"
    RayConfig.initialize("")  # Ray's own way to re-read the mode in this process (as its default does)
    yield
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        if token.is_file() and token.stat().st_uid == os.getuid():
            token.chmod(0o600)
    except OSError:
        pass


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """What each trial asks Ray for; a fractional ``gpu`` lets several trials share one card."""
    return {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}


def node_capacity() -> list[dict[str, float]]:
    """CPUs and GPUs of each live node of the connected Ray cluster."""
    import ray

    return [
        {"cpu": float(n["Resources"].get("CPU", 0)), "gpu": float(n["Resources"].get("GPU", 0))}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def _fits(need: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    return any(all(node[k] >= v for k, v in need.items()) for node in nodes)


def local_capacity() -> dict[str, float]:
    """This machine's CPUs and GPUs, as an embedded Ray cluster would count them (at most)."""
    import torch

    return {"cpu": float(os.cpu_count() or 1), "gpu": float(torch.cuda.device_count())}


def wait_for_resources(
    spec: SweepSpec, embedded: bool, out: TextIO, poll_s: float = 5.0, ray_started: bool = True
) -> None:
    """One trial's resources must fit on some node, or no trial would ever start (Tune waits
    forever, warning every minute). The embedded cluster is this machine: refused at once. A
    cluster (``--address``) may grow (an autoscaler): wait up to ``limits.resource_wait_s``.
    ``ray_started=False`` checks this machine before the embedded Ray starts (no Ray output)."""
    need = trial_resources(spec)
    nodes = node_capacity() if ray_started else [local_capacity()]
    if _fits(need, nodes):
        return
    have = ", ".join(f"{n['cpu']:g} CPU / {n['gpu']:g} GPU" for n in nodes) or "no live nodes"
    ask = f"{need['cpu']:g} CPU / {need['gpu']:g} GPU"
    if embedded:
        raise LrbsError(
            f"resources: a trial asks for {ask} but this machine has {have}; lower resources.cpu "
            f"or resources.gpu, or run on a cluster with --address"
        )
    wait = spec.limits.resource_wait_s
    print(
        f"[lrbs] waiting up to {wait:g} s (limits.resource_wait_s) for a node with {ask}; the cluster has: {have}",
        file=out,
        flush=True,
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        if _fits(need, node_capacity()):
            return
    raise LrbsError(
        f"resources: no node of the cluster can hold a trial ({ask}) after {wait:g} s; nodes: {have}; "
        f"lower resources.cpu or resources.gpu, or raise limits.resource_wait_s"
    )


def resilience_settings(spec: SweepSpec) -> dict:
    """RunConfig fields from ``spec.resilience`` (shared by ``lrbs run`` and ``lrbs resume``)."""
    from ray import tune

    return {
        "failure_config": tune.FailureConfig(max_failures=spec.resilience.max_failures),
        "checkpoint_config": tune.CheckpointConfig(num_to_keep=spec.resilience.keep_checkpoints),
    }


EXIT_TRIALS_ERRORED = 3  # `lrbs run`/`resume`: the sweep ran, but some trials ended in ERROR


def print_outcome(spec: SweepSpec, run_dir: Path, metrics_where: str, out: TextIO, outcome: dict | None = None) -> None:
    """Counts are of points (a pack counts once per member), from lrbs's own files (rows and
    trial records, ``lrbs.rundir.records.sweep_outcome``); ``outcome`` gets them."""
    from lrbs.rundir.records import sweep_outcome

    counts = sweep_outcome(run_dir, run_points(spec, run_dir))
    extra = f", {counts['unfinished']} unfinished" if counts["unfinished"] else ""
    print(
        f"[lrbs] sweep {spec.name} ended: {counts['finished']} trials finished, {counts['errored']} errored{extra}; "
        f"metrics in {metrics_where}",
        file=out,
        flush=True,
    )
    if outcome is not None:
        outcome.update(counts)


def run_points(spec: SweepSpec, run_dir: Path) -> list[dict]:
    """The sweep's points: the spec's; for a ``beta.search``, those its trials were given (the
    trial records), which is all the search launched."""
    from lrbs.sweeps.spec import expand_points, is_search

    if not is_search(spec):
        return expand_points(spec)
    from lrbs.rundir.records import current_records, read_ledger

    records, _ = read_ledger(run_dir)
    return [p for r in current_records(records) for p in from_config(r.point)]


def tune_settings(spec: SweepSpec, out: TextIO, **searcher) -> dict:
    """``TuneConfig`` keywords: one sample of the grid of packs, or the beta searcher (``num_samples``
    -1: as many as it proposes, until it says FINISHED)."""
    from lrbs.sweeps.spec import is_search

    # Reused actors: a trial after the first on a worker skips process start-up and imports
    # (seconds per trial; see docs/performance.md). Trials share no state: each one seeds
    # torch and sets its threads itself.
    if not is_search(spec):
        return {"num_samples": 1, "reuse_actors": True}
    import math

    from lrbs.sweeps.beta_searcher import BetaSearcher
    from lrbs.sweeps.packing import pack_cap
    from lrbs.sweeps.spec import search_settings

    # Tune keeps only one trial of a plain Searcher pending (one placement group asked of an
    # autoscaler at a time); a bound on live trials lifts that: at most a point and the reference
    # per size at once, each in ceil(seeds / pack size) packs.
    n_sizes = len(spec.beta.n_train) or 1
    packs_per_point = math.ceil(search_settings(spec).max_seeds / max(1, pack_cap(spec)))
    return {
        "num_samples": -1,
        "reuse_actors": True,
        "search_alg": BetaSearcher(spec, out=out, **searcher),
        "max_concurrent_trials": 2 * n_sizes * packs_per_point,
    }


def fit(tuner, run_dir: Path, raylog=None) -> None:
    """``tuner.fit()``; Ray failing under the sweep (most often a full disk: Ray then dies reading a
    0-byte error file) is one line naming the run directory, exit 4, and the rows written so far
    stay intact for ``lrbs resume``. The traceback goes to ``RUN_DIR/driver-error.txt``."""
    try:
        with raylog.printed() if raylog is not None else contextlib.nullcontext():
            tuner.fit()
    except Exception as exc:  # noqa: BLE001 - every failure of Ray's driver loop ends the same way
        raise stopped_error(exc, run_dir) from None


STORAGE_ERRNOS = {28: "the disk is full", 122: "the disk quota is exceeded", 30: "it is read-only"}


def stopped_error(exc: BaseException, run_dir: Path) -> SweepStopped:
    import shutil
    import traceback

    why = None
    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:  # an OSError anywhere in the chain says why
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in STORAGE_ERRNOS:
            why = STORAGE_ERRNOS[cur.errno]
        cur = cur.__cause__ or cur.__context__
    try:
        if why is None and shutil.disk_usage(run_dir).free < 1 << 20:
            why = "the disk is full"
    except OSError:
        pass
    log = run_dir / "driver-error.txt"
    try:
        write_file_safely(log, "".join(traceback.format_exception(exc)))  # a new file: never through a link
        where = f"; traceback in {log}"
    except OSError:
        where = ""
    resume = resume_command(run_dir)
    if why:
        return SweepStopped(
            f"sweep stopped: {run_dir}: {why}; the rows written so far are intact: make room, then {resume}{where}"
        )
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return SweepStopped(
        f"sweep stopped: Ray failed ({type(exc).__name__}: {first}); the rows written so far are "
        f"intact: {resume} continues it{where}"
    )


def preflight_model(spec: SweepSpec):
    """Build the model once on the driver and run it on two examples (``estimate.model_profile``):
    a broken factory is one line and exit 2 before Ray starts. Returns the profile."""
    from lrbs.sweeps.estimate import check_limits, model_profile

    profile = model_profile(spec.model, spec.dataset, max_params=spec.limits.max_params)
    check_limits(spec, profile)
    return profile


def preflight_data(spec: SweepSpec) -> None:
    """Data sets read from (or generated into) ``data_dir`` must load on the driver before any
    trial starts: a missing set is one line and exit 2, not N errored trials, and parallel trials
    never race to download or generate into the same folder. (On a cluster the nodes
    pre-download: cluster.yaml.)"""
    from lrbs.trainables.data import DataError, dataset_entry, load_dataset

    if dataset_entry(spec.dataset.name).on_disk:
        try:
            load_dataset(spec.dataset)
        except DataError as exc:
            raise LrbsError(str(exc)) from None


def tracking_dir(target, name: str) -> Path:
    """Where the trackers' default folders go (``lrbs.sweeps.tracking``): the run directory, or for a
    run in object storage a local folder that is the same in every session (``lrbs resume``
    re-attaches to it; ``lrbs.sweeps.remote.fetched_dir``)."""
    if target.is_local:
        return Path(target.path) / name
    from lrbs.sweeps.remote import RemoteRun, fetched_dir
    from lrbs.sweeps.storage import _join

    return fetched_dir(RemoteRun(target._replace(path=_join(target.path, name))), "local")


def run_sweep(
    spec: SweepSpec,
    storage: str | None = None,
    address: str | None = None,
    out: TextIO | None = None,
    *,
    storage_filesystem=None,
    upload_interval_s: float | None = None,
    times=None,
    outcome: dict | None = None,
) -> Path:
    """Run every trial of ``spec``; returns the (local) run directory.

    ``storage`` may be a URI (``s3://``, ``gs://``, ``file://``) or, with ``storage_filesystem``
    (a ``pyarrow.fs.FileSystem``), a path inside that filesystem; a remote run directory is
    mirrored in a local staging directory, which is returned (see ``lrbs.sweeps.storage``).
    ``times`` (a ``lrbs.sweeps.progress.PhaseTimes``) gets the Ray start, trials and worker start-up;
    ``outcome`` (a dict) the counts of finished and errored points.
    """
    out = out or sys.stdout  # looked up per call: a default bound at import outlives a swapped stdout
    from ray import tune

    from lrbs.sweeps.lock import RunLock
    from lrbs.sweeps.metrics_sink import ArrowMetricsSink, TrackingCallback, TrialLedger
    from lrbs.sweeps.packing import plan_packs
    from lrbs.sweeps.progress import ProgressPrinter
    from lrbs.sweeps.spec import expand_points, is_search, search_settings
    from lrbs.sweeps.storage import prepare_placement, resolve_storage
    from lrbs.sweeps.tracking import build_trackers
    from lrbs.sweeps.version import code_version
    from lrbs.trainables.train_loop import train_trial

    target = resolve_storage(storage, storage_filesystem)
    if target.is_local:
        free_run_dir(spec, target.path)  # fail before starting Ray; nothing is written yet
    # trackers: their packages installed, their folders writable (one line, before anything starts)
    tracking_root = tracking_dir(target, spec.name)
    build_trackers(spec.tracking, spec.name, tracking_root)
    preflight_model(spec)
    if address is None:
        preflight_data(spec)
        wait_for_resources(spec, embedded=True, out=out, ray_started=False)
    raylog = RayOutput().start()  # Ray's own lines: to RUN_DIR/ray.log, errors still to the terminal
    lock = None
    try:
        t0 = time.monotonic()
        # Before the run directory exists: a bad --address leaves nothing behind.
        init_ray(address, plugin_runtime_env(spec))
        t_ray = time.monotonic() - t0
        wait_for_resources(spec, embedded=address is None, out=out)
        place = prepare_placement(spec, storage, storage_filesystem, upload_interval_s)
        run_dir = place.run_dir
        if target.is_local:
            lock = RunLock(run_dir, "lrbs run").acquire()
        else:  # the run directory in the store: a resume started while this runs is refused
            from lrbs.sweeps.lock import RemoteRunLock
            from lrbs.sweeps.remote import RemoteRun

            lock = RemoteRunLock(RemoteRun(target._replace(path=place.remote_run_path)), "lrbs run").acquire()
        log_path = raylog.to_file(run_dir)
        import json

        info = provenance(spec, address)
        try:
            record_plugin_folders(spec, run_dir)
            (run_dir / PROVENANCE_FILE).write_text(json.dumps(info, indent=1))
        except OSError as exc:  # a full disk right at the start
            raise SweepStopped(f"RUN_DIR: cannot write into {run_dir} ({exc.strerror or exc})") from None
        if is_search(spec):
            settings = search_settings(spec)
            n_trials = settings.budget  # at most
            print(
                f"[lrbs] sweep {spec.name}: beta search over {len(settings.betas)} betas "
                f"(1 to {settings.betas[-1]:g}, x{spec.beta.search.resolution:.4g}) at "
                f"{len(spec.beta.n_train) or 1} training-set size(s), at most {n_trials} trials -> {place.where} "
                f"(Ray's log: {log_path})",
                file=out,
                flush=True,
            )
        else:
            n_trials, n_packs = len(expand_points(spec)), len(plan_packs(spec))
            print(
                f"[lrbs] sweep {spec.name}: {n_trials} trials in {n_packs} packs -> {place.where} "
                f"(Ray's log: {log_path})",
                file=out,
                flush=True,
            )
        printer = ProgressPrinter(
            n_trials,
            n_trials * spec.train.epochs,
            info["estimate"]["device_hours"],
            "GPU" if spec.resources.gpu > 0 else "CPU",
            out=out,
            at_most=is_search(spec),
        )
        tuner = tune.Tuner(
            tune.with_resources(train_trial, trial_resources(spec)),
            param_space=to_param_space(spec, code_version()),
            tune_config=tune.TuneConfig(**tune_settings(spec, out)),
            run_config=tune.RunConfig(
                name=spec.name,
                **place.tune_kwargs,
                callbacks=[
                    ArrowMetricsSink(place.metrics_dir),
                    TrialLedger(run_dir, trial_root=place.trial_root),
                    *place.callbacks,
                    TrackingCallback(build_trackers(spec.tracking, spec.name, tracking_root)),
                    printer,
                ],
                **resilience_settings(spec),
                verbose=0,
            ),
        )
        t0 = time.monotonic()
        fit(tuner, run_dir, raylog)
        if times is not None:
            times.ray, times.trials = t_ray, time.monotonic() - t0
            if printer.first_result is not None:
                times.worker_start = max(0.0, printer.first_result[0] - t0 - printer.first_result[1])
        place.finish()
        print_outcome(spec, run_dir, f"{place.where}/{METRIC_DIR}", out, outcome)
    finally:
        raylog.stop()
        if lock is not None:
            lock.release()
    return run_dir
