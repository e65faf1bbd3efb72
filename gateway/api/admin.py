"""Admin routes: tenants, their quotas, cohort terms, priority classes and grants, and the audit
log. Platform admins only (cohorts themselves: ``gateway.api.cohorts``; priority classes
themselves: ``gateway.api.priority_classes``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.api.auth import actor, require_admin
from gateway.api.body import read_checked
from gateway.api.context import AUTHENTICATOR, ENGINE, SETTINGS
from gateway.api.dry_run import dry_run, rehearse
from gateway.api.paging import page_limit, tenant_filter
from gateway.api.serializers import audit_view, json_response, tenant_view
from gateway.db import audit as audit_log
from gateway.db import grants as grant_store
from gateway.db import tenants as tenant_store
from gateway.db.jobs import decode_cursor, encode_cursor
from gateway.domain.jobs.policy import policy_of
from gateway.domain.names import DNS_1123_LABEL
from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.resources import (
    QuantityError,
    cpu_millis,
    extended_amount,
    extended_name_problem,
    gpu_quota_shares,
    memory_bytes,
)
from gateway.domain.scheduling.cohorts import CohortTerms, Limits
from gateway.domain.scheduling.priority import DEFAULT_MAX_PRIORITY
from gateway.domain.scheduling.queueing import PreemptionPolicy
from gateway.domain.scheduling.quota import Quota
from gateway.domain.tenants import Tenant, TenantSettings
from gateway.errors import BadRequest, NotFound, ValidationFailed

routes = web.RouteTableDef()


def _tenant_name(request: web.Request) -> str:
    name = request.match_info["tenant"]
    if not DNS_1123_LABEL.fullmatch(name):
        raise NotFound(f"tenant {name!r} does not exist (tenant names are DNS-1123 labels)")
    return name


# The API's quota keys, each with its parser into Muster's units and the Quota field it sets.
_QUOTA_PARSERS = (
    ("cpu", "cpu_millis", cpu_millis),
    ("memory", "memory_bytes", memory_bytes),
    ("gpu", "gpu_shares", gpu_quota_shares),
)


_LIMITS = ("borrowing_limit", "lending_limit")


def tenant_settings(
    body: Mapping[str, Any], current: TenantSettings | None, name: str
) -> TenantSettings:
    """A schema-valid TenantPut/TenantPatch body over the ``current`` settings (None for a PUT,
    whose body the schema requires to be whole) -> the new settings. ``priority_classes``, the
    classes the tenant may use, is replaced whole when given (a PUT without it grants none).

    Raises ValidationFailed listing every quantity that does not parse, and limits given to a
    tenant that is in no cohort.
    """
    quota = body.get("quota", {})
    problems: list[FieldProblem] = []
    amounts: dict[str, Any] = {} if current is None else asdict(current.quota)
    for key, field_name, parse in _QUOTA_PARSERS:
        if key in quota:
            try:
                amounts[field_name] = parse(quota[key])
            except QuantityError as exc:
                problems.append(FieldProblem(pointer=pointer("quota", key), detail=str(exc)))
    for key in ("max_running_jobs", "max_queued_jobs"):
        if key in quota:
            amounts[key] = quota[key]
    amounts["extended"] = _extended_limits(quota, current, problems)
    cohort = _cohort_terms(body, current, problems)
    if problems:
        raise ValidationFailed(problems)
    return TenantSettings(
        namespace=body.get("namespace", current.namespace if current else name),
        quota=Quota(**amounts),
        weight=float(body.get("weight", current.weight if current else 1.0)),
        # The schema bounds it to the job priority range; JSON Schema counts 7.0 as an integer.
        max_priority=int(
            body.get("max_priority", current.max_priority if current else DEFAULT_MAX_PRIORITY)
        ),
        cohort=cohort,
        priority_classes=tuple(
            sorted(set(body.get("priority_classes", current.priority_classes if current else ())))
        ),
        preemption_policy=PreemptionPolicy(
            body.get(
                "preemption_policy",
                current.preemption_policy if current else PreemptionPolicy.NEVER,
            )
        ),
        # Keys left out keep their current values (a new tenant's: the defaults).
        pod_policy=policy_of(body.get("pod_policy") or {}, current.pod_policy if current else None),
    )


def _extended_limits(
    quota: Mapping[str, Any], current: TenantSettings | None, problems: list[FieldProblem]
) -> tuple[tuple[str, int], ...]:
    """The quota's limits on extended resources: every key that is not one of the quota's own
    names an extended resource (``rdma/hca``...). A PUT sets those it gives; a PATCH changes
    those it gives over the current ones, and null takes a limit away."""
    limits = dict(current.quota.extended) if current is not None else {}
    own = {key for key, _, _ in _QUOTA_PARSERS} | {"max_running_jobs", "max_queued_jobs", *_LIMITS}
    for name in sorted(set(quota) - own):
        value = quota[name]
        problem = extended_name_problem(name)
        if problem is not None:
            problems.append(FieldProblem(pointer=pointer("quota", name), detail=problem))
            continue
        if value is None:
            limits.pop(name, None)
            continue
        try:
            limits[name] = extended_amount(name, value)
        except QuantityError as exc:
            problems.append(FieldProblem(pointer=pointer("quota", name), detail=str(exc)))
    return tuple(sorted(limits.items()))


def _cohort_terms(
    body: Mapping[str, Any], current: TenantSettings | None, problems: list[FieldProblem]
) -> CohortTerms | None:
    """The cohort and limits a body sets over ``current``'s: a cohort left out is kept (null
    leaves it, with its limits), a limit left out of ``quota`` is kept, and a key left out of a
    limit is no limit. Only a member of a cohort may have limits (a problem in ``problems``)."""
    now = None if current is None else current.cohort
    cohort = body.get("cohort", None if now is None else now.cohort)
    quota = body.get("quota", {})
    limits = {
        "borrowing_limit": Limits() if now is None else now.borrowing_limit,
        "lending_limit": Limits() if now is None else now.lending_limit,
    }
    for kind in _LIMITS:
        if kind in quota:
            limits[kind] = _limits(quota[kind], kind, problems)
            if cohort is None and limits[kind] != Limits():
                detail = f'only a member of a cohort has a {kind.replace("_", " ")}: set "cohort"'
                problems.append(FieldProblem(pointer=pointer("quota", kind), detail=detail))
    if cohort is None:
        return None
    return CohortTerms(
        cohort=cohort,
        borrowing_limit=limits["borrowing_limit"],
        lending_limit=limits["lending_limit"],
    )


def _limits(raw: Mapping[str, Any], kind: str, problems: list[FieldProblem]) -> Limits:
    """A schema-valid limit (each key optional; null or left out: no limit), parsed as the
    quota's own keys are."""
    amounts: dict[str, int] = {}
    for key, field_name, parse in _QUOTA_PARSERS:
        if raw.get(key) is None:
            continue
        try:
            amounts[field_name] = parse(raw[key])
        except QuantityError as exc:
            problems.append(FieldProblem(pointer=pointer("quota", kind, key), detail=str(exc)))
    return Limits(**amounts)


@routes.put("/v1/admin/tenants/{tenant}")
async def put_tenant(request: web.Request) -> web.Response:
    require_admin(request)
    name = _tenant_name(request)
    body = await read_checked(request, request.app[SETTINGS].api.max_body_bytes, "TenantPut")
    tenant, created = await tenant_store.put(
        request.app[ENGINE], name, tenant_settings(body, None, name), actor=actor(request)
    )
    headers = {"Location": f"/v1/admin/tenants/{name}"} if created else None
    return json_response(tenant_view(tenant), status=201 if created else 200, headers=headers)


@routes.get("/v1/admin/tenants/{tenant}")
async def get_tenant(request: web.Request) -> web.Response:
    require_admin(request)
    tenant = await tenant_store.get(request.app[ENGINE], _tenant_name(request))
    return json_response(tenant_view(tenant))


@routes.get("/v1/admin/tenants")
async def list_tenants(request: web.Request) -> web.Response:
    require_admin(request)
    tenants = await tenant_store.list_all(request.app[ENGINE])
    return json_response({"items": [tenant_view(tenant) for tenant in tenants]})


@routes.patch("/v1/admin/tenants/{tenant}")
async def patch_tenant(request: web.Request) -> web.Response:
    """Change some settings; quota keys left out keep their values.

    Lowering a quota below current usage stops new admissions for the tenant; running jobs
    keep running. With ``?dry_run=true`` nothing is written: the answer is the tenant as it
    would be and what the next admission cycle would do (``gateway.api.dry_run``).
    """
    require_admin(request)
    rehearsal = dry_run(request)
    name = _tenant_name(request)
    body = await read_checked(request, request.app[SETTINGS].api.max_body_bytes, "TenantPatch")

    def merge(current: TenantSettings) -> TenantSettings:
        return tenant_settings(body, current, name)

    if rehearsal:

        async def change(conn: AsyncConnection) -> Tenant:
            return await tenant_store.patch_in(conn, name, merge, actor=actor(request))

        tenant, next_cycle = await rehearse(request, change)
        return json_response(
            {"dry_run": True, "tenant": tenant_view(tenant), "next_cycle": next_cycle}
        )
    tenant = await tenant_store.patch(request.app[ENGINE], name, merge, actor=actor(request))
    return json_response(tenant_view(tenant))


@routes.delete("/v1/admin/tenants/{tenant}")
async def delete_tenant(request: web.Request) -> web.Response:
    require_admin(request)
    await tenant_store.delete(request.app[ENGINE], _tenant_name(request), actor=actor(request))
    return web.Response(status=204)


@routes.get("/v1/admin/audit")
async def list_audit(request: web.Request) -> web.Response:
    require_admin(request)
    query = request.query
    unknown = sorted(set(query) - {"tenant", "cohort", "priority_class", "limit", "cursor"})
    if unknown:
        raise BadRequest("unknown query parameter: " + ", ".join(unknown))
    limit = page_limit(query.get("limit"))
    before = decode_cursor(query["cursor"]) if "cursor" in query else None
    cohort = query.get("cohort")
    if cohort is not None and not DNS_1123_LABEL.fullmatch(cohort):
        raise BadRequest("cohort must be a cohort name (a DNS-1123 label)")
    priority_class = query.get("priority_class")
    if priority_class is not None and not DNS_1123_LABEL.fullmatch(priority_class):
        raise BadRequest("priority_class must be a priority class name (a DNS-1123 label)")
    entries = await audit_log.entries(
        request.app[ENGINE],
        tenant=tenant_filter(query),
        cohort=cohort,
        priority_class=priority_class,
        limit=limit + 1,
        before_id=before,
    )
    more = len(entries) > limit
    entries = entries[:limit]
    return json_response(
        {
            "items": [audit_view(entry) for entry in entries],
            "next_cursor": encode_cursor(entries[-1].id) if more else None,
        }
    )


@routes.get("/v1/admin/tenants/{tenant}/grants")
async def get_grants(request: web.Request) -> web.Response:
    require_admin(request)
    found = await grant_store.of_tenant(request.app[ENGINE], _tenant_name(request))
    return json_response(grant_store.as_map(found))


@routes.put("/v1/admin/tenants/{tenant}/grants")
async def put_grants(request: web.Request) -> web.Response:
    """Replace the tenant's grants; this replica forgets its cached grants at once."""
    require_admin(request)
    name = _tenant_name(request)
    body = await read_checked(request, request.app[SETTINGS].api.max_body_bytes, "TenantGrants")
    grants = grant_store.from_map(name, body)
    await grant_store.replace(request.app[ENGINE], name, grants, actor=actor(request))
    request.app[AUTHENTICATOR].forget_grants()
    return json_response(grant_store.as_map(grants))
