"""The event stream never loses an event to commit order.

job_events ids come from a sequence at insert, but transactions commit in any order. These tests
hold a transaction open after it wrote an event, commit a younger one's event meanwhile, and show
that the younger event is held back until the older transaction commits, then both come, oldest
transaction first, and a resumed stream repeats and loses nothing. One test burns transaction ids
up to a power of ten and writes events on both sides of it: the stream orders transaction ids as
numbers, not as text (where "1000" sorts before "999"). Events are written with plain SQL on their
own connections, as the gateway's writers do (the column default records the transaction);
database-level tests create their tenants and jobs in SQL too, so no background writer of the API
(the submit notifier) holds the horizon back while they read.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.event_stream import (
    STREAM_START,
    EventPosition,
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


async def _commit_events(engine: AsyncEngine, job_id: str, messages: Sequence[str]) -> int:
    """Write events of the job in one transaction; the transaction's id."""
    async with engine.begin() as conn:
        for message in messages:
            await _record(conn, job_id, message)
        return int(await conn.scalar(text("SELECT CAST(pg_current_xact_id() AS text)")))


async def _messages_after(
    engine: AsyncEngine, after: EventPosition, tenants: Collection[str] | None = None
) -> list[str]:
    """The messages of the events ``events_after`` returns after ``after``, in its order."""
    rows = await events_after(
        engine, after, tenant=None, job_id=None, event_type=None, limit=100, tenants=tenants
    )
    return [streamed.event.message for streamed in rows]


async def _last_position(engine: AsyncEngine) -> EventPosition:
    """Where a stream that has read every committed event stands."""
    rows = await events_after(
        engine, STREAM_START, tenant=None, job_id=None, event_type=None, limit=1000
    )
    return rows[-1].position


async def _pages_after(engine: AsyncEngine, after: EventPosition, limit: int) -> list[str]:
    """The messages of every event after ``after``, read in pages of ``limit`` as the stream
    reads them: each page resumes after the last event of the one before."""
    messages: list[str] = []
    while rows := await events_after(
        engine, after, tenant=None, job_id=None, event_type=None, limit=limit
    ):
        messages += [streamed.event.message for streamed in rows]
        after = rows[-1].position
    return messages


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
    assert [streamed.event.message for streamed in rows] == ["older"]
    await _commit_event(engine, job_id, "later")

    assert await _messages_after(engine, rows[0].position) == ["younger", "later"]
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


# -- across a power of ten ---------------------------------------------------------------------

# The cluster's transaction counter is shared by every test of the session, so where the next
# power of ten lies depends on what ran before. Burning 900,000 ids (up to 10**6) takes about two
# seconds; 10**7 could be nine million away, too far to burn in a test. A session on a fresh
# cluster uses far fewer ids than a million before this test runs.
BURN_LIMIT = 1_000_000
TRANSACTIONS_BELOW = 3
TRANSACTIONS_ABOVE = 3
EVENTS_PER_TRANSACTION = 2

# A block with an exception handler is a subtransaction, and its insert gives it a transaction
# id of its own (pg_current_xact_id() would only take the top transaction's, once).
_BURN = """
DO $$
BEGIN
    CREATE TEMP TABLE burnt (n int) ON COMMIT DROP;
    FOR n IN 1..{count} LOOP
        BEGIN
            INSERT INTO burnt VALUES (n);
        EXCEPTION WHEN OTHERS THEN
            RAISE;
        END;
    END LOOP;
END
$$
"""


async def _burn_to_below_a_power_of_ten(engine: AsyncEngine, transactions: int) -> int:
    """Use up transaction ids until the next ``transactions`` ones are the last below a power of
    ten; that power. Skips the test where the power is more than BURN_LIMIT ids away (a server
    of MUSTER_TEST_DATABASE_URL that has run many sessions)."""
    async with engine.connect() as conn:
        # The snapshot's xmax is the next id to be assigned; reading it assigns none.
        upcoming = int(
            await conn.scalar(text("SELECT CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text)"))
        )
    boundary: int = 10 ** len(str(upcoming + transactions))
    # The burning transaction takes one id itself, then one per subtransaction.
    count = boundary - transactions - upcoming - 1
    if count > BURN_LIMIT:
        pytest.skip(f"transaction ids are at {upcoming}, {count} from the next power of ten")
    if count > 0:
        async with engine.begin() as conn:
            await conn.execute(text(_BURN.format(count=count)))
    return boundary


async def test_the_stream_neither_repeats_nor_skips_where_transaction_ids_gain_a_digit(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    job_id = await _tenant_with_job(engine)
    boundary = await _burn_to_below_a_power_of_ten(engine, TRANSACTIONS_BELOW)
    written: list[str] = []  # in the order written, which is the stream's order
    txids: list[int] = []
    for n in range(TRANSACTIONS_BELOW + TRANSACTIONS_ABOVE):
        messages = [f"{n}.{k}" for k in range(EVENTS_PER_TRANSACTION)]
        txids.append(await _commit_events(engine, job_id, messages))
        written += messages
    assert txids[0] < boundary <= txids[-1], (txids, boundary)
    first_above = EVENTS_PER_TRANSACTION * sum(txid < boundary for txid in txids)
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT CAST(txid AS text) AS txid, id FROM job_events ORDER BY id")
        )
        positions = [EventPosition(int(row.txid), row.id) for row in rows]
    stream_ids = [f"{txid}-{id}" for txid, id in positions]

    # 1. The database level: from the start and after every event, in pages small enough for the
    # boundary to fall inside one, and in one page.
    for start, cursor in enumerate([STREAM_START, *positions]):
        for limit in (1, 2, 3, len(written)):
            assert await _pages_after(engine, cursor, limit) == written[start:], (cursor, limit)

    # 2. The HTTP stream from the start, and resumed with Last-Event-ID just before the boundary
    # (after the last but one event below it) and just after it (after the first event above).
    before, after = first_above - 2, first_above  # indexes of the events to resume after
    async with (
        event_stream(api) as from_start,
        event_stream(api, last_event_id=stream_ids[before]) as from_before,
        event_stream(api, last_event_id=stream_ids[after]) as from_after,
    ):
        received = [await from_start.next() for _ in written]
        assert [event["message"] for event in received] == written
        assert [event["stream_id"] for event in received] == stream_ids
        for stream, rest in (
            (from_before, written[before + 1 :]),
            (from_after, written[after + 1 :]),
        ):
            assert [(await stream.next())["message"] for _ in rest] == rest
        # Each has sent what it should. An event committed now must come next on all three: an
        # event sent twice would come before it.
        await _commit_event(engine, job_id, "last")
        for stream in (from_start, from_before, from_after):
            assert (await stream.next())["message"] == "last"


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
