"""``lrbs submit`` against a real Ray head (dashboard + job server, token auth) started by the test.

The head runs in its own process group with its own temp dir, ports and token, and is stopped by
killing that group: the in-process Ray of the other tests (``ray_local``) is never touched.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrbs.rundir.tables import load_metrics
from tests.conftest import ROOT

SPEC = "tests/specs/submit_digits.yaml"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _own_pids(marker: str) -> list[int]:
    """PIDs of this user's processes whose command line names ``marker`` (the head's temp dir)."""
    out = subprocess.run(["pgrep", "-u", str(os.getuid()), "-f", marker], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head with dashboard on 127.0.0.1 and RAY_AUTH_MODE=token; yields (dashboard address, env,
    token, GCS address)."""
    temp_dir = Path(f"/tmp/lrbs-{secrets.token_hex(3)}")  # short: Ray's socket paths have a length limit
    gcs, dash, client, agent = _free_ports(4)
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
        "OMP_NUM_THREADS": "1",
        "LRBS_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            "--num-cpus=2",
            "--num-gpus=0",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_dashboard(address, token, head, tmp_path / "head.log")
        yield address, env, token, f"127.0.0.1:{gcs}"
    finally:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Anything of this head that left the group (named by its unique temp dir).
        deadline = time.monotonic() + 10
        while (pids := _own_pids(str(temp_dir))) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _client(address: str, token: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})


def _wait_for_dashboard(address: str, token: str, head: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _client(address, token).list_jobs()
            return
        except Exception:
            time.sleep(1)
    pytest.fail(f"the dashboard at {address} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


def _lrbs(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "lrbs", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )


@pytest.mark.slow
def test_submit_runs_the_sweep_as_a_ray_job(ray_head, tmp_path):
    from ray.job_submission import JobStatus

    address, env, token, _ = ray_head
    storage = tmp_path / "runs"
    out = _lrbs(env, "submit", SPEC, "--address", address, "--storage", str(storage))
    assert out.returncode == 0, out.stderr
    job_id = re.search(r"as Ray job (\S+) to ", out.stdout).group(1)
    assert f"ray job logs --follow {job_id} --address {address}" in out.stdout
    assert f"ray job status {job_id} --address {address}" in out.stdout
    assert f"lrbs resume {storage}/submit_digits --trust-code" in out.stdout  # a user model: resume needs the flag

    client = _client(address, token)
    deadline = time.monotonic() + 150
    status = client.get_job_status(job_id)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED} and time.monotonic() < deadline:
        time.sleep(2)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    info = client.get_job_info(job_id)
    assert info.entrypoint == f"python -m lrbs run {SPEC} --address auto --storage {storage}"
    assert info.metadata["lrbs_sweep"] == "submit_digits"
    assert "[lrbs] sweep submit_digits: 2 trials" in logs

    run = storage / "submit_digits"
    metrics = load_metrics(run)
    assert metrics.num_rows == 2 * 2
    assert set(metrics.column("status").to_pylist()) <= {"running", "finished"}
    assert (run / "report.html").is_file() and (run / "fits.json").is_file()

    # Token auth: a client with a wrong token is refused (exit 2, one line, nothing submitted).
    bad = _lrbs(
        {**env, "RAY_AUTH_TOKEN": "wrong-token"},
        "submit",
        SPEC,
        "--address",
        address,
        "--storage",
        str(tmp_path / "other"),
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert bad.stderr.startswith("lrbs: error: --address:") and bad.stderr.count("\n") == 1
    assert len(client.list_jobs()) == 1


@pytest.mark.slow
def test_run_on_a_ray_head_ships_the_user_module(ray_head, tmp_path):
    """``lrbs run --address`` with the example's user model and data set, from a folder the head's
    workers cannot see: the module reaches them only through the runtime_env (py_modules).
    3 points at one batch size with train.pack: 2 make a pack of 2 and a pack of 1."""
    import yaml

    _, env, _, gcs = ray_head
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    shutil.copy(ROOT / "examples" / "mnist1d_conv.py", project / "mnist1d_conv.py")
    spec = yaml.safe_load((ROOT / "examples" / "mnist1d_conv.yaml").read_text())
    spec["dataset"]["options"]["n_samples"] = 1000
    spec["model"]["options"]["channels"] = 8
    spec["train"] = {"epochs": 2, "pack": 2}
    spec["curvature"] = {"n_samples": 64, "lanczos_iters": 3, "hutchinson_probes": 4, "noise_scale": False}
    spec["grid"] = {"lr": [0.02, 0.08, 0.32], "batch_size": [32], "seed": [0]}
    (project / "spec.yaml").write_text(yaml.safe_dump(spec))
    storage = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "-m", "lrbs", "run", str(project / "spec.yaml"), "--address", gcs, "--storage", str(storage)],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 trials in 2 packs" in out.stdout and "3 trials finished, 0 errored" in out.stdout
    metrics = load_metrics(storage / "mnist1d_conv")
    assert metrics.num_rows == 3 * 2
    assert set(metrics.column("model").to_pylist()) == {"mnist1d_conv:conv1d"}
    assert set(metrics.column("dataset").to_pylist()) == {"mnist1d_conv:signals"}
    ids = sorted(set(metrics.column("trial_id").to_pylist()))
    assert sum(i.endswith(("-m0", "-m1")) for i in ids) == 2 and len(ids) == 3  # members of the pack of 2
    last = [r for r in metrics.to_pylist() if r["epoch"] == 2]
    assert all(r["status"] == "finished" and r["lambda_max"] is not None for r in last)
    # Where the module came from, for lrbs resume / interpolate from any folder.
    assert json.loads((storage / "mnist1d_conv" / "plugins.json").read_text()) == {"search_roots": [str(project)]}


def test_submit_rejects_bad_input_before_contacting_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {lr: [-1], batch_size: [8], seed: [0]}\n")
    # Port 9 (discard): nothing is listening; validation must fail first.
    out = _lrbs(os.environ, "submit", str(bad), "--address", "http://127.0.0.1:9")
    assert out.returncode == 2 and "grid.lr[0]: must be > 0" in out.stderr and out.stdout == ""
    outside = tmp_path / "ok.yaml"
    outside.write_text("name: ok\n")
    out = _lrbs(os.environ, "submit", str(outside), "--address", "http://127.0.0.1:9")
    assert out.returncode == 2 and "outside the project directory" in out.stderr
    out = _lrbs(os.environ, "submit", SPEC, "--address", "http://127.0.0.1:9")
    assert out.returncode == 2 and "cannot reach the Ray dashboard" in out.stderr


def test_submit_refuses_clear_text_token_to_another_host(tmp_path, monkeypatch):
    """With token auth on, http:// to a non-loopback host is refused (one line, exit 2,
    nothing contacted); loopback and https are fine; --insecure sends anyway, with a warning."""
    import io

    from lrbs.sweeps.errors import LrbsError
    from lrbs.sweeps.submit import check_transport

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "secret"}
    out = _lrbs(env, "submit", SPEC, "--address", "http://192.0.2.10:8265")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "clear text" in out.stderr and "--insecure" in out.stderr
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    for ok in ("http://127.0.0.1:8265", "http://localhost:8265", "https://head.example:8265"):
        check_transport(ok)
    with pytest.raises(LrbsError, match="clear text"):
        check_transport("http://head.example:8265")
    err = io.StringIO()
    check_transport("http://head.example:8265", insecure=True, err=err)
    assert "warning" in err.getvalue() and "sent anyway" in err.getvalue()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    check_transport("http://head.example:8265")  # no token travels: nothing to refuse
