"""Interpolation curves (Fig. 4): the loss along theta(alpha) = (1 - alpha) theta_A + alpha theta_B.

``lrbs interpolate RUN_DIR A B`` writes ``RUN_DIR/interpolation/<A>__<B>.arrow`` with columns
``alpha, train_loss, train_acc, val_loss, val_acc, trial_a, trial_b`` (Arrow IPC file or
stream format; both are read). Per curve the report gives the train loss at the two ends
(alpha = 0 and 1, the nearest alpha) and the barrier: max over alpha in [0, 1] of the train
loss minus the larger end loss (0 when the path is monotone or convex between them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lrbs.rundir.layout import INTERPOLATION_DIR
from lrbs.rundir.tables import read_stream_file

INTERPOLATION_COLUMNS = ("alpha", "train_loss", "train_acc", "val_loss", "val_acc", "trial_a", "trial_b")


def read_interpolation(path: str | Path) -> pa.Table:
    """One curve file (IPC file or stream), sorted by alpha."""
    path = Path(path)
    try:
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_file(src).read_all()
    except (pa.ArrowInvalid, OSError):
        table, _ = read_stream_file(path)
    missing = [c for c in INTERPOLATION_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path.name}: missing columns {', '.join(missing)}")
    return table.sort_by("alpha")


def load_interpolations(run_dir: str | Path) -> tuple[dict[str, pa.Table], list[str]]:
    """name (file stem) -> curve, and one line per file that could not be read."""
    out, problems = {}, []
    for path in sorted(Path(run_dir, INTERPOLATION_DIR).glob("*.arrow")):
        try:
            table = read_interpolation(path)
        except (ValueError, pa.ArrowInvalid, OSError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if table.num_rows:
            out[path.stem] = table
    return out, problems


@dataclass
class InterpolationSummary:
    name: str
    trial_a: str
    trial_b: str
    n_alpha: int
    alpha_min: float
    alpha_max: float
    loss_a: float  # train loss at the alpha nearest 0
    loss_b: float  # at the alpha nearest 1
    barrier: float  # max train loss on [0, 1] minus max(loss_a, loss_b); nan without points in [0, 1]
    val_acc_a: float
    val_acc_b: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(name: str, table: pa.Table) -> InterpolationSummary:
    a = np.array(table.column("alpha").to_pylist(), dtype=float)
    loss = np.array([math.nan if v is None else v for v in table.column("train_loss").to_pylist()], dtype=float)
    acc = np.array([math.nan if v is None else v for v in table.column("val_acc").to_pylist()], dtype=float)
    i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
    inside = (a >= -1e-9) & (a <= 1 + 1e-9)
    barrier = float(np.nanmax(loss[inside]) - max(loss[i0], loss[i1])) if inside.any() else math.nan
    return InterpolationSummary(
        name=name,
        trial_a=str(table.column("trial_a")[0].as_py()),
        trial_b=str(table.column("trial_b")[0].as_py()),
        n_alpha=len(a),
        alpha_min=float(a.min()),
        alpha_max=float(a.max()),
        loss_a=float(loss[i0]),
        loss_b=float(loss[i1]),
        barrier=barrier,
        val_acc_a=float(acc[i0]),
        val_acc_b=float(acc[i1]),
    )
