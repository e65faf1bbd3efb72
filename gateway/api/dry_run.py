"""Dry runs: a change of quota answered with what the next admission cycle would do under it.

``?dry_run=true`` on PATCH /v1/admin/tenants/{tenant} and PATCH /v1/admin/cohorts/{cohort}: the
change is made in a transaction exactly as it would be (every check and constraint, its audit
entry), the next admission cycle is planned on what that transaction sees (the whole queue, the
running gangs, the nodes the inventory offers now), and the transaction is rolled back. Nothing
is written, the audit entry included, and no job changes.

Invariants: a dry run and the change it previews run the same code; only the commit differs. The
plan is the one ``gateway.domain.scheduling.admission.plan`` makes for a new leader, so it is
what the next cycle would decide if nothing else changed meanwhile (a job submitted or ended
before that cycle changes it).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.api.context import ENGINE, INVENTORY, SETTINGS
from gateway.db.admission import preview
from gateway.domain.scheduling.queueing import AdmissionPlan, PendingJob
from gateway.errors import BadRequest

T = TypeVar("T")


def dry_run(request: web.Request) -> bool:
    """Whether the request asks for a dry run: ``?dry_run=true`` (or ``false``, the default)."""
    value = request.query.get("dry_run")
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise BadRequest(f"dry_run must be true or false, not {value[:64]!r}")


async def next_cycle_with(request: web.Request, job: PendingJob) -> AdmissionPlan:
    """What the next admission cycle would decide were ``job`` queued now (nothing written)."""
    settings = request.app[SETTINGS].admission
    nodes = await request.app[INVENTORY].nodes()
    async with request.app[ENGINE].connect() as conn:
        await conn.begin()
        try:
            return await preview(
                conn,
                nodes,
                now=time.time(),
                starvation_seconds=settings.starvation_seconds,
                backfill=settings.backfill,
                min_runtime_seconds=settings.preemption_min_runtime,
                extra=(job,),
            )
        finally:
            await conn.rollback()


async def rehearse(
    request: web.Request, change: Callable[[AsyncConnection], Awaitable[T]]
) -> tuple[T, dict[str, Any]]:
    """Make ``change`` in a transaction, plan the next cycle on it, and roll it back: what
    ``change`` answered, and the view of that plan."""
    settings = request.app[SETTINGS].admission
    nodes = await request.app[INVENTORY].nodes()
    async with request.app[ENGINE].connect() as conn:
        await conn.begin()
        try:
            result = await change(conn)
            decided = await preview(
                conn,
                nodes,
                now=time.time(),
                starvation_seconds=settings.starvation_seconds,
                backfill=settings.backfill,
                min_runtime_seconds=settings.preemption_min_runtime,
            )
        finally:
            await conn.rollback()
    return result, next_cycle_view(decided)


def next_cycle_view(decided: AdmissionPlan) -> dict[str, Any]:
    """The jobs the cycle would admit and preempt, and those it would leave waiting, and why."""
    return {
        "admitted": [{"id": a.job_id, "tenant": a.tenant} for a in decided.admitted],
        "preempted": [
            {
                "id": p.job_id,
                "tenant": p.tenant,
                "reason": p.reason.value,
                "preemptor": p.preemptor,
                "preemptor_tenant": p.preemptor_tenant,
            }
            for p in decided.preempted
        ],
        "waiting": [
            {"id": w.job_id, "reason": w.reason.value, "message": w.message}
            for w in decided.waiting
        ],
    }
