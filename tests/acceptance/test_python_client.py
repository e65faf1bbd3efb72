"""Muster's Python client, sync (``gateway.client.Client``) and async
(``gateway.async_client.AsyncClient``), against a real gateway behind a proxy that can break
connections as a network does:

- a submit whose answer is lost is retried with the same Idempotency-Key: one job;
- the event iterator, its connection cut, resumes after the last event it gave: nothing lost,
  nothing repeated;
- ``wait`` gives up cleanly at its timeout, the job untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.async_client import AsyncClient
from gateway.client import Client
from gateway.client_models import JobEvent, JobRequest, Replica
from gateway.errors import ApiProblem, Unreachable, WaitTimedOut
from gateway.settings import ClientSettings
from tests.acceptance.gateway_process import GatewayProcess, admin_token
from tests.acceptance.test_serve import _request, _stop_leftover_postgres

NODES = 'nodes: [{name: n1, cpu: "64", memory: 256Gi, gpus: 0}]\n'
QUOTA = {"cpu": "64", "memory": "256Gi", "gpu": 0, "max_running_jobs": 100, "max_queued_jobs": 100}


class Proxy:
    """A TCP proxy to the gateway. ``cut()`` breaks every open connection; ``lose_next()``
    makes the next connection reach the gateway but lose its answer."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open: list[socket.socket] = []
        self.connections = 0
        self._lose = False
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lose_next(self) -> None:
        self._lose = True

    def cut(self) -> None:
        with self._lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.open.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self.connections += 1
                lose, self._lose = self._lose, False
                self.open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, lose), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, lose: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if lose:
                    # The gateway answered; the answer is lost on the way.
                    target.shutdown(socket.SHUT_RDWR)
                    target.close()
                    return
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.server.close()
        self.cut()


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    data_dir = Path(tempfile.mkdtemp(prefix="mpc-", dir="/tmp"))
    (data_dir / "nodes.yaml").write_text(NODES)
    process = GatewayProcess(
        {
            "MUSTER_DATA_DIR": str(data_dir),
            "MUSTER_BACKEND": "static",
            "MUSTER_NODES_FILE": str(data_dir / "nodes.yaml"),
            "MUSTER_SIMULATE_RUNS": "true",
        }
    )
    try:
        url = process.start()
        status, tenant = _request("PUT", f"{url}/v1/admin/tenants/acme", {"quota": QUOTA})
        assert status == 201, tenant
        yield url
    finally:
        process.close()
        _stop_leftover_postgres(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def proxy(gateway: str) -> Iterator[Proxy]:
    parts = urlsplit(gateway)
    made = Proxy((parts.hostname or "127.0.0.1", parts.port or 80))
    yield made
    made.close()


def client_of(url: str) -> Client:
    return Client(ClientSettings(url=url, token=admin_token()), timeout=10)


def spec(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "tenant": "acme",
        "replicas": {"worker": {"image": "x:1", "command": command, "resources": {"cpu": "100m"}}},
    }


def jobs_named(url: str, name: str) -> list[str]:
    items = _request("GET", f"{url}/v1/jobs?limit=500")[1]["items"]
    return [job["id"] for job in items if job["name"] == name]


def until(condition: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


# -- sync ------------------------------------------------------------------------------------------


def test_a_submit_whose_answer_is_lost_is_retried_into_one_job(gateway: str, proxy: Proxy) -> None:
    proxy.lose_next()
    result = client_of(proxy.url).submit(spec("lost-answer", ["sleep", "600"]))
    assert result.created is False  # the first attempt made it; the retry found it
    assert jobs_named(gateway, "lost-answer") == [result.job.id]
    assert proxy.connections == 2


def test_events_resume_after_a_cut_connection_losing_and_repeating_nothing(
    gateway: str, proxy: Proxy
) -> None:
    seen: list[JobEvent] = []
    client = client_of(proxy.url)
    first = client_of(gateway).submit(spec("events-a", ["sleep", "600"])).job

    done = threading.Event()

    def follow() -> None:
        try:
            for event in client.events(tenant="acme", reconnect_seconds=0.1):
                seen.append(event)
                if done.is_set():
                    return
        except (ApiProblem, Unreachable):
            return  # the gateway went away once the test was over

    threading.Thread(target=follow, daemon=True).start()
    until(lambda: any(e.job_id == first.id for e in seen))
    proxy.cut()
    second = client_of(gateway).submit(spec("events-b", ["sleep", "600"])).job
    until(lambda: any(e.job_id == second.id for e in seen))
    ids = [e.stream_id for e in seen]
    assert len(ids) == len(set(ids))  # nothing repeated
    assert proxy.connections >= 2  # it did reconnect
    types = {(e.job_id, e.type) for e in seen}
    assert {(first.id, "submitted"), (second.id, "submitted")} <= types
    done.set()


def test_wait_gives_up_cleanly_at_its_timeout(gateway: str) -> None:
    client = client_of(gateway)
    job = client.submit(spec("never-ends", ["sleep", "600"])).job
    started = time.monotonic()
    with pytest.raises(WaitTimedOut) as timed_out:
        client.wait(job.id, timeout=1.0, poll=0.2)
    assert time.monotonic() - started < 5
    assert timed_out.value.job.id == job.id
    assert not client.job(job.id).finished  # untouched


def test_wait_returns_the_ended_job_submitted_as_a_typed_request(gateway: str) -> None:
    client = client_of(gateway)
    request = JobRequest(
        name="ends-well",
        tenant="acme",
        replicas={"worker": Replica(image="x:1", command=("true",), resources={"cpu": "100m"})},
    )
    job = client.submit(request).job
    assert client.wait(job.id, timeout=20, poll=0.2).state == "succeeded"


# -- async -----------------------------------------------------------------------------------------


async def test_the_async_client_retries_resumes_and_times_out(gateway: str, proxy: Proxy) -> None:
    async with AsyncClient(proxy.url, admin_token()) as client:
        proxy.lose_next()
        result = await client.submit(spec("async-lost", ["sleep", "600"]))
        assert result.created is False
        assert jobs_named(gateway, "async-lost") == [result.job.id]

        seen: list[JobEvent] = []

        async def follow() -> None:
            async for event in client.events(job=result.job.id, reconnect_seconds=0.1):
                seen.append(event)

        task = asyncio.create_task(follow())
        try:
            for _ in range(300):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert seen[0].type == "submitted"
            proxy.cut()
            await client.cancel(result.job.id, "done")
            for _ in range(300):
                if any(e.type == "cancelled" for e in seen):
                    break
                await asyncio.sleep(0.05)
            assert [e.type for e in seen][-1] == "cancelled"
            assert len({e.stream_id for e in seen}) == len(seen)
        finally:
            task.cancel()

        waiting = (await client.submit(spec("async-forever", ["sleep", "600"]))).job
        with pytest.raises(WaitTimedOut):
            await client.wait(waiting.id, timeout=0.5, poll=0.1)
