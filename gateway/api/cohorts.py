"""Cohort routes: admins create, replace, change (members' terms too, or a dry run of it), list
and delete cohorts; a cohort's view shows its members' standing and its idle quota.

Invariants: only platform admins write cohorts (``/v1/admin/cohorts``); a cohort's view is seen
by platform admins and by callers with a role in one of its member tenants, and to anyone else
it answers 404 exactly as a cohort that does not exist (as an invisible tenant does).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.api.admin import tenant_settings
from gateway.api.auth import actor, require_admin, require_role
from gateway.api.body import read_checked
from gateway.api.context import ENGINE, SETTINGS
from gateway.api.dry_run import dry_run, rehearse
from gateway.api.serializers import cohort_status_view, cohort_view, json_response
from gateway.db import cohorts as cohort_store
from gateway.db import tenants as tenant_store
from gateway.domain.names import DNS_1123_LABEL
from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.tenants import Cohort, TenantSettings
from gateway.errors import NotFound, ValidationFailed

routes = web.RouteTableDef()


def _missing(name: str) -> NotFound:
    return NotFound(f"cohort {name!r} does not exist")


def _cohort_name(request: web.Request) -> str:
    name = request.match_info["cohort"]
    if not DNS_1123_LABEL.fullmatch(name):
        raise _missing(name)
    return name


@routes.put("/v1/admin/cohorts/{cohort}")
async def put_cohort(request: web.Request) -> web.Response:
    """Create or replace a cohort (its description; its members are each tenant's setting)."""
    require_admin(request)
    name = _cohort_name(request)
    body = await read_checked(request, request.app[SETTINGS].api.max_body_bytes, "CohortPut")
    cohort, created = await cohort_store.put(
        request.app[ENGINE],
        name,
        description=body.get("description", ""),
        actor=actor(request),
    )
    headers = {"Location": f"/v1/cohorts/{name}"} if created else None
    return json_response(cohort_view(cohort), status=201 if created else 200, headers=headers)


@routes.get("/v1/admin/cohorts")
async def list_cohorts(request: web.Request) -> web.Response:
    require_admin(request)
    cohorts = await cohort_store.list_all(request.app[ENGINE])
    return json_response({"items": [cohort_view(cohort) for cohort in cohorts]})


@routes.delete("/v1/admin/cohorts/{cohort}")
async def delete_cohort(request: web.Request) -> web.Response:
    """Delete a cohort; 409 while any tenant is a member."""
    require_admin(request)
    await cohort_store.delete(request.app[ENGINE], _cohort_name(request), actor=actor(request))
    return web.Response(status=204)


@routes.patch("/v1/admin/cohorts/{cohort}")
async def patch_cohort(request: web.Request) -> web.Response:
    """Change a cohort's description and its members' terms in one transaction: each entry of
    ``members`` makes the tenant a member with the limits it gives (a limit left out is kept),
    or (null) takes it out. With ``?dry_run=true`` nothing is written: the answer is the cohort
    as it would be and what the next admission cycle would do (``gateway.api.dry_run``)."""
    require_admin(request)
    rehearsal = dry_run(request)
    name = _cohort_name(request)
    body = await read_checked(request, request.app[SETTINGS].api.max_body_bytes, "CohortPatch")
    who = actor(request)

    async def change(conn: AsyncConnection) -> Cohort:
        cohort = await cohort_store.get_in(conn, name)
        if "description" in body:
            cohort = await cohort_store.describe_in(
                conn, name, description=body["description"], actor=who
            )
        for tenant, terms in sorted(body.get("members", {}).items()):
            at = pointer("members", tenant)
            if terms is None and tenant not in cohort.members:
                detail = f"tenant {tenant} is not a member of cohort {name}"
                raise ValidationFailed([FieldProblem(pointer=at, detail=detail)])
            change = {"cohort": None} if terms is None else {"cohort": name, "quota": terms}

            def merge(current: TenantSettings, b: Any = change, t: str = tenant) -> TenantSettings:
                return tenant_settings(b, current, t)

            try:
                await tenant_store.patch_in(conn, tenant, merge, actor=who)
            except NotFound:
                detail = f"tenant {tenant} does not exist"
                raise ValidationFailed([FieldProblem(pointer=at, detail=detail)]) from None
            except ValidationFailed as failed:
                # The limits are the member's quota keys: point into the body as sent.
                moved = [
                    FieldProblem(pointer=at + p.pointer.removeprefix("/quota"), detail=p.detail)
                    for p in failed.problems
                ]
                raise ValidationFailed(moved) from None
        return await cohort_store.get_in(conn, name)

    if rehearsal:
        cohort, next_cycle = await rehearse(request, change)
        return json_response(
            {"dry_run": True, "cohort": cohort_view(cohort), "next_cycle": next_cycle}
        )
    async with request.app[ENGINE].begin() as conn:
        cohort = await change(conn)
    return json_response(cohort_view(cohort))


@routes.get("/v1/cohorts/{cohort}")
async def cohort_status(request: web.Request) -> web.Response:
    caller = require_role(request)
    name = _cohort_name(request)
    status = await cohort_store.status(request.app[ENGINE], name)
    if not caller.admin and not any(caller.sees(member.name) for member in status.members):
        raise _missing(name)
    return json_response(cohort_status_view(status))
