"""The event stream never loses an event to commit order.

job_events ids come from a sequence at insert, but transactions commit in any order. These tests
hold a transaction open after it wrote an event, commit a younger one's event meanwhile, and show
that the younger event is held back until the older transaction commits, then both come, oldest
transaction first, and a resumed stream repeats and loses nothing. Events are written with plain
SQL on their own connections, as the gateway's writers do (the column default records the
transaction); database-level tests create their tenants and jobs in SQL too, so no background
writer of the API (the submit notifier) holds the horizon back while they read.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.usage import (
    STREAM_START,
    EventPosition,
    event_position,
    events_after,
    position_of_event,
)
from tests.integration.helpers import event_stream
from tests.integration.test_admission_cycle import job, make_tenant
from tests.openapi_check import CheckedClient


async def _tenant_with_job(engine: AsyncEngine, tenant: str = "search") -> str:
    """A tenant and one queued job of it, written in SQL; the job's id."""
    job_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO tenants (name, namespace, quota_cpu_millis, quota_memory_bytes, "
                "quota_gpu_shares, max_running_jobs, max_queued_jobs, webhook_secret) "
                "VALUES (:t, :t, 1000, 1000, 0, 1, 1, 's')"
            ),
            {"t": tenant},
        )
        await conn.execute(
            text(
                "INSERT INTO jobs (id, tenant, name, framework, state, priority, spec) "
                "VALUES (:id, :t, 'a', 'generic', 'queued', 0, '{}')"
            ),
            {"id": job_id, "t": tenant},
        )
    return job_id


async def _record(conn: AsyncConnection, job_id: str, message: str) -> int:
    """Write an event of the job in ``conn``'s transaction, as the gateway's writers do; its id."""
    event_id = await conn.scalar(
        text(
            "INSERT INTO job_events (job_id, tenant, type, message) "
            "SELECT id, tenant, 'restarted', :message FROM jobs WHERE id = :job RETURNING id"
        ),
        {"job": job_id, "message": message},
    )
    assert event_id is not None
    return int(event_id)


async def _commit_event(engine: AsyncEngine, job_id: str, message: str) -> int:
    async with engine.begin() as conn:
        return await _record(conn, job_id, message)


async def _messages_after(
    engine: AsyncEngine, after: EventPosition, tenants: Collection[str] | None = None
) -> list[str]:
    """The messages of the events ``events_after`` returns after ``after``, in its order."""
    rows = await events_after(
        engine, after, tenant=None, job_id=None, event_type=None, limit=100, tenants=tenants
    )
    return [row["message"] for row in rows]


async def _last_position(engine: AsyncEngine) -> EventPosition:
    """Where a stream that has read every committed event stands."""
    rows = await events_after(
        engine, STREAM_START, tenant=None, job_id=None, event_type=None, limit=1000
    )
    return event_position(rows[-1])


# -- the database level ------------------------------------------------------------------------


async def test_an_event_is_held_back_while_an_older_transaction_is_open(
    engine: AsyncEngine,
) -> None:
    job_id = await _tenant_with_job(engine)
    await _commit_event(engine, job_id, "before")
    cursor = await _last_position(engine)
    async with engine.connect() as older:
        older_id = await _record(older, job_id, "older")
        younger_id = await _commit_event(engine, job_id, "younger")
        assert older_id < younger_id  # ids alone would send "younger" and then pass "older"

        assert await _messages_after(engine, cursor) == []

        await older.commit()
    assert await _messages_after(engine, cursor) == ["older", "younger"]


async def test_resuming_after_the_last_event_read_repeats_and_loses_nothing(
    engine: AsyncEngine,
) -> None:
    job_id = await _tenant_with_job(engine)
    async with engine.connect() as older:
        await _record(older, job_id, "older")
        await _commit_event(engine, job_id, "younger")
        await older.commit()
    rows = await events_after(
        engine, STREAM_START, tenant=None, job_id=None, event_type=None, limit=1
    )
    assert [row["message"] for row in rows] == ["older"]
    await _commit_event(engine, job_id, "later")

    assert await _messages_after(engine, event_position(rows[0])) == ["younger", "later"]
    assert await _messages_after(engine, await _last_position(engine)) == []


async def test_events_after_keeps_only_the_given_tenants(engine: AsyncEngine) -> None:
    search = await _tenant_with_job(engine, "search")
    ads = await _tenant_with_job(engine, "ads")
    await _tenant_with_job(engine, "maps")
    await _commit_event(engine, search, "search-1")
    await _commit_event(engine, ads, "ads-1")
    await _commit_event(engine, search, "search-2")

    assert await _messages_after(engine, STREAM_START, {"search"}) == ["search-1", "search-2"]
    assert await _messages_after(engine, STREAM_START, ["ads", "search"]) == [
        "search-1",
        "ads-1",
        "search-2",
    ]
    assert await _messages_after(engine, STREAM_START, ("maps", "nobody")) == []
    assert await _messages_after(engine, STREAM_START, ()) == []
    assert len(await _messages_after(engine, STREAM_START, None)) == 3
    # Combined with the tenant query filter, both must hold.
    both = await events_after(
        engine,
        STREAM_START,
        tenant="ads",
        job_id=None,
        event_type=None,
        limit=100,
        tenants={"search"},
    )
    assert both == []


async def test_a_plain_event_id_resumes_after_that_event(engine: AsyncEngine) -> None:
    job_id = await _tenant_with_job(engine)
    first = await _commit_event(engine, job_id, "first")
    await _commit_event(engine, job_id, "second")

    position = await position_of_event(engine, first)

    assert position.id == first
    assert await _messages_after(engine, position) == ["second"]


async def test_a_plain_id_of_no_event_resumes_before_every_later_event(
    engine: AsyncEngine,
) -> None:
    job_id = await _tenant_with_job(engine)
    await _commit_event(engine, job_id, "first")
    async with engine.connect() as conn:
        missing = await _record(conn, job_id, "rolled back")
        await conn.rollback()
    await _commit_event(engine, job_id, "second")

    assert await _messages_after(engine, await position_of_event(engine, missing)) == ["second"]
    # Past every event: resume at whatever commits next.
    beyond = await position_of_event(engine, missing + 1000)
    await _commit_event(engine, job_id, "third")
    assert await _messages_after(engine, beyond) == ["third"]


async def test_a_plain_event_id_never_resumes_past_an_open_transaction(
    engine: AsyncEngine,
) -> None:
    job_id = await _tenant_with_job(engine)
    async with engine.connect() as older:
        await _record(older, job_id, "older")
        # A client that saw the younger event elsewhere (a job's event list) resumes from it.
        younger = await _commit_event(engine, job_id, "younger")
        position = await position_of_event(engine, younger)
        await older.commit()

    # The older event is not lost; the younger one comes again, as it sorts after it.
    assert await _messages_after(engine, position) == ["older", "younger"]


# -- through the HTTP stream -------------------------------------------------------------------


async def test_the_stream_sends_an_older_transactions_event_before_a_younger_ones(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    await make_tenant(api)
    submitted = (await api.post("/v1/jobs", json=job("a"))).body
    async with engine.connect() as older:
        await _record(older, submitted["id"], "older")
        await _commit_event(engine, submitted["id"], "younger")
        async with event_stream(api) as stream:
            # The poll that sent this ran with "younger" committed and "older" not: by id, it
            # would have sent "younger" next and never "older".
            assert (await stream.next())["type"] == "submitted"
            await older.commit()
            received = [await stream.next(), await stream.next()]
    assert [event["message"] for event in received] == ["older", "younger"]

    await _commit_event(engine, submitted["id"], "later")
    async with event_stream(api, last_event_id=received[-1]["stream_id"]) as stream:
        assert (await stream.next())["message"] == "later"
    async with event_stream(api, last_event_id=received[0]["stream_id"]) as stream:
        rest = [await stream.next(), await stream.next()]
    assert [event["message"] for event in rest] == ["younger", "later"]


async def test_the_stream_resumes_after_a_plain_event_id(api: CheckedClient) -> None:
    await make_tenant(api)
    a = (await api.post("/v1/jobs", json=job("a"))).body
    b = (await api.post("/v1/jobs", json=job("b"))).body
    c = (await api.post("/v1/jobs", json=job("c"))).body
    listed = (await api.get(f"/v1/jobs/{a['id']}/events")).body["items"]

    async with event_stream(api, last_event_id=str(listed[-1]["id"])) as stream:
        resumed = [await stream.next(), await stream.next()]

    assert [event["job_id"] for event in resumed] == [b["id"], c["id"]]
