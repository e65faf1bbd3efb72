"""Helpers for tests of the local backend: real `muster serve` processes whose replicas are real
processes on this machine.

Each test gets its own directories (``LocalDirs``): a data directory, a work directory for the
replicas and a ``shared`` directory the test and its replicas both reach (a replica sees neither
the data directory nor the machine's /tmp). As root (CI), replicas run as other users in
namespaces of their own, so these directories live under /var/lib/muster-tests, which those users
can reach; otherwise under /tmp.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.acceptance.gateway_process import MUSTER, GatewayProcess, bearer

ROOT_BASE = Path("/var/lib/muster-tests")
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class LocalDirs:
    base: Path
    data: Path
    work: Path
    shared: Path


@contextlib.contextmanager
def local_dirs() -> Iterator[LocalDirs]:
    """Fresh directories for one local gateway; its replicas are killed and the directories
    removed afterwards."""
    if os.geteuid() == 0:
        ROOT_BASE.mkdir(mode=0o755, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="ml-", dir=ROOT_BASE))
    else:
        base = Path(tempfile.mkdtemp(prefix="ml-", dir="/tmp"))
    base.chmod(0o755)
    dirs = LocalDirs(base=base, data=base / "data", work=base / "work", shared=base / "shared")
    dirs.shared.mkdir(mode=0o755)
    dirs.shared.chmod(0o755)
    try:
        yield dirs
    finally:
        # The daemon outlives the gateway (and leaves only once idle): it goes too.
        for proc in daemon_processes(dirs.data):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for proc in replica_processes(dirs.data):
            # Its process group holds its namespace's init; without namespaces the command
            # left the group (its own session), so every descendant is killed too.
            descendants: list[psutil.Process] = []
            with contextlib.suppress(psutil.Error):
                descendants = proc.children(recursive=True)
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            for child in descendants:
                with contextlib.suppress(psutil.Error):
                    child.kill()
        shutil.rmtree(base, ignore_errors=True)


def start(dirs: LocalDirs, command: tuple[str, ...] = MUSTER, **settings: str) -> GatewayProcess:
    env = {
        "MUSTER_DATA_DIR": str(dirs.data),
        "MUSTER_LOCAL_WORK_DIR": str(dirs.work),
        "MUSTER_BACKEND": "local",
        "MUSTER_LOCAL_CPUS": "8",
        "MUSTER_LOCAL_MEMORY": "16Gi",
        "MUSTER_LOCAL_GPUS": "0",
        "MUSTER_ADMISSION_INTERVAL": "0.5",
        "MUSTER_SHUTDOWN_GRACE": "3",
        **settings,
    }
    gateway = GatewayProcess(env, command=command)
    gateway.start()
    return gateway


def call(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers=dict(headers or bearer())
    )
    request.add_header("Content-Type", "application/json")
    try:
        with _http.open(request, timeout=30) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(raw) if "json" in kind else raw.decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def job_state(base: str, job_id: str) -> dict[str, Any]:
    status, job = call("GET", f"{base}/v1/jobs/{job_id}")
    assert status == 200, job
    return job  # type: ignore[no-any-return]


def finished(base: str, job_id: str) -> dict[str, Any] | None:
    job = job_state(base, job_id)
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def running(base: str, job_id: str) -> bool:
    return bool(job_state(base, job_id)["state"] == "running")


def submit(base: str, spec: dict[str, Any]) -> dict[str, Any]:
    status, job = call("POST", f"{base}/v1/jobs", spec)
    assert status == 201, job
    return job  # type: ignore[no-any-return]


def program(code: str, **replica: Any) -> dict[str, Any]:
    return {
        "image": "python",
        "command": ["python3", "-c", code],
        "resources": {"cpu": "250m", "memory": "64Mi"},
        **replica,
    }


def log_of(base: str, job_id: str) -> str:
    status, text = call("GET", f"{base}/v1/jobs/{job_id}/logs")
    assert status == 200, text
    return str(text)


#: A replica that, on SIGTERM, takes half a second to save its work, says so, and ends well.
TIDY = (
    "import signal, sys, time\n"
    "def term(*_):\n"
    "    time.sleep(0.5)\n"
    "    print('saved', flush=True)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('ready', flush=True)\n"
    "while True: signal.pause()\n"
)
#: A replica that ignores SIGTERM (saying it got it) and would run for ever.
DEAF = (
    "import signal\n"
    "signal.signal(signal.SIGTERM, lambda *_: print('term', flush=True))\n"
    "print('ready', flush=True)\n"
    "while True: signal.pause()\n"
)


#: The process name of a replica's supervisor (a fork of the data directory's supervisor daemon,
#: whose command line it keeps) and of its namespace's init (a fork of the supervisor).
REPLICA_NAME = "muster-replica"
DAEMON = "gateway.backends.daemon"


def _supervision(data_dir: Path) -> list[psutil.Process]:
    """Every live process of the data directory's supervision: the daemon and its forks."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "ppid", "name"]):
        cmdline = proc.info["cmdline"] or ()
        # The daemon's argument is the data directory's state directory, <data dir>/local.
        ours = DAEMON in cmdline and any(part.startswith(f"{data_dir}/") for part in cmdline)
        if ours and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def replica_processes(data_dir: Path) -> list[psutil.Process]:
    """Live replica supervisors started for this data directory (one per replica: the init of
    a replica's namespace is a fork of its supervisor, with its name, and is not counted)."""
    found = [p for p in _supervision(data_dir) if p.info["name"] == REPLICA_NAME]
    pids = {proc.pid for proc in found}
    return [proc for proc in found if proc.info["ppid"] not in pids]


def daemon_processes(data_dir: Path) -> list[psutil.Process]:
    """The data directory's supervisor daemon (and a launcher of one, while it starts)."""
    found = _supervision(data_dir)
    pids = {proc.pid for proc in found}
    return [p for p in found if p.info["name"] != REPLICA_NAME and p.info["ppid"] not in pids]


def processes_with(marker: str) -> list[psutil.Process]:
    """Every live process whose command line contains ``marker``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or ())
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found
