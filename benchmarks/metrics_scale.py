"""How metric storage, reading and the report scale with the number of trials (issue 15).

    python -m benchmarks.metrics_scale [--trials 1000] [--epochs 100] [--skip-report] [--keep DIR]

Writes N synthetic trials x E epochs through the real driver sink (``ArrowMetricsSink``, one
record batch per epoch row, as a sweep writes them; the trial config is a real quickstart trial
config), ends the "sweep" as the driver does (``on_experiment_end``), then measures, each in a
fresh process so the memory figure is that step's alone:

- the sink's speed (rows per second) and the bytes per row on disk,
- ``load_metrics`` and ``load_trials``: seconds and peak RSS,
- ``lrbs report`` (html + json + md): seconds, peak RSS and report.html's size.

The synthetic curves are smooth functions of (lr, batch size, seed, epoch), so every report
section has something to fit. Prints one Markdown table.
"""
from __future__ import annotations

import argparse
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


def trial_config(lr: float, batch_size: int, seed: int) -> dict:
    """A quickstart trial's config (what ``to_param_space`` gives a trial), for this point."""
    import yaml

    from sweeps.spec import spec_from_dict

    spec = spec_from_dict(yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text()))
    shared = spec.to_dict()
    for key in ("grid", "description", "rescale", "beta", "variants", "limits", "tracking"):
        shared.pop(key, None)
    name = shared.pop("name")
    return {"point": {"lr": lr, "batch_size": batch_size, "seed": seed}, "sweep": name, "code_version": "bench",
            **shared}


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


def write_sweep(run_dir: Path, n_trials: int, epochs: int) -> tuple[float, int]:
    """Write the rows through the sink; (seconds, rows)."""
    import random

    from sweeps.metrics_sink import ArrowMetricsSink, row_from_result

    sink = ArrowMetricsSink(run_dir / "metrics")
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
            result = {"epoch": e, "lr": lr, "batch_size": size, "ratio": ratio, "train_loss": 2.3 * (1 - quality) + 0.01,
                      "train_acc": 0.1 + 0.89 * quality, "val_loss": 2.3 * (1 - quality) + 0.05 + rng.random() * 0.01,
                      "val_acc": 0.1 + 0.85 * quality + rng.random() * 0.01, "steps": e * 4000 // size,
                      "examples_seen": 4000 * e, "epoch_s": 0.5, "wall_s": 0.5 * e, "n_train": 4000, "seed": seed,
                      "status": "finished" if e == epochs else "running", "schedule": "constant"}
            if e == epochs:
                result.update(lambda_max=10 / (1 + ratio * 1e3), lambda_max_converged=True, lambda_max_n_hvp=20,
                              hessian_trace=100 / (1 + ratio * 1e3), hessian_trace_stderr=1.0, probe_loss=0.1,
                              probe_n_samples=256)
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
    wrapper = (f"import resource, sys, time; from pathlib import Path; run_dir = Path({str(run_dir)!r}); "
               f"__t0 = time.perf_counter(); {code}; __s = time.perf_counter() - __t0; "
               f"print('MEASURED', __s, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)")
    proc = subprocess.run([sys.executable, "-c", wrapper], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MEASURED"))
    _, seconds, rss = line.split()
    return float(seconds), float(rss), proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--skip-report", action="store_true", help="measure storage and readers only")
    p.add_argument("--keep", default=None, help="write the run directory here (kept) instead of a temporary one")
    args = p.parse_args(argv)
    tmp = None
    if args.keep:
        run_dir = Path(args.keep)
        run_dir.mkdir(parents=True, exist_ok=False)
    else:
        tmp = tempfile.mkdtemp(prefix="lrbs-scale-")
        run_dir = Path(tmp) / "scale"
    try:
        write_s, rows = write_sweep(run_dir, args.trials, args.epochs)
        on_disk = sum(f.stat().st_size for f in (run_dir / "metrics").rglob("*") if f.is_file())
        results = [("sink: write every row (driver)", f"{write_s:.1f} s", f"{rows / write_s:,.0f} rows/s", "-"),
                   ("on disk", f"{on_disk / 1e6:.1f} MB", f"{on_disk / rows:,.0f} bytes/row", "-")]
        s, rss, _ = measure("from analysis.tables import load_metrics; m = load_metrics(run_dir); "
                            "assert m.num_rows == " + str(rows), run_dir)
        results.append(("load_metrics", f"{s:.1f} s", f"{rows / s:,.0f} rows/s", f"{rss:.2f} GB"))
        s, rss, _ = measure("from analysis.tables import load_trials; t = load_trials(run_dir); "
                            "assert t.num_rows == " + str(args.trials), run_dir)
        results.append(("load_trials", f"{s:.1f} s", "-", f"{rss:.2f} GB"))
        if not args.skip_report:
            s, rss, _ = measure("from analysis.report import write_reports; write_reports(run_dir)", run_dir)
            html = (run_dir / "report.html").stat().st_size
            results.append(("lrbs report (html, json, md)", f"{s:.1f} s", f"report.html {html / 1e6:.1f} MB",
                            f"{rss:.2f} GB"))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"| {args.trials:,} trials x {args.epochs} epochs = {rows:,} rows | time | rate / size | peak RSS |")
    print("| --- | --- | --- | --- |")
    for r in results:
        print("| " + " | ".join(r) + " |")
    print(json.dumps({"trials": args.trials, "epochs": args.epochs, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
