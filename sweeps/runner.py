"""The driver: ``lrbs run`` and ``lrbs resume`` build their Ray Tune run (``tune.Tuner`` over the
trial points) through one :class:`Driver`.

A driver session starts or joins Ray, locks the run directory (a ``lrbs.rundir.location.RunDir``:
local, or in a store through a local staging mirror that is uploaded as it goes), and fits a Tune
run of the points of a point source with lrbs's callbacks (metric rows, trial records, uploads,
trackers, the progress line). A grid gives all its packs at once (:class:`GridPoints`); a beta
search proposes packs as trials end (``lrbs.sweeps.beta_searcher.BetaSearcher``). ``run`` and
``resume`` differ only in where the points come from (a new run directory, or the trial records
and spec copy of an existing one: ``lrbs.sweeps.resume``) and what they restart.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TextIO

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from lrbs.rundir.layout import DRIVER_ERROR, METRIC_DIR, PROVENANCE_FILE
from lrbs.rundir.location import RunDir
from lrbs.rundir.points import from_config
from lrbs.rundir.records import TrialRecord, current_records, read_ledger, sweep_outcome
from lrbs.rundir.safe_write import write_file_safely
from lrbs.sweeps.beta_searcher import BetaSearcher
from lrbs.sweeps.errors import LrbsError, SweepStopped
from lrbs.sweeps.estimate import CostEstimate
from lrbs.sweeps.grid import expand_points, is_search
from lrbs.sweeps.lock import RunLock, lock_run
from lrbs.sweeps.metrics_sink import (
    DEFAULT_UPLOAD_INTERVAL_S,
    ArrowMetricsSink,
    MetricsUploader,
    TrackingCallback,
    TrialLedger,
)
from lrbs.sweeps.param_space import to_param_space
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.progress import PhaseTimes, ProgressPrinter
from lrbs.sweeps.raylog import RayOutput
from lrbs.sweeps.spec import SweepSpec
from lrbs.sweeps.storage import check_new_run_dir, create_run_dir, mirror, resolve_storage, staging_dir, tracking_root
from lrbs.sweeps.summary import planned_seconds
from lrbs.sweeps.tracking import build_trackers
from lrbs.sweeps.trust import record_plugin_folders, resume_command, ship_paths
from lrbs.sweeps.version import code_version
from lrbs.trainables.data import dataset_entry, load_dataset
from lrbs.trainables.ray_private import RayConfig, ray_constants
from lrbs.trainables.tensor_data import DataError
from lrbs.trainables.tune_trial import train_trial

EXIT_TRIALS_ERRORED = 3  # `lrbs run`/`resume`: the sweep ran, but some trials ended in ERROR
PACKAGES = ("torch", "torchvision", "ray", "pyarrow", "numpy", "scipy", "plotly", "mnist1d")
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
PRESTART_ENV = "RAY_prestart_worker_first_driver"  # Ray's system config, read from the environment
STORAGE_ERRNOS = {28: "the disk is full", 122: "the disk quota is exceeded", 30: "it is read-only"}


class PointSource(Protocol):
    """Where a driver's trials come from (:class:`GridPoints`, ``BetaSearcher``)."""

    packs: list[list[dict[str, Any]]]  # the param space's grid of packs (a search proposes its own)
    total: int  # points it trains (for a search: at most)
    at_most: bool

    def describe(self) -> str:
        """The first line's account of the trials (``lrbs run``)."""
        ...

    def tune_config(self, out: TextIO) -> dict[str, Any]:
        """``TuneConfig`` keywords that hand the points to Tune."""
        ...


class GridPoints:
    """A grid's packs, all at once: one sample of a Tune ``grid_search`` over them."""

    at_most = False

    def __init__(self, packs: list[list[dict[str, Any]]]):
        self.packs = packs
        self.total = sum(len(pack) for pack in packs)

    def describe(self) -> str:
        return f"{self.total} trials in {len(self.packs)} packs"

    def tune_config(self, out: TextIO) -> dict[str, Any]:
        # Reused actors: a trial after the first on a worker skips process start-up and imports
        # (seconds per trial; see docs/performance.md). Trials share no state: each one seeds
        # torch and sets its threads itself.
        return {"num_samples": 1, "reuse_actors": True}


def run_points(spec: SweepSpec, run_dir: Path) -> list[dict[str, Any]]:
    """The sweep's points: the spec's; for a ``beta.search``, those its trials were given (the
    trial records), which is all the search launched."""
    if not is_search(spec):
        return expand_points(spec)
    records, _ = read_ledger(run_dir)
    return [p for r in current_records(records) for p in from_config(r.point)]


def plugin_runtime_env(spec: SweepSpec) -> dict[str, Any] | None:
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


def provenance(spec: SweepSpec, address: str | None, source: PointSource, cost: CostEstimate) -> dict[str, Any]:
    """Where and with what a sweep ran (the report's provenance section reads it back)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    device = "cpu"
    if spec.resources.gpu > 0:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU (not visible to the driver)"
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
        "estimate": {  # with the step costs it came from (the calibration, or the fitted fallback)
            "device_hours": cost.device_hours,
            "wall_hours": cost.wall_hours,
            "slots": cost.slots,
            "device": cost.device,
            "total_pflop": cost.total_pflop,
            "costs": cost.costs,
        },
        "points": source.total,
        "epochs": spec.train.epochs,
        **({"beta_search": True} if source.at_most else {}),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def init_ray(address: str | None, runtime_env: dict[str, Any] | None = None) -> None:
    if ray.is_initialized():
        return
    extra: dict[str, Any] = {"runtime_env": runtime_env} if runtime_env else {}
    if address:
        try:
            ray.init(address=address, log_to_driver=False, **extra)
        except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError, ValueError: all bad input here
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LrbsError(f"--address: cannot connect to a Ray cluster at {address} ({first})") from None
    else:
        # An embedded local cluster, on loopback only and with token auth.
        # address="local": a new cluster even when another one runs on this machine.
        with loopback_only(), token_auth(), no_idle_workers():
            ray.init(address="local", include_dashboard=False, dashboard_host="127.0.0.1", log_to_driver=False, **extra)


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Ray picks 127.0.0.1 as the node address, and then binds every server (GCS, raylet, object
    manager, workers, agents) to loopback, when it believes it runs a single-machine cluster
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; read at import, so the constant is set too). Only for
    the embedded cluster, and only while it starts: a driver joining a real cluster must advertise
    a reachable address. The processes started here keep the setting."""
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
def no_idle_workers() -> Iterator[None]:
    """Ray starts one idle worker per CPU when the driver connects, but Tune never puts a trial on
    one (its trial actors carry a ``runtime_env`` of their own, and a worker is reused only for the
    same one): on a small machine they would only take CPU from the trial's own worker while it
    starts. Off for the embedded cluster, unless ``PRESTART_ENV`` is set in the environment."""
    if PRESTART_ENV in os.environ:
        yield
        return
    os.environ[PRESTART_ENV] = "0"  # read by the raylet when it starts, inside ray.init
    try:
        yield
    finally:
        os.environ.pop(PRESTART_ENV, None)


@contextlib.contextmanager
def token_auth() -> Iterator[None]:
    """Token authentication on for the embedded cluster, set here rather than left to Ray's
    default (which a future Ray, or RAY_AUTH_MODE in the environment, may change); the token
    file (``~/.ray/auth_token``, made by Ray if missing) readable by its owner only."""
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
    return [
        {"cpu": float(n["Resources"].get("CPU", 0)), "gpu": float(n["Resources"].get("GPU", 0))}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def _fits(need: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    return any(all(node[k] >= v for k, v in need.items()) for node in nodes)


def wait_for_resources(
    spec: SweepSpec, embedded: bool, out: TextIO, poll_s: float = 5.0, ray_started: bool = True
) -> None:
    """One trial's resources must fit on some node, or no trial would ever start (Tune waits
    forever, warning every minute). The embedded cluster is this machine: refused at once. A
    cluster (``--address``) may grow (an autoscaler): wait up to ``limits.resource_wait_s``.
    ``ray_started=False`` checks this machine before the embedded Ray starts (no Ray output)."""
    need = trial_resources(spec)
    if ray_started:
        nodes = node_capacity()
    else:  # this machine's CPUs and GPUs, as an embedded Ray cluster would count them (at most)
        nodes = [{"cpu": float(os.cpu_count() or 1), "gpu": float(torch.cuda.device_count())}]
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


def preflight_data(spec: SweepSpec) -> None:
    """Data sets read from (or generated into) ``data_dir`` must load on the driver before any
    trial starts: a missing set is one line and exit 2, not N errored trials, and parallel trials
    never race to download or generate into the same folder. (On a cluster the nodes
    pre-download: cluster.yaml.)"""
    if dataset_entry(spec.dataset.name).on_disk:
        try:
            load_dataset(spec.dataset)
        except DataError as exc:
            raise LrbsError(str(exc)) from None


def stopped_error(exc: BaseException, run_dir: Path) -> SweepStopped:
    """Ray failing under the sweep (most often a full disk: Ray then dies reading a 0-byte error
    file) as one line naming the run directory (exit 4); the traceback goes to
    ``RUN_DIR/driver-error.txt``."""
    why = None
    seen: set[int] = set()
    cur: BaseException | None = exc
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
    log = run_dir / DRIVER_ERROR
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


class Driver:
    """One driver session of the sweep ``spec`` on the run directory ``run``. It writes into
    ``local``: the run directory, or for a run in a store its staging mirror (:meth:`mirror`),
    whose changes go up as the run goes. A context manager: Ray's output is restored and the
    lock released at its end."""

    def __init__(
        self,
        spec: SweepSpec,
        run: RunDir,
        address: str | None,
        out: TextIO,
        upload_interval_s: float | None = None,
        local: Path | None = None,
    ):
        self.spec, self.run, self.address, self.out = spec, run, address, out
        self.upload_interval_s = DEFAULT_UPLOAD_INTERVAL_S if upload_interval_s is None else upload_interval_s
        self.local = staging_dir(run) if local is None else local
        self.raylog = RayOutput()  # Ray's own lines: to RUN_DIR/ray.log, errors still to the terminal
        self.uploader: MetricsUploader | None = None
        self.held: RunLock | None = None

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raylog.stop()
        if self.held is not None:
            self.held.release()

    def lock(self, command: str) -> None:
        """Take the run directory's lock (``lrbs.sweeps.lock``): one driver per run directory."""
        self.held = lock_run(self.run, command).acquire()

    def mirror(self) -> Path:
        """Bring ``local`` up to date with a run directory in a store, as the store has it now, and
        from here on upload what changes in it (a local run directory is its own ``local``)."""
        if not self.run.is_local:
            mirror(self.run, self.local)
            self.uploader = MetricsUploader(self.run, self.local, self.upload_interval_s)
        return self.local

    def start_ray(self) -> float:
        """Start the embedded Ray or join ``address`` once a trial's resources fit there (one
        line otherwise); returns the seconds Ray took to start."""
        if self.address is None:
            wait_for_resources(self.spec, embedded=True, out=self.out, ray_started=False)
        self.raylog.start()
        t0 = time.monotonic()
        init_ray(self.address, plugin_runtime_env(self.spec))
        seconds = time.monotonic() - t0
        wait_for_resources(self.spec, embedded=self.address is None, out=self.out)
        return seconds

    def fit(
        self,
        source: PointSource,
        experiment: RunDir,
        trackers: list[Any],
        *,
        records: dict[str, TrialRecord] | None = None,
        resume: str | None = None,
        estimate_hours: float | None = None,
        planned_s: float | None = None,
        times: PhaseTimes | None = None,
    ) -> None:
        """Train ``source``'s points as the Tune experiment in the folder ``experiment`` (inside the
        run directory, or the run directory itself). ``records``: the trial records to go on with;
        ``resume``: where the trials read ``lrbs resume``'s plan. A failure of Ray's driver loop is
        one line (``stopped_error``); the rows written so far stay intact for ``lrbs resume``."""
        spec = self.spec
        printer = ProgressPrinter(
            source.total,
            source.total * spec.train.epochs,
            estimate_hours,
            "GPU" if spec.resources.gpu > 0 else "CPU",
            out=self.out,
            at_most=source.at_most,
            planned_s=planned_s,
        )
        tuner = tune.Tuner(
            tune.with_resources(train_trial, trial_resources(spec)),
            param_space=to_param_space(spec, code_version(), packs=source.packs, resume=resume),
            tune_config=tune.TuneConfig(**source.tune_config(self.out)),
            run_config=tune.RunConfig(
                name=experiment.name,
                storage_path=experiment.parent.path,
                storage_filesystem=None if self.run.is_local else self.run.fs,
                callbacks=[
                    ArrowMetricsSink(self.local / METRIC_DIR),
                    TrialLedger(self.local, records, trial_root=self.run.path),
                    *([self.uploader] if self.uploader is not None else []),
                    TrackingCallback(trackers),
                    printer,
                ],
                failure_config=tune.FailureConfig(max_failures=spec.resilience.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.resilience.keep_checkpoints),
                verbose=0,
            ),
        )
        t0 = time.monotonic()
        fitted = False
        try:
            with self.raylog.printed():
                tuner.fit()
            fitted = True
        except Exception as exc:  # noqa: BLE001 - every failure of Ray's driver loop ends the same way
            raise stopped_error(exc, self.local) from None
        finally:  # also when the sweep stopped: what was written reaches the store (or stays staged)
            if self.uploader is not None:
                self.uploader.upload(strict=fitted)
        if times is not None:
            times.trials = time.monotonic() - t0
            if printer.first_result is not None:
                times.worker_start = max(0.0, printer.first_result[0] - t0 - printer.first_result[1])

    def print_outcome(self, outcome: dict[str, int] | None = None) -> None:
        """Counts are of points (a pack counts once per member), from lrbs's own files (rows and
        trial records, ``lrbs.rundir.records.sweep_outcome``); ``outcome`` gets them."""
        counts = sweep_outcome(self.local, run_points(self.spec, self.local))
        extra = f", {counts['unfinished']} unfinished" if counts["unfinished"] else ""
        print(
            f"[lrbs] sweep {self.spec.name} ended: {counts['finished']} trials finished, {counts['errored']} "
            f"errored{extra}; metrics in {self.run.where}/{METRIC_DIR}",
            file=self.out,
            flush=True,
        )
        if outcome is not None:
            outcome.update(counts)


def run_sweep(
    spec: SweepSpec,
    storage: str | None = None,
    address: str | None = None,
    out: TextIO | None = None,
    *,
    storage_filesystem: pafs.FileSystem | None = None,
    upload_interval_s: float | None = None,
    times: PhaseTimes | None = None,
    outcome: dict[str, int] | None = None,
) -> Path:
    """Run every trial of ``spec``; returns the (local) run directory.

    ``storage`` may be a URI (``s3://``, ``gs://``, ``file://``) or, with ``storage_filesystem``
    (a ``pyarrow.fs.FileSystem``), a path inside that filesystem; a run directory in a store is
    mirrored in a local staging directory, which is returned (see ``lrbs.sweeps.storage``).
    ``times`` gets the Ray start, trials and worker start-up; ``outcome`` the counts of finished
    and errored points.
    """
    out = out or sys.stdout  # looked up per call: a default bound at import outlives a swapped stdout
    run = resolve_storage(storage, storage_filesystem).child(spec.name)
    check_new_run_dir(run)  # before Ray starts; nothing is written yet
    # trackers: their packages installed, their folders writable (one line, before anything starts)
    build_trackers(spec.tracking, spec.name, tracking_root(run))
    checked = preflight(spec, local_data=address is None)  # the model, built once (cached) and checked
    if address is None:
        preflight_data(spec)
    source: PointSource = BetaSearcher(spec) if is_search(spec) else GridPoints(checked.packs)
    with Driver(spec, run, address, out, upload_interval_s) as driver:
        ray_s = driver.start_ray()  # before the run directory exists: a bad --address leaves nothing behind
        create_run_dir(run, spec.to_dict())
        local = driver.mirror()
        driver.lock("lrbs run")  # a resume started while this runs is refused
        log_path = driver.raylog.to_file(local)
        info = provenance(spec, address, source, checked.estimate())
        try:
            record_plugin_folders(spec, local)
            (local / PROVENANCE_FILE).write_text(json.dumps(info, indent=1))
        except OSError as exc:  # a full disk right at the start
            raise SweepStopped(f"RUN_DIR: cannot write into {local} ({exc.strerror or exc})") from None
        print(
            f"[lrbs] sweep {spec.name}: {source.describe()} -> {run.where} (Ray's log: {log_path})",
            file=out,
            flush=True,
        )
        trackers = build_trackers(spec.tracking, spec.name, tracking_root(run))
        driver.fit(
            source,
            run,
            trackers,
            estimate_hours=info["estimate"]["device_hours"],
            planned_s=planned_seconds(info),
            times=times,
        )
        if times is not None:
            times.ray = ray_s
        driver.print_outcome(outcome)
    return local
