"""Webhook deliveries, decided: the retry schedule, Standard Webhooks signatures, and what one
attempt's outcome means for the delivery; and deliveries as recorded (``Delivery`` with its
``DeliveryAttempt`` values, what the database layer hands the API).

Everything here is a pure function of its arguments (time and randomness are passed in), so the
delivery loop in ``gateway.webhooks.delivery`` only carries decisions out.

How an attempt's outcome is judged (``judge``), after the Standard Webhooks specification's
"suggested status code handling":

========================================  =================================================
outcome                                   what happens
========================================  =================================================
2xx                                       delivered
410 Gone                                  the delivery is disabled, and so is the callback of
                                          its job (pending and later events are not sent)
3xx                                       a failure; the redirect is never followed
429, 5xx, timeout, connection error       a failure, retried on the schedule
any other 4xx (400, 401, 403, 404, ...)   a failure, retried on the schedule too: the
                                          specification treats every non-2xx as a failure,
                                          and a receiver that answers 401 or 404 is usually
                                          mid-deploy or mid-rotation, which the schedule's
                                          hours outlast
refused by the SSRF guard                 dead at once: the address will not change by waiting
========================================  =================================================

A failure is retried after the schedule's next delay (with jitter), or later if the response
carried ``Retry-After`` (seconds or an HTTP date, capped at ``RETRY_AFTER_CAP``). After the last
attempt of the schedule a failure makes the delivery dead.

Invariants: a delivery's attempts are numbered from 1; attempt ``n`` (1-based) happens
``schedule[n - 1]`` seconds (jittered) after attempt ``n - 1``; there are never more than
``len(schedule)`` attempts per schedule (a manual redelivery starts a new one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from gateway.domain.jobs.spec import CallbackEvent

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "RETRY_AFTER_CAP",
    "SECRET_PREFIX",
    "AttemptOutcome",
    "AttemptResult",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryStatus",
    "RetryPolicy",
    "Verdict",
    "active_secrets",
    "event_body",
    "judge",
    "parse_retry_after",
    "rfc3339",
    "sign",
    "webhook_headers",
    "webhook_id",
]

# Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: about 28 hours in all.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
DEFAULT_JITTER = 0.1
# A receiver may slow us down, not park an event for ever.
RETRY_AFTER_CAP = 24 * 3600.0
SECRET_PREFIX = "whsec_"


class DeliveryStatus(StrEnum):
    """Where a delivery (one event for one callback) stands; the outbox's status column."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    DISABLED = "disabled"


class AttemptOutcome(StrEnum):
    """What one attempt came to; the attempts table's outcome column."""

    DELIVERED = "delivered"
    FAILED = "failed"
    GONE = "gone"
    REFUSED = "refused"


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryAttempt:
    """One attempt of a delivery, as recorded: its number within the current schedule (from 1),
    when it started and how long it took, the receiver's status code or the error, and what it
    came to."""

    number: int
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    outcome: AttemptOutcome


@dataclass(frozen=True, kw_only=True, slots=True)
class Delivery:
    """One event for one job's callback (an outbox row), with its attempts in order.

    ``attempt_count`` counts the attempts of the current schedule (a redelivery starts a new
    one); ``next_attempt_at`` matters only while the delivery is pending; ``last_error`` says why
    the last attempt failed, or why the event is not sent.
    """

    id: str
    job_id: str
    event_type: CallbackEvent
    url: str
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    attempts: tuple[DeliveryAttempt, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """``schedule[i]`` is the delay before attempt i + 1; each delay is jittered by +-``jitter``
    (a fraction of it)."""

    schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("a retry schedule needs at least one attempt")
        if any(delay < 0 for delay in self.schedule):
            raise ValueError("retry delays cannot be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be a fraction in [0, 1)")

    @property
    def attempts(self) -> int:
        return len(self.schedule)

    def delay_before(self, attempt: int, rand: Callable[[], float]) -> float:
        """Seconds to wait before attempt ``attempt`` (1-based), jittered by ``rand()`` in
        [0, 1): 0.5 means exactly the scheduled delay."""
        base = self.schedule[attempt - 1]
        return max(0.0, base * (1 + self.jitter * (2 * rand() - 1)))


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptResult:
    """What the shell saw: a status code (with its Retry-After), or an error without one."""

    status_code: int | None = None
    retry_after: str | None = None
    error: str | None = None
    refused: bool = False  # the SSRF guard refused the address; nothing was sent


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    """What to write after an attempt."""

    outcome: AttemptOutcome
    status: DeliveryStatus
    next_attempt_at: float | None  # set exactly when status is pending
    note: str | None  # why it failed, or None once delivered
    disable_job: bool = False  # a 410: the job's callback is switched off


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait per a Retry-After header (delta-seconds or an HTTP date), capped at
    ``RETRY_AFTER_CAP``; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def _describe(result: AttemptResult) -> str:
    if result.status_code is None:
        return result.error or "no response"
    if 300 <= result.status_code < 400:
        return f"the receiver answered {result.status_code} (a redirect, which is not followed)"
    return f"the receiver answered {result.status_code}"


def judge(
    result: AttemptResult,
    *,
    attempt: int,
    policy: RetryPolicy,
    now: float,
    rand: Callable[[], float],
) -> Verdict:
    """The verdict on attempt number ``attempt`` (1-based) of a delivery; see the module table."""
    code = result.status_code
    if code is not None and 200 <= code < 300:
        return Verdict(
            outcome=AttemptOutcome.DELIVERED,
            status=DeliveryStatus.DELIVERED,
            next_attempt_at=None,
            note=None,
        )
    if code == 410:
        return Verdict(
            outcome=AttemptOutcome.GONE,
            status=DeliveryStatus.DISABLED,
            next_attempt_at=None,
            note="the receiver answered 410 Gone: the callback of this job is disabled",
            disable_job=True,
        )
    if result.refused:
        return Verdict(
            outcome=AttemptOutcome.REFUSED,
            status=DeliveryStatus.DEAD,
            next_attempt_at=None,
            note=result.error or "refused by the SSRF guard",
        )
    note = _describe(result)
    if attempt >= policy.attempts:
        return Verdict(
            outcome=AttemptOutcome.FAILED,
            status=DeliveryStatus.DEAD,
            next_attempt_at=None,
            note=f"gave up after {attempt} attempts; the last: {note}",
        )
    delay = policy.delay_before(attempt + 1, rand)
    asked = parse_retry_after(result.retry_after, now) if code is not None else None
    if asked is not None:
        delay = max(delay, asked)
    return Verdict(
        outcome=AttemptOutcome.FAILED,
        status=DeliveryStatus.PENDING,
        next_attempt_at=now + delay,
        note=note,
    )


def webhook_id(delivery_id: str) -> str:
    """The webhook-id header: stable across every attempt of one event."""
    return "msg_" + delivery_id.replace("-", "")


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is whsec_ followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret cannot be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "msg_id.timestamp.body">`` with a ``whsec_`` secret."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def active_secrets(
    current: str,
    previous: str | None,
    rotated_at: float | None,
    *,
    now: float,
    overlap: float,
) -> tuple[str, ...]:
    """The secrets to sign with: the current one, and the previous one for ``overlap`` seconds
    after a rotation, so receivers can switch secrets without dropping an event."""
    if previous is not None and rotated_at is not None and now < rotated_at + overlap:
        return (current, previous)
    return (current,)


def webhook_headers(
    *, msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt; one signature per secret, space-separated."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
        "content-type": "application/json",
    }


def rfc3339(value: datetime) -> str:
    """UTC, with a Z: the form every timestamp in Muster's API takes."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_body(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> bytes:
    """The payload, ``{"type", "timestamp", "data"}``, as the exact bytes that are signed."""
    envelope = {"type": event_type, "timestamp": rfc3339(occurred_at), "data": data}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
