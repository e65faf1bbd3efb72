"""Real jobs on this machine: `muster serve` with the local backend runs replicas as processes.

Each test starts a gateway as a user would (embedded PostgreSQL, local backend) in fresh
directories, submits jobs over HTTP, and watches them run to the end. Replicas are small Python
programs; nothing but Python is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.gateway_process import ISSUER_KEY
from tests.acceptance.local_helpers import (
    DEAF,
    TIDY,
    LocalDirs,
    call,
    finished,
    job_state,
    local_dirs,
    program,
    replica_processes,
    running,
    start,
    submit,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
TENANT = {
    "quota": {
        "cpu": "64",
        "memory": "64Gi",
        "gpu": 4,
        "max_running_jobs": 10,
        "max_queued_jobs": 100,
    }
}


@pytest.fixture
def dirs() -> Iterator[LocalDirs]:
    with local_dirs() as made:
        yield made


def muster(url: str, *args: str) -> str:
    """Run the muster command against ``url``; return its output (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MUSTER_URL": url, "MUSTER_ISSUER_KEY": str(ISSUER_KEY)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_ps_worker_example_succeeds_and_workers_reach_the_ps(dirs: LocalDirs) -> None:
    gateway = start(dirs)
    try:
        # A fresh local install makes the examples' tenant for the newcomer.
        wait_for(lambda: "tenant:         demo" in gateway.transcript(), 10, "the tenant line")
        # Exactly what the README shows a newcomer: the muster command, as a subprocess.
        out = muster(gateway.url, "submit", str(ROOT / "examples" / "ps-worker.yaml"))
        job = {"id": out.split(" as ", 1)[1].split()[0]}
        done = wait_for(lambda: finished(gateway.url, job["id"]), 90, "the job to finish")
        assert done["state"] == "succeeded", done
        for index in (0, 1):
            log = muster(gateway.url, "logs", job["id"], "--replica", f"worker-{index}")
            assert f"worker {index} reached the ps" in log, log
            assert "through TF_CONFIG" in log, log
            assert "OK" in log, log
        # The PS served forever; clean_pod_policy Running stopped it when the job ended.
        wait_for(lambda: not replica_processes(dirs.data), 20, "the PS to be stopped")
        events = [
            e["type"] for e in call("GET", f"{gateway.url}/v1/jobs/{job['id']}/events")[1]["items"]
        ]
        # A quick job may end between two passes of the reconciler, never seen running.
        assert events[:2] == ["submitted", "admitted"]
        assert events[-1] == "succeeded"
    finally:
        gateway.close()


def test_two_half_gpu_jobs_share_the_device_and_a_third_waits(dirs: LocalDirs) -> None:
    gateway = start(dirs, MUSTER_LOCAL_GPUS="1")
    release = dirs.shared / "release"
    try:
        assert call("PUT", f"{gateway.url}/v1/admin/tenants/demo", TENANT)[0] == 200
        code = (
            "import os, pathlib, time\n"
            "print('CUDA_VISIBLE_DEVICES=' + os.environ.get('CUDA_VISIBLE_DEVICES', '-'), "
            "flush=True)\n"
            f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.1)\n"
        )

        def gpu_job(name: str) -> dict[str, Any]:
            replica = program(code)
            replica["resources"]["gpu"] = 0.5
            return {"name": name, "tenant": "demo", "replicas": {"worker": replica}}

        first, second = submit(gateway.url, gpu_job("a")), submit(gateway.url, gpu_job("b"))
        for job in (first, second):
            wait_for(
                lambda job=job: job_state(gateway.url, job["id"])["state"] == "running",
                30,
                f"job {job['name']} to run",
            )
        third = submit(gateway.url, gpu_job("c"))
        waiting = wait_for(
            lambda: job_state(gateway.url, third["id"])["reason"], 10, "the third job's reason"
        )
        assert waiting == "InsufficientCapacity"
        for job in (first, second):
            log = call("GET", f"{gateway.url}/v1/jobs/{job['id']}/logs")[1]
            assert "CUDA_VISIBLE_DEVICES=0" in log, log
        release.touch()
        for job in (first, second, third):
            done = wait_for(lambda job=job: finished(gateway.url, job["id"]), 60, "jobs to end")
            assert done["state"] == "succeeded", done
    finally:
        gateway.close()


def test_job_asking_more_cpus_than_the_machine_is_refused(dirs: LocalDirs) -> None:
    gateway = start(dirs)
    try:
        assert call("PUT", f"{gateway.url}/v1/admin/tenants/demo", TENANT)[0] == 200
        replica = program("pass")
        replica["resources"]["cpu"] = "9"
        status, problem = call(
            "POST",
            f"{gateway.url}/v1/jobs",
            {"name": "big", "tenant": "demo", "replicas": {"w": replica}},
        )
        assert status == 422
        assert problem["errors"][0]["detail"].startswith("cpu:"), problem
    finally:
        gateway.close()


def test_restart_policies_with_real_processes(dirs: LocalDirs) -> None:
    gateway = start(dirs)
    try:
        assert call("PUT", f"{gateway.url}/v1/admin/tenants/demo", TENANT)[0] == 200
        flaky = submit(
            gateway.url,
            {
                "name": "flaky",
                "tenant": "demo",
                "run_policy": {"backoff_limit": 2},
                "replicas": {
                    "worker": program(
                        "import sys; print('failing', flush=True); sys.exit(1)",
                        restart_policy="OnFailure",
                    )
                },
            },
        )
        chief = submit(
            gateway.url,
            {
                "name": "chief-ends",
                "tenant": "demo",
                "framework": "tensorflow",
                "replicas": {
                    "chief": program("import time; time.sleep(1); print('chief done')"),
                    "ps": program("import time; time.sleep(600)"),
                },
            },
        )
        failed = wait_for(lambda: finished(gateway.url, flaky["id"]), 60, "flaky to fail")
        assert (failed["state"], failed["reason"]) == ("failed", "BackoffLimitExceeded"), failed
        events = call("GET", f"{gateway.url}/v1/jobs/{flaky['id']}/events")[1]["items"]
        assert [e["type"] for e in events].count("restarted") == 2
        log = call("GET", f"{gateway.url}/v1/jobs/{flaky['id']}/logs")[1]
        assert log.count("failing") == 3, log
        done = wait_for(lambda: finished(gateway.url, chief["id"]), 60, "the chief to succeed")
        assert (done["state"], done["reason"]) == ("succeeded", "ChiefSucceeded"), done
        wait_for(lambda: not replica_processes(dirs.data), 20, "the PS to be stopped")
    finally:
        gateway.close()


def test_gateway_killed_while_a_job_runs_leaves_no_orphan(dirs: LocalDirs) -> None:
    gateway = start(dirs)
    release = dirs.shared / "release"
    try:
        assert call("PUT", f"{gateway.url}/v1/admin/tenants/demo", TENANT)[0] == 200
        code = (
            "import pathlib, time\n"
            f"while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.1)\n"
            "print('released', flush=True)\n"
        )
        job = submit(
            gateway.url,
            {"name": "survivor", "tenant": "demo", "replicas": {"worker": program(code, count=2)}},
        )
        wait_for(lambda: job_state(gateway.url, job["id"])["state"] == "running", 30, "running")
        assert len(replica_processes(dirs.data)) == 2
        gateway.kill()  # SIGKILL: no cleanup at all
        # The replicas outlive the gateway (their own process groups) ...
        assert len(replica_processes(dirs.data)) == 2
        gateway = start(dirs)
        # ... and the next gateway adopts them: the job keeps running and then succeeds.
        assert job_state(gateway.url, job["id"])["state"] == "running"
        release.touch()
        done = wait_for(lambda: finished(gateway.url, job["id"]), 60, "the adopted job to end")
        assert done["state"] == "succeeded", done
        assert done["attempt"] == 0
        wait_for(lambda: not replica_processes(dirs.data), 20, "no replica left")
    finally:
        gateway.close()


def test_replicas_gone_while_the_gateway_was_down_requeue_the_job(dirs: LocalDirs) -> None:
    gateway = start(dirs)
    try:
        assert call("PUT", f"{gateway.url}/v1/admin/tenants/demo", TENANT)[0] == 200
        job = submit(
            gateway.url,
            {
                "name": "lost",
                "tenant": "demo",
                "replicas": {"worker": program("import time; time.sleep(600)")},
            },
        )
        wait_for(lambda: job_state(gateway.url, job["id"])["state"] == "running", 30, "running")
        gateway.kill()
        for proc in replica_processes(dirs.data):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole machine's replicas die with it
        wait_for(lambda: not replica_processes(dirs.data), 10, "the replicas to die")
        gateway = start(dirs)
        requeued = wait_for(
            lambda: (lambda j: j if j["attempt"] == 1 else None)(job_state(gateway.url, job["id"])),
            30,
            "the job to be requeued",
        )
        assert requeued["state"] in ("queued", "admitted", "running"), requeued
        events = call("GET", f"{gateway.url}/v1/jobs/{job['id']}/events")[1]["items"]
        requeue = next(e for e in events if e["type"] == "requeued")
        assert requeue["reason"] == "NodeLost", requeue
        status, _ = call("POST", f"{gateway.url}/v1/jobs/{job['id']}/cancel")
        assert status == 200
        wait_for(lambda: not replica_processes(dirs.data), 20, "cancel to stop every replica")
    finally:
        gateway.close()


def test_the_v1_tfjob_example_runs_locally_with_fifteen_replicas(dirs: LocalDirs) -> None:
    gateway = start(dirs, MUSTER_LOCAL_CPUS="2")
    try:
        out = muster(gateway.url, "submit", str(ROOT / "examples" / "tfjob-local.yaml"))
        job_id = out.split(" as ", 1)[1].split()[0]
        done = wait_for(lambda: finished(gateway.url, job_id), 120, "the TFJob to finish")
        assert (done["state"], done["reason"]) == ("succeeded", "ChiefSucceeded"), done
        assert done["tenant"] == "demo"
        assert sum(r["count"] for r in done["spec"]["replicas"].values()) == 15
        log = muster(gateway.url, "logs", job_id, "--replica", "worker-9")
        assert "worker-9: OMP_NUM_THREADS=1" in log, log
        wait_for(lambda: not replica_processes(dirs.data), 20, "the PS to be stopped")
    finally:
        gateway.close()


def test_following_logs_streams_until_the_replica_ends(dirs: LocalDirs) -> None:
    gateway = start(dirs)
    try:
        code = (
            "import time\n"
            "for i in range(5):\n"
            "    print(f'line {i}', flush=True)\n"
            "    time.sleep(0.3)\n"
        )
        job = submit(
            gateway.url, {"name": "chatty", "tenant": "demo", "replicas": {"worker": program(code)}}
        )
        wait_for(
            lambda: job_state(gateway.url, job["id"])["state"] in ("running", "succeeded"),
            30,
            "the replica to start",
        )
        started = time.monotonic()
        log = muster(gateway.url, "logs", job["id"], "--follow")
        # The stream ended by itself when the replica did, with every line in it.
        assert [f"line {i}" in log for i in range(5)] == [True] * 5, log
        assert time.monotonic() - started < 30
    finally:
        gateway.close()


def test_a_log_past_its_cap_is_rotated_keeping_the_newest_output(dirs: LocalDirs) -> None:
    gateway = start(dirs, MUSTER_LOCAL_LOG_BYTES="4096")
    try:
        job = submit(
            gateway.url,
            {
                "name": "chatty",
                "tenant": "demo",
                "replicas": {
                    "w": program("for i in range(400): print(f'{i:05d} ' + 'x' * 93, flush=True)")
                },
            },
        )
        done = wait_for(lambda: finished(gateway.url, job["id"]), 60, "the job to end")
        assert done["state"] == "succeeded", done
        log = call("GET", f"{gateway.url}/v1/jobs/{job['id']}/logs")[1]
        assert "muster: log rotated at 4Ki" in log, log[-300:]
        assert "00399 " + "x" * 93 in log  # the newest line is kept
        assert "00000 " not in log  # the oldest went with an older rotation
        # The rotated part and the current file, each at most the cap, in order.
        assert len(log.encode()) <= 2 * 4096 + 400, len(log)
        numbers = [int(line[:5]) for line in log.splitlines() if line[:5].isdigit()]
        assert numbers == sorted(numbers)
        logs = list((dirs.data / "logs" / job["id"]).iterdir())
        assert sorted(p.name for p in logs) == ["chatty-w-0.log", "chatty-w-0.log.1"]
        assert all(p.stat().st_size <= 4096 + 200 for p in logs)
    finally:
        gateway.close()


def test_a_followed_log_goes_on_across_its_rotations(dirs: LocalDirs) -> None:
    gateway = start(dirs, MUSTER_LOCAL_LOG_BYTES="4096")
    try:
        job = submit(
            gateway.url,
            {
                "name": "steady",
                "tenant": "demo",
                "replicas": {
                    "w": program(
                        "import time\n"
                        "for i in range(400):\n"
                        "    print(f'{i:05d} ' + 'x' * 93, flush=True)\n"
                        "    time.sleep(0.02)\n"
                    )
                },
            },
        )
        wait_for(lambda: running(gateway.url, job["id"]), 60, "the job to run")
        log = muster(gateway.url, "logs", job["id"], "--follow")
        numbers = [int(line[:5]) for line in log.splitlines() if line[:5].isdigit()]
        # Several rotations happened while it was followed; from the first line the stream
        # showed, no line is missing or repeated.
        assert log.count("muster: log rotated") >= 2, log[-500:]
        assert numbers == list(range(numbers[0], 400)), numbers[:10]
    finally:
        gateway.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs for the logs needs root")
def test_a_full_log_disk_stops_the_log_never_the_replica_or_the_gateway(dirs: LocalDirs) -> None:
    logs = dirs.data / "logs"
    logs.mkdir(parents=True, mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(logs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        gateway = start(dirs)
        try:
            job = submit(
                gateway.url,
                {
                    "name": "flood",
                    "tenant": "demo",
                    "replicas": {
                        "w": program("for i in range(20000): print('y' * 99, flush=True)")
                    },
                },
            )
            done = wait_for(lambda: finished(gateway.url, job["id"]), 60, "the job to end")
            assert done["state"] == "succeeded", done  # the replica went on to its end
            status, log = call("GET", f"{gateway.url}/v1/jobs/{job['id']}/logs")
            assert status == 200
            assert 0 < len(log) <= 64 * 1024
            # The gateway serves on, and runs the next job.
            after = submit(
                gateway.url,
                {"name": "after", "tenant": "demo", "replicas": {"w": program("pass")}},
            )
            ended = wait_for(lambda: finished(gateway.url, after["id"]), 60, "the next job")
            assert ended["state"] == "succeeded", ended
        finally:
            gateway.close()
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


def test_a_cancelled_jobs_replicas_get_the_grace_period_of_their_spec(dirs: LocalDirs) -> None:
    # The default of 0 s would kill the tidy replica before it saved; the deaf one's 1 s is over
    # long before the maximum.
    gateway = start(
        dirs, MUSTER_TERMINATION_GRACE_SECONDS="0", MUSTER_MAX_TERMINATION_GRACE_SECONDS="10"
    )
    try:
        assert call("PUT", f"{gateway.url}/v1/admin/tenants/demo", TENANT)[0] == 200
        greedy = {"worker": program(TIDY, termination_grace_period_seconds=11)}
        status, refused = call(
            "POST", f"{gateway.url}/v1/jobs", {"name": "g", "tenant": "demo", "replicas": greedy}
        )
        assert status == 422, refused
        assert refused["errors"][0]["pointer"] == (
            "/replicas/worker/termination_grace_period_seconds"
        )
        assert "at most 10 seconds" in refused["errors"][0]["detail"]

        replicas = {
            "tidy": program(TIDY, termination_grace_period_seconds=5),
            "deaf": program(DEAF, termination_grace_period_seconds=1),
        }
        job = submit(gateway.url, {"name": "stopped", "tenant": "demo", "replicas": replicas})

        def log(replica: str) -> str:
            url = f"{gateway.url}/v1/jobs/{job['id']}/logs?replica={replica}-0"
            status, text = call("GET", url)
            assert status == 200, text
            return str(text)

        for replica in ("tidy", "deaf"):
            wait_for(lambda r=replica: "ready" in log(r), 30, f"the {replica} replica to start")
        assert call("POST", f"{gateway.url}/v1/jobs/{job['id']}/cancel")[0] == 200
        wait_for(lambda: not replica_processes(dirs.data), 30, "both replicas to be stopped")
        assert "saved" in log("tidy")
        assert "term" in log("deaf")  # SIGTERM first, ignored; then SIGKILL at its grace
        assert job_state(gateway.url, job["id"])["state"] == "cancelled"
    finally:
        gateway.close()


#: Runs 4 s and ends well; asked to stop, it saves and leaves within its grace.
PATIENT = TIDY.replace("while True: signal.pause()\n", "time.sleep(4)\nprint('done', flush=True)\n")


class Receiver:
    """A webhook receiver on 127.0.0.1: the type of every event posted to it, in order."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        events: list[tuple[str, str]] = []

        class Hook(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                events.append((body["type"], body["data"]["id"]))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return None

        self.events = events
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_preempted_gang_saves_within_its_grace_runs_again_and_both_events_arrive(
    dirs: LocalDirs,
) -> None:
    receiver = Receiver()
    gateway = start(
        dirs,
        MUSTER_PREEMPTION_MIN_RUNTIME="0",
        MUSTER_TERMINATION_GRACE_SECONDS="0",
        MUSTER_WEBHOOK_ALLOW_HTTP="true",
        MUSTER_WEBHOOK_ALLOW_NETS="127.0.0.1/32",
    )
    try:
        base = gateway.url
        assert call("PUT", f"{base}/v1/admin/cohorts/pool", {})[0] == 201
        for name in ("search", "ads"):
            body = {"cohort": "pool", "quota": {**TENANT["quota"], "cpu": "2"}}
            assert call("PUT", f"{base}/v1/admin/tenants/{name}", body)[0] == 201
        # search borrows all of ads' idle quota: 4 CPUs on a nominal 2.
        worker = program(PATIENT, count=4, termination_grace_period_seconds=5)
        worker["resources"] = {"cpu": "1", "memory": "64Mi"}
        big = submit(
            base,
            {
                "name": "big",
                "tenant": "search",
                "replicas": {"worker": worker},
                "callback": {"url": receiver.url, "events": ["job.preempted", "job.succeeded"]},
            },
        )

        def log() -> str:
            status, text = call("GET", f"{base}/v1/jobs/{big['id']}/logs?replica=worker-3")
            return str(text) if status == 200 else ""

        wait_for(lambda: "ready" in log(), 30, "the borrowing gang to start")
        small = program("import time; time.sleep(3)")
        small["resources"] = {"cpu": "1", "memory": "64Mi"}
        mine = submit(base, {"name": "mine", "tenant": "ads", "replicas": {"worker": small}})

        # Requeued (attempt 1) by the reclaim; its reason is the queue's again at the next cycle,
        # and its events keep why.
        wait_for(lambda: job_state(base, big["id"])["attempt"] == 1, 30, "the gang's requeue")
        wait_for(lambda: "saved" in log(), 30, "the preempted replica to save in its grace")
        status, events = call("GET", f"{base}/v1/jobs/{big['id']}/events")
        assert status == 200, events
        requeued = [e for e in events["items"] if e["type"] == "requeued"]
        assert [(e["reason"], e["data"]["preemption"]) for e in requeued] == [
            ("Preempted", "Reclaim")
        ]
        assert wait_for(lambda: finished(base, mine["id"]), 60, "ads' job")["state"] == "succeeded"
        done = wait_for(lambda: finished(base, big["id"]), 60, "the gang to run again and end")
        assert (done["state"], done["attempt"]) == ("succeeded", 1)
        wait_for(lambda: len(receiver.events) >= 2, 30, "both webhook events")
        assert receiver.events == [("job.preempted", big["id"]), ("job.succeeded", big["id"])]
    finally:
        gateway.close()
        receiver.close()
