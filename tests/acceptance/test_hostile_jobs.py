"""Hostile jobs on the local backend, with the gateway running as root (as CI runs it).

Each job here is written the way an attacker would write it: it tries to read the issuer key, mint
an admin token, read another tenant's log and work directory, list the data directory, print its
environment, reach the database, see or signal the gateway, escape cancel with setsid, and take
more memory than it asked for. Every attempt must fail; the report of what the job saw is printed
(``pytest -s`` shows it) and every assertion names it.

The tests need root: only root can give jobs users of their own. They skip elsewhere, with the
reason; tests/acceptance/test_unprivileged_gateway.py covers a gateway that is not root.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.gateway_process import ISSUER_KEY, GatewayProcess
from tests.acceptance.hostile_programs import (
    DEEP_TREE,
    HOG,
    KEYRING_READER,
    KEYRING_WRITER,
    LOG_TAMPER,
    SLEEPERS,
    SPY,
    VICTIM,
)
from tests.acceptance.local_helpers import (
    LocalDirs,
    call,
    finished,
    local_dirs,
    log_of,
    processes_with,
    program,
    running,
    start,
    submit,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the hostile-jobs tier needs root (CI runs as root)"
)

ROOT = Path(__file__).resolve().parents[2]
CANARY = "gateway-canary-3f9a1c"
QUOTA = {"cpu": "8", "memory": "16Gi", "gpu": 0, "max_running_jobs": 10, "max_queued_jobs": 100}
ALLOWED_ENV = {
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "USER",
    "LOGNAME",
    "MUSTER_JOB_NAME",
    "MUSTER_REPLICA_TYPE",
    "MUSTER_REPLICA_INDEX",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "SPY_DATA",
    "SPY_KEY",
    "SPY_WORK",
    "SPY_VICTIM",
    "SPY_GATEWAY",
    "SPY_PYTHONPATH",
    "SPY_PYTHON",
    "SPY_URL",
}


@pytest.fixture
def dirs() -> Iterator[LocalDirs]:
    with local_dirs() as made:
        yield made


@pytest.fixture
def gateway(dirs: LocalDirs) -> Iterator[GatewayProcess]:
    # The canary stands for the gateway's secrets: none of its environment may reach a job.
    process = start(dirs, HOSTILE_CANARY=CANARY, MUSTER_WEBHOOK_ALLOW_NETS="10.99.0.0/16")
    try:
        wait_for(lambda: "local jobs:" in process.transcript(), 10, "the isolation line")
        assert "local jobs:     isolated" in process.transcript(), process.transcript()
        for tenant in ("demo", "victim"):
            status, body = call("PUT", f"{process.url}/v1/admin/tenants/{tenant}", {"quota": QUOTA})
            assert status in (200, 201), body
        yield process
    finally:
        process.close()


def _spy_report(base: str, job_id: str) -> dict[str, Any]:
    done = wait_for(lambda: finished(base, job_id), 90, "the spy to finish")
    log = log_of(base, job_id)
    assert done["state"] == "succeeded", (done, log)
    line = next(line for line in log.splitlines() if line.startswith("SPY REPORT "))
    report: dict[str, Any] = json.loads(line.removeprefix("SPY REPORT "))
    print(json.dumps(report, indent=2))  # what the hostile job saw
    return report


def test_a_hostile_job_reaches_nothing_of_the_gateway_or_other_tenants(
    dirs: LocalDirs, gateway: GatewayProcess
) -> None:
    victim = submit(
        gateway.url,
        {"name": "victim", "tenant": "victim", "replicas": {"w": program(VICTIM)}},
    )
    wait_for(lambda: running(gateway.url, victim["id"]), 30, "the victim to run")
    wait_for(lambda: "VICTIM-SECRET" in log_of(gateway.url, victim["id"]), 30, "its log line")
    assert gateway.proc is not None
    spy_env = {
        "SPY_DATA": str(dirs.data),
        "SPY_KEY": str(ISSUER_KEY),
        "SPY_WORK": str(dirs.work),
        "SPY_VICTIM": victim["id"],
        "SPY_GATEWAY": str(gateway.proc.pid),
        "SPY_URL": gateway.url,
        "SPY_PYTHON": sys.executable,
        # The gateway's code and libraries, for a system python (the venv's may be unreachable).
        "SPY_PYTHONPATH": f"{ROOT}:{Path(pytest.__file__).parents[1]}",
    }
    spy = submit(
        gateway.url,
        {"name": "spy", "tenant": "demo", "replicas": {"w": program(SPY, env=spy_env)}},
    )
    report = _spy_report(gateway.url, spy["id"])

    assert report["uid"] != 0, report
    assert report["uid"] != os.getuid(), report
    denied = [
        "read the issuer key",
        "read the data dir's issuer key",
        "read the database password",
        "list the data directory",
        "read the other tenant's log",
        "list the other job's work directory",
        "read the other job's file",
        "list the work directory",
        "mint an admin token with the gateway's python",
        "mint an admin token with the system python",
        "connect to the database's socket",
        "connect to PostgreSQL over TCP",
        "signal the gateway",
        "read the gateway's environment",
    ]
    reached = {name: report[name] for name in denied if report[name]["ok"]}
    assert reached == {}, json.dumps(report, indent=2)
    environment = report["environment"]
    assert set(environment) <= ALLOWED_ENV, sorted(set(environment) - ALLOWED_ENV)
    assert CANARY not in json.dumps(environment)
    assert not any(name.startswith("MUSTER_") for name in environment) or set(
        name for name in environment if name.startswith("MUSTER_")
    ) <= {"MUSTER_JOB_NAME", "MUSTER_REPLICA_TYPE", "MUSTER_REPLICA_INDEX"}
    # Its own PID namespace: the replica's init and the replica, nothing of the machine.
    assert len(report["see other processes"]) <= 3, report["see other processes"]
    # A private /tmp: the victim's file there is not in it.
    assert "victim-tmp.txt" not in report["see the machine's /tmp"]["saw"], report
    call("POST", f"{gateway.url}/v1/jobs/{victim['id']}/cancel")


def test_a_cancelled_job_leaves_no_process_behind_even_after_setsid(
    gateway: GatewayProcess,
) -> None:
    marker = "4321.0719"  # a unique sleep argument: how the test finds the sleepers
    job = submit(
        gateway.url,
        {
            "name": "sleepers",
            "tenant": "demo",
            "replicas": {"w": program(SLEEPERS, args=[marker])},
        },
    )
    wait_for(lambda: "sleepers started" in log_of(gateway.url, job["id"]), 30, "the sleepers")
    sleepers = wait_for(lambda: len(processes_with(f"sleep {marker}")) == 2, 10, "two sleepers")
    assert sleepers
    status, body = call("POST", f"{gateway.url}/v1/jobs/{job['id']}/cancel")
    assert status == 200, body
    wait_for(lambda: not processes_with(f"sleep {marker}"), 20, "no sleeper left")
    assert processes_with(f"sleep {marker}") == []
    assert job_done(gateway.url, job["id"]) == "cancelled"


def job_done(base: str, job_id: str) -> str:
    done = wait_for(lambda: finished(base, job_id), 30, "the job to end")
    return str(done["state"])


def test_a_job_that_takes_far_more_memory_than_it_asked_for_is_stopped(
    gateway: GatewayProcess,
) -> None:
    job = submit(
        gateway.url,
        {"name": "hog", "tenant": "demo", "replicas": {"w": program(HOG)}},  # asks 64Mi
    )
    done = wait_for(lambda: finished(gateway.url, job["id"]), 60, "the hog to end")
    log = log_of(gateway.url, job["id"])
    assert done["state"] == "failed", (done, log)
    assert "never stopped" not in log, log
    assert "holding 512 MiB" not in log, log
    assert "used more memory than it requested (64Mi) and was killed" in log, log


def test_the_data_directory_and_logs_are_the_gateways_alone(
    dirs: LocalDirs, gateway: GatewayProcess
) -> None:
    job = submit(
        gateway.url, {"name": "hello", "tenant": "demo", "replicas": {"w": program("print(1)")}}
    )
    assert job_done(gateway.url, job["id"]) == "succeeded"

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    # 0710: the embedded PostgreSQL's own user passes through to its directory; nobody lists it.
    assert mode(dirs.data) == 0o710
    assert mode(dirs.data / "logs") == 0o700
    assert mode(dirs.data / "logs" / job["id"]) == 0o700
    assert mode(dirs.data / "logs" / job["id"] / "hello-w-0.log") == 0o600
    assert mode(dirs.data / "local") == 0o700
    assert mode(dirs.data / "postgres-password") == 0o600
    assert mode(dirs.data / "postgres") == 0o700
    # Jobs pass through the work directory to their own, but cannot list it.
    assert mode(dirs.work) == 0o711


def test_a_job_that_leaves_a_tree_too_deep_to_recurse_is_cleaned_and_stops_no_one(
    dirs: LocalDirs, gateway: GatewayProcess
) -> None:
    deep = submit(
        gateway.url,
        {"name": "deep", "tenant": "demo", "replicas": {"w": program(DEEP_TREE)}},
    )
    assert job_done(gateway.url, deep["id"]) == "succeeded"
    other = submit(
        gateway.url,
        {"name": "after", "tenant": "victim", "replicas": {"w": program("print('ran')")}},
    )
    assert job_done(gateway.url, other["id"]) == "succeeded"
    wait_for(lambda: not (dirs.work / deep["id"]).exists(), 20, "the deep tree to be removed")


def test_a_job_cannot_grow_cut_or_rewrite_its_log(gateway: GatewayProcess) -> None:
    job = submit(
        gateway.url, {"name": "tamper", "tenant": "demo", "replicas": {"w": program(LOG_TAMPER)}}
    )
    assert job_done(gateway.url, job["id"]) == "succeeded"
    log = log_of(gateway.url, job["id"])
    print(log)
    assert log.startswith("--- muster: starting tamper-w-0"), log
    for attempt in ("preallocate a gigabyte", "truncate the log", "rewrite the log"):
        assert f"{attempt}: refused" in log, log


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64"), reason="keyctl syscall numbers"
)
def test_the_next_job_given_a_uid_finds_nothing_the_last_one_left(dirs: LocalDirs) -> None:
    # One uid for every job: the second job surely gets the first one's.
    process = start(dirs, MUSTER_LOCAL_RUN_AS="1950000000-1950000000")
    try:
        for tenant in ("demo", "victim"):
            status, body = call("PUT", f"{process.url}/v1/admin/tenants/{tenant}", {"quota": QUOTA})
            assert status in (200, 201), body
        writer = submit(
            process.url,
            {"name": "writer", "tenant": "victim", "replicas": {"w": program(KEYRING_WRITER)}},
        )
        assert job_done(process.url, writer["id"]) == "succeeded"
        assert "stored key" in log_of(process.url, writer["id"])
        reader = submit(
            process.url,
            {"name": "reader", "tenant": "demo", "replicas": {"w": program(KEYRING_READER)}},
        )
        assert job_done(process.url, reader["id"]) == "succeeded"
        log = log_of(process.url, reader["id"])
        assert "keyring: empty" in log, log
        assert "run lock: empty" in log, log
    finally:
        process.close()
