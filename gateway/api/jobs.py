"""Job routes: submit, read, list, cancel, events, and the queue of queued jobs."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from gateway.api import schema, webhooks
from gateway.api.auth import access, actor, check_job, recheck, require_role, role_refusal
from gateway.api.body import read_checked, read_document
from gateway.api.closing import until_closing
from gateway.api.context import (
    ENGINE,
    INVENTORY,
    NOTIFIER,
    RUNTIME,
    SETTINGS,
    SPEC_LIMITS,
    SUBMITS,
)
from gateway.api.dry_run import dry_run, next_cycle_with
from gateway.api.paging import page_limit, tenant_filter
from gateway.api.serializers import event_view, job_view, json_response
from gateway.db import jobs as job_store
from gateway.db import priority_classes as class_store
from gateway.db import tenants as tenant_store
from gateway.db.submits import never_runs, request_hash
from gateway.domain.access import Action
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.kubeflow import manifest_kind, relocate_problems, translate_manifest
from gateway.domain.jobs.pods import pod_name, pod_requests
from gateway.domain.jobs.policy import needs_policy, policy_problems
from gateway.domain.jobs.spec import JobSpec, from_document, to_document
from gateway.domain.lifecycle.states import JobState
from gateway.domain.names import DNS_1123_LABEL, ID_PREFIX, IDEMPOTENCY_KEY, LABEL_SELECTOR
from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.nodes import PodRequest
from gateway.domain.scheduling.priority import resolve as resolve_priority
from gateway.domain.scheduling.queueing import PendingJob
from gateway.domain.scheduling.reasons import never_fits_nodes, never_fits_quota
from gateway.errors import (
    BadRequest,
    ClientError,
    DatabaseUnavailable,
    Forbidden,
    NotFound,
    ValidationFailed,
)

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@routes.post("/v1/jobs")
async def submit_job(request: web.Request) -> web.Response:
    body = await read_document(request, request.app[SETTINGS].api.max_body_bytes)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not idempotency_key_ok(key):
        raise BadRequest("Idempotency-Key must be 1 to 255 printable ASCII characters")
    check_submit_query(request, allowed=("tenant", "dry_run"))
    require_role(request)
    checked = await check_submit(request, body)
    if dry_run(request):
        return await _dry_run(request, checked)
    try:
        submitted = await request.app[SUBMITS].submit(
            checked.spec,
            body_hash=request_hash(body) if key is not None else "",
            idempotency_key=key,
            actor=actor(request),
            pods=checked.pods,
        )
    except ValidationFailed as exc:
        if checked.manifest is None:
            raise
        raise checked.refusal(exc) from exc
    if submitted.created:
        request.app[NOTIFIER].poke()
    return json_response(
        job_view(submitted.job),
        status=201 if submitted.created else 200,
        headers={"Location": f"/v1/jobs/{submitted.job.id}"},
    )


async def _dry_run(request: web.Request, checked: CheckedSubmit) -> web.Response:
    """What a submit would store and what the next admission cycle would do with the job, and
    nothing written: the submit's checks, then its tenant's (the priority it would run at,
    whether its quota could ever hold the job), then a plan of the next cycle with the job
    queued. A name a live job holds is found only by the submit itself (409)."""
    spec = checked.spec
    try:
        tenant = await tenant_store.get(request.app[ENGINE], spec.tenant)
    except NotFound as exc:
        raise checked.refusal(
            ValidationFailed([FieldProblem(pointer="/tenant", detail=str(exc))])
        ) from exc
    settings = tenant.settings
    granted = None
    if spec.priority_class is not None and spec.priority_class in settings.priority_classes:
        try:
            record = await class_store.get(request.app[ENGINE], spec.priority_class)
            granted = record.priority_class
        except NotFound:
            granted = None
    resolved = resolve_priority(
        tenant=spec.tenant,
        ceiling=settings.max_priority,
        priority=spec.priority,
        priority_class=spec.priority_class,
        granted=granted,
    )
    if isinstance(resolved, FieldProblem):
        raise checked.refusal(ValidationFailed([resolved]))
    impossible = never_fits_quota(settings.quota, spec.total(), settings.cohort)
    if impossible:
        raise checked.refusal(never_runs(impossible))
    stored = replace(spec, priority=resolved.priority)
    job = PendingJob(
        id=str(uuid.uuid4()),
        tenant=spec.tenant,
        priority=resolved.priority,
        submitted_at=time.time(),
        pods=checked.pods,
        preemptible=resolved.preemptible,
    )
    decided = await next_cycle_with(request, job)
    admitted = any(a.job_id == job.id for a in decided.admitted)
    waiting = next((w for w in decided.waiting if w.job_id == job.id), None)
    cycle: dict[str, Any] = {"admitted": admitted}
    if waiting is not None:
        cycle |= {"reason": waiting.reason.value, "message": waiting.message}
    elif not admitted:
        cycle |= {
            "reason": "Queued",
            "message": "behind its tenant's first job and the backfill window",
        }
    preempting = [p.job_id for p in decided.preempted if p.preemptor == job.id]
    if preempting:
        cycle["preempting"] = len(preempting)
    return json_response({"dry_run": True, "spec": to_document(stored), "next_cycle": cycle})


def check_submit_query(request: web.Request, allowed: tuple[str, ...] = ("tenant",)) -> None:
    """A submit's query: only ``allowed`` names; ``tenant`` a DNS-1123 label (as the OpenAPI
    document says)."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise BadRequest("unknown query parameter: " + ", ".join(unknown))
    tenant = request.query.get("tenant")
    if tenant is not None and not DNS_1123_LABEL.fullmatch(tenant):
        raise BadRequest(f"tenant {tenant!r} is not a tenant name (a DNS-1123 label)")


def idempotency_key_ok(key: str) -> bool:
    """An Idempotency-Key is 1 to 255 printable ASCII characters (header or batch item alike),
    as the OpenAPI document's pattern says."""
    return IDEMPOTENCY_KEY.fullmatch(key) is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckedSubmit:
    """A job that passed every check of a submit made before anything is written: the spec and
    pods to write and, for a Kubeflow manifest (a TFJob or PyTorchJob), its kind, the manifest
    (without its namespace) and tenant its refusals point into."""

    spec: JobSpec
    pods: tuple[PodRequest, ...]
    kind: str | None = None
    manifest: dict[str, Any] | None = None
    tenant: str | None = None

    def refusal(self, exc: ClientError) -> ClientError:
        """``exc``, the cluster's or the tenant's limits refusing the job; for a manifest,
        pointing into the manifest the client sent (a TFJob or PyTorchJob has no priority of its
        own, so a priority problem points at the whole manifest)."""
        if self.kind is None or self.manifest is None or not isinstance(exc, ValidationFailed):
            return exc
        relocated = relocate_problems(self.kind, self.manifest, exc.problems, tenant=self.tenant)
        return ValidationFailed(relocated, detail=exc.detail)


async def check_submit(
    request: web.Request, body: Any, *, seen: dict[str, list[tuple[str, str]]] | None = None
) -> CheckedSubmit:
    """The checks of one submitted job (``body``, a job spec, TFJob or PyTorchJob), each raising its
    refusal: its tenant and the caller's role there, its shape against the OpenAPI schema and
    its meaning in the core, the callback's address, its pod fields against the runtime and the
    tenant's pod policy, and the cluster's nodes. POST /v1/jobs
    makes them for its body, POST /v1/jobs:batch for each of its jobs, passing ``seen``: what
    the nodes said of each set of pods already checked (a sweep's jobs mostly share theirs)."""
    missing_tenant = None
    kind = manifest_kind(body)
    if kind is not None:
        document, tenant = await _from_manifest(request, kind, body)
    else:
        (document, missing_tenant), tenant = _with_tenant(request, body), None
    _check_submitter(request, document)
    problems = schema.check("JobSpec", document)
    meaning = check_job_spec(document, request.app[SPEC_LIMITS])
    if isinstance(meaning, list):
        # Report schema and meaning problems together, each field once.
        # The core's catch-all "" problem adds nothing when the schema already said what is wrong.
        known = {p.pointer for p in problems} | ({""} if problems else set())
        problems += [p for p in meaning if p.pointer not in known]
    else:
        # The SSRF guard's check of the callback URL: a setting, so the shell's to make.
        problems += webhooks.callback_problems(request.app[SETTINGS], meaning)
        problems += await _pod_problems(request, meaning)
    if missing_tenant is not None:
        problems = [p for p in problems if p.pointer not in ("/tenant", "")] + [missing_tenant]
    if problems or isinstance(meaning, list):
        problems = problems or (meaning if isinstance(meaning, list) else [])
        if kind is not None:  # point into the manifest the client sent
            problems = relocate_problems(kind, _without_namespace(body), problems, tenant=tenant)
        raise ValidationFailed(problems)
    checked = CheckedSubmit(
        spec=meaning,
        pods=pod_requests(meaning),
        kind=kind,
        manifest=_without_namespace(body) if kind is not None else None,
        tenant=tenant,
    )
    # A job that can never run is refused before any statement; its tenant's quota is read with
    # the tenant's row, when the job is written.
    key = repr(checked.pods) if seen is not None else ""
    impossible = seen.get(key) if seen is not None else None
    if impossible is None:
        impossible = never_fits_nodes(checked.pods, await request.app[INVENTORY].nodes())
        if seen is not None:
            seen[key] = impossible
    if impossible:
        raise checked.refusal(never_runs(impossible))
    return checked


async def _pod_problems(request: web.Request, spec: JobSpec) -> list[FieldProblem]:
    """What the runtime cannot run of the spec's pod fields, and what the tenant's pod policy
    refuses. A spec without pod fields or tolerations passes both, without a statement. The
    policy is read before the job is written, in another transaction: a submit racing an
    admin's change is judged by the policy before it."""
    if not needs_policy(spec):
        return []
    runtime = request.app[RUNTIME]
    problems = [] if runtime is None else list(runtime.unsupported(spec))
    try:
        tenant = await tenant_store.get(request.app[ENGINE], spec.tenant)
    except NotFound:
        return problems  # the submit reports the tenant
    return problems + policy_problems(spec, tenant.settings.pod_policy)


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    query = request.query
    unknown = sorted(
        set(query) - {"state", "tenant", "label", "limit", "cursor", "id_prefix", "order"}
    )
    if unknown:
        raise BadRequest("unknown query parameter: " + ", ".join(unknown))
    state = None
    if "state" in query:
        try:
            state = JobState(query["state"])
        except ValueError as exc:
            raise BadRequest(
                f"state must be one of {', '.join(s.value for s in JobState)}"
            ) from exc
    limit = page_limit(query.get("limit"))
    after = job_store.decode_cursor(query["cursor"]) if "cursor" in query else None
    order = query.get("order", "oldest")
    if order not in ("oldest", "newest"):
        raise BadRequest("order must be oldest or newest")
    id_prefix = query.get("id_prefix")
    if id_prefix is not None and not ID_PREFIX.fullmatch(id_prefix):
        raise BadRequest(f"id_prefix {id_prefix!r} is not the start of a job id (hex and -)")
    page = await job_store.list_jobs(
        request.app[ENGINE],
        state=state,
        tenant=tenant_filter(query),
        tenants=require_role(request).tenants(Action.READ),
        labels=parse_selector(query.get("label", "")),
        limit=limit,
        after=after,
        id_prefix=id_prefix,
        newest_first=order == "newest",
    )
    return json_response(
        {"items": [job_view(job) for job in page.items], "next_cursor": page.next_cursor}
    )


@routes.get("/v1/queue")
async def list_queue(request: web.Request) -> web.Response:
    """The queued jobs of the tenants the caller may read, in queue order (a tenant it may not
    read answers an empty page, as GET /v1/jobs does)."""
    query = request.query
    unknown = sorted(set(query) - {"tenant", "limit", "cursor"})
    if unknown:
        raise BadRequest("unknown query parameter: " + ", ".join(unknown))
    limit = page_limit(query.get("limit"))
    after = job_store.decode_queue_cursor(query["cursor"]) if "cursor" in query else None
    page = await job_store.list_queue(
        request.app[ENGINE],
        tenant=tenant_filter(query),
        tenants=require_role(request).tenants(Action.READ),
        limit=limit,
        after=after,
    )
    return json_response(
        {"items": [job_view(job) for job in page.items], "next_cursor": page.next_cursor}
    )


def _with_tenant(request: web.Request, body: Any) -> tuple[Any, FieldProblem | None]:
    """A job spec without a tenant goes to the caller's tenant, when it may submit to exactly
    one; otherwise the spec must name one, and the problem says so."""
    if not isinstance(body, dict) or "tenant" in body:
        return body, None
    allowed = access(request).tenants(Action.SUBMIT)
    if allowed is not None and len(allowed) == 1:
        return {**body, "tenant": next(iter(allowed))}, None
    choices = "several tenants" if allowed is None or allowed else "no tenant"
    return body, FieldProblem(pointer="/tenant", detail=f"is required: you may submit to {choices}")


def _check_submitter(request: web.Request, document: Any) -> None:
    """A tenant the caller cannot see is reported as one that does not exist; one it can see
    but may not submit to is a 403."""
    tenant = document.get("tenant") if isinstance(document, dict) else None
    if not isinstance(tenant, str):
        return  # the schema check reports it
    caller = access(request)
    if not caller.sees(tenant):
        raise ValidationFailed(
            [FieldProblem(pointer="/tenant", detail=f"tenant {tenant!r} does not exist")]
        )
    if not caller.may(tenant, Action.SUBMIT):
        raise role_refusal(caller, tenant, Action.SUBMIT)
    runtime = request.app[RUNTIME]
    refusal = runtime.refusal(tenant) if runtime is not None else None
    if refusal is not None:
        raise Forbidden(refusal)


async def _from_manifest(
    request: web.Request, kind: str, manifest: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """A Kubeflow TFJob or PyTorchJob -> a Muster job spec. The tenant is ?tenant=, else the
    tenant that owns the manifest's metadata.namespace."""
    tenant = request.query.get("tenant")
    metadata = manifest.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    if tenant is None:
        if not isinstance(namespace, str):
            raise ValidationFailed(
                [
                    FieldProblem(
                        pointer="/metadata/namespace",
                        detail=f"a {kind} needs metadata.namespace (its tenant's) or ?tenant=",
                    )
                ]
            )
        tenant = await tenant_store.owning(request.app[ENGINE], namespace)
        if tenant is None or not access(request).sees(tenant):
            raise ValidationFailed(
                [
                    FieldProblem(
                        pointer="/metadata/namespace",
                        detail=f"no tenant owns namespace {namespace!r}",
                    )
                ]
            )
    translated = translate_manifest(kind, _without_namespace(manifest), tenant=tenant)
    if isinstance(translated, list):
        raise ValidationFailed(translated)
    return translated, tenant


def _without_namespace(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The namespace names the tenant, which is settled by then: drop it before translating."""
    metadata = manifest.get("metadata")
    if not isinstance(metadata, Mapping):
        return dict(manifest)
    return {**manifest, "metadata": {k: v for k, v in metadata.items() if k != "namespace"}}


def parse_selector(selector: str) -> dict[str, str]:
    """``team=ranking,tier==gold`` -> a dict; only equality terms, exactly as the OpenAPI
    document's ``LabelSelector`` pattern (``LABEL_SELECTOR``) says."""
    if not LABEL_SELECTOR.fullmatch(selector):
        raise BadRequest(f"label selector {selector!r} is not key=value terms separated by commas")
    labels: dict[str, str] = {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        labels[key] = value.removeprefix("=")
    return labels


@routes.get("/v1/jobs/{id}")
async def get_job(request: web.Request) -> web.Response:
    job = await job_store.get(request.app[ENGINE], request.match_info["id"])
    check_job(request, job)
    return json_response(job_view(job))


@routes.post("/v1/jobs/{id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    reason = await _cancel_reason(request)
    job_id = request.match_info["id"]
    check_job(request, await job_store.get(request.app[ENGINE], job_id), Action.CANCEL)
    job = await job_store.cancel(request.app[ENGINE], job_id, actor=actor(request), reason=reason)
    request.app[NOTIFIER].poke()
    return json_response(job_view(job))


async def _cancel_reason(request: web.Request) -> str | None:
    """The optional body of a cancel: ``{"reason": "..."}``. Anything else is refused (422), so
    a client cannot slip in a state, a tenant or a timestamp."""
    if not request.body_exists:
        return None
    body = await read_checked(request, request.app[SETTINGS].api.max_body_bytes, "CancelRequest")
    reason = body.get("reason")
    return reason if isinstance(reason, str) else None


@routes.get("/v1/jobs/{id}/events")
async def job_events(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    check_job(request, await job_store.get(request.app[ENGINE], job_id))
    events = await job_store.events(request.app[ENGINE], job_id)
    return json_response({"items": [event_view(event) for event in events]})


@routes.get("/v1/jobs/{id}/logs")
async def job_logs(request: web.Request) -> web.StreamResponse:
    """A replica's log as plain text; with follow=true, streamed until the replica ends."""
    unknown = sorted(set(request.query) - {"replica", "follow"})
    if unknown:
        raise BadRequest("unknown query parameter: " + ", ".join(unknown))
    job = await job_store.get(request.app[ENGINE], request.match_info["id"])
    check_job(request, job)
    runtime = request.app[RUNTIME]
    if runtime is None:
        raise NotFound("this gateway's backend (static) runs no replicas, so it keeps no logs")
    role, index = _replica(from_document(job.spec), request.query.get("replica"))
    follow = request.query.get("follow", "false").lower()
    if follow not in ("true", "false", "1", "0"):
        raise BadRequest("follow must be true or false")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    name = pod_name(job.name, role, index)
    following = follow in ("true", "1")
    try:
        async for chunk in until_closing(request, runtime.logs(job.id, name, follow=following)):
            if following:  # a followed log may outlive its token, or the caller's role
                caller = await recheck(request)
                if caller is None or not caller.sees(job.tenant):
                    break
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left mid-stream: nothing to answer
    except DatabaseUnavailable as exc:  # a recheck of the caller's grants, mid-stream
        log.warning("a followed log ended: the database cannot answer now (%s)", exc)
        with contextlib.suppress(ConnectionResetError):
            # Not the replica's end: say so, for a reader to follow again.
            await response.write(
                b"\nmuster: the log stream stopped (the gateway's database does not answer); "
                b"follow again\n"
            )
    return response


def _replica(spec: JobSpec, wanted: str | None) -> tuple[str, int]:
    """``worker-1`` -> ("worker", 1), checked against the spec; by default the first replica
    that reports the job's outcome: chief, master, else worker 0, else the first role."""
    counts = {replica.role: replica.count for replica in spec.replicas}
    if wanted is None:
        for role in ("chief", "master", "worker", *sorted(counts)):
            if role in counts:
                return role, 0
    role, _, index = (wanted or "").rpartition("-")
    if role in counts and index.isdigit() and int(index) < counts[role]:
        return role, int(index)
    choices = ", ".join(f"{r}-0..{r}-{counts[r] - 1}" for r in sorted(counts))
    raise NotFound(f"the job has no replica {wanted!r}; its replicas are {choices}")
