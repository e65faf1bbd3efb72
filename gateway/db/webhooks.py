"""Webhook deliveries in the database: the outbox rows a transition writes, the claim-and-record
steps of the delivery loop, a job's deliveries, redelivery, and tenant secret rotation.

Invariants:
- An event exists if and only if its transition committed: ``enqueue_sql`` is a statement (or a
  CTE) of the transition's own transaction, and it writes a row only for an event the job's
  callback subscribed to. The row holds a snapshot of the job as the transition left it.
- A job whose callback was disabled (a receiver answered 410 Gone) gets its later events written
  as ``disabled``: they are recorded, never sent.
- One delivery is in flight at most once: a claim takes due rows with ``FOR UPDATE SKIP LOCKED``
  in a short transaction and leases them (``locked_until``, ``locked_by``); other loops skip a
  leased row until the lease passes. The lease outlasts the request timeout, so a POST ends (or
  is abandoned) before anyone else may send the same event. Only the lease holder records the
  result; a loop that died leaves its lease to expire, and the event is sent again, with the same
  webhook-id.
- Leases use the database's clock (``now()``), never a gateway's: replicas whose clocks
  disagree still agree on when a lease passes, so a replica whose clock runs ahead cannot take a
  delivery another is still sending. When a delivery is due (``next_attempt_at``) follows the
  caller's clock (unix seconds), so tests need no sleeping; a replica's skew only moves a retry
  by as much, and the lease still keeps it single.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.channels import Channel, notify_sql
from gateway.db.mapping import delivery_attempt_of, delivery_of, job_of
from gateway.domain.jobs.spec import CallbackEvent
from gateway.domain.lifecycle.records import Job
from gateway.domain.webhooks import (
    AttemptResult,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Verdict,
    rfc3339,
)
from gateway.errors import Conflict, NotFound

# The job as GET /v1/jobs/{id} shows it: every column ``gateway.db.mapping.job_of`` reads.
SNAPSHOT_COLUMNS = (
    "id",
    "tenant",
    "name",
    "framework",
    "state",
    "reason",
    "message",
    "priority",
    "priority_class",
    "preemptible",
    "attempt",
    "spec",
    "labels",
    "submitted_by",
    "created_at",
    "updated_at",
    "admitted_at",
    "started_at",
    "finished_at",
    "queue_position",
    "tenant_queue_position",
)
_TIMESTAMPS = frozenset({"created_at", "updated_at", "admitted_at", "started_at", "finished_at"})

DISABLED_NOTE = "not sent: a receiver answered 410 Gone, so the callback of this job is disabled"


def enqueue_sql(event: CallbackEvent, source: str, *, where: str = "TRUE") -> str:
    """An INSERT of one outbox row per job of ``source`` (aliased ``j``) that subscribed to
    ``event``. ``source`` may be ``jobs j`` or, inside a data-modifying CTE, the updated rows
    (``admitted j``): a CTE sees the rows as they were before its statement, not as updated."""
    snapshot = ", ".join(f"'{column}', j.{column}" for column in SNAPSHOT_COLUMNS)
    disabled = (
        "EXISTS (SELECT 1 FROM webhook_outbox d WHERE d.job_id = j.id AND d.status = 'disabled')"
    )
    return f"""
        INSERT INTO webhook_outbox (id, job_id, tenant, event_type, url, payload, status,
                                    last_error)
        SELECT gen_random_uuid(), j.id, j.tenant, '{event.value}',
               j.spec -> 'callback' ->> 'url', jsonb_build_object('job', jsonb_build_object(
               {snapshot})),
               CASE WHEN {disabled} THEN 'disabled' ELSE 'pending' END,
               CASE WHEN {disabled} THEN '{DISABLED_NOTE}' END
        FROM {source}
        WHERE ({where}) AND j.spec -> 'callback' -> 'events' @> '["{event.value}"]'::jsonb
    """


_NOTIFY = text(notify_sql(Channel.WEBHOOKS))


def job_from_snapshot(snapshot: Mapping[str, Any]) -> Job:
    """An outbox snapshot back into the job it holds (raises KeyError, TypeError or ValueError
    for one this version cannot read)."""
    row = dict(snapshot)
    # A snapshot written before priority classes: its job had none, and was preemptible.
    row.setdefault("priority_class", None)
    row.setdefault("preemptible", True)
    for column in _TIMESTAMPS:
        value = row.get(column)
        if isinstance(value, str):  # in the session's time zone: back to UTC, as asyncpg gives
            row[column] = datetime.fromisoformat(value).astimezone(UTC)
    return job_of(row)


@dataclass(frozen=True, kw_only=True, slots=True)
class Claimed:
    """A delivery leased to this loop for one attempt: the event, the job as its transition left
    it, the tenant's signing secrets, and the lease's ``token`` (only its holder records the
    result).

    ``job`` is None exactly when the snapshot cannot be read by this version; ``unreadable``
    then says why, and the attempt fails with it.
    """

    id: uuid.UUID
    job_id: uuid.UUID
    tenant: str
    event_type: CallbackEvent
    url: str
    job: Job | None
    occurred_at: datetime
    attempt: int  # 1-based, within the current schedule
    secret: str
    previous_secret: str | None
    rotated_at: datetime | None
    token: uuid.UUID
    unreadable: str | None = None


def _claimed(row: RowMapping, token: uuid.UUID) -> Claimed:
    job: Job | None = None
    unreadable = None
    try:
        job = job_from_snapshot(row["payload"].get("job", {}))
    except (KeyError, TypeError, ValueError) as exc:  # a snapshot this version cannot read
        unreadable = f"{type(exc).__name__}: {exc}"
    return Claimed(
        id=row["id"],
        job_id=row["job_id"],
        tenant=row["tenant"],
        event_type=CallbackEvent(row["event_type"]),
        url=row["url"],
        job=job,
        occurred_at=row["created_at"],
        attempt=row["attempts"],
        secret=row["webhook_secret"],
        previous_secret=row["previous_webhook_secret"],
        rotated_at=row["webhook_secret_rotated_at"],
        token=token,
        unreadable=unreadable,
    )


_CLAIM = text(
    """
    WITH due AS (
        SELECT id FROM webhook_outbox
        WHERE status = 'pending' AND next_attempt_at <= to_timestamp(:now)
          AND (locked_until IS NULL OR locked_until <= now())
        ORDER BY next_attempt_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE webhook_outbox o
    SET locked_until = now() + make_interval(secs => :lease), locked_by = :token,
        attempts = o.attempts + 1, updated_at = now()
    FROM due, tenants t
    WHERE o.id = due.id AND t.name = o.tenant
    RETURNING o.id, o.job_id, o.tenant, o.event_type, o.url, o.payload, o.created_at, o.attempts,
              t.webhook_secret, t.previous_webhook_secret, t.webhook_secret_rotated_at
    """
)


async def claim(engine: AsyncEngine, *, now: float, lease: float, limit: int) -> list[Claimed]:
    """Lease up to ``limit`` deliveries due by ``now`` (the caller's clock) for ``lease`` seconds
    of the database's clock, in one short transaction."""
    token = uuid.uuid4()
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                _CLAIM, {"now": now, "lease": float(lease), "limit": limit, "token": token}
            )
        ).mappings()
        return [_claimed(row, token) for row in rows]


_ATTEMPT = text(
    """
    INSERT INTO webhook_attempts (delivery_id, number, attempted_at, duration_ms, status_code,
                                  error, outcome)
    VALUES (:id, :number, to_timestamp(:at), :duration_ms, :status_code, :error, :outcome)
    """
)
_SETTLE = text(
    """
    UPDATE webhook_outbox SET status = :status,
        next_attempt_at = COALESCE(to_timestamp(:next), next_attempt_at),
        last_error = :note, locked_until = NULL, locked_by = NULL, updated_at = now(),
        delivered_at = COALESCE(to_timestamp(:delivered_at), delivered_at)
    WHERE id = :id AND locked_by = :token
    """
)
_DISABLE_JOB = text(
    """
    UPDATE webhook_outbox SET status = 'disabled', last_error = :note, updated_at = now()
    WHERE job_id = :job_id AND status = 'pending' AND id <> :id
      AND (locked_until IS NULL OR locked_until <= now())
    """
)


async def record(
    engine: AsyncEngine,
    claimed: Claimed,
    *,
    attempted_at: float,
    duration: float,
    result: AttemptResult,
    verdict: Verdict,
) -> bool:
    """Record an attempt and settle the delivery per ``verdict``. The attempt is always kept (it
    happened); the delivery changes only if this loop still holds its lease. Returns that."""
    async with engine.begin() as conn:
        await conn.execute(
            _ATTEMPT,
            {
                "id": claimed.id,
                "number": claimed.attempt,
                "at": attempted_at,
                "duration_ms": max(0, round(duration * 1000)),
                "status_code": result.status_code,
                "error": result.error,
                "outcome": verdict.outcome.value,
            },
        )
        settled = await conn.execute(
            _SETTLE,
            {
                "id": claimed.id,
                "token": claimed.token,
                "status": verdict.status.value,
                "next": verdict.next_attempt_at,
                "note": verdict.note,
                "delivered_at": attempted_at
                if verdict.status is DeliveryStatus.DELIVERED
                else None,
            },
        )
        if verdict.disable_job:
            await conn.execute(
                _DISABLE_JOB,
                {
                    "job_id": claimed.job_id,
                    "id": claimed.id,
                    "note": DISABLED_NOTE,
                },
            )
    return settled.rowcount == 1


def parse_delivery_id(value: str) -> uuid.UUID | None:
    """A delivery's id as the API takes it: its UUID, or the webhook-id (``msg_<hex>``)."""
    try:
        return uuid.UUID(value.removeprefix("msg_"))
    except ValueError:
        return None


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise NotFound(f"job {value!r} does not exist") from exc


DELIVERY_COLUMNS = (
    "id, job_id, event_type, url, status, attempts, next_attempt_at, last_error, created_at, "
    "updated_at, delivered_at"
)


async def for_job(engine: AsyncEngine, job_id: str) -> list[Delivery]:
    """A job's deliveries, oldest first, each with its attempts in order."""
    ident = _job_id(job_id)
    async with engine.connect() as conn:
        if not await conn.scalar(text("SELECT 1 FROM jobs WHERE id = :id"), {"id": ident}):
            raise NotFound(f"job {job_id} does not exist")
        rows = (
            (
                await conn.execute(
                    text(
                        f"SELECT {DELIVERY_COLUMNS} FROM webhook_outbox WHERE job_id = :id "
                        "ORDER BY created_at, id"
                    ),
                    {"id": ident},
                )
            )
            .mappings()
            .all()
        )
        attempts = (
            (
                await conn.execute(
                    text(
                        "SELECT a.delivery_id, a.number, a.attempted_at, a.duration_ms, "
                        "a.status_code, a.error, a.outcome FROM webhook_attempts a "
                        "JOIN webhook_outbox o ON o.id = a.delivery_id WHERE o.job_id = :id "
                        "ORDER BY a.id"
                    ),
                    {"id": ident},
                )
            )
            .mappings()
            .all()
        )
    by_delivery: dict[uuid.UUID, list[DeliveryAttempt]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt["delivery_id"], []).append(delivery_attempt_of(attempt))
    return [delivery_of(row, by_delivery.get(row["id"], ())) for row in rows]


_REDELIVER = text(
    f"""
    UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
        last_error = NULL, updated_at = now()
    WHERE id = :id AND job_id = :job_id AND (locked_until IS NULL OR locked_until <= now())
    RETURNING {DELIVERY_COLUMNS}
    """
)


async def redeliver(engine: AsyncEngine, job_id: str, delivery: str) -> Delivery:
    """Send a delivery again, whatever its status, with a fresh retry schedule and the same
    webhook-id. Refused (409) while an attempt of it is in flight."""
    ident = _job_id(job_id)
    delivery_id = parse_delivery_id(delivery)
    async with engine.begin() as conn:
        row = None
        if delivery_id is not None:
            result = await conn.execute(_REDELIVER, {"id": delivery_id, "job_id": ident})
            row = result.mappings().first()
        if row is None:
            exists = delivery_id is not None and await conn.scalar(
                text("SELECT 1 FROM webhook_outbox WHERE id = :id AND job_id = :job_id"),
                {"id": delivery_id, "job_id": ident},
            )
            if exists:
                raise Conflict(
                    f"delivery {delivery} is being attempted right now; retry in a moment"
                )
            raise NotFound(f"job {job_id} has no delivery {delivery!r}")
        await conn.execute(_NOTIFY)
    return delivery_of(row)


@dataclass(frozen=True, kw_only=True, slots=True)
class Rotated:
    """A rotation of a tenant's signing secret: the new secret, and when it took over (the
    previous one keeps signing for the overlap after that)."""

    tenant: str
    secret: str
    rotated_at: datetime


async def rotate_secret(engine: AsyncEngine, tenant: str, secret: str, *, actor: str) -> Rotated:
    """Make ``secret`` the tenant's signing secret; the current one becomes the previous one.
    Audited like every change to a tenant (the secrets themselves are never logged)."""
    audit = text(
        "INSERT INTO audit_log (actor, action, tenant, before, after) "
        "VALUES (:actor, 'rotate-webhook-secret', :tenant, :before, :after)"
    ).bindparams(bindparam("before", type_=JSONB), bindparam("after", type_=JSONB))
    async with engine.begin() as conn:
        before = await conn.scalar(
            text("SELECT webhook_secret_rotated_at FROM tenants WHERE name = :name FOR UPDATE"),
            {"name": tenant},
        )
        row = (
            (
                await conn.execute(
                    text(
                        "UPDATE tenants SET previous_webhook_secret = webhook_secret, "
                        "webhook_secret = :secret, webhook_secret_rotated_at = now(), "
                        "updated_at = now() WHERE name = :name "
                        "RETURNING name, webhook_secret_rotated_at"
                    ),
                    {"name": tenant, "secret": secret},
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        await conn.execute(
            audit,
            {
                "actor": actor,
                "tenant": tenant,
                "before": {
                    "webhook_secret_rotated_at": None if before is None else rfc3339(before)
                },
                "after": {"webhook_secret_rotated_at": rfc3339(row["webhook_secret_rotated_at"])},
            },
        )
    return Rotated(tenant=tenant, secret=secret, rotated_at=row["webhook_secret_rotated_at"])
