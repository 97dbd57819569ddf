"""Experiment trackers fed by the driver: TensorBoard, MLflow, Weights & Biases.

A spec turns them on in ``tracking:`` (``lrbs run/resume --track NAME`` adds one with its
defaults)::

    tracking:
      tensorboard: {}                                  # dir: default RUN_DIR/tensorboard
      mlflow: {tracking_uri: file:/data/mlruns}        # default $MLFLOW_TRACKING_URI, else RUN_DIR/mlruns
      wandb: {project: my-project, mode: offline}      # default project: the sweep's name

Each tracker gets **one run per point** (a pack's members are separate runs, named by the trial
id their metric rows carry), the point as parameters (sweep, trial id, lr, batch size, eta/S,
seed, code version, ...) and every epoch's metrics with step = epoch. The Arrow tables stay the
record the analysis reads; a tracker is a view for the tools researchers already use.

Trackers run in the driver (``lrbs.sweeps.metrics_sink.TrackingCallback``, after the metric sink), so the nodes need
none of them installed, and a tracker that fails mid-sweep is switched off with one warning
rather than stopping the sweep. ``lrbs resume`` re-attaches every point to its run: TensorBoard
writes to the same folder, MLflow finds the run by its ``lrbs.trial_id`` tag, W&B resumes the run
id ``<sweep>-<trial id>`` (online; offline, W&B writes a second folder under the same id).

Each (point, epoch) is logged once, across Tune retries and ``lrbs resume``: the callback hands a
tracker an epoch only once a checkpoint holds it (a restored trial reports again only the epochs
after its checkpoint, so the value logged is the one the metric tables keep), and a tracker skips
the steps its run already has in its own store (``Tracker.log``; ``start`` reads them: the event
files, MLflow's metric history, W&B's earlier offline folders or, online, the resumed run's step).

Adding a tracker: a ``Tracker`` subclass with ``Options`` (a dataclass: the keys its spec
section takes), ``module`` (the package it needs), ``check``, ``start`` (which fills
``steps[key]`` with the steps the point's run has already), ``write`` and ``finish`` over its
``runs``, and an entry in :data:`TRACKERS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from google.protobuf.message import DecodeError

from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.spec import SpecError, SweepSpec, build_dataclass

# Row fields logged as the point's parameters (a tracker's run parameters or config).
PARAMS = (
    "sweep",
    "trial_id",
    "lr",
    "batch_size",
    "ratio",
    "seed",
    "code_version",
    "dataset",
    "n_train",
    "model",
    "beta",
    "rescale",
    "variant",
    "schedule",
)
# Row fields that are per-point parameters or bookkeeping, not curves: lr, batch size and eta/S
# are curves too (a schedule changes them from epoch to epoch).
NOT_METRICS = {*PARAMS, "config_json", "epoch", "status", "written_at"} - {"lr", "batch_size", "ratio"}


def metrics_of(row: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite epoch metrics of a metric row (losses, accuracies, probes, timings)."""
    out = {}
    for key, value in row.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def params_of(row: dict[str, Any]) -> dict[str, Any]:
    """The point's parameters, as the first row of its run gives them (eta/S as ``eta_over_s``)."""
    params = {("eta_over_s" if k == "ratio" else k): row.get(k) for k in PARAMS}
    return {k: v for k, v in params.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# The trackers


class Tracker:
    """What every tracker shares: ``runs``, its open run per point's trial id, closed by ``close``;
    ``steps``, per point's trial id the steps its run has (this session's and, read by ``start``,
    earlier sessions'), so that ``log`` writes each step once."""

    runs: dict[str, Any]
    steps: dict[str, set[int]]

    def log(self, key: str, step: int, metrics: dict[str, float]) -> bool:
        """Write ``metrics`` at ``step`` unless the point's run has that step already (an epoch
        that an earlier attempt of the point logged): then nothing is written and False returned."""
        have = self.steps.setdefault(key, set())
        if step in have:
            return False
        self.write(key, step, metrics)
        have.add(step)
        return True

    def write(self, key: str, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, key: str, status: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for key in list(self.runs):
            self.finish(key, "stopped")


class TensorBoard(Tracker):
    """Event files in ``<dir>/<trial id>/`` (one TensorBoard run per point)."""

    module = "tensorboard"

    @dataclass(frozen=True)
    class Options:
        dir: str | None = None  # a local folder; default RUN_DIR/tensorboard

    def __init__(self, options: Options, sweep: str, run_dir: Path):
        self.root = Path(options.dir).expanduser() if options.dir else run_dir / "tensorboard"
        self.runs: dict[str, Any] = {}
        self.steps: dict[str, set[int]] = {}

    def check(self) -> None:
        _check_writable(self.root, "tracking.tensorboard.dir")

    def start(self, key: str, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional extra: lrbs[tensorboard]

        # Same folder on resume: TensorBoard shows the old and the new event files as one run;
        # the old files say which steps the run has.
        self.steps[key] = self.steps.get(key, set()) | tensorboard_steps(self.root / key)
        writer = self.runs[key] = SummaryWriter(log_dir=str(self.root / key))
        writer.add_text("lrbs/params", "\n".join(f"{k}: {v}  " for k, v in params.items()))

    def write(self, key: str, step: int, metrics: dict[str, float]) -> None:
        writer = self.runs[key]
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
        writer.flush()  # readable while the sweep runs (one flush per epoch and point)

    def finish(self, key: str, status: str) -> None:
        self.runs.pop(key).close()


class MLflow(Tracker):
    """One MLflow run per point in the experiment named after the sweep."""

    module = "mlflow"

    @dataclass(frozen=True)
    class Options:
        tracking_uri: str | None = None  # default $MLFLOW_TRACKING_URI, else the file store RUN_DIR/mlruns
        experiment: str | None = None  # default: the sweep's name

    def __init__(self, options: Options, sweep: str, run_dir: Path):
        self.uri = options.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"file:{run_dir / 'mlruns'}"
        self.experiment = options.experiment or sweep
        self.runs: dict[str, str] = {}  # point's trial id -> MLflow run id
        self.steps: dict[str, set[int]] = {}
        self._client: Any = None
        self._experiment_id: str | None = None

    def _open(self) -> Any:
        if self._client is None:
            if self.uri.startswith("file:"):
                # MLflow 3 keeps its file store in maintenance mode and asks for this to use it.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.tracking import MlflowClient  # optional extra: lrbs[mlflow]

            client = MlflowClient(tracking_uri=self.uri)
            experiment = client.get_experiment_by_name(self.experiment)
            self._experiment_id = (
                experiment.experiment_id if experiment is not None else client.create_experiment(self.experiment)
            )
            self._client = client
        return self._client

    def check(self) -> None:
        if self.uri.startswith("file:"):
            _check_writable(Path(self.uri[len("file:") :].removeprefix("//")), "tracking.mlflow.tracking_uri")
            return
        if not self.uri.startswith(("http://", "https://")):
            return  # a database (sqlite:, postgresql:, ...) or databricks: checked when the first point starts
        # A server: reach it now (one try, 10 s; reading only), not after hours of training.
        saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
        try:
            from mlflow.tracking import MlflowClient  # optional extra: lrbs[mlflow]

            MlflowClient(tracking_uri=self.uri).get_experiment_by_name(self.experiment)
        except Exception as exc:  # MlflowException, requests' errors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise LrbsError(f"tracking.mlflow.tracking_uri: cannot use {self.uri} ({first})") from None
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def start(self, key: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunStatus  # optional extra: lrbs[mlflow]

        client = self._open()
        found = client.search_runs(
            [self._experiment_id], filter_string=f"tags.`lrbs.trial_id` = '{key}'", max_results=1
        )
        if found:  # lrbs resume: the point's run goes on, with the steps its metric histories have
            run_id = found[0].info.run_id
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.steps[key] = self.steps.get(key, set()) | {
                m.step for name in found[0].data.metrics for m in client.get_metric_history(run_id, name)
            }
        else:
            run = client.create_run(
                self._experiment_id,
                run_name=key,
                tags={"lrbs.trial_id": key, "lrbs.sweep": str(params.get("sweep", ""))},
            )
            run_id = run.info.run_id
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self.runs[key] = run_id

    def write(self, key: str, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric  # optional extra: lrbs[mlflow]

        now = int(time.time() * 1000)
        self._open().log_batch(self.runs[key], metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, key: str, status: str) -> None:
        run_id = self.runs.pop(key)
        # stopped (the driver ended before the point did): KILLED, so a resume's RUNNING is visible
        self._open().set_terminated(
            run_id, {"finished": "FINISHED", "diverged": "FINISHED", "error": "FAILED"}.get(status, "KILLED")
        )


class Wandb(Tracker):
    """One W&B run per point (id ``<sweep>-<trial id>``, grouped by sweep); offline by default."""

    module = "wandb"

    @dataclass(frozen=True)
    class Options:
        project: str | None = None  # default: the sweep's name
        entity: str | None = None
        mode: str = "offline"  # offline (sync later with `wandb sync DIR`) | online | disabled
        dir: str | None = None  # where W&B writes (its wandb/ folder); default RUN_DIR

    CHOICES = {"mode": ("offline", "online", "disabled")}

    def __init__(self, options: Options, sweep: str, run_dir: Path):
        self.options = options
        self.sweep = sweep
        self.dir = Path(options.dir).expanduser() if options.dir else run_dir
        self.runs: dict[str, Any] = {}
        self.steps: dict[str, set[int]] = {}

    def check(self) -> None:
        _check_writable(self.dir, "tracking.wandb.dir")
        if self.options.mode == "online" and not os.environ.get("WANDB_API_KEY"):
            host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
            netrc = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
            try:
                logged_in = host in netrc.read_text(errors="replace")
            except OSError:
                logged_in = False
            if not logged_in:
                raise LrbsError(
                    "tracking.wandb.mode: online needs a W&B login (WANDB_API_KEY or `wandb login`); "
                    "mode: offline logs locally and `wandb sync` uploads later"
                )

    def run_id(self, key: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.sweep}-{key}")[-128:]

    def start(self, key: str, params: dict[str, Any]) -> None:
        import wandb  # optional extra: lrbs[wandb]

        self.dir.mkdir(parents=True, exist_ok=True)
        have = self.steps.setdefault(key, set())
        if self.options.mode == "offline":  # each session's own folder: the earlier ones have these steps
            have |= wandb_steps(self.dir / "wandb", self.run_id(key))
        run = self.runs[key] = wandb.init(
            project=self.options.project or self.sweep,
            entity=self.options.entity,
            id=self.run_id(key),
            name=key,
            group=self.sweep,
            config=params,
            mode=self.options.mode,  # type: ignore[arg-type,unused-ignore]
            dir=str(self.dir),
            resume="allow",
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        if self.options.mode == "online":  # a resumed run takes no step below the one it stands at
            have.update(range(run.starting_step))

    def write(self, key: str, step: int, metrics: dict[str, float]) -> None:
        self.runs[key].log(metrics, step=step)

    def finish(self, key: str, status: str) -> None:
        self.runs.pop(key).finish(exit_code=1 if status == "error" else 0)


TRACKERS: dict[str, Any] = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


# ---------------------------------------------------------------------------------------------
# What a tracker's store has (read when a point's run starts, and by the tests)


def tensorboard_steps(folder: Path) -> set[int]:
    """The steps with a scalar in the TensorBoard event files of ``folder`` (all of its files;
    a record cut off by a killed driver is skipped, as TensorBoard skips it)."""
    # optional extra: lrbs[tensorboard]
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = set()
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            # EventFileLoader gives every summary in today's form: scalars name the plugin "scalars"
            if any(value.metadata.plugin_data.plugin_name == "scalars" for value in event.summary.value):
                steps.add(int(event.step))
    return steps


WANDB_BLOCK = 32768  # bytes: the .wandb file is in LevelDB's log format, records in 32 KiB blocks
WANDB_HEADER = 7  # bytes: ":W&B", a 2-byte magic number, a 1-byte version


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a W&B ``.wandb`` file, up to the first one that does not read (a
    file cut off mid-record ends there). Read here because wandb ships no reader for them."""
    from wandb.proto import wandb_internal_pb2 as pb  # optional extra: lrbs[wandb]

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        return
    pos, pending = WANDB_HEADER, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a record header: zero padding
            pos += left
            continue
        # 7-byte record header: checksum (4 bytes), length (2), kind (1: whole, 2/3/4: first/middle/last part)
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if len(chunk) < length:
            return  # cut off
        if kind in (1, 4):
            record = pb.Record()  # type: ignore[attr-defined,unused-ignore]
            try:
                record.ParseFromString(pending + chunk)
            except DecodeError:
                return
            pending = b""
            yield record
        elif kind in (2, 3):
            pending += chunk
        else:  # kind 0: zero padding to the block's end
            pos += left - 7 - length


def wandb_history(wandb_dir: Path, run_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(step, metrics) of every history record of W&B run ``run_id`` in the offline folders of
    ``wandb_dir`` (one folder per session), in the order the folders were written."""
    out = []
    for path in sorted(Path(wandb_dir).glob(f"offline-run-*/run-{run_id}.wandb")):
        for record in wandb_records(path):
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                out.append((int(items.get("_step", record.history.step.num)), items))
    return out


def wandb_steps(wandb_dir: Path, run_id: str) -> set[int]:
    """The steps W&B run ``run_id`` has in the offline folders of ``wandb_dir``."""
    return {step for step, _ in wandb_history(wandb_dir, run_id)}


def _check_writable(folder: Path, field: str) -> None:
    """``folder`` exists (or can be made) and takes a file; one line naming ``field`` otherwise."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise LrbsError(
            f"{field}: cannot write to {folder} ({existing or '/'} is "
            f"{'not a folder' if existing is not None and not existing.is_dir() else 'not writable'})"
        )


# ---------------------------------------------------------------------------------------------
# From the spec


def check_options(tracking: dict[str, Any]) -> None:
    """Spec validation (``lrbs validate``): known trackers, known keys with the right types."""
    for name, options in tracking.items():
        if name not in TRACKERS:
            raise SpecError(f"tracking.{name}: unknown tracker (choose from {', '.join(TRACKERS)})")
        built = build_dataclass(TRACKERS[name].Options, options, f"tracking.{name}")
        for key, allowed in getattr(TRACKERS[name], "CHOICES", {}).items():
            if getattr(built, key) not in allowed:
                raise SpecError(
                    f"tracking.{name}.{key}: must be one of {', '.join(allowed)} (got {getattr(built, key)!r})"
                )


def build_trackers(tracking: dict[str, Any], sweep: str, run_dir: Path) -> list[Any]:
    """The trackers of a spec's ``tracking`` for ``run_dir``, each checked: its package installed
    (one line naming the extra) and its destination writable. Nothing is written yet."""
    trackers = []
    for name, options in tracking.items():
        cls = TRACKERS[name]
        try:
            importlib.import_module(cls.module)
        except ImportError:
            raise LrbsError(
                f"tracking.{name}: the {cls.module} package is not installed "
                f"(pip install 'lrbs[{name}]', or drop tracking.{name})"
            ) from None
        tracker = cls(build_dataclass(cls.Options, options, f"tracking.{name}"), sweep, Path(run_dir))
        tracker.check()
        trackers.append(tracker)
    return trackers


MaybeSpec = TypeVar("MaybeSpec", SweepSpec, None)


def with_tracks(spec: MaybeSpec, names: list[str] | None) -> MaybeSpec:
    """``spec`` with the trackers named on the command line added (with their defaults)."""
    if not names:
        return spec
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise LrbsError(f"--track: unknown tracker {unknown[0]!r} (choose from {', '.join(TRACKERS)})")
    if spec is None:
        return None
    return dataclasses.replace(spec, tracking={**{n: {} for n in names}, **spec.tracking})
