"""``lrbs submit``: run a sweep on a remote Ray cluster as a Ray job.

The spec is validated here first (bad input: exit 2, nothing submitted). The job's working
directory is this project (uploaded by Ray; the cluster nodes also have it pip-installed, see
cluster.yaml), and its entrypoint is ``python -m lrbs run SPEC --address auto --storage S``
on the head node. Token auth: the client sends the token Ray finds on this machine
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) when ``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from ray.job_submission import JobSubmissionClient

from lrbs.rundir.location import first_line, is_uri, join_uri
from lrbs.sweeps.errors import LrbsError
from lrbs.sweeps.grid import expand_points
from lrbs.sweeps.preflight import preflight
from lrbs.sweeps.runner import plugin_runtime_env
from lrbs.sweeps.trust import TRUST_FLAG, code_names

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Never uploaded with the working dir: environments, results, caches, data, weights.
EXCLUDED_DIRS = (".venv", "venv", "runs", ".git", "data", ".gl")
EXCLUDES = [*EXCLUDED_DIRS, "__pycache__", ".pytest_cache", "*.egg-info", "*.arrow", "*.pt", "*.ckpt", "report.html"]
# Storage on the head node when --storage is not given: outside the job's working dir, which
# Ray deletes with the job. Multi-node runs need a URI every node reaches (s3://, gs://, NFS).
DEFAULT_JOB_STORAGE = "~/lrbs-runs"


def spec_in_project(spec_path: str | Path, root: Path = PROJECT_ROOT) -> str:
    """The spec's path relative to the project (it travels with the job's working dir)."""
    path = Path(spec_path).resolve()
    try:
        rel = path.relative_to(root.resolve())
    except ValueError:
        raise LrbsError(
            f"SPEC: {spec_path} is outside the project directory {root}; only files inside it "
            f"travel with the job (copy the spec there, e.g. into specs/)"
        ) from None
    if rel.parts and rel.parts[0] in EXCLUDED_DIRS:
        raise LrbsError(f"SPEC: {spec_path} is under {rel.parts[0]}/, which is not uploaded with the job")
    return rel.as_posix()


def token_would_be_sent() -> bool:
    """The Ray client attaches a bearer token when token auth is on and a token is found."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return False
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.isfile(path)


def check_transport(address: str, insecure: bool = False, err: TextIO = sys.stderr) -> None:
    """Refuse plain HTTP to a host other than this machine when the auth token would travel in
    clear text (with the project upload); ``--insecure`` sends anyway, with a warning."""
    url = urlparse(address)
    host = url.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if url.scheme != "http" or loopback or not token_would_be_sent():
        return
    message = (
        f"--address: {address} is plain HTTP to another host: the Ray auth token and the project "
        f"upload would cross the network in clear text; use https://, or an SSH tunnel to "
        f"http://127.0.0.1:8265 (docs/cluster.md)"
    )
    if not insecure:
        raise LrbsError(message + ", or pass --insecure to send anyway")
    print(f"lrbs: warning: {message} (sent anyway: --insecure)", file=err, flush=True)


def submit_sweep(
    spec_path: str | Path,
    address: str,
    storage: str | None = None,
    *,
    job_id: str | None = None,
    root: Path = PROJECT_ROOT,
    out: TextIO = sys.stdout,
    insecure: bool = False,
) -> str:
    """Validate ``spec_path``, submit it as a Ray job to the dashboard at ``address``; returns the job id."""
    spec = preflight(spec_path).spec  # a broken model factory: one line, exit 2, nothing submitted
    n_trials = len(expand_points(spec))
    spec_rel = spec_in_project(spec_path, root)
    storage = storage or DEFAULT_JOB_STORAGE
    if not is_uri(address):
        address = f"http://{address}"  # the dashboard's HTTP address, e.g. http://HEAD:8265
    check_transport(address, insecure)
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, RuntimeError from the SDK, auth errors
        raise LrbsError(f"--address: cannot reach the Ray dashboard at {address} ({first_line(exc)})") from None
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": list(EXCLUDES)}
    # User model/data-set modules outside the project travel as py_modules (sweeps/runner.py).
    runtime_env.update(plugin_runtime_env(spec) or {})
    try:
        job_id = client.submit_job(
            entrypoint=shlex.join(["python", "-m", "lrbs", "run", spec_rel, "--address", "auto", "--storage", storage]),
            runtime_env=runtime_env,
            submission_id=job_id,
            metadata={"lrbs_sweep": spec.name, "lrbs_spec": spec_rel, "lrbs_storage": storage},
        )
    except Exception as exc:
        raise LrbsError(f"--address: {address} refused the job ({first_line(exc)})") from None
    run_dir = join_uri(storage, spec.name)
    print(f"submitted {spec.name} ({n_trials} trials) as Ray job {job_id} to {address}", file=out)
    print(f"  run directory (on the head node): {run_dir}", file=out)
    print(f"  follow: ray job logs --follow {job_id} --address {address}", file=out)
    print(f"  status: ray job status {job_id} --address {address}", file=out)
    print(f"  stop:   ray job stop {job_id} --address {address}", file=out)
    trust = f" {TRUST_FLAG}" if code_names(spec.to_dict()) else ""  # the command must work as printed
    print(f"  resume: lrbs resume {run_dir}{trust}   (on the head node: ray attach cluster.yaml)", file=out)
    if is_uri(storage):
        print(f"  report: lrbs report {run_dir}", file=out)
    out.flush()
    return job_id
