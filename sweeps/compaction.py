"""Compaction of finished trials' metric files into Parquet (the driver's job; docs/metrics.md).

While a trial trains, its rows go to an Arrow IPC stream file, one record batch per epoch,
flushed at once (readable mid-sweep, a crash cuts off at most the tail). Each such batch carries
its own metadata (~3 KB a row with lrbs's ~50 columns), so a finished sweep's streams are ~10x
larger, and ~10x slower to read, than its rows need. When trials end, the driver rewrites their
closed stream files into one Parquet file (zstd, dictionary-encoded: a trial's config is stored
once per file, not once per row), then deletes them.

Crash safety (exactly-once reading at every point):
1. the Parquet file is written under a temporary name (``.<name>.<random>.tmp``, which readers
   ignore) and fsynced;
2. renamed into place (atomic) and the folder fsynced; its metadata names its source files
   (``lrbs.rundir.schema.COMPACTED_SOURCES``), so from here on readers skip those streams;
3. read back (row count) before 4. the sources are deleted.
A crash between any two steps leaves either the streams alone, or the Parquet file plus streams
it covers: either way every row is read once. A stream that was cut off or is damaged is never
compacted (it stays as it is, read and flagged by the readers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lrbs.rundir.safe_write import open_for_write
from lrbs.rundir.schema import COMPACTED_SOURCES

COMPACT_EVERY = 256  # closed stream files per compacted file (also at the end of every session)


def compact_streams(sources: list[Path], dest: Path) -> list[Path]:
    """Rewrite the closed stream files ``sources`` into the Parquet file ``dest`` and delete them.
    Returns the files compacted (those read whole; the others are left alone). Raises OSError if
    the Parquet file cannot be written (then nothing is deleted)."""
    tables, used = [], []
    for path in sources:
        # Files this driver wrote and closed: read whole or not at all (a closed stream that does
        # not read to its end marker is left alone, for the readers to flag).
        try:
            with pa.OSFile(str(path), "rb") as f:
                table = pa.ipc.open_stream(f).read_all().combine_chunks()  # one chunk, not one per row
                whole = f.tell() == f.size()  # nothing after the end-of-stream marker
            table.validate(full=True)  # bad bytes (e.g. invalid UTF-8): left for the readers to flag
        except (OSError, pa.ArrowException, ValueError):
            continue
        if table.num_rows and whole:
            tables.append(table)
            used.append(Path(path))
    if not tables:
        return []
    table = pa.concat_tables(tables, promote_options="default").combine_chunks()
    table = table.replace_schema_metadata({COMPACTED_SOURCES: json.dumps([p.name for p in used])})
    # Temporary file, fsync, rename, folder fsync (analysis.safe_write): a new file with a random
    # name, so a link planted at a predictable temporary name is never written through.
    with open_for_write(dest, fsync=True) as f:
        # One row group per 64k rows: readers can skip columns (and groups) without reading all.
        pq.write_table(table, f, compression="zstd", use_dictionary=True, row_group_size=65536)
    if pq.read_metadata(dest).num_rows != table.num_rows:  # never delete rows that do not read back
        raise OSError(f"{dest.name} reads back short")
    for path in used:
        path.unlink(missing_ok=True)
    return used


def compact_earlier_sessions(metrics_dir: Path) -> list[Path]:
    """Compact the stream files that earlier driver sessions left behind (a killed driver never
    compacts its own): one Parquet file per session, named inside that session's range so that
    write order (file-name order) is kept. Only for a caller holding the run's lock (``lrbs
    resume``): no other driver may be writing these files. Cut-off streams stay as they are.
    Returns the Parquet files written; a failure (a full disk) leaves the streams, with a warning."""
    covered: set[str] = set()
    for path in metrics_dir.glob("*.parquet"):  # streams a compacted file already holds: not twice
        try:
            covered.update(json.loads((pq.read_schema(path).metadata or {}).get(COMPACTED_SOURCES.encode(), b"[]")))
        except (OSError, ValueError, TypeError, pa.ArrowException):
            continue
    by_session: dict[str, list[Path]] = {}
    for path in sorted(metrics_dir.glob("*.arrow")):
        if "__" in path.name and path.name not in covered:
            by_session.setdefault(path.name.split("__", 1)[0], []).append(path)
    written = []
    for session, streams in by_session.items():
        k = 0
        while (dest := metrics_dir / f"{session}__compacted-r{k:04d}.parquet").exists():
            k += 1
        try:
            if compact_streams(streams, dest):
                written.append(dest)
        except (OSError, pa.ArrowException, ValueError) as exc:
            print(
                f"[lrbs] warning: could not compact {len(streams)} metric files of session {session} "
                f"({getattr(exc, 'strerror', None) or exc}); they stay as stream files (read the same)",
                file=sys.stderr,
                flush=True,
            )
    return written
