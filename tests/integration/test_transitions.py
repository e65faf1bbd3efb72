"""The transition writer: guarded moves that write the job, its event, its placements and its
webhook outbox row together, and nothing the state machine has not."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.transitions import Change, move
from gateway.domain.lifecycle.states import JobState
from tests.integration.helpers import create_tenant, job_spec, submit
from tests.openapi_check import CheckedClient


async def _queued_job(api: CheckedClient, **fields: object) -> str:
    await create_tenant(api)
    job = await submit(api, job_spec("moved", **fields))
    return str(job["id"])


async def test_a_move_writes_the_job_its_event_and_its_outbox_row_together(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    job_id = await _queued_job(
        api, callback={"url": "https://hooks.example.com/x", "events": ["job.cancelled"]}
    )
    change = Change(
        job_id=job_id,
        from_state=JobState.QUEUED,
        attempt=0,
        reason="Cancelled",
        message="by a test",
        actor="alice",
    )
    async with engine.begin() as conn:
        assert await move(conn, JobState.CANCELLED, [change], now=time.time()) == [job_id]
    async with engine.connect() as conn:
        job = (
            await conn.execute(
                text("SELECT state, reason, message FROM jobs WHERE id = :id"), {"id": job_id}
            )
        ).one()
        assert tuple(job) == ("cancelled", "Cancelled", "by a test")
        event = (
            await conn.execute(
                text(
                    "SELECT type, from_state, to_state, reason, actor FROM job_events "
                    "WHERE job_id = :id ORDER BY id DESC LIMIT 1"
                ),
                {"id": job_id},
            )
        ).one()
        outbox = await conn.scalar(
            text("SELECT event_type FROM webhook_outbox WHERE job_id = :id"), {"id": job_id}
        )
    assert tuple(event) == ("cancelled", "queued", "cancelled", "Cancelled", "alice")
    assert outbox == "job.cancelled"


async def test_a_move_from_a_state_or_attempt_the_job_has_left_changes_nothing(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    job_id = await _queued_job(api)
    stale = Change(job_id=job_id, from_state=JobState.QUEUED, attempt=3)
    async with engine.begin() as conn:
        assert await move(conn, JobState.ADMITTED, [stale], now=time.time()) == []
    async with engine.connect() as conn:
        state = await conn.scalar(text("SELECT state FROM jobs WHERE id = :id"), {"id": job_id})
        events = await conn.scalar(
            text("SELECT count(*) FROM job_events WHERE job_id = :id"), {"id": job_id}
        )
    assert (state, events) == ("queued", 1)


async def test_a_move_the_state_machine_has_not_is_refused_before_anything_is_written(
    api: CheckedClient, engine: AsyncEngine
) -> None:
    job_id = await _queued_job(api)
    wrong = Change(job_id=job_id, from_state=JobState.QUEUED, attempt=0)
    async with engine.begin() as conn:
        with pytest.raises(ValueError, match="no transition queued -> running"):
            await move(conn, JobState.RUNNING, [wrong], now=time.time())
