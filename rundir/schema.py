"""The Arrow schema of the metric tables: one row per (trial_id, epoch). See docs/metrics.md."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

# Provenance first (init2winit style): every row says which sweep, trial, point and code made it.
PROVENANCE = [
    pa.field("sweep", pa.string()),
    pa.field("trial_id", pa.string()),
    pa.field("code_version", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("n_train", pa.int64()),  # training examples the trial saw (after any subset)
    pa.field("model", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("config_json", pa.string()),  # the trial's whole config, JSON (load_trials expands it)
    pa.field("precision", pa.string()),  # train.precision of the training steps: fp32 | tf32 | bf16
]

METRICS = [
    pa.field("epoch", pa.int64()),  # epochs completed (1-based)
    pa.field("lr", pa.float64()),  # learning rate used in this epoch
    pa.field("batch_size", pa.int64()),  # examples per step in this epoch
    pa.field("ratio", pa.float64()),  # lr / batch_size
    pa.field("train_loss", pa.float64()),  # running mean over the epoch, nats per example
    pa.field("train_acc", pa.float64()),  # running mean over the epoch
    pa.field("val_loss", pa.float64()),  # end of epoch, eval mode, nats per example
    pa.field("val_acc", pa.float64()),
    # Eval mode (batch norm in inference mode) at the last epoch's final weights, on a fixed
    # seeded subset of train.train_eval_samples training examples (the same in every trial of a
    # sweep); null on other epochs and for a diverged trial.
    pa.field("train_eval_loss", pa.float64()),  # nats per example
    pa.field("train_eval_acc", pa.float64()),
    pa.field("steps", pa.int64()),  # optimizer steps since the start of training
    pa.field("examples_seen", pa.int64()),
    pa.field("epoch_s", pa.float64()),  # wall seconds of this epoch (train + eval)
    pa.field("wall_s", pa.float64()),  # wall seconds since the trial started training
    pa.field("status", pa.string()),  # running | finished | diverged
    pa.field("beta", pa.float64()),  # beta family member (Fig. 5), else null
    pa.field("rescale", pa.string()),  # rescaling rule (Fig. 2): reference | linear | sqrt | none, else null
    pa.field("variant", pa.string()),  # label of a named explicit point (spec variants), else null
    pa.field("schedule", pa.string()),  # schedule kind: constant | step | cyclic_lr | cyclic_batch
    pa.field("written_at", pa.float64()),  # driver's unix time when the row was written
]

# Curvature probes (trainables/curvature.py): null on epochs without a probe. Batch norm in
# eval mode, on a fixed seeded subset of probe_n_samples training examples.
PROBES = [
    # Mean cross-entropy on the probe subset in eval mode at the probed weights: the E(l) that
    # Eq. 7 compares with (eta/4S) Tr(H) (the train-mode epoch mean differs by up to 7x).
    pa.field("probe_loss", pa.float64()),  # nats per example
    pa.field("lambda_max", pa.float64()),  # largest Hessian eigenvalue (Lanczos)
    pa.field("lambda_max_converged", pa.bool_()),
    pa.field("lambda_max_n_hvp", pa.int64()),
    pa.field("hessian_trace", pa.float64()),  # Hutchinson estimate
    pa.field("hessian_trace_stderr", pa.float64()),
    pa.field("hessian_fro", pa.float64()),  # Frobenius norm ||H||_F, Hutchinson
    pa.field("hessian_fro_stderr", pa.float64()),
    pa.field("grad_noise_scale", pa.float64()),  # B_simple = tr(Sigma)/|G|^2, in examples
    pa.field("grad_noise_scale_stderr", pa.float64()),  # its standard error (examples)
    pa.field("probe_n_samples", pa.int64()),
    pa.field("probe_s", pa.float64()),  # wall seconds spent in probes this epoch
    # A probe that raised: "<probe>: <error type>: <first line>" ("; "-joined), its columns null
    # in this row; null when every probe ran (trainables/probes.py run_probes).
    pa.field("probe_error", pa.string()),
]

METRIC_SCHEMA = pa.schema(PROVENANCE + METRICS + PROBES)

# Keys of a trainable's epoch row that are not columns: ``member`` routes a pack member's row to
# its own trial id (sweeps/metrics_sink.py) and is dropped there.
ROUTING_KEYS = frozenset({"member"})


def check_row(row: Mapping[str, object]) -> None:
    """Raise ValueError naming any key of an epoch row that the schema does not declare.

    A new probe or metric must add its column here (docs/extending.md); without this check the
    sink would silently drop it and the value would never reach a table or a report.
    """
    undeclared = sorted(set(row) - set(METRIC_SCHEMA.names) - ROUTING_KEYS)
    if undeclared:
        raise ValueError(
            f"metric row: columns {undeclared} are not declared in rundir/schema.py "
            f"(add a pa.field to METRICS or PROBES)"
        )


# A compacted metric file (``metrics/<session>__compacted-<k>.parquet``, written by the driver
# from the stream files of finished trials, sweeps/compaction.py) names the stream files it
# replaces in this key of its Parquet metadata (a JSON list of file names). Readers skip those
# stream files if they are still there (the driver stopped between writing it and deleting them).
COMPACTED_SOURCES = "lrbs.sources"
