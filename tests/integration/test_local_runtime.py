"""The local runtime cleans up after a gateway that was killed at the worst moment.

A gateway SIGKILLed after starting a replica's supervisor but before recording it leaves an
orphan: a supervisor no record names. The next gateway's first look kills it, so it can never
clean up (cgroup, work directory, exit status) over a replica started since.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gateway.backends.local import LocalRuntime
from gateway.backends.sandbox import probe_isolation
from gateway.domain.lifecycle.decisions import ReplicaPhase


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[LocalRuntime]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    isolation = probe_isolation("nobody", ["*"], instance="muster-test", probe=False)
    return LocalRuntime(data, work_dir=tmp_path / "work", isolation=isolation, path="/usr/bin")


def test_a_supervisor_no_record_names_is_killed_at_the_first_look(runtime: LocalRuntime) -> None:
    plan = runtime.state_dir / "job" / "0" / "pod-0.deadbeef.plan.json"
    # Stands for the supervisor of a start the killed gateway never recorded.
    orphan = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(120)",
            "gateway.backends.supervisor",
            str(plan),
        ]
    )
    try:
        runtime._observe()
        deadline = time.monotonic() + 10
        while orphan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphan.poll() is not None
    finally:
        orphan.kill()
        orphan.wait()


def test_a_recorded_supervisor_is_left_alone(runtime: LocalRuntime) -> None:
    pod_dir = runtime.state_dir / "job" / "0"
    pod_dir.mkdir(parents=True)
    plan = pod_dir / "pod-0.cafe0001.plan.json"
    running = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(120)",
            "gateway.backends.supervisor",
            str(plan),
        ]
    )
    try:
        created = psutil.Process(running.pid).create_time()
        (pod_dir / "pod-0.json").write_text(
            f'{{"pid": {running.pid}, "create_time": {created}, "start": "cafe0001", '
            f'"exit": "{pod_dir / "pod-0.cafe0001.exit"}"}}'
        )
        statuses = runtime._observe()
        assert running.poll() is None
        assert statuses[("job", "pod-0")].phase is ReplicaPhase.RUNNING
    finally:
        running.kill()
        running.wait()
