"""Metric storage at scale: finished trials compacted into Parquet by the driver, read
exactly once at every crash point of the compaction; the vectorized readers equal the
per-row Python readers (tests/rundir/old_readers.py) on the frozen fixtures and on sink-written runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lrbs.rundir.tables import load_metrics, load_metrics_with_report, load_trials
from lrbs.sweeps.compaction import compact_earlier_sessions, compact_streams
from lrbs.sweeps.metrics_sink import ArrowMetricsSink
from tests.rundir import old_readers as old

FIXTURES = Path(__file__).parents[1] / "fixtures"


def same_values(a: pa.Table, b: pa.Table) -> bool:
    """Equal types and values, NaN equal to NaN (Arrow's ``equals`` says NaN != NaN)."""

    def plain(v):
        return "NaN" if isinstance(v, float) and v != v else v

    return a.schema == b.schema and all(
        a.column(c).equals(b.column(c))
        or [plain(v) for v in a.column(c).to_pylist()] == [plain(v) for v in b.column(c).to_pylist()]
        for c in a.column_names
    )


def assert_same_rows(new: pa.Table, reference: pa.Table) -> None:
    """Equal in every column; ``config_json`` only on each trial's last row (the reference has it on all)."""
    assert new.column_names == reference.column_names
    assert same_values(new.drop_columns(["config_json"]), reference.drop_columns(["config_json"]))
    trial = new.column("trial_id").to_pylist()
    last = [i == len(trial) - 1 or trial[i] != trial[i + 1] for i in range(len(trial))]
    ref_config = reference.column("config_json").to_pylist()
    assert new.column("config_json").to_pylist() == [c if is_last else None for c, is_last in zip(ref_config, last)]


@pytest.mark.parametrize("name", ["grid", "rescale", "breakdown"])
def test_readers_equal_the_old_readers_on_frozen_fixtures(name):
    reference = old.load_metrics(FIXTURES / name)
    assert reference.num_rows > 0
    assert_same_rows(load_metrics(FIXTURES / name), reference)
    assert same_values(load_trials(FIXTURES / name), old.trials_from_metrics(reference))


def write_run(run_dir: Path, n_trials: int = 12, epochs: int = 6) -> None:
    """Rows through the real sink, as a sweep writes them, without compaction; one trial restarted
    from scratch under a new id and one continued after a lost epoch, so superseding matters."""
    from benchmarks.metrics_scale import trial_config
    from lrbs.sweeps.metrics_sink import row_from_result

    sink = ArrowMetricsSink(run_dir / "metrics", compact_every=0)

    def rows(trial_id: str, config: dict, first: int, last: int, shift: float = 0.0) -> None:
        for e in range(first, last + 1):
            result = {
                "epoch": e,
                "lr": config["point"]["lr"],
                "batch_size": config["point"]["batch_size"],
                "val_acc": 0.5 + 0.01 * e + shift,
                "val_loss": 1.0 / e,
                "train_loss": 1.0 / e + shift,
                "train_acc": 0.4 + 0.01 * e,
                "status": "finished" if e == epochs else "running",
                "n_train": 100,
                "seed": config["point"]["seed"],
                **({"lambda_max": 5.0 + e} if e % 3 == 0 else {}),
            }
            sink.write_row(row_from_result(result, config, trial_id))

    for t in range(n_trials):
        config = trial_config(0.01 * (t + 1), 16 * (1 + t % 3), t % 2)
        rows(f"aaaaa_{t:05d}", config, 1, epochs if t != 0 else 3)
        sink._close(f"aaaaa_{t:05d}")
    # a second session: trial 1 continued from epoch 2 (epochs 3.. written again), trial 0
    # restarted from scratch under a new id (its old rows are superseded)
    later = ArrowMetricsSink(run_dir / "metrics", compact_every=0)
    sink = later
    rows("aaaaa_00001", trial_config(0.02, 32, 1), 3, epochs, shift=0.5)
    rows("bbbbb_00000", trial_config(0.01, 16, 0), 1, epochs, shift=0.25)
    later._close("aaaaa_00001")
    later._close("bbbbb_00000")


def test_compaction_is_read_exactly_once_at_every_crash_point(tmp_path, capsys):
    run = tmp_path / "run"
    write_run(run)
    metrics = run / "metrics"
    streams = sorted(metrics.glob("*.arrow"))
    reference = old.load_metrics(run)  # the old reader on the old layout
    assert_same_rows(load_metrics(run), reference)
    assert {r["trial_id"] for r in reference.to_pylist()} >= {"bbbbb_00000"}
    assert "aaaaa_00000" not in set(reference.column("trial_id").to_pylist())  # superseded
    saved = tmp_path / "saved"
    shutil.copytree(metrics, saved)
    stream_bytes = sum(p.stat().st_size for p in streams)

    # 1. killed while writing the Parquet file: a temporary file readers ignore
    (metrics / ".x__compacted-0000.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert_same_rows(load_metrics(run), reference)
    (metrics / ".x__compacted-0000.parquet.tmp").unlink()

    # 2. killed after the rename, before the sources were deleted: each row still read once
    dest = metrics / "20990101T000000000000Z-1__compacted-0000.parquet"
    assert compact_streams(streams, dest) == streams
    assert not list(metrics.glob("*.arrow"))
    assert_same_rows(load_metrics(run), reference)  # 3. done: the new layout reads the same
    compacted_bytes = dest.stat().st_size
    for p in streams:
        shutil.copy(saved / p.name, p)
    table, info = load_metrics_with_report(run)
    assert_same_rows(table, reference) and not info.damaged

    # 4. the compacted file damaged while its sources are still there: flagged, rows from the sources
    dest.write_bytes(dest.read_bytes()[: compacted_bytes // 2])
    table, info = load_metrics_with_report(run)
    assert_same_rows(table, reference)
    assert list(info.damaged) == [dest.name] and "unreadable compacted file" in info.damaged[dest.name]
    from lrbs.sweeps.cli import main

    assert main(["status", str(run)]) == 0
    assert f"DAMAGED: compacted metric file {dest.name}: unreadable compacted file" in capsys.readouterr().out
    assert old.load_metrics(run).num_rows == reference.num_rows
    assert stream_bytes / compacted_bytes > 5  # what compaction is for (the benchmark has the real figures)


def test_resume_compacts_the_streams_killed_sessions_left(tmp_path):
    """``lrbs resume`` (under the run's lock) compacts what killed drivers left as streams: one
    Parquet file per session, inside that session's name range (write order kept, so superseding
    reads the same); a cut-off stream stays; a second pass finds nothing to do."""
    run = tmp_path / "run"
    write_run(run)  # two sessions, neither compacted (as if both drivers were killed)
    metrics = run / "metrics"
    streams = sorted(metrics.glob("*.arrow"))
    first = streams[0].name.split("__")[0]
    compact_streams(streams[:3], metrics / f"{first}__compacted-0000.parquet")  # it got that far
    cut = streams[-1]  # the second driver was killed while writing its newest batch
    cut.write_bytes(cut.read_bytes()[:-40])
    before, info = load_metrics_with_report(run)
    assert list(info.dropped_bytes) == [cut.name]

    written = compact_earlier_sessions(metrics)
    sessions = sorted({p.name.split("__")[0] for p in streams})
    assert [p.name for p in written] == [f"{s}__compacted-r0000.parquet" for s in sessions]
    assert [p.name for p in metrics.glob("*.arrow")] == [cut.name]
    after, info = load_metrics_with_report(run)
    assert same_values(after, before) and list(info.dropped_bytes) == [cut.name] and not info.damaged
    assert "aaaaa_00000" not in set(after.column("trial_id").to_pylist())  # still superseded
    assert compact_earlier_sessions(metrics) == []  # the cut-off stream is never compacted


def test_sink_compacts_as_trials_end_and_at_the_end(tmp_path):
    """Through the sink: every ``compact_every`` closed files and at the experiment's end; a
    trial still open keeps its stream file until it ends."""
    run = tmp_path / "run"
    write_run(run)
    reference = old.load_metrics(run)
    shutil.rmtree(run)
    from benchmarks.metrics_scale import trial_config
    from lrbs.sweeps.metrics_sink import row_from_result

    sink = ArrowMetricsSink(run / "metrics", compact_every=5)
    for r in reference.to_pylist():  # the same final rows, one trial after another
        sink.write_row(r)
        if r["epoch"] == 6 or (r["trial_id"] == "aaaaa_00000" and r["epoch"] == 3):
            sink._close(r["trial_id"])
    assert len(list((run / "metrics").glob("*.parquet"))) == 2  # two batches of 5 closed files
    sink.write_row(row_from_result({"epoch": 1, "status": "running"}, trial_config(0.5, 16, 0), "ccccc_00000"))
    sink.on_experiment_end([])
    files = sorted(p.suffix for p in (run / "metrics").iterdir())
    assert files == [".parquet"] * 3 and not list((run / "metrics").glob(".*"))
    table = load_metrics(run)
    kept = table.filter(pc.not_equal(table.column("trial_id"), "ccccc_00000"))
    assert_same_rows(kept, reference)


def test_damaged_streams_are_not_compacted_and_old_compacted_files_read(tmp_path):
    """A closed stream with bad bytes stays a stream (flagged by the readers, not laundered into
    Parquet); a compacted file written before a column existed still reads in load_trials."""
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    write_run(run)
    streams = sorted((run / "metrics").glob("*.arrow"))
    bad = streams[0]
    data = bytearray(bad.read_bytes())
    at = data.find(b'"point"')  # inside the config text of a record: invalid UTF-8 there
    data[at : at + 2] = b"\xff\xfe"
    bad.write_bytes(bytes(data))
    before = load_metrics_with_report(run)[1].damaged
    assert bad.name in before
    dest = run / "metrics" / "20990101T000000000000Z-1__compacted-0000.parquet"
    assert bad not in compact_streams(streams, dest) and bad.exists()
    assert bad.name in load_metrics_with_report(run)[1].damaged
    # Drop a column from the compacted file, as a file from older code would lack a newer one.
    table = pq.read_table(dest)
    pq.write_table(table.drop_columns(["schedule"]).replace_schema_metadata(table.schema.metadata), dest)
    trials = load_trials(run)
    assert trials.num_rows == len({t for t in load_metrics(run).column("trial_id").to_pylist()})
    assert not load_metrics_with_report(run)[1].damaged.get(dest.name)


def test_readers_equal_the_old_readers_on_eval_mode_train_columns(tmp_path):
    """Rows with train_eval_loss/acc on each trial's last epoch (one trial diverged without them,
    one restarted from scratch, one continued): the trial table's final_train_eval_* equal the
    per-row oracle's, compacted or not, and are the values of each trial's last row."""
    from benchmarks.metrics_scale import trial_config
    from lrbs.sweeps.metrics_sink import row_from_result

    run, epochs = tmp_path / "run", 4
    written: dict[str, tuple[float, float]] = {}

    def rows(sink, trial_id, config, first, last, diverged=False, shift=0.0):
        for e in range(first, last + 1):
            end = e == last
            result = {
                "epoch": e,
                "lr": config["point"]["lr"],
                "batch_size": config["point"]["batch_size"],
                "val_acc": 0.5 + 0.01 * e,
                "val_loss": 1.0 / e,
                "train_loss": 1.0 / e,
                "train_acc": 0.4 + 0.1 * e,
                "status": ("diverged" if diverged else "finished") if end else "running",
                "n_train": 100,
                "seed": config["point"]["seed"],
            }
            if end and not diverged:
                result.update(train_eval_loss=0.1 / e + shift, train_eval_acc=0.9 + shift)
                written[trial_id] = (result["train_eval_loss"], result["train_eval_acc"])
            sink.write_row(row_from_result(result, config, trial_id))
        sink._close(trial_id)

    first = ArrowMetricsSink(run / "metrics", compact_every=0)
    for t in range(6):
        rows(
            first,
            f"aaaaa_{t:05d}",
            trial_config(0.01 * (t + 1), 16, t % 2),
            1,
            2 if t == 0 else epochs,
            diverged=t == 5,
            shift=0.001 * t,
        )
    later = ArrowMetricsSink(run / "metrics", compact_every=0)
    rows(later, "aaaaa_00001", trial_config(0.02, 16, 1), 3, epochs, shift=0.05)  # continued: rows replaced
    rows(later, "bbbbb_00000", trial_config(0.01, 16, 0), 1, epochs, shift=0.02)  # restarted from scratch
    written.pop("aaaaa_00000", None)
    for compacted in (False, True):
        if compacted:
            dest = run / "metrics" / "20990101T0Z-1__compacted-0000.parquet"
            compact_streams(sorted((run / "metrics").glob("*.arrow")), dest)
        trials = load_trials(run)
        assert same_values(trials, old.trials_from_metrics(old.load_metrics(run)))
        got = {t["trial_id"]: (t["final_train_eval_loss"], t["final_train_eval_acc"]) for t in trials.to_pylist()}
        assert got == {**written, "aaaaa_00005": (None, None)}
