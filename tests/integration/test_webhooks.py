"""Webhook callbacks end to end: real transitions write outbox rows, a real delivery loop POSTs
them over HTTP to an aiohttp receiver on 127.0.0.1, and the receiver checks every delivery with an
independent Standard Webhooks implementation (the ``standardwebhooks`` package).

Retries run on an injected clock with a fast schedule, so no test sleeps for a retry. The
receiver's address is allowed through ``MUSTER_WEBHOOK_ALLOW_NETS`` (127.0.0.1/32) except where a
test checks that the SSRF guard refuses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.api.app import make_app
from gateway.api.serializers import job_view
from gateway.backends.nodes_file import StaticInventory
from gateway.db import jobs as job_store
from gateway.db import lifecycle
from gateway.db.admission import LeaderQueue, run_cycle
from gateway.db.engine import make_engine
from gateway.domain.lifecycle.decisions import Decision, Reason
from gateway.domain.lifecycle.states import JobState
from gateway.domain.scheduling.nodes import Node
from gateway.domain.webhooks import RetryPolicy
from gateway.errors import SSRF_PRIVATE_ADDRESS, AddressRefused
from gateway.logs import JsonFormatter, TextFormatter
from gateway.loops.runtime import LoopRuntime
from gateway.settings import (
    AuthSettings,
    BackendSettings,
    DatabaseSettings,
    Settings,
    WebhookSettings,
)
from gateway.webhooks.delivery import DeliveryLoop
from gateway.webhooks.ssrf import Guard
from tests import tokens
from tests.integration.helpers import QUOTA, TENANT, create_tenant, job_spec, row_counts, submit
from tests.openapi_check import CheckedClient

ALLOW = ("127.0.0.1/32",)
SCHEDULE = (0, 10, 20, 30, 40)
ALL_EVENTS = [
    "job.admitted",
    "job.running",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.requeued",
]


# --- the receiver, the clock, the loop ------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False  # until the test calls release()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


class Receiver:
    """An HTTP receiver on 127.0.0.1: answers from a script, then 200; records every request,
    verified against the tenant's secrets with ``standardwebhooks``."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.received: list[Received] = []
        self.secrets: list[str] = []
        self.in_flight: dict[str, int] = {}
        self.overlapped: list[str] = []  # webhook-ids seen twice at the same time
        self.released = asyncio.Event()
        self.arrived = asyncio.Event()  # set by every request
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        self.released.set()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def _verified(self, body: bytes, headers: dict[str, str]) -> bool:
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            return True
        return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        ident = headers.get("webhook-id", "")
        self.received.append(
            Received(
                path=request.path,
                headers=headers,
                body=body,
                verified=self._verified(body, headers),
            )
        )
        self.arrived.set()
        self.in_flight[ident] = self.in_flight.get(ident, 0) + 1
        if self.in_flight[ident] > 1:
            self.overlapped.append(ident)
        try:
            answer = self.script.pop(0) if self.script else Answer()
            if answer.hang:
                await self.released.wait()
            if answer.delay:
                await asyncio.sleep(answer.delay)
            return web.Response(status=answer.status, headers=answer.headers)
        finally:
            self.in_flight[ident] -= 1


class Clock:
    """Real time plus an offset the test moves forward: webhook timestamps stay near real time
    (receivers check them), and retries come due without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class StaticResolver(AbstractResolver):
    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers[host]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
def settings(tmp_path: Path, database: str) -> Settings:
    """The API under test accepts http callbacks to the receiver on 127.0.0.1."""
    return Settings(
        data_dir=tmp_path,
        database=DatabaseSettings(url=database),
        backend=BackendSettings(kind="static", nodes_file=tmp_path / "nodes.yaml"),
        webhooks=WebhookSettings(allow_http=True, allow_nets=ALLOW, secret_overlap=60),
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def secret(api: CheckedClient, engine: AsyncEngine, receiver: Receiver) -> str:
    """The tenant, and its signing secret (which the receiver verifies with)."""
    await create_tenant(api, quota={**QUOTA, "max_queued_jobs": 2000, "max_running_jobs": 2000})
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT webhook_secret FROM tenants WHERE name = :name"), {"name": TENANT}
        )
    assert isinstance(found, str)
    receiver.secrets = [found]
    return found


MakeLoop = Callable[..., DeliveryLoop]


@pytest.fixture
async def make_loop(engine: AsyncEngine, clock: Clock) -> AsyncIterator[MakeLoop]:
    loops: list[DeliveryLoop] = []

    def make(**options: Any) -> DeliveryLoop:
        defaults: dict[str, Any] = {
            "render_job": job_view,
            "guard": Guard.from_settings(ALLOW, allow_http=True),
            "policy": RetryPolicy(schedule=SCHEDULE),
            "timeout": 2.0,
            "secret_overlap": 60.0,
            "clock": clock,
            "rand": lambda: 0.5,  # no jitter
            "interval": 0.05,
        }
        engine_ = options.pop("engine", engine)
        loop = DeliveryLoop(engine_, **{**defaults, **options})
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        await loop.close()


async def with_callback(
    api: CheckedClient, url: str, events: list[str] | None = None, name: str = "wd"
) -> dict[str, Any]:
    callback: dict[str, Any] = {"url": url}
    if events is not None:
        callback["events"] = events
    return await submit(api, job_spec(name, callback=callback))


async def cancel(api: CheckedClient, job: dict[str, Any]) -> dict[str, Any]:
    response = await api.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status == 200, response.text
    cancelled: dict[str, Any] = response.body
    return cancelled


async def deliveries(api: CheckedClient, job: dict[str, Any]) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/jobs/{job['id']}/deliveries")
    assert response.status == 200, response.text
    items: list[dict[str, Any]] = response.body["items"]
    return items


async def outbox(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT event_type, status FROM webhook_outbox ORDER BY created_at, event_type")
        )
        return [(row[0], row[1]) for row in rows]


async def admit(engine: AsyncEngine, nodes: tuple[Node, ...], clock: Clock) -> tuple[str, ...]:
    result = await run_cycle(engine, nodes, LeaderQueue(), clock=clock, starvation_seconds=300)
    return result.admitted


async def transition(
    engine: AsyncEngine, job: dict[str, Any], decision: Decision, clock: Clock
) -> bool:
    (active,) = [a for a in await lifecycle.active_jobs(engine) if a.id == job["id"]]
    return await lifecycle.apply(engine, active, decision, clock())


RUNNING = Decision(transition=JobState.RUNNING, reason=Reason.ALL_REPLICAS_RUNNING, message="up")
SUCCEEDED = Decision(transition=JobState.SUCCEEDED, reason=Reason.WORKER0_SUCCEEDED, message="done")
FAILED = Decision(transition=JobState.FAILED, reason=Reason.REPLICA_FAILED, message="exit 1")


def requeued(clock: Clock) -> Decision:
    return Decision(
        transition=JobState.QUEUED,
        reason=Reason.NODE_LOST,
        message="node gone",
        requeue_not_before=clock() - 1,
    )


# --- signatures and payload -----------------------------------------------------------------


async def test_a_delivery_is_verifiable_and_carries_the_job_as_get_returns_it(
    api: CheckedClient, receiver: Receiver, secret: str, make_loop: MakeLoop
) -> None:
    job = await with_callback(api, receiver.url())
    await cancel(api, job)

    attempted = await make_loop().run_once()

    assert [a.verdict.status.value for a in attempted] == ["delivered"]
    (got,) = receiver.received
    assert got.verified
    event = Webhook(secret).verify(got.body, got.headers)
    assert event["type"] == "job.cancelled"
    assert event["data"] == (await api.get(f"/v1/jobs/{job['id']}")).body
    assert event["timestamp"].endswith("Z")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"].startswith("msg_")
    assert got.headers["webhook-signature"].startswith("v1,")
    (delivery,) = await deliveries(api, job)
    assert delivery["webhook_id"] == got.webhook_id
    assert delivery["status"] == "delivered"
    assert delivery["delivered_at"] is not None
    assert [(a["number"], a["status_code"], a["outcome"]) for a in delivery["attempts"]] == [
        (1, 200, "delivered")
    ]


async def test_a_tampered_body_or_timestamp_fails_verification(
    api: CheckedClient, receiver: Receiver, secret: str, make_loop: MakeLoop
) -> None:
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    await make_loop().run_once()
    (got,) = receiver.received

    tampered_body = got.body.replace(b'"cancelled"', b'"succeeded"')
    tampered_time = {
        **got.headers,
        "webhook-timestamp": str(int(got.headers["webhook-timestamp"]) + 1),
    }

    assert tampered_body != got.body
    Webhook(secret).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered_body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(got.body, tampered_time)


# --- retries ------------------------------------------------------------------------------


async def test_three_failures_then_success_make_four_attempts_with_one_webhook_id(
    api: CheckedClient, receiver: Receiver, secret: str, make_loop: MakeLoop, clock: Clock
) -> None:
    receiver.script = [Answer(500), Answer(503), Answer(502)]
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    loop = make_loop()

    statuses = []
    for delay in (0, *SCHEDULE[1:4]):
        clock.advance(delay)
        assert await loop.run_once() != [], f"nothing was due after {delay} s"
        statuses.append((await deliveries(api, job))[0]["status"])
        assert await loop.run_once() == []  # the next attempt is not due yet

    assert statuses == ["pending", "pending", "pending", "delivered"]
    assert len(receiver.received) == 4
    assert len({r.webhook_id for r in receiver.received}) == 1
    assert len({r.headers["webhook-timestamp"] for r in receiver.received}) == 4
    assert all(r.verified for r in receiver.received)
    (delivery,) = await deliveries(api, job)
    assert [(a["number"], a["status_code"]) for a in delivery["attempts"]] == [
        (1, 500),
        (2, 503),
        (3, 502),
        (4, 200),
    ]
    assert delivery["attempt_count"] == 4


async def test_retry_after_delays_the_next_attempt(
    api: CheckedClient, receiver: Receiver, secret: str, make_loop: MakeLoop, clock: Clock
) -> None:
    receiver.script = [Answer(429, headers={"Retry-After": "120"})]
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    loop = make_loop()
    await loop.run_once()
    (pending,) = await deliveries(api, job)

    clock.advance(SCHEDULE[1] + 5)  # the schedule alone would retry by now
    early = await loop.run_once()
    clock.advance(120 - SCHEDULE[1] - 5 + 1)
    late = await loop.run_once()

    assert pending["status"] == "pending"
    assert pending["attempts"][0]["status_code"] == 429
    assert early == []
    assert [a.verdict.status.value for a in late] == ["delivered"]


async def test_timeouts_are_retried(
    api: CheckedClient, receiver: Receiver, secret: str, make_loop: MakeLoop, clock: Clock
) -> None:
    receiver.script = [Answer(delay=1.0)]
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    loop = make_loop(timeout=0.2)

    await loop.run_once()
    clock.advance(SCHEDULE[1])
    await loop.run_once()

    (delivery,) = await deliveries(api, job)
    first, second = delivery["attempts"]
    assert first["status_code"] is None
    assert first["error"] == "no answer within 0.2 s"
    assert first["outcome"] == "failed"
    assert second["status_code"] == 200
    assert delivery["status"] == "delivered"


async def test_refused_connections_are_retried(
    api: CheckedClient, secret: str, make_loop: MakeLoop, clock: Clock
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    job = await with_callback(api, f"http://127.0.0.1:{closed_port}/hook")
    await cancel(api, job)

    await make_loop().run_once()

    (delivery,) = await deliveries(api, job)
    (attempt,) = delivery["attempts"]
    assert delivery["status"] == "pending"
    assert attempt["status_code"] is None
    assert "cannot connect" in attempt["error"]
    assert delivery["next_attempt_at"] is not None


@pytest.mark.parametrize(
    "location",
    ["/elsewhere", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/admin"],
)
async def test_a_redirect_is_a_failure_and_is_never_followed(
    api: CheckedClient,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
    clock: Clock,
    location: str,
) -> None:
    receiver.script = [Answer(302, headers={"Location": location})]
    job = await with_callback(api, receiver.url())
    await cancel(api, job)

    await make_loop().run_once()

    assert [r.path for r in receiver.received] == ["/hook"]
    (delivery,) = await deliveries(api, job)
    assert delivery["status"] == "pending"
    assert delivery["attempts"][0]["status_code"] == 302
    assert "not followed" in delivery["last_error"]


async def test_410_disables_the_callback_of_the_job(
    api: CheckedClient,
    engine: AsyncEngine,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
    nodes: tuple[Node, ...],
    clock: Clock,
) -> None:
    receiver.script = [Answer(410)]
    job = await with_callback(api, receiver.url(), ["job.admitted", "job.cancelled"])
    assert await admit(engine, nodes, clock) == (job["id"],)
    loop = make_loop()
    await loop.run_once()

    await cancel(api, job)
    clock.advance(3600)
    after = await loop.run_once()

    assert after == []
    assert len(receiver.received) == 1
    admitted, cancelled = await deliveries(api, job)
    assert (admitted["type"], admitted["status"]) == ("job.admitted", "disabled")
    assert "410 Gone" in admitted["last_error"]
    assert admitted["attempts"][0]["outcome"] == "gone"
    assert (cancelled["type"], cancelled["status"]) == ("job.cancelled", "disabled")
    assert "disabled" in cancelled["last_error"]
    assert cancelled["attempts"] == []


async def test_a_delivery_is_dead_after_the_last_attempt(
    api: CheckedClient, receiver: Receiver, secret: str, make_loop: MakeLoop, clock: Clock
) -> None:
    receiver.script = [Answer(500), Answer(404)]
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    loop = make_loop(policy=RetryPolicy(schedule=(0, 10)))

    await loop.run_once()
    clock.advance(10)
    await loop.run_once()
    clock.advance(3600)
    after = await loop.run_once()

    assert after == []
    (delivery,) = await deliveries(api, job)
    assert delivery["status"] == "dead"
    assert delivery["next_attempt_at"] is None
    assert delivery["last_error"] == "gave up after 2 attempts; the last: the receiver answered 404"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 404]


# --- redelivery ---------------------------------------------------------------------------


async def test_redeliver_sends_the_event_again_with_the_same_webhook_id(
    api: CheckedClient, receiver: Receiver, secret: str, make_loop: MakeLoop
) -> None:
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    loop = make_loop()
    await loop.run_once()
    (delivered,) = await deliveries(api, job)

    by_id = await api.post(f"/v1/jobs/{job['id']}/deliveries/{delivered['id']}/redeliver")
    await loop.run_once()
    by_webhook_id = await api.post(
        f"/v1/jobs/{job['id']}/deliveries/{delivered['webhook_id']}/redeliver"
    )
    await loop.run_once()

    assert (by_id.status, by_webhook_id.status) == (202, 202)
    assert by_id.body["status"] == "pending"
    assert by_id.body["attempt_count"] == 0
    assert [r.webhook_id for r in receiver.received] == [delivered["webhook_id"]] * 3
    assert all(r.verified for r in receiver.received)
    (after,) = await deliveries(api, job)
    assert after["status"] == "delivered"
    assert [a["number"] for a in after["attempts"]] == [1, 1, 1]


async def test_redeliver_refuses_unknown_and_in_flight_deliveries(
    api: CheckedClient, engine: AsyncEngine, receiver: Receiver, secret: str
) -> None:
    job = await with_callback(api, receiver.url())
    other = await with_callback(api, receiver.url(), name="other")
    await cancel(api, job)
    await cancel(api, other)
    (delivery,) = await deliveries(api, job)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE webhook_outbox SET locked_until = now() + interval '1 minute'")
        )

    in_flight = await api.post(f"/v1/jobs/{job['id']}/deliveries/{delivery['id']}/redeliver")
    wrong_job = await api.post(f"/v1/jobs/{other['id']}/deliveries/{delivery['id']}/redeliver")
    unknown = await api.post(f"/v1/jobs/{job['id']}/deliveries/{uuid.uuid4()}/redeliver")
    garbage = await api.post(f"/v1/jobs/{job['id']}/deliveries/nope/redeliver")
    no_job = await api.get(f"/v1/jobs/{uuid.uuid4()}/deliveries")

    assert in_flight.status == 409
    assert (wrong_job.status, unknown.status, garbage.status, no_job.status) == (404,) * 4


# --- secret rotation ------------------------------------------------------------------------


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    api: CheckedClient,
    engine: AsyncEngine,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
    clock: Clock,
) -> None:
    rotated = await api.post(f"/v1/tenants/{TENANT}/webhook-secret/rotate")
    assert rotated.status == 200, rotated.text
    new = rotated.body["webhook_secret"]
    first = await with_callback(api, receiver.url(), name="first")
    second = await with_callback(api, receiver.url(), name="second")
    await cancel(api, first)
    await cancel(api, second)
    loop = make_loop(concurrency=1)

    await loop.run_once()  # within the 60 s overlap
    clock.advance(61)
    await loop.run_once()  # after it

    during, after = receiver.received
    assert new != secret
    assert new.startswith("whsec_")
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(during.body, during.headers)
    Webhook(secret).verify(during.body, during.headers)
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(after.body, after.headers)
    audit = await api.get(f"/v1/admin/audit?tenant={TENANT}")
    assert audit.body["items"][0]["action"] == "rotate-webhook-secret"
    assert secret not in audit.text
    assert new not in audit.text
    assert (await api.post("/v1/tenants/nobody/webhook-secret/rotate")).status == 404


# --- several delivery loops -----------------------------------------------------------------


async def test_two_loops_on_two_engines_never_deliver_one_event_twice(
    api: CheckedClient,
    database: str,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
) -> None:
    for index in range(40):
        await cancel(api, await with_callback(api, receiver.url(), name=f"j{index}"))
    receiver.script = [Answer(delay=0.02) for _ in range(40)]
    engines = [make_engine(database, pool_size=5) for _ in range(2)]
    try:
        loops = [make_loop(engine=e, concurrency=4) for e in engines]

        async def drain(loop: DeliveryLoop) -> int:
            sent = 0
            while batch := await loop.run_once():
                sent += len(batch)
            return sent

        counts = await asyncio.gather(*(drain(loop) for loop in loops))
    finally:
        for e in engines:
            await e.dispose()

    ids = [r.webhook_id for r in receiver.received]
    assert sum(counts) == 40
    assert all(count > 0 for count in counts), counts  # both loops took a share
    assert len(ids) == len(set(ids)) == 40
    assert receiver.overlapped == []


async def test_loops_whose_clocks_disagree_by_a_minute_never_send_one_event_in_parallel(
    api: CheckedClient,
    database: str,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
    clock: Clock,
) -> None:
    """A lease runs on the database's clock: the loop whose clock is 60 s ahead (far more than a
    lease, 12 s here) still sees the other's leases as held, and takes other deliveries."""
    for index in range(12):
        await cancel(api, await with_callback(api, receiver.url(), name=f"s{index}"))
    # The first loop's four deliveries hang at the receiver, in flight, until released.
    receiver.script = [Answer(hang=True) for _ in range(4)]
    ahead = Clock()
    ahead.advance(60)
    engines = [make_engine(database, pool_size=5) for _ in range(2)]
    try:
        # A long request timeout: the hung requests must stay in flight, not time out and
        # come due again (the early loop would rightly send those).
        behind = make_loop(engine=engines[0], concurrency=4, clock=clock, timeout=30.0)
        early = make_loop(engine=engines[1], concurrency=4, clock=ahead)
        assert behind.lease < 60
        sending = asyncio.create_task(behind.run_once())
        while len(receiver.received) < 4:
            await asyncio.wait_for(receiver.arrived.wait(), 10)
            receiver.arrived.clear()

        taken = await early.run_once()  # while the first four are in flight
        receiver.release()
        held = await sending
        while await early.run_once() or await behind.run_once():
            pass
    finally:
        for e in engines:
            await e.dispose()

    in_flight = {a.webhook_id for a in held}
    assert len(in_flight) == 4
    assert in_flight.isdisjoint(a.webhook_id for a in taken)
    ids = [r.webhook_id for r in receiver.received]
    assert receiver.overlapped == []
    assert len(ids) == len(set(ids)) == 12


async def lease_runs_out(database: str) -> None:
    """Leases are on the database's clock, which a test does not move: it moves the leases."""
    engine = make_engine(database, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE webhook_outbox SET locked_until = now() - interval '1 second' "
                    "WHERE locked_until IS NOT NULL"
                )
            )
    finally:
        await engine.dispose()


async def test_a_leased_delivery_is_left_alone_until_its_lease_passes(
    api: CheckedClient,
    database: str,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
    clock: Clock,
) -> None:
    receiver.script = [Answer(hang=True)]
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    other_engine = make_engine(database, pool_size=2)
    try:
        first, second = make_loop(timeout=30.0), make_loop(engine=other_engine, timeout=30.0)
        sending = asyncio.create_task(first.run_once())
        await asyncio.wait_for(receiver.arrived.wait(), 10)

        clock.advance(first.lease + 60)  # however far the second loop's clock runs ahead
        while_leased = await second.run_once()
        await lease_runs_out(database)  # by the database's clock: the first loop is presumed dead
        after_lease = await second.run_once()
        receiver.release()
        (late,) = await sending
    finally:
        await other_engine.dispose()

    assert while_leased == []
    assert [a.verdict.status.value for a in after_lease] == ["delivered"]
    # The first loop's answer came after it lost the lease: kept as an attempt, not as the
    # delivery's state. The event went out twice, with one webhook-id.
    assert not late.recorded
    assert len({r.webhook_id for r in receiver.received}) == 1
    assert len(receiver.received) == 2
    (delivery,) = await deliveries(api, job)
    assert delivery["status"] == "delivered"
    assert [a["number"] for a in delivery["attempts"]] == [2, 1]


async def test_the_running_loop_wakes_on_notify_and_stops_cleanly(
    api: CheckedClient,
    receiver: Receiver,
    secret: str,
    settings: Settings,
    engine: AsyncEngine,
    nodes: tuple[Node, ...],
) -> None:
    loops = LoopRuntime(
        engine,
        inventory=StaticInventory(nodes),
        pods=None,
        admission=settings.admission,
        webhooks=settings.webhooks,
        render_job=job_view,
    )
    loops.delivery.interval = 30.0  # a tick far away: only NOTIFY can wake it in time
    crashed = asyncio.Event()
    async with loops.running(on_crash=crashed.set):
        await asyncio.sleep(0.2)  # listening
        job = await with_callback(api, receiver.url())
        await cancel(api, job)
        await asyncio.wait_for(receiver.arrived.wait(), 10)

    assert receiver.received[0].verified
    assert not crashed.is_set()
    assert not loops.listener.listening


# --- the SSRF guard -------------------------------------------------------------------------


@pytest.fixture
async def strict_api(
    tmp_path: Path, engine: AsyncEngine, nodes: tuple[Node, ...], issuer_key: Path
) -> AsyncIterator[CheckedClient]:
    """The API with the default settings: https only, no network allowed."""
    settings = Settings(
        data_dir=tmp_path,
        backend=BackendSettings(kind="static", nodes_file=tmp_path / "n.yaml"),
        auth=AuthSettings(issuer_key=issuer_key),
    )
    async with TestClient(TestServer(make_app(settings, engine, StaticInventory(nodes)))) as client:
        yield CheckedClient(client, tokens.admin_token(settings))


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/muster",  # plain http without the setting
        "https://user:secret@hooks.example.com/muster",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",
        "https://0x7f000001/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/hook",
        "https://172.16.0.1/hook",
        "https://192.168.1.1/hook",
        "https://100.64.0.1/hook",
        "https://localhost/hook",
    ],
)
async def test_submit_refuses_unsafe_callback_urls_and_writes_nothing(
    strict_api: CheckedClient, engine: AsyncEngine, url: str
) -> None:
    await create_tenant(strict_api)
    before = await row_counts(engine)

    response = await strict_api.post("/v1/jobs", json=job_spec(callback={"url": url}))

    assert response.status == 422, response.text
    assert [e["pointer"] for e in response.body["errors"]] == ["/callback/url"]
    assert await row_counts(engine) == before


async def test_submit_accepts_public_urls_and_host_names(strict_api: CheckedClient) -> None:
    await create_tenant(strict_api)
    for index, url in enumerate(["https://hooks.example.com/m", "https://8.8.8.8/m"]):
        response = await strict_api.post(
            "/v1/jobs", json=job_spec(f"j{index}", callback={"url": url})
        )
        assert response.status == 201, response.text


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),  # the receiver's own address
        ("10.20.30.40", "private"),
    ],
)
async def test_a_host_name_resolving_to_a_private_address_is_refused_without_connecting(
    api: CheckedClient,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
    caplog: pytest.LogCaptureFixture,
    address: str,
    reason: str,
) -> None:
    url = f"http://hooks.internal.test:{receiver.port}/hook"
    job = await with_callback(api, url)  # a name: submit cannot know where it points
    await cancel(api, job)
    loop = make_loop(
        guard=Guard(allow_http=True),  # nothing allowed: not even the receiver's 127.0.0.1
        resolver=StaticResolver({"hooks.internal.test": address}),
    )

    with caplog.at_level(logging.WARNING, logger="gateway.webhooks"):
        (attempted,) = await loop.run_once()

    assert receiver.received == []
    assert attempted.verdict.status.value == "dead"
    # The tenant reads that the guard refused a private or reserved address, not which.
    (delivery,) = await deliveries(api, job)
    (attempt,) = delivery["attempts"]
    assert attempt["outcome"] == "refused"
    assert attempt["error"] == delivery["last_error"] == SSRF_PRIVATE_ADDRESS
    assert delivery["status"] == "dead"
    assert address not in json.dumps(delivery)
    assert "resolves" not in json.dumps(delivery)
    # The server log says which, with the delivery's and the job's ids.
    (logged,) = [r for r in caplog.records if address in r.getMessage()]
    assert logged.levelno == logging.WARNING
    line = TextFormatter().format(logged)
    assert line.endswith(
        f"WARNING gateway.webhooks.delivery: webhook delivery {attempted.delivery_id} of job "
        f"{job['id']} to hooks.internal.test: refused by the SSRF guard: "
        f"hooks.internal.test resolves to {address}, which is {reason}"
    )
    assert json.loads(JsonFormatter().format(logged))["job_id"] == job["id"]


async def test_literal_addresses_are_refused_at_delivery_without_connecting(
    api: CheckedClient,
    engine: AsyncEngine,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Rows written while the settings allowed more (or by hand) are checked again when sent."""
    port = receiver.port
    urls = [
        f"http://127.0.0.1:{port}/hook",
        f"http://[::1]:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        f"http://2130706433:{port}/hook",
        f"http://0x7f000001:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/hook",
    ]
    job = await with_callback(api, receiver.url())
    await cancel(api, job)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM webhook_outbox"))
        for url in urls:
            await conn.execute(
                text(
                    "INSERT INTO webhook_outbox (id, job_id, tenant, event_type, url, payload) "
                    "VALUES (gen_random_uuid(), :job, :tenant, 'job.cancelled', :url, '{}')"
                ),
                {"job": job["id"], "tenant": TENANT, "url": url},
            )

    with caplog.at_level(logging.WARNING, logger="gateway.webhooks"):
        attempted = await make_loop(guard=Guard(allow_http=True)).run_once()

    assert receiver.received == []
    assert len(attempted) == len(urls)
    assert {a.verdict.status.value for a in attempted} == {"dead"}
    assert {a.verdict.outcome.value for a in attempted} == {"refused"}
    views = await deliveries(api, job)
    for delivery in views:
        (attempt,) = delivery["attempts"]
        if delivery["url"] in (urls[3], urls[4]):  # the tenant's own number, not an address
            assert attempt["error"].startswith("the URL has a numeric host"), attempt
        else:
            assert attempt["error"] == SSRF_PRIVATE_ADDRESS, attempt
    # Which address, and why, is in the server log.
    (metadata,) = [d["id"] for d in views if d["url"] == urls[5]]
    assert (
        f"webhook delivery {metadata} of job {job['id']} to 169.254.169.254: "
        "refused by the SSRF guard: 169.254.169.254 is a cloud metadata address"
    ) in {r.getMessage() for r in caplog.records}


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"])
async def test_the_connector_itself_refuses_literal_addresses_before_connecting(
    receiver: Receiver, host: str
) -> None:
    """The last line: aiohttp dials literal addresses without a resolver, so the guard's socket
    factory checks the very address about to be dialled."""
    guard = Guard(allow_http=True)
    async with aiohttp.ClientSession(connector=guard.connector()) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as raised:
            await session.get(f"http://{host}:{receiver.port}/hook")

    assert isinstance(raised.value.os_error, AddressRefused) or "SSRF" in str(raised.value)
    assert receiver.received == []


# --- an event exists if and only if its transition committed --------------------------------


async def test_each_subscribed_transition_writes_exactly_its_event(
    api: CheckedClient,
    engine: AsyncEngine,
    receiver: Receiver,
    secret: str,
    nodes: tuple[Node, ...],
    clock: Clock,
    make_loop: MakeLoop,
) -> None:
    everything = await with_callback(api, receiver.url(), ALL_EVENTS, name="all")
    await admit(engine, nodes, clock)
    assert await transition(engine, everything, RUNNING, clock)
    assert await transition(engine, everything, requeued(clock), clock)
    await admit(engine, nodes, clock)
    assert await transition(engine, everything, SUCCEEDED, clock)

    assert await outbox(engine) == [
        ("job.admitted", "pending"),
        ("job.running", "pending"),
        ("job.requeued", "pending"),
        ("job.admitted", "pending"),
        ("job.succeeded", "pending"),
    ]
    await make_loop().run_once()
    events = [r.event for r in receiver.received]
    assert sorted(e["type"] for e in events) == sorted(
        ["job.admitted", "job.running", "job.requeued", "job.admitted", "job.succeeded"]
    )
    # Each payload is the job as that transition left it.
    states = {(e["type"], e["data"]["state"], e["data"]["attempt"]) for e in events}
    assert states == {
        ("job.admitted", "admitted", 0),
        ("job.running", "running", 0),
        ("job.requeued", "queued", 1),
        ("job.admitted", "admitted", 1),
        ("job.succeeded", "succeeded", 1),
    }


async def test_only_subscribed_events_and_only_jobs_with_callbacks_write_rows(
    api: CheckedClient,
    engine: AsyncEngine,
    receiver: Receiver,
    secret: str,
    nodes: tuple[Node, ...],
    clock: Clock,
) -> None:
    default = await with_callback(api, receiver.url(), name="default")  # terminal events
    failing = await with_callback(api, receiver.url(), ["job.failed"], name="failing")
    only_success = await with_callback(api, receiver.url(), ["job.succeeded"], name="success")
    silent = await submit(api, job_spec("silent"))

    await admit(engine, nodes, clock)  # nobody subscribed to job.admitted
    assert await transition(engine, failing, FAILED, clock)
    await cancel(api, default)
    await cancel(api, only_success)
    await cancel(api, silent)

    assert sorted(await outbox(engine)) == [
        ("job.cancelled", "pending"),
        ("job.failed", "pending"),
    ]


async def test_a_transition_that_does_not_commit_writes_no_event(
    api: CheckedClient,
    engine: AsyncEngine,
    receiver: Receiver,
    secret: str,
    nodes: tuple[Node, ...],
    clock: Clock,
) -> None:
    job = await with_callback(api, receiver.url(), ALL_EVENTS)
    await admit(engine, nodes, clock)
    (stale,) = [a for a in await lifecycle.active_jobs(engine) if a.id == job["id"]]
    assert await transition(engine, job, SUCCEEDED, clock)
    before = await outbox(engine)

    refused_cancel = await api.post(f"/v1/jobs/{job['id']}/cancel")  # already succeeded: 409
    stale_apply = await lifecycle.apply(engine, stale, FAILED, clock())  # guard fails
    repeated_admission = await admit(engine, nodes, clock)

    assert refused_cancel.status == 409
    assert stale_apply is False
    assert repeated_admission == ()
    assert before == [("job.admitted", "pending"), ("job.succeeded", "pending")]
    assert await outbox(engine) == before


# --- volume ---------------------------------------------------------------------------------


async def test_a_thousand_completions_are_delivered_once_each(
    api: CheckedClient,
    engine: AsyncEngine,
    database: str,
    receiver: Receiver,
    secret: str,
    make_loop: MakeLoop,
) -> None:
    jobs = await asyncio.gather(
        *(with_callback(api, receiver.url(), name=f"j{index}") for index in range(1000))
    )
    await asyncio.gather(*(job_store.cancel(engine, job["id"], actor="test") for job in jobs))
    engines = [make_engine(database, pool_size=8) for _ in range(2)]
    try:
        loops = [make_loop(engine=e, concurrency=32) for e in engines]

        async def drain(loop: DeliveryLoop) -> None:
            while await loop.run_once():
                pass

        await asyncio.gather(*(drain(loop) for loop in loops))
    finally:
        for e in engines:
            await e.dispose()

    ids = [r.webhook_id for r in receiver.received]
    assert len(ids) == len(set(ids)) == 1000
    assert all(r.verified for r in receiver.received)
    assert {r.event["data"]["id"] for r in receiver.received} == {job["id"] for job in jobs}
    assert await outbox(engine) == [("job.cancelled", "delivered")] * 1000
