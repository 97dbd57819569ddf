"""A SIGKILLed driver, then ``lrbs resume``, on a run directory in object storage: a
real S3-compatible server on loopback (moto's server mode), the driver and its embedded Ray
killed mid-sweep, then ``lrbs status``, ``resume``, ``report`` and ``interpolate`` on the ``s3://``
URI. The store is reached both standard ways: pyarrow's URI query
(``?endpoint_override=...&scheme=http``) for the run, the AWS environment variables for the rest.

The same run checks what the embedded cluster exposes (loopback listeners only, token auth) and
that Ray's pickled state is never trusted (a crafted ``tuner.pkl``, a truncated experiment state,
a cut-off newest checkpoint are planted in the bucket before the resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.conftest import ROOT, write_yaml
from tests.sweeps.test_resilience import KILL_EPOCHS, assert_exactly_once_and_unfaulted, fault_spec, read_stream_file

BUCKET = "lrbs-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 (a free port) with one bucket; yields its endpoint."""
    moto_server = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint,
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir(BUCKET)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # this process reads the bucket by URI too
    yield endpoint, fs
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def _session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (the killed driver's, started with a new session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # fields after comm: state ppid pgrp session
                pids.append(int(entry.name))
    return pids


def _listening(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket the processes hold (/proc, no tools needed)."""
    import ipaddress
    import socket

    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            if family == socket.AF_INET:
                ip = str(ipaddress.IPv4Address(raw[::-1]))
            else:  # four little-endian 32-bit words
                ip = str(ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))
                if ip.startswith("::ffff:"):
                    ip = "::ffff:" + str(ipaddress.IPv6Address(ip).ipv4_mapped)
            found.append((ip, int(hex_port, 16)))
    return found


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **CREDENTIALS, "PYTHONPATH": str(ROOT), **extra}


def _lrbs(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lrbs", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _kill_session(driver: subprocess.Popen) -> None:
    if driver.poll() is None:
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _session_pids(driver.pid) and time.monotonic() < deadline:
        for pid in _session_pids(driver.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


@pytest.mark.slow
def test_s3_sigkill_resume_status_report_interpolate(s3_server, tmp_path):
    endpoint, fs = s3_server
    spec = write_yaml(tmp_path / "s3k.yaml", fault_spec("s3k", train={"epochs": KILL_EPOCHS}))
    storage = f"s3://{BUCKET}/runs?endpoint_override={endpoint}&scheme=http"  # the URI-query way
    cache = {"LRBS_CACHE_DIR": str(tmp_path / "cache")}
    log = open(tmp_path / "run.log", "w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "lrbs", "run", str(spec), "--storage", storage, "--no-report", "--upload-interval", "0"],
        cwd=ROOT,
        env=_env(**cache),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    run_path = f"{BUCKET}/runs/s3k"
    try:
        # Wait for a few epochs' checkpoints in the bucket (rows are uploaded at every result).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            infos = fs.get_file_info(pafs.FileSelector(run_path, recursive=True, allow_not_found=True))
            if any(i.path.endswith("checkpoint_000002/state.pt") for i in infos):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the sweep made no checkpointed progress in 180 s")
        # lrbs's local cluster: no dashboard, or one on loopback only.
        cmdlines = [_cmdline(pid) for pid in _session_pids(driver.pid)]
        assert any("raylet" in c for c in cmdlines), cmdlines
        for c in cmdlines:
            if "dashboard" in c and "--host" in c:
                assert "--host=127.0.0.1" in c or "--host 127.0.0.1" in c, c
        # Every TCP port Ray listens on is on loopback, and token auth is on.
        listening = _listening(_session_pids(driver.pid))
        assert len(listening) >= 5 and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _ in listening), (
            listening
        )
        assert any(
            "RAY_AUTH_MODE=token" in _environ(pid) for pid in _session_pids(driver.pid) if "gcs_server" in _cmdline(pid)
        )
        token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        assert token.stat().st_mode & 0o077 == 0  # the token file: its owner only
    finally:
        _kill_session(driver)
        log.close()
    assert not _session_pids(driver.pid)
    assert fs.get_file_info(f"{run_path}/lock.json").type == pafs.FileType.File  # left by the killed driver

    # Hostile and damaged Ray state must not matter: a crafted
    # tuner.pkl that would run code if unpickled, a truncated experiment state; and the newest
    # checkpoint cut off (a full disk): resume falls back to the one before it.
    marker = tmp_path / "pwned"
    with fs.open_output_stream(f"{run_path}/tuner.pkl") as f:
        f.write(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    infos = fs.get_file_info(pafs.FileSelector(run_path, recursive=True))
    for info in infos:
        if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json"):
            data = fs.open_input_stream(info.path).read()
            with fs.open_output_stream(info.path) as f:
                f.write(data[:100])
    states = sorted(i.path for i in infos if "/checkpoint_" in i.path and i.path.endswith("/state.pt"))
    data = fs.open_input_stream(states[-1]).read()
    with fs.open_output_stream(states[-1]) as f:
        f.write(data[:1000])

    # From here on the store is named by the AWS environment variables alone (no query).
    env = _env(AWS_ENDPOINT_URL=f"http://{endpoint}", **cache)
    uri = f"s3://{run_path}"
    out = _lrbs("status", uri, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "2 trials: 2 stopped" in out.stdout and f"/{2 * KILL_EPOCHS} |" in out.stdout, (
        out.stdout
    )  # the dead driver's trials

    out = _lrbs("resume", uri, "--no-report", "--upload-interval", "0", env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "took over a stale lock" in out.stderr
    assert "2 continue from checkpoints" in out.stdout and "2 trials finished, 0 errored" in out.stdout, out.stdout
    assert fs.get_file_info(f"{run_path}/lock.json").type == pafs.FileType.NotFound
    assert not marker.exists()

    # The bucket's rows (fetched fresh): every (trial, epoch) once, equal to an uninterrupted run.
    from lrbs.sweeps.storage import fetch_run_dir

    os.environ.update(cache)
    try:
        local = fetch_run_dir(f"{uri}?endpoint_override={endpoint}&scheme=http")
    finally:
        os.environ.pop("LRBS_CACHE_DIR")
    rows = assert_exactly_once_and_unfaulted(local, n_trials=2, epochs=KILL_EPOCHS)
    sessions = sorted({p.name.split("__")[0] for p in (local / "metrics").iterdir()})
    assert len(sessions) == 2  # the killed driver's rows and the resumed session's, both in the bucket
    # The resumed session ended compacted (its streams deleted from the store); the streams the
    # killed driver left were compacted by the resume (those read whole: a cut-off one would stay).
    assert [p.suffix for p in (local / "metrics").glob(f"{sessions[1]}__*")] == [".parquet"]
    assert ".parquet" in [p.suffix for p in (local / "metrics").glob(f"{sessions[0]}__*")]
    # Both members continued from the newest checkpoint that loads and is not ahead of the rows
    # the bucket had (the cut-off one was skipped): their first resumed row is the epoch after it.
    from lrbs.rundir.tables import read_compacted_file
    from lrbs.trainables.train_loop import load_state

    killed = [read_stream_file(p)[0] for p in (local / "metrics").glob(f"{sessions[0]}__*.arrow")]
    killed += [read_compacted_file(p)[0] for p in (local / "metrics").glob(f"{sessions[0]}__*.parquet")]
    last_of: dict[str, int] = {}
    for t in killed:
        for trial_id, epoch in zip(t.column("trial_id").to_pylist(), t.column("epoch").to_pylist()):
            last_of[trial_id] = max(epoch, last_of.get(trial_id, 0))
    assert len(last_of) == 2
    last_row = min(last_of.values())
    usable = [
        e
        for e in (
            load_state(f"s3://{p.rsplit('/', 1)[0]}?endpoint_override={endpoint}&scheme=http")["epoch"]
            for p in states[:-1]
        )
        if e <= last_row
    ]
    (compacted,) = (local / "metrics").glob(f"{sessions[1]}__*.parquet")
    table = read_compacted_file(compacted)[0]
    first_of: dict[str, int] = {}
    for trial_id, epoch in zip(table.column("trial_id").to_pylist(), table.column("epoch").to_pylist()):
        first_of.setdefault(trial_id, epoch)
    resumed_first = list(first_of.values())
    assert resumed_first == [max(usable) + 1] * 2, (resumed_first, usable, last_row)
    resumed = [
        i
        for i in fs.get_file_info(pafs.FileSelector(run_path, recursive=True))
        if "/resume-" in i.path and i.path.endswith("/state.pt")
    ]
    assert resumed  # the resumed trial checkpointed into the bucket, beside the first session's folders
    records = [
        json.loads(fs.open_input_stream(i.path).read())
        for i in fs.get_file_info(pafs.FileSelector(f"{run_path}/trials"))
    ]
    assert [r["status"] for r in records] == ["TERMINATED"] and len(records[0]["logdirs"]) == 2

    out = _lrbs("status", uri, env=env, timeout=120)
    assert out.returncode == 0 and "2 trials: 2 finished" in out.stdout, out.stdout + out.stderr
    # A second resume finds nothing to do and starts no Ray.
    out = _lrbs("resume", uri, "--no-report", env=env, timeout=120)
    assert out.returncode == 0 and "2 trials done; 0 continue" in out.stdout, out.stdout + out.stderr

    out = _lrbs("report", uri, "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    assert fs.get_file_info(f"{run_path}/fits.json").type == pafs.FileType.File

    # lrbs export: the deduplicated tables next to the run in the bucket; a second export refuses.
    out = _lrbs("export", uri, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    import pyarrow.parquet as pq

    exported = pq.read_table(f"{run_path}/export/epochs.parquet", filesystem=fs)
    assert exported.num_rows == len(rows) == 2 * KILL_EPOCHS
    out = _lrbs("export", uri, env=env, timeout=120)
    assert out.returncode == 2 and "already exists" in out.stderr, out.stderr

    members = sorted({r["trial_id"] for r in rows})
    out = _lrbs("interpolate", uri, *members, "--num", "3", env=env)
    assert out.returncode == 0, out.stderr
    # Both ends are the final weights: the resumed session's last checkpoint, not the first session's.
    fetched = list((tmp_path / "cache" / "fetched").glob("*/s3k/resume-*/*/checkpoint_*"))
    from lrbs.trainables.train_loop import load_state

    assert [load_state(p)["epoch"] for p in fetched] == [KILL_EPOCHS], fetched
    uploaded = fs.get_file_info(pafs.FileSelector(f"{run_path}/interpolation"))
    assert sorted(i.base_name for i in uploaded) == [
        f"{members[0]}__{members[1]}.arrow",
        f"{members[0]}__{members[1]}.html",
    ]


def test_s3_bad_input_is_one_line(s3_server, tmp_path, monkeypatch, capsys):
    from lrbs.sweeps.cli import main

    endpoint, fs = s3_server
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")
    monkeypatch.setenv("LRBS_CACHE_DIR", str(tmp_path / "cache"))
    fs.create_dir(f"{BUCKET}/notarun/metrics")
    before = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True)))
    for args, expected in [
        (("resume", f"s3://{BUCKET}/nothing"), "is not an lrbs run directory (no spec.yaml, metrics inside)"),
        (("resume", f"s3://{BUCKET}/notarun"), "is not an lrbs run directory (no spec.yaml inside)"),
        (("status", f"s3://{BUCKET}/nothing"), "is not an lrbs run directory (no metrics inside)"),
        (("report", f"s3://{BUCKET}/nothing"), "is not an lrbs run directory (no metrics inside)"),
        (("interpolate", f"s3://{BUCKET}/nothing", "a", "b"), "is not an lrbs run directory (no metrics inside)"),
        (("export", f"s3://{BUCKET}/notarun", "--out", f"s3://{BUCKET}/x"), "--out: a local folder"),
        # nothing listens on port 9 of loopback: an unreachable store
        (("resume", f"s3://{BUCKET}/runs/x?endpoint_override=127.0.0.1:9&scheme=http"), "RUN_DIR: cannot read"),
    ]:
        assert main(list(args)) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err and err.startswith("lrbs: error: "), (args, err)
    assert sorted(i.path for i in fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True))) == before


def test_mirror_follows_the_store_and_uris_survive_odd_names(s3_server, tmp_path):
    from lrbs.sweeps.storage import mirror, open_run

    endpoint, fs = s3_server
    run_path = f"{BUCKET}/odd runs#1/r"
    for name, data in [
        ("spec.yaml", b"name: r\n"),
        ("lock.json", b"{}"),
        ("metrics/a.arrow", b"x"),
        ("trials/abcde_00000.json", b"{}"),
        ("tuner.pkl", b"never fetched"),
    ]:
        with fs.open_output_stream(f"{run_path}/{name}") as f:
            f.write(data)
    from lrbs.rundir.location import join_uri

    # A user writes such a path percent-encoded in a URI (pyarrow refuses a bare ' '); so does lrbs.
    base = join_uri(f"s3://{BUCKET}?endpoint_override={endpoint}&scheme=http", "odd runs#1", "r")
    assert base.startswith(f"s3://{BUCKET}/odd%20runs%231/r?")
    run = open_run(base)
    assert run is not None and run.path == run_path
    local = mirror(run, tmp_path / "m")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == [
        "lock.json",
        "metrics/a.arrow",
        "spec.yaml",
        "trials/abcde_00000.json",
    ]
    # Gone from the store (a lock released, a run directory made anew): gone from the mirror.
    fs.delete_file(f"{run_path}/lock.json")
    fs.delete_file(f"{run_path}/trials/abcde_00000.json")
    mirror(run, local)
    assert not (local / "lock.json").exists() and not list((local / "trials").iterdir())
    # A URI lrbs derives (for a trial on another node) reaches the same object despite ' ' and '#'.
    uri = run.uri_of(run.join("spec.yaml"))
    other, path = pafs.FileSystem.from_uri(uri)
    assert other.open_input_stream(path).read() == b"name: r\n" and "endpoint_override" in uri
