"""Every path and file name inside a run directory, local or at a storage URI.

RUN_DIR/
  spec.yaml            the validated spec, as run (``lrbs resume`` reads it, never Ray's state)
  provenance.json      code version, host, Ray and torch versions of the first session
  plugins.json         folders the user's model and data-set modules were imported from
  lock.json            the driver that holds the run (one at a time)
  metrics/             Arrow stream files, one per driver session and writer; compacted Parquet
  trials/<id>.json     one record per trial: its points, checkpoints, how it ended
  resume-*/            Ray's experiment folder of each ``lrbs resume`` session
  interpolation/       ``lrbs interpolate``'s curves, <A>__<B>.arrow
  export/              ``lrbs export``'s epochs.<ext> and trials.<ext>
  report.html, fits.json, report.md, trials-<selector>.html, compare-<RUN_B>.md/.html
  tensorboard/, mlruns/, wandb/   what the experiment trackers write
"""

from __future__ import annotations

SPEC_COPY = "spec.yaml"
PROVENANCE_FILE = "provenance.json"
PLUGIN_ROOTS = "plugins.json"
LOCK_FILE = "lock.json"
METRIC_DIR = "metrics"
LEDGER_DIR = "trials"
CHECKPOINT_GLOB = "checkpoint_*"  # Tune's checkpoint folders inside a trial folder
TRIAL_PARAMS = "params.json"  # Tune's copy of a trial's config (plain JSON) in its trial folder
SESSION_GLOB = "resume-*"  # the Ray experiment of each `lrbs resume` session
TRACKER_DIRS = ("tensorboard", "mlruns", "wandb")
REPORT_FILES = {"html": "report.html", "json": "fits.json", "md": "report.md"}
TRIAL_PAGE = "trials-{}.html"  # ``lrbs report --trials``: {} is the selectors as a file-name slug
COMPARE_PAGE = "compare-{}"  # ``lrbs report --compare RUN_B``: {} is RUN_B's name; .md and .html
INTERPOLATION_DIR = "interpolation"
EXPORT_DIR = "export"
RAY_LOG = "ray.log"  # Ray's own output (the terminal keeps lrbs's lines)
DRIVER_ERROR = "driver-error.txt"  # the traceback of a driver that stopped on an unexpected error
RESUME_PLAN = "lrbs-resume-plan.json"  # in each resume session's folder: what each trial continues
FAULT_MARKERS = (
    "faults"  # resilience.fail_at_epoch's markers (a test hook)  # ``lrbs export``: epochs.<ext>, trials.<ext>
)
