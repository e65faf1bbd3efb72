"""The delivery loop: claim due outbox rows, POST each signed event, record every attempt.

It runs on every replica. Claims lease rows in short transactions (``gateway.db.webhooks``), so
loops on several gateways share the work and never send one event twice in parallel; the POST
happens outside any transaction, and its result is recorded in another short one.

One pass:
1. claim up to the free slots of due deliveries (each claimed row is leased for the request
   timeout plus ``LEASE_MARGIN``, and its attempt number counted);
2. for each, concurrently: check the URL again with the SSRF guard (settings may have changed
   since submit); render the payload from the job's snapshot; sign it with the tenant's secret
   (and the previous one during the overlap after a rotation); POST it through the guarded
   connector, without following redirects, within the timeout;
3. judge the outcome (``gateway.domain.webhooks.judge``) and record the attempt and the verdict.

When the guard refuses an address, the attempt records ``SSRF_PRIVATE_ADDRESS`` and nothing more:
the tenant reads it in its deliveries. The host, what it resolved to and why it was refused go to
the server log, at WARNING, with the delivery's and the job's ids.

The loop is woken through ``wake`` on NOTIFY (a transition wrote a row, an admission cycle
committed, a redelivery: the runtime of ``gateway.loops.runtime`` LISTENs and sets it) and ticks
every ``interval`` seconds for retries that come due. A failed claim or record is
logged and retried at the next tick: a delivery whose result could not be recorded is sent again
when its lease passes, with the same webhook-id (receivers deduplicate on it). On shutdown
in-flight attempts get ``STOP_GRACE`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import webhooks as outbox
from gateway.db.webhooks import Claimed
from gateway.domain.lifecycle.records import Job
from gateway.domain.webhooks import (
    AttemptResult,
    DeliveryStatus,
    RetryPolicy,
    Verdict,
    active_secrets,
    event_body,
    judge,
    webhook_headers,
    webhook_id,
)
from gateway.errors import SSRF_PRIVATE_ADDRESS, SSRF_REFUSED, AddressRefused
from gateway.logs import loop_failed
from gateway.waits import woken
from gateway.webhooks.ssrf import Guard

log = logging.getLogger(__name__)

LEASE_MARGIN = 10.0  # seconds a lease outlasts the request timeout: claim and record round trips
STOP_GRACE = 5.0
RESPONSE_READ_LIMIT = 64 * 1024  # read this much of an answer, so the connection can be reused
USER_AGENT = "Muster-Webhooks/1"

#: The JSON of a job as GET /v1/jobs/{id} returns it (the API's job view).
RenderJob = Callable[[Job], Mapping[str, Any]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempted:
    """One attempt as carried out: the delivery, its number, what happened, what was decided."""

    delivery_id: uuid.UUID
    webhook_id: str
    attempt: int
    result: AttemptResult
    verdict: Verdict
    recorded: bool


class DeliveryLoop:
    """Claims due deliveries, sends each signed event, and records every attempt (the module
    docstring has one pass).

    Invariants: at most ``concurrency`` attempts are in flight; an attempt never raises out of
    the loop (a failure is logged, and the delivery is tried again when its lease ends); on
    shutdown attempts in flight get ``STOP_GRACE`` seconds. ``render_job`` turns a job into the
    JSON that GET /v1/jobs/{id} returns (the API's job view, passed in because the API layer sits
    above this one).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        render_job: RenderJob,
        guard: Guard,
        policy: RetryPolicy | None = None,
        timeout: float = 15.0,
        secret_overlap: float = 86400.0,
        concurrency: int = 64,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.engine = engine
        self.render_job = render_job
        self.guard = guard
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.secret_overlap = secret_overlap
        self.concurrency = concurrency
        self.interval = interval
        self.clock = clock
        self.rand = rand
        self.wake = asyncio.Event()
        self._resolver = resolver
        self._client: aiohttp.ClientSession | None = None

    @property
    def lease(self) -> float:
        return self.timeout + LEASE_MARGIN

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=self.guard.connector(self._resolver, limit=self.concurrency),
                # No cookies carried from one receiver to the next; no proxy from the
                # environment (it would see the traffic, and its address is not checked).
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                headers={"user-agent": USER_AGENT},
            )
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def run_once(self) -> list[Attempted]:
        """Claim what is due now (up to ``concurrency`` deliveries) and attempt it all."""
        claimed = await self._claim(self.concurrency)
        done = await asyncio.gather(*(self._attempt(c) for c in claimed))
        return [a for a in done if a is not None]

    async def run(self) -> None:
        tasks: set[asyncio.Task[Attempted | None]] = set()
        try:
            while True:
                self.wake.clear()
                free = self.concurrency - len(tasks)
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except Exception as exc:
                        loop_failed(log, "claiming webhook deliveries failed; retrying", exc)
                for delivery in claimed:
                    task = asyncio.create_task(
                        self._attempt(delivery), name=f"webhook {delivery.id}"
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if claimed and len(claimed) == free:
                    # More may be due: claim again as soon as a slot frees up.
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                await woken(self.wake, self.interval)
        finally:
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=STOP_GRACE)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            await self.close()

    async def _claim(self, limit: int) -> list[Claimed]:
        return await outbox.claim(self.engine, now=self.clock(), lease=self.lease, limit=limit)

    async def _attempt(self, delivery: Claimed) -> Attempted | None:
        """Steps 2 and 3 for one delivery; never raises (a failure is logged, the lease expires
        and the delivery is attempted again)."""
        try:
            started = self.clock()
            began = time.monotonic()
            result = await self._post(delivery, started)
            duration = time.monotonic() - began
            now = self.clock()
            verdict = judge(
                result, attempt=delivery.attempt, policy=self.policy, now=now, rand=self.rand
            )
            recorded = await outbox.record(
                self.engine,
                delivery,
                attempted_at=started,
                duration=duration,
                result=result,
                verdict=verdict,
            )
            if not recorded:
                log.warning(
                    "webhook delivery %s: lease lost before its result was recorded", delivery.id
                )
            elif verdict.status is not DeliveryStatus.PENDING and verdict.note:
                log.warning(
                    "webhook delivery %s (%s) is %s: %s",
                    delivery.id,
                    delivery.event_type,
                    verdict.status.value,
                    verdict.note,
                )
            return Attempted(
                delivery_id=delivery.id,
                webhook_id=webhook_id(str(delivery.id)),
                attempt=delivery.attempt,
                result=result,
                verdict=verdict,
                recorded=recorded,
            )
        except Exception as exc:
            loop_failed(
                log, f"webhook delivery {delivery.id} failed; retried when its lease ends", exc
            )
            return None

    async def _post(self, delivery: Claimed, now: float) -> AttemptResult:
        refusal = self.guard.check_url(delivery.url)
        if refusal is not None and refusal.address:
            return self._refused(delivery, refusal.detail)
        if refusal is not None:
            return AttemptResult(error=f"the URL {refusal.detail}", refused=True)
        if delivery.job is None:  # a snapshot this version cannot read
            return AttemptResult(error=f"cannot render the event: {delivery.unreadable}")
        data = self.render_job(delivery.job)
        body = event_body(delivery.event_type.value, delivery.occurred_at, data)
        secrets = active_secrets(
            delivery.secret,
            delivery.previous_secret,
            None if delivery.rotated_at is None else delivery.rotated_at.timestamp(),
            now=now,
            overlap=self.secret_overlap,
        )
        headers = webhook_headers(
            msg_id=webhook_id(str(delivery.id)), timestamp=int(now), body=body, secrets=secrets
        )
        try:
            async with self._session().post(
                delivery.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                await _drain(response)
                return AttemptResult(
                    status_code=response.status, retry_after=response.headers.get("Retry-After")
                )
        except TimeoutError:
            return AttemptResult(error=f"no answer within {self.timeout:g} s")
        except AddressRefused as exc:
            return self._refused(delivery, exc.detail)
        except aiohttp.ClientError as exc:
            detail = _refusal(exc)
            if detail is not None:
                return self._refused(delivery, detail)
            return AttemptResult(error=_error_text(exc))

    def _refused(self, delivery: Claimed, detail: str) -> AttemptResult:
        """The guard refused the address: the server log says which and why, the tenant's
        record only that it was refused."""
        log.warning(
            "webhook delivery %s of job %s to %s: %s",
            delivery.id,
            delivery.job_id,
            urlsplit(delivery.url).hostname,
            detail,
            extra={"job_id": str(delivery.job_id), "tenant": delivery.tenant},
        )
        return AttemptResult(error=SSRF_PRIVATE_ADDRESS, refused=True)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read (a bounded part of) the answer, so a small one leaves the connection reusable."""
    read = 0
    while read < RESPONSE_READ_LIMIT:
        chunk = await response.content.read(16 * 1024)
        if not chunk:
            return
        read += len(chunk)


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, aiohttp.ClientConnectorError):
            yield current.os_error
        current = current.__cause__ or current.__context__


def _refusal(exc: BaseException) -> str | None:
    """What the guard refused and why (for the server log), when it is why the connection
    failed."""
    for cause in _causes(exc):
        if isinstance(cause, AddressRefused):
            return cause.detail
        if SSRF_REFUSED in str(cause):  # several addresses, some refused, in one OSError
            return str(cause)
    return None


def _error_text(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}"
