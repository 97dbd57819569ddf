"""How metric storage, reading and the report scale with the number of trials.

    python -m benchmarks.metrics_scale [--trials 1000] [--epochs 100] [--old] [--skip-report]

Writes N synthetic trials x E epochs through the real driver sink (``ArrowMetricsSink``, one
record batch per epoch row, as a sweep writes them; the trial config is a real quickstart trial
config), ends the "sweep" as the driver does (``on_experiment_end``), then measures, each in a
fresh process so the memory figure is that step's alone:

- the sink's speed (rows per second) and the bytes per row on disk,
- ``load_metrics`` and ``load_trials``: seconds and peak RSS,
- ``lrbs report`` (html + json + md): seconds, peak RSS and report.html's size.

``--old`` writes the same sweep a second time as stream files only, never compacted, and reads it
with the per-row Python readers (``tests/rundir/old_readers.py``, the test oracle), side by side,
with the ratios.

The synthetic curves are smooth functions of (lr, batch size, seed, epoch), so every report
section has something to fit. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def _quickstart_shared() -> str:
    """The part of a quickstart trial's config every trial shares (JSON; loaded once)."""
    import yaml

    from lrbs.sweeps.spec_load import spec_from_dict

    spec = spec_from_dict(yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text()))
    shared = spec.to_dict()
    for key in ("grid", "description", "rescale", "beta", "variants", "limits", "tracking"):
        shared.pop(key, None)
    return json.dumps(shared)


def trial_config(lr: float, batch_size: int, seed: int) -> dict:
    """A quickstart trial's config (what ``to_param_space`` gives a trial), for this point."""
    shared = json.loads(_quickstart_shared())
    name = shared.pop("name")
    return {
        "point": {"lr": lr, "batch_size": batch_size, "seed": seed},
        "sweep": name,
        "code_version": "bench",
        **shared,
    }


def points(n: int) -> list[tuple[float, int, int]]:
    """n points of a grid over lr (20 values), batch size (up to 20 values) and seeds."""
    out = []
    lrs = [0.001 * 2 ** (i / 2) for i in range(20)]
    sizes = [8 * 2 ** (i / 3) for i in range(20)]
    i = 0
    while len(out) < n:
        lr, size, seed = lrs[i % 20], int(sizes[(i // 20) % 20]), i // 400
        out.append((lr, size, seed))
        i += 1
    return out


def write_sweep(run_dir: Path, n_trials: int, epochs: int, compact_every: int | None = None) -> tuple[float, int]:
    """Write the rows through the sink; (seconds, rows). ``compact_every=0``: the old layout
    (stream files only)."""
    import random

    from lrbs.sweeps.metrics_sink import ArrowMetricsSink, row_from_result

    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=compact_every)
    rows = 0
    elapsed = 0.0
    for t, (lr, size, seed) in enumerate(points(n_trials)):
        config = trial_config(lr, size, seed)
        trial_id = f"{t // 100000:05x}_{t % 100000:05d}"
        rng = random.Random(t)
        ratio = lr / size
        for e in range(1, epochs + 1):
            # Loss falls with epochs; larger eta/S ends lower in val loss up to a breakdown.
            quality = 1 - math.exp(-e / 10) * (1 - min(ratio * 2e3, 0.9))
            result = {
                "epoch": e,
                "lr": lr,
                "batch_size": size,
                "ratio": ratio,
                "train_loss": 2.3 * (1 - quality) + 0.01,
                "train_acc": 0.1 + 0.89 * quality,
                "val_loss": 2.3 * (1 - quality) + 0.05 + rng.random() * 0.01,
                "val_acc": 0.1 + 0.85 * quality + rng.random() * 0.01,
                "steps": e * 4000 // size,
                "examples_seen": 4000 * e,
                "epoch_s": 0.5,
                "wall_s": 0.5 * e,
                "n_train": 4000,
                "seed": seed,
                "status": "finished" if e == epochs else "running",
                "schedule": "constant",
            }
            if e == epochs:
                result.update(
                    lambda_max=10 / (1 + ratio * 1e3),
                    lambda_max_converged=True,
                    lambda_max_n_hvp=20,
                    hessian_trace=100 / (1 + ratio * 1e3),
                    hessian_trace_stderr=1.0,
                    probe_loss=0.1,
                    probe_n_samples=256,
                )
            row = row_from_result(result, config, trial_id)
            t0 = time.perf_counter()
            sink.write_row(row)
            elapsed += time.perf_counter() - t0
            rows += 1
        t0 = time.perf_counter()
        sink._close(trial_id)  # the trial ends: what on_trial_complete does
        elapsed += time.perf_counter() - t0
    t0 = time.perf_counter()
    sink.on_experiment_end([])
    return elapsed + time.perf_counter() - t0, rows


def measure(code: str, run_dir: Path) -> tuple[float, float, str]:
    """Run ``code`` (with ``run_dir`` bound) in a fresh interpreter: (seconds, peak RSS in GB, stdout)."""
    wrapper = (
        f"import resource, sys, time; from pathlib import Path; run_dir = Path({str(run_dir)!r}); "
        f"__t0 = time.perf_counter(); {code}; __s = time.perf_counter() - __t0; "
        f"print('MEASURED', __s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MEASURED"))
    _, seconds, rss = line.split()
    return float(seconds), float(rss), proc.stdout


LAYOUTS = {
    # name: (compact_every, module with load_metrics / trials_from_metrics)
    "old": (0, "tests.rundir.old_readers"),  # stream files only, readers in Python per row
    "new": (None, "lrbs.rundir.tables"),  # compacted Parquet, vectorized readers
}


def measure_layout(run_dir: Path, layout: str, n_trials: int, epochs: int, report: bool) -> dict[str, tuple]:
    compact_every, module = LAYOUTS[layout]
    write_s, rows = write_sweep(run_dir, n_trials, epochs, compact_every)
    on_disk = sum(f.stat().st_size for f in (run_dir / "metrics").rglob("*") if f.is_file())
    out = {"rows": rows, "write": (write_s, rows / write_s), "disk": (on_disk, on_disk / rows)}
    s, rss, _ = measure(
        f"from {module} import load_metrics; m = load_metrics(run_dir); assert m.num_rows == {rows}", run_dir
    )
    out["load_metrics"] = (s, rss)
    code = (
        "from lrbs.rundir.tables import load_trials; t = load_trials(run_dir)"
        if layout == "new"
        else f"from {module} import load_metrics, trials_from_metrics; t = trials_from_metrics(load_metrics(run_dir))"
    )
    s, rss, _ = measure(f"{code}; assert t.num_rows == {n_trials}", run_dir)
    out["load_trials"] = (s, rss)
    # One fit against eta/S with its interval, as the report does for every fitted metric: the old
    # 1,000-resample bootstrap over seeds (a per-resample loop), or the t interval on point means.
    fit = (
        "import numpy as np; from lrbs.rundir.tables import load_trials; from lrbs.analysis.fits import ratio_fit; "
        "import tests.rundir.old_readers as old; t = load_trials(run_dir); "
        "x = np.log10(np.array(t.column('ratio').to_pylist())); y = np.array(t.column('final_val_acc').to_pylist()); "
        "keys = list(zip(t.column('lr').to_pylist(), t.column('batch_size').to_pylist())); g = {}; "
        "[g.setdefault(k, []).append(i) for i, k in enumerate(keys)]; "
        "__f = __import__('time').perf_counter(); "
        + (
            "old.bootstrap_slopes(x, y, list(g.values()), 1000, np.random.default_rng(0))"
            if layout == "old"
            else "ratio_fit(t, 'final_val_acc')"
        )
        + "; print('FIT', __import__('time').perf_counter() - __f)"
    )
    _, _, stdout = measure(fit, run_dir)
    out["fit"] = (float(next(ln for ln in stdout.splitlines() if ln.startswith("FIT")).split()[1]),)
    if report:
        s, rss, _ = measure("from lrbs.analysis.report import write_reports; write_reports(run_dir)", run_dir)
        out["report"] = (s, rss, (run_dir / "report.html").stat().st_size)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument(
        "--old",
        action="store_true",
        help="also the unvectorized baseline side by side (stream files, per-row readers; ~12 GB of RAM per million rows)",
    )
    p.add_argument("--skip-report", action="store_true", help="measure storage and readers only")
    args = p.parse_args(argv)
    layouts = ["old", "new"] if args.old else ["new"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="lrbs-scale-") as tmp:
        for layout in layouts:
            results[layout] = measure_layout(
                Path(tmp) / layout / "scale",
                layout,
                args.trials,
                args.epochs,
                report=not args.skip_report and layout == "new",
            )
            shutil.rmtree(Path(tmp) / layout, ignore_errors=True)
    rows = results["new"]["rows"]

    def cell(layout: str, key: str) -> str:
        r = results.get(layout, {}).get(key)
        if r is None:
            return "-"
        if key == "write":
            return f"{r[0]:.1f} s ({r[1]:,.0f} rows/s)"
        if key == "disk":
            return f"{r[0] / 1e6:.1f} MB ({r[1]:,.0f} B/row)"
        if key == "report":
            return f"{r[0]:.1f} s, {r[1]:.2f} GB, report.html {r[2] / 1e6:.1f} MB"
        if key == "fit":
            return f"{r[0] * 1000:.1f} ms" if r[0] < 0.1 else f"{r[0]:.2f} s"
        return f"{r[0]:.1f} s, {r[1]:.2f} GB"

    def ratio(key: str) -> str:
        if "old" not in results or key not in results["old"] or key == "report":
            return "-"
        old, new = results["old"][key][0], results["new"][key][0]
        return f"{old / new:.1f}x {'smaller' if key == 'disk' else 'faster' if key != 'write' else ''}".strip()

    print(
        f"| {args.trials:,} trials x {args.epochs} epochs = {rows:,} rows | old way (streams, per-row readers) "
        f"| lrbs now (compacted, vectorized) | old / now |"
    )
    print("| --- | --- | --- | --- |")
    labels = {
        "write": "sink: write every row (driver)",
        "disk": "on disk once the sweep ended",
        "load_metrics": "load_metrics (time, peak RSS)",
        "load_trials": "load_trials (time, peak RSS)",
        "fit": "one fit against eta/S with its CI (old: 1,000-resample bootstrap; now: point means)",
        "report": "lrbs report (html, json, md)",
    }
    for key, label in labels.items():
        if key in results["new"]:
            print(f"| {label} | {cell('old', key)} | {cell('new', key)} | {ratio(key)} |")
    print(json.dumps({"trials": args.trials, "epochs": args.epochs, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
