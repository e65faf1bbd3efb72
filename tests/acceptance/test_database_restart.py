"""PostgreSQL stops (fast, then immediate) in the middle of a submit and completion storm, and
starts again: the gateway recovers by itself (no restart), answers 503 with Retry-After while
the database is away (never a 500), and keeps its promises: every 201 is exactly one job, each
job is admitted once and finishes once.

The shortened form of ``bench/chaos.py``'s restart scenario: a 3-second outage instead of 10.
The gateway runs with its embedded PostgreSQL, which the test stops and starts under it
(``EmbeddedPostgres.halt``/``resume``). Replicas are simulated (``MUSTER_SIMULATE_RUNS``), so
jobs run and succeed in a moment.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.db.embedded import EmbeddedPostgres
from tests.acceptance.gateway_process import GatewayProcess, call, clean_env

pytestmark = pytest.mark.slow

NODES = 'nodes: [{name: n1, cpu: "512", memory: 2048Gi, gpus: 0}]\n'
TENANT = {
    "quota": {
        "cpu": "512",
        "memory": "2048Gi",
        "gpu": 0,
        "max_running_jobs": 100000,
        "max_queued_jobs": 100000,
    }
}
OUTAGE_SECONDS = 3.0
SUBMITTERS = 3
HTTP_TIMEOUT = 30.0


class Storm:
    """Threads submitting jobs as fast as the gateway answers, recording every answer."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.created: list[str] = []
        self.statuses: Counter[str] = Counter()
        self.missing_retry_after = 0
        self.stop = threading.Event()
        self.last_created_at = 0.0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._submit, args=(n,), daemon=True) for n in range(SUBMITTERS)
        ]

    def __enter__(self) -> Storm:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(HTTP_TIMEOUT + 5)

    def _submit(self, submitter: int) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            spec = {
                "tenant": "acme",
                "name": f"s{submitter}-{number}",
                "replicas": {"worker": {"image": "x", "command": ["true"]}},
            }
            try:
                status, answer, headers = call("POST", f"{self.base}/v1/jobs", spec)
            except OSError as exc:  # the gateway itself went away: a broken promise
                with self._lock:
                    self.statuses[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.statuses[str(status)] += 1
                if status == 201:
                    self.created.append(answer["id"])
                    self.last_created_at = time.monotonic()
                elif status == 503 and not headers.get("Retry-After", "").isdigit():
                    self.missing_retry_after += 1
            if status != 201:
                time.sleep(0.05)

    def created_after(self, moment: float, timeout: float) -> float:
        """When the first job after ``moment`` was created (monotonic seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.last_created_at > moment:
                    return self.last_created_at
            time.sleep(0.02)
        raise AssertionError(f"no submit succeeded within {timeout} s: {self.statuses}")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_database_restart_under_a_storm_loses_and_repeats_nothing(
    data_dir: Path, mode: str
) -> None:
    nodes = data_dir / "nodes.yaml"
    nodes.write_text(NODES)
    gateway = GatewayProcess(
        clean_env(
            MUSTER_DATA_DIR=str(data_dir),
            MUSTER_BACKEND="static",
            MUSTER_NODES_FILE=str(nodes),
            MUSTER_SIMULATE_RUNS="true",
            MUSTER_ADMISSION_INTERVAL="0.5",
            MUSTER_DATABASE_POOL_TIMEOUT="2",
        )
    )
    database = EmbeddedPostgres(data_dir)
    try:
        base = gateway.start()
        assert gateway.proc is not None
        pid = gateway.proc.pid
        assert call("PUT", f"{base}/v1/admin/tenants/acme", TENANT)[0] == 201
        with Storm(base) as storm:
            storm.created_after(0, 30)
            database.halt(mode)
            halted = time.monotonic()
            time.sleep(OUTAGE_SECONDS / 2)
            ready, problem, headers = call("GET", f"{base}/readyz")
            time.sleep(OUTAGE_SECONDS / 2)
            database.resume()
            resumed = time.monotonic()
            recovered = storm.created_after(resumed, 30)
            time.sleep(1.0)  # a little more of the storm on the recovered gateway
        print(
            f"{mode}: outage {resumed - halted:.1f} s, first 201 {recovered - resumed:.2f} s "
            f"after the database was back; answers {dict(storm.statuses)}"
        )

        assert ready == 503
        assert "database" in problem["detail"]
        assert headers["Retry-After"].isdigit()
        assert set(storm.statuses) <= {"201", "503"}, storm.statuses  # never a 500
        assert storm.statuses["503"] > 0  # the outage was seen
        assert storm.missing_retry_after == 0
        assert gateway.proc.poll() is None  # recovered without a restart: the same process
        assert gateway.proc.pid == pid

        # Every 201 is exactly one job, each admitted once and finished once.
        assert len(storm.created) == len(set(storm.created))
        pending = set(storm.created)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for job_id in sorted(pending):
                status, job, _ = call("GET", f"{base}/v1/jobs/{job_id}")
                assert status == 200, job
                if job["state"] in ("succeeded", "failed", "cancelled"):
                    assert job["state"] == "succeeded", job
                    pending.discard(job_id)
            time.sleep(0.2)
        assert not pending, f"{len(pending)} jobs never finished"
        for job_id in storm.created:
            _, events, _ = call("GET", f"{base}/v1/jobs/{job_id}/events")
            kinds = Counter(event["type"] for event in events["items"])
            assert kinds["admitted"] == 1, (job_id, kinds)
            assert kinds["succeeded"] == 1, (job_id, kinds)
        log = gateway.transcript()
        assert "Traceback" not in log, log
        assert [line for line in log.splitlines() if " ERROR " in line] == []
    finally:
        gateway.close()
