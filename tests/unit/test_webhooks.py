"""Webhook decisions and the SSRF guard, as tables: the retry schedule and its jitter, Retry-After,
what each answer means, Standard Webhooks signatures (checked by an independent implementation,
the ``standardwebhooks`` package), and which addresses and URLs the guard refuses."""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook, WebhookVerificationError

from gateway.db.webhooks import job_from_snapshot
from gateway.domain.lifecycle.records import QueuePlace
from gateway.domain.webhooks import (
    DEFAULT_RETRY_SCHEDULE,
    RETRY_AFTER_CAP,
    AttemptOutcome,
    AttemptResult,
    DeliveryStatus,
    RetryPolicy,
    active_secrets,
    event_body,
    judge,
    parse_retry_after,
    sign,
    webhook_headers,
    webhook_id,
)
from gateway.errors import SSRF_PRIVATE_ADDRESS, SSRF_REFUSED, AddressRefused, ConfigError
from gateway.settings import Settings
from gateway.webhooks.ssrf import Guard, GuardedResolver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
NOW = 1_700_000_000.0
EXACT = 0.5  # rand() = 0.5 means no jitter


def fixed(value: float) -> Callable[[], float]:
    return lambda: value


# --- the retry schedule -------------------------------------------------------------------------


def test_the_default_schedule_is_the_issues() -> None:
    assert DEFAULT_RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
    assert RetryPolicy().attempts == 8


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 0.0),  # immediately, whatever the jitter
        (2, EXACT, 5.0),
        (2, 0.0, 4.5),  # -10%
        (2, 0.999999, 5.5),  # just under +10%
        (3, EXACT, 300.0),
        (8, EXACT, 36000.0),
    ],
)
def test_delays_follow_the_schedule_with_jitter(attempt: int, rand: float, expected: float) -> None:
    assert RetryPolicy().delay_before(attempt, fixed(rand)) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    "policy",
    [
        {"schedule": ()},
        {"schedule": (0, -1)},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_a_broken_policy_is_refused(policy: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        RetryPolicy(**policy)  # type: ignore[arg-type]


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        (str(10**9), RETRY_AFTER_CAP),
        (format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True), 90.0),
        (format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True), 0.0),
    ],
)
def test_retry_after_takes_seconds_or_an_http_date(header: str | None, expected: float) -> None:
    assert parse_retry_after(header, NOW) == expected


# --- judging an attempt ---------------------------------------------------------------------


POLICY = RetryPolicy(schedule=(0, 10, 20))


@pytest.mark.parametrize(
    ("result", "attempt", "outcome", "status", "next_in", "disables"),
    [
        (AttemptResult(status_code=200), 1, "delivered", "delivered", None, False),
        (AttemptResult(status_code=204), 3, "delivered", "delivered", None, False),
        (AttemptResult(status_code=410), 1, "gone", "disabled", None, True),
        (AttemptResult(status_code=500), 1, "failed", "pending", 10.0, False),
        (AttemptResult(status_code=503), 2, "failed", "pending", 20.0, False),
        (AttemptResult(status_code=502), 3, "failed", "dead", None, False),
        (AttemptResult(status_code=429, retry_after="60"), 1, "failed", "pending", 60.0, False),
        # Retry-After never brings an attempt forward.
        (AttemptResult(status_code=429, retry_after="1"), 2, "failed", "pending", 20.0, False),
        (AttemptResult(status_code=302), 1, "failed", "pending", 10.0, False),
        (AttemptResult(status_code=301), 3, "failed", "dead", None, False),
        (AttemptResult(status_code=404), 1, "failed", "pending", 10.0, False),
        (AttemptResult(status_code=401), 1, "failed", "pending", 10.0, False),
        (AttemptResult(status_code=100), 1, "failed", "pending", 10.0, False),
        (AttemptResult(error="no answer within 15 s"), 1, "failed", "pending", 10.0, False),
        (AttemptResult(error="connection refused"), 3, "failed", "dead", None, False),
        (
            AttemptResult(error="refused by the SSRF guard", refused=True),
            1,
            "refused",
            "dead",
            None,
            False,
        ),
    ],
)
def test_each_outcome_has_one_verdict(
    result: AttemptResult,
    attempt: int,
    outcome: str,
    status: str,
    next_in: float | None,
    disables: bool,
) -> None:
    verdict = judge(result, attempt=attempt, policy=POLICY, now=NOW, rand=fixed(EXACT))

    assert verdict.outcome is AttemptOutcome(outcome)
    assert verdict.status is DeliveryStatus(status)
    assert verdict.next_attempt_at == (None if next_in is None else NOW + next_in)
    assert verdict.disable_job is disables
    assert (verdict.note is None) == (status == "delivered")


def test_the_notes_say_what_happened() -> None:
    redirect = judge(
        AttemptResult(status_code=302), attempt=1, policy=POLICY, now=NOW, rand=fixed(EXACT)
    )
    gone = judge(
        AttemptResult(status_code=410), attempt=1, policy=POLICY, now=NOW, rand=fixed(EXACT)
    )
    dead = judge(
        AttemptResult(status_code=500), attempt=3, policy=POLICY, now=NOW, rand=fixed(EXACT)
    )

    assert redirect.note is not None
    assert "not followed" in redirect.note
    assert gone.note is not None
    assert "disabled" in gone.note
    assert dead.note == "gave up after 3 attempts; the last: the receiver answered 500"


# --- signatures -----------------------------------------------------------------------------


def body() -> bytes:
    occurred = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    return event_body("job.succeeded", occurred, {"id": "j", "name": "wd", "labels": {"é": "ü"}})


def test_the_body_is_the_standard_envelope() -> None:
    decoded = json.loads(body())

    assert decoded == {
        "type": "job.succeeded",
        "timestamp": "2026-12-01T10:00:00.123456Z",
        "data": {"id": "j", "name": "wd", "labels": {"é": "ü"}},
    }
    assert b" " not in body()  # compact: the bytes signed are the bytes sent


def test_an_independent_implementation_verifies_the_signature() -> None:
    now = int(time.time())
    headers = webhook_headers(msg_id="msg_1", timestamp=now, body=body(), secrets=[SECRET])

    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"
    assert Webhook(SECRET).verify(body(), headers) == json.loads(body())


def test_our_signature_equals_the_reference_one() -> None:
    reference = Webhook(SECRET).sign("msg_2", datetime.fromtimestamp(NOW, UTC), body().decode())

    assert sign(SECRET, "msg_2", int(NOW), body()) == reference


@pytest.mark.parametrize(
    "tamper",
    ["body", "timestamp", "id", "secret"],
)
def test_tampering_fails_verification(tamper: str) -> None:
    now = int(time.time())
    headers = webhook_headers(msg_id="msg_3", timestamp=now, body=body(), secrets=[SECRET])
    sent = body()
    secret = SECRET
    if tamper == "body":
        sent = sent.replace(b"wd", b"wx")
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    elif tamper == "id":
        headers["webhook-id"] = "msg_4"
    else:
        secret = OTHER_SECRET

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(sent, headers)


def test_two_secrets_give_two_signatures_and_either_verifies() -> None:
    now = int(time.time())
    headers = webhook_headers(
        msg_id="msg_5", timestamp=now, body=body(), secrets=[OTHER_SECRET, SECRET]
    )

    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(body(), headers)
    Webhook(OTHER_SECRET).verify(body(), headers)


@pytest.mark.parametrize(
    ("previous", "rotated_at", "now", "expected"),
    [
        (None, None, NOW, ("new",)),
        ("old", NOW - 10, NOW, ("new", "old")),
        ("old", NOW - 99, NOW, ("new", "old")),
        ("old", NOW - 100, NOW, ("new",)),
        ("old", NOW - 1000, NOW, ("new",)),
    ],
)
def test_the_previous_secret_signs_only_during_the_overlap(
    previous: str | None, rotated_at: float | None, now: float, expected: tuple[str, ...]
) -> None:
    assert active_secrets("new", previous, rotated_at, now=now, overlap=100) == expected


def test_a_secret_that_is_not_base64_is_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        sign("whsec_not base64!", "msg", 1, b"{}")


def _snapshot(**columns: object) -> dict[str, object]:
    """An outbox snapshot as ``enqueue_sql`` writes it (timestamps in the session's zone)."""
    return {
        "id": "3f2b8c1e-0000-4000-8000-000000000001",
        "tenant": "search",
        "name": "train",
        "framework": "pytorch",
        "state": "queued",
        "reason": None,
        "message": None,
        "priority": 0,
        "attempt": 0,
        "spec": {"name": "train"},
        "labels": {"team": "ranking"},
        "submitted_by": "alice",
        "created_at": "2026-12-01T12:00:00.5+02:00",
        "updated_at": "2026-12-01T12:00:01+02:00",
        "admitted_at": None,
        "started_at": None,
        "finished_at": None,
        "queue_position": None,
        "tenant_queue_position": None,
        **columns,
    }


def test_a_snapshot_reads_back_as_the_job_the_api_renders() -> None:
    job = job_from_snapshot(_snapshot())

    assert job.created_at == datetime(2026, 12, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert job.created_at.isoformat().endswith("+00:00")
    assert job.finished_at is None
    assert (job.state, job.framework, job.labels) == ("queued", "pytorch", {"team": "ranking"})


def test_a_snapshot_carries_the_jobs_priority_class_and_an_older_one_had_none() -> None:
    classed = job_from_snapshot(_snapshot(priority_class="high", preemptible=False))
    older = job_from_snapshot(_snapshot())  # written before priority classes

    assert (classed.priority_class, classed.preemptible) == ("high", False)
    assert (older.priority_class, older.preemptible) == (None, True)


def test_a_queue_place_is_read_only_while_the_job_is_queued() -> None:
    placed = _snapshot(queue_position=3, tenant_queue_position=1)

    assert job_from_snapshot(placed).queue == QueuePlace(position=3, tenant_position=1)
    assert job_from_snapshot({**placed, "state": "failed"}).queue is None
    assert job_from_snapshot(_snapshot()).queue is None


@pytest.mark.parametrize(
    "snapshot",
    [{}, _snapshot(state="paused"), _snapshot(created_at="yesterday")],
    ids=["empty", "unknown state", "unreadable time"],
)
def test_a_snapshot_this_version_cannot_read_is_refused(snapshot: dict[str, object]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        job_from_snapshot(snapshot)


def test_the_webhook_id_is_stable_and_has_no_dots() -> None:
    ident = webhook_id("3f2b8c1e-0000-4000-8000-000000000001")

    assert ident == "msg_3f2b8c1e000040008000000000000001"
    assert "." not in ident


# --- the SSRF guard: addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.10", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("2001:db8::1", "documentation"),
        ("198.18.0.1", "private"),  # benchmarking: not global
        ("::ffff:127.0.0.1", "127.0.0.1, which is loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:10.0.0.1", "10.0.0.1, which is private"),
        ("::127.0.0.1", "127.0.0.1, which is loopback"),  # IPv4-compatible
        ("64:ff9b::a00:1", "10.0.0.1, which is private"),  # NAT64
        ("2002:7f00:1::", "127.0.0.1, which is loopback"),  # 6to4
    ],
)
def test_the_guard_refuses_every_non_public_address(address: str, reason: str) -> None:
    refusal = Guard().refusal(ipaddress.ip_address(address))

    assert refusal is not None
    assert reason in refusal


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    assert Guard().refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("nets", "address", "allowed"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "127.0.0.2", False),
        (["127.0.0.1/32"], "::ffff:127.0.0.1", True),
        (["10.0.0.0/8"], "10.20.30.40", True),
        (["10.0.0.0/8"], "192.168.1.1", False),
        (["169.254.169.254/32"], "169.254.169.254", True),
        (["fd00::/8"], "fd00:ec2::254", True),
    ],
)
def test_the_allow_list_exempts_only_its_networks(
    nets: list[str], address: str, allowed: bool
) -> None:
    guard = Guard.from_settings(nets, allow_http=False)

    assert (guard.refusal(ipaddress.ip_address(address)) is None) is allowed


# --- the SSRF guard: URLs at submit ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://hooks.example.com/x", "must use https"),
        ("ftp://hooks.example.com/x", "must be an https URL"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://user@hooks.example.com/x", "credentials"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://[::ffff:127.0.0.1]/x", "loopback"),
        ("https://2130706433/x", "numeric host"),
        ("https://0x7f000001/x", "numeric host"),
        ("https://127.1/x", "numeric host"),
        ("https://0177.0.0.1/x", "numeric host"),
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("https://10.0.0.1/x", "private"),
        ("https://172.16.0.1/x", "private"),
        ("https://192.168.1.1/x", "private"),
        ("https://100.64.0.1/x", "carrier-grade NAT"),
        ("https://localhost:8443/x", "loopback"),
        ("https://127.0.0.1./x", "loopback"),
        ("https://localhost./x", "loopback"),
        ("https://0/x", "numeric host"),
        ("https://api.localhost/x", "loopback"),
        ("https://[fe80::1%25eth0]/x", "link-local"),
        ("https://hooks.example.com:99999/x", "not a valid URL"),
        ("https:///x", "no host"),
    ],
)
def test_submit_time_checks_refuse_unsafe_urls(url: str, problem: str) -> None:
    refusal = Guard().check_url(url)

    assert refusal is not None
    assert problem in refusal.detail
    # Only a refused address is told apart: a delivery records no more of it than
    # SSRF_PRIVATE_ADDRESS.
    assert refusal.address is refusal.detail.startswith(SSRF_REFUSED)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/muster",
        "https://hooks.example.com:8443/a?b=c",
        "https://8.8.8.8/x",
        "https://[2606:4700::1111]/x",
        "https://internal.example/x",  # a name: checked at connect time
    ],
)
def test_submit_time_checks_accept_public_urls(url: str) -> None:
    assert Guard().check_url(url) is None


def test_plain_http_and_allowed_addresses_need_the_settings() -> None:
    guard = Guard.from_settings(["127.0.0.1/32"], allow_http=True)

    assert guard.check_url("http://127.0.0.1:8080/hook") is None
    assert guard.check_url("http://127.0.0.2:8080/hook") is not None


# --- the SSRF guard: connect time ------------------------------------------------------------


class StaticResolver(AbstractResolver):
    """A test resolver: fixed answers, and a count of lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        (["10.1.2.3"], True),
        (["127.0.0.1"], True),
        (["93.184.216.34", "169.254.169.254"], True),  # one bad answer spoils the name
        (["::ffff:192.168.0.1"], True),
        (["93.184.216.34"], False),
    ],
)
async def test_the_resolver_refuses_names_that_resolve_to_refused_addresses(
    answers: list[str], refused: bool
) -> None:
    resolver = GuardedResolver(Guard(), StaticResolver({"hooks.example": answers}))

    if refused:
        with pytest.raises(AddressRefused) as raised:
            await resolver.resolve("hooks.example", 443)
        assert str(raised.value) == SSRF_PRIVATE_ADDRESS  # what aiohttp's errors would quote
        listed = ", ".join(str(ipaddress.ip_address(a)) for a in answers)
        assert raised.value.detail.startswith(
            f"{SSRF_REFUSED}: hooks.example resolves to {listed}, "
        )
    else:
        assert [r["host"] for r in await resolver.resolve("hooks.example", 443)] == answers


@pytest.mark.parametrize(
    ("sockaddr", "refused"),
    [
        (("127.0.0.1", 80), True),
        (("::1", 80, 0, 0), True),
        (("fe80::1%lo", 80, 0, 1), True),
        (("169.254.169.254", 80), True),
        (("8.8.8.8", 443), False),
    ],
)
def test_the_socket_factory_refuses_before_any_socket_exists(
    sockaddr: tuple[object, ...], refused: bool
) -> None:
    family = socket.AF_INET6 if ":" in str(sockaddr[0]) else socket.AF_INET
    addr_info = (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)

    if refused:
        with pytest.raises(AddressRefused) as raised:
            Guard().socket_factory(addr_info)
        assert str(raised.value) == SSRF_PRIVATE_ADDRESS
        assert raised.value.detail.startswith(
            f"{SSRF_REFUSED}: {str(sockaddr[0]).split('%')[0]} is "
        )
    else:
        Guard().socket_factory(addr_info).close()


# --- settings -------------------------------------------------------------------------------


def test_the_webhook_settings_default_to_the_issues_values() -> None:
    settings = Settings.load({})

    assert settings.webhooks.timeout == 15.0
    assert settings.webhooks.retry_schedule == DEFAULT_RETRY_SCHEDULE
    assert settings.webhooks.secret_overlap == 86400.0


@pytest.mark.parametrize(
    ("env", "attr", "expected"),
    [
        ({"MUSTER_WEBHOOK_RETRY_SCHEDULE": "0, 1,2.5"}, "retry_schedule", (0, 1, 2.5)),
        ({"MUSTER_WEBHOOK_TIMEOUT": "2.5"}, "timeout", 2.5),
        ({"MUSTER_WEBHOOK_SECRET_OVERLAP": "0"}, "secret_overlap", 0.0),
        (
            {"MUSTER_WEBHOOK_ALLOW_NETS": "127.0.0.1, 10.1.2.3/8"},
            "allow_nets",
            ("127.0.0.1/32", "10.0.0.0/8"),
        ),
    ],
)
def test_the_webhook_settings_parse(env: dict[str, str], attr: str, expected: object) -> None:
    assert getattr(Settings.load(env).webhooks, attr) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"MUSTER_WEBHOOK_RETRY_SCHEDULE": ""},
        {"MUSTER_WEBHOOK_RETRY_SCHEDULE": "0,-5"},
        {"MUSTER_WEBHOOK_TIMEOUT": "0"},
        {"MUSTER_WEBHOOK_SECRET_OVERLAP": "-1"},
        {"MUSTER_WEBHOOK_ALLOW_NETS": "10.0.0.0/33"},
        {"MUSTER_WEBHOOK_ALLOW_NETS": "intranet"},
    ],
)
def test_malformed_webhook_settings_stop_startup(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.load(env)
