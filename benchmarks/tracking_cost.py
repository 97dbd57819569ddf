"""What the experiment trackers cost the driver, per point-epoch row (docs/performance.md).

    python -m benchmarks.tracking_cost [--points 25] [--epochs 20]

Feeds the same epoch rows (the quickstart's columns, curvature probes included) to each tracker
of ``sweeps/tracking.py`` as the driver's ``TrackingCallback`` does (start a run per point, log
every epoch, finish), and, side by side in the same run, to the Arrow metric sink alone, the
driver's one unavoidable write per row. Prints a table: milliseconds per row and rows per second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lrbs.rundir.schema import METRIC_SCHEMA


def synthetic_rows(points: int, epochs: int) -> list[list[dict]]:
    rows = []
    for p in range(points):
        point_rows = []
        for e in range(1, epochs + 1):
            row = {f.name: None for f in METRIC_SCHEMA}
            row.update(
                sweep="bench",
                trial_id=f"abcde_{p:05d}",
                code_version="bench",
                dataset="mnist1d",
                n_train=4000,
                model="mlp",
                seed=0,
                config_json=json.dumps({"point": {"lr": 0.01 * (p + 1)}}),
                epoch=e,
                lr=0.01 * (p + 1),
                batch_size=32,
                ratio=0.01 * (p + 1) / 32,
                train_loss=1.0 / e,
                train_acc=1 - 1.0 / (e + 1),
                val_loss=1.1 / e,
                val_acc=1 - 1.1 / (e + 1),
                steps=125 * e,
                examples_seen=4000 * e,
                epoch_s=0.5,
                wall_s=0.5 * e,
                status="running",
                schedule="constant",
                written_at=time.time(),
                probe_loss=1.0 / e,
                lambda_max=10.0 / e,
                lambda_max_converged=True,
                lambda_max_n_hvp=20,
                hessian_trace=100.0 / e,
                hessian_trace_stderr=1.0,
                hessian_fro=30.0 / e,
                hessian_fro_stderr=0.5,
                grad_noise_scale=50.0,
                grad_noise_scale_stderr=5.0,
                probe_n_samples=256,
                probe_s=0.05,
            )
            point_rows.append(row)
        point_rows[-1]["status"] = "finished"
        rows.append(point_rows)
    return rows


def time_tracker(name: str, rows: list[list[dict]], root: Path) -> float:
    """Seconds to open and close each point's run, and to log its rows, in tracker ``name``."""
    from lrbs.sweeps.tracking import build_trackers, metrics_of, params_of

    (tracker,) = build_trackers({name: {}}, "bench", root)
    start_s = log_s = 0.0
    for point_rows in rows:
        key = point_rows[0]["trial_id"]
        t = time.perf_counter()
        tracker.start(key, params_of(point_rows[0]))
        t1 = time.perf_counter()
        for row in point_rows:
            tracker.log(key, row["epoch"], metrics_of(row))
        t2 = time.perf_counter()
        tracker.finish(key, "finished")
        start_s += t1 - t + time.perf_counter() - t2  # opening and closing the point's run
        log_s += t2 - t1
    tracker.close()
    return start_s, log_s


def time_sink(rows: list[list[dict]], root: Path) -> tuple[float, float]:
    """(0, seconds) for the Arrow metric sink (one record batch per row, flushed) on the same rows."""
    from lrbs.sweeps.metrics_sink import ArrowMetricsSink

    sink = ArrowMetricsSink(root / "metrics")
    t = time.perf_counter()
    for point_rows in rows:
        for row in point_rows:
            sink.write_row(row)
    sink.on_experiment_end([])
    return 0.0, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=25)
    p.add_argument("--epochs", type=int, default=20)
    args = p.parse_args(argv)
    rows = synthetic_rows(args.points, args.epochs)
    n = args.points * args.epochs
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(("Arrow metric sink (always on)", time_sink(rows, Path(tmp) / "sink")))
        for name in ("tensorboard", "mlflow", "wandb"):
            root = Path(tmp) / name
            root.mkdir()
            try:
                results.append((name, time_tracker(name, rows, root)))
            except Exception as exc:  # a missing extra: say so in the table
                results.append((f"{name} ({type(exc).__name__}: {str(exc)[:60]})", (float("nan"), float("nan"))))
            shutil.rmtree(root, ignore_errors=True)
    sink_row = results[0][1][1] / n
    print(
        f"| writer ({args.points} points x {args.epochs} epochs) | open + close, ms per point | log, ms per row "
        f"| rows per s (logging) | log cost x the sink's |"
    )
    print("| --- | --- | --- | --- | --- |")
    for label, (start_s, log_s) in results:
        print(
            f"| {label} | {start_s / args.points * 1e3:.1f} | {log_s / n * 1e3:.2f} | {n / log_s:,.0f} "
            f"| {log_s / n / sink_row:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
