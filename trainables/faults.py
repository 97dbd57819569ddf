"""Fault injection for the resilience tests (a test hook, not a feature).

``resilience.fail_at_epoch: k`` in a spec makes each trial raise ``RuntimeError`` once, at epoch
``k``, before that epoch is reported (so its row and checkpoint are lost, as in a crash). "Once"
is per trial point and run directory: the first failure leaves a marker file in
``RUN_DIR/faults/``, and no later attempt of that point (a Tune retry, ``lrbs resume``, or
``lrbs resume --restart-errored``, which gives the trial a new id) raises again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow.fs as pafs

from lrbs.rundir.layout import FAULT_MARKERS, RESUME_PLAN
from lrbs.trainables.ray_private import get_session


class InjectedFault(RuntimeError):
    """The error raised by ``resilience.fail_at_epoch``."""


def _marker_location(point: dict[str, Any]) -> tuple[pafs.FileSystem, str, str] | None:
    """(pyarrow filesystem, marker folder, marker path) in the run directory; None outside a trial."""
    try:  # the trial's storage context: where Tune persists this run (shared by all nodes)
        session = get_session()
        if session is None:  # not in a Tune trial: fail every time
            return None
        storage = session.storage
        fs, root = storage.storage_filesystem, storage.experiment_fs_path
        if fs.get_file_info(f"{root}/{RESUME_PLAN}").is_file:  # `lrbs resume`'s experiment, in RUN_DIR
            root = root.rstrip("/").rpartition("/")[0]
    except Exception:  # noqa: BLE001 - Ray moved it: fail every time
        return None
    key = hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:16]
    return fs, f"{root}/{FAULT_MARKERS}", f"{root}/{FAULT_MARKERS}/{key}"


def maybe_fail(config: dict[str, Any], epoch: int) -> None:
    """Raise ``InjectedFault`` if ``config['resilience']['fail_at_epoch'] == epoch`` (once per point)."""
    fail_at = (config.get("resilience") or {}).get("fail_at_epoch")
    if fail_at is None or int(fail_at) != epoch:
        return
    where = _marker_location(config.get("point", {}))
    if where is not None:
        fs, folder, marker = where
        if fs.get_file_info(marker).type != pafs.FileType.NotFound:
            return
        fs.create_dir(folder, recursive=True)
        with fs.open_output_stream(marker) as f:
            f.write(f"fail_at_epoch={epoch}\n".encode())
    raise InjectedFault(f"injected fault at epoch {epoch} (resilience.fail_at_epoch, a test hook)")
