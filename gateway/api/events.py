"""GET /v1/events: a Server-Sent Events stream of job events of the caller's tenants.

The stream's event ids are positions, ``<txid>-<id>`` (the writing transaction's id, then the
event's id; see ``gateway.db.event_stream``): a client that resumes with Last-Event-ID gets every
event after that position and none before it. A plain event id is accepted too (the ids of
GET /v1/jobs/{id}/events, and of this stream before positions). A new stream may start
elsewhere with ``after``: a position, or ``now`` (``gateway.db.event_stream.stream_now``: every
event written from then on, none that finished before, bar those a still open older transaction
holds behind it). Last-Event-ID wins over ``after``: it is what an EventSource sends when it
reconnects, from a page that still carries the ``after`` of its first connection.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client.registry import Collector

from gateway.api.auth import recheck, require_role
from gateway.api.closing import closing, pause
from gateway.api.context import ENGINE
from gateway.api.observability import REQUEST_ID_HEADER
from gateway.api.paging import tenant_filter
from gateway.api.serializers import event_view
from gateway.db.event_stream import (
    STREAM_START,
    EventPosition,
    events_after,
    position_of_event,
    stream_now,
)
from gateway.domain.access import Action
from gateway.domain.lifecycle.states import EventType
from gateway.errors import BadRequest, DatabaseUnavailable
from gateway.logs import bind, log_context

IS_LEADER: web.AppKey[Callable[[], bool]] = web.AppKey("is_leader")
COLLECTORS: web.AppKey[tuple[Collector, ...]] = web.AppKey("collectors")

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

EVENT_PAGE = 100
EVENT_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


MAX_TXID = 2**64 - 1  # xid8 is unsigned
MAX_EVENT_ID = 2**63 - 1  # job_events.id is a bigint
POSITION_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,19})")
PLAIN_ID = re.compile(r"[0-9]{1,19}")
#: The ``after`` query parameter: ``now`` or a position, with digits few enough that every
#: position of this shape is within bounds (the OpenAPI document's pattern is this one).
AFTER = re.compile(r"now|([0-9]{1,19})-([0-9]{1,18})")


def _sse_id(position: EventPosition) -> str:
    return f"{position.txid}-{position.id}"


async def _resume_from(request: web.Request) -> EventPosition:
    """The position after which the stream starts: Last-Event-ID's, else ``after``'s, else the
    beginning. ``after`` is checked even when Last-Event-ID is given, so a bad one is a 400 on
    the first connection, not only on one without the header."""
    after = request.query.get("after")
    wanted = None if after is None else AFTER.fullmatch(after)
    if after is not None and wanted is None:
        raise BadRequest("after must be now or a position of this stream (<txid>-<id>)")
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        if wanted is None:
            return STREAM_START
        if wanted[0] == "now":
            return await stream_now(request.app[ENGINE])
        return EventPosition(int(wanted[1]), int(wanted[2]))
    if (match := POSITION_ID.fullmatch(raw)) is not None:
        position = EventPosition(int(match[1]), int(match[2]))
        if position.txid <= MAX_TXID and position.id <= MAX_EVENT_ID:
            return position
    elif PLAIN_ID.fullmatch(raw) is not None and int(raw) <= MAX_EVENT_ID:
        return await position_of_event(request.app[ENGINE], int(raw))
    raise BadRequest("Last-Event-ID must be an id of this stream (<txid>-<id>) or an event id")


def _event_filters(query: Mapping[str, str]) -> tuple[str | None, str | None, str | None]:
    tenant = tenant_filter(query)
    job = query.get("job")
    if job is not None:
        try:
            job = str(uuid.UUID(job))
        except ValueError as exc:
            raise BadRequest("job must be a job id (a UUID)") from exc
    kind = query.get("type")
    if kind is not None and kind not in {t.value for t in EventType}:
        raise BadRequest(f"type must be one of {', '.join(t.value for t in EventType)}")
    return tenant, job, kind


@routes.get("/v1/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Job events from job_events, by writing transaction then id, each once its transaction and
    every older one have finished (so a client that resumes with Last-Event-ID misses nothing
    committed meanwhile, whatever order transactions commit in). Runs until the client goes, or
    its token expires, or it loses its last role, or the gateway shuts down or loses its database
    (the client resumes); a revoked tenant's events stop at once."""
    tenants = require_role(request).tenants(Action.READ)  # None: an admin sees every tenant
    tenant, job, kind = _event_filters(request.query)
    last = await _resume_from(request)
    if tenant is not None:
        bind(tenant=tenant)
    engine = request.app[ENGINE]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            REQUEST_ID_HEADER: (log_context.get() or {}).get("request_id", ""),
        }
    )
    await response.prepare(request)
    try:
        await response.write(b"retry: 1000\n\n")
        quiet_since = time.monotonic()
        while (
            request.transport is not None
            and not request.transport.is_closing()
            and not closing(request)
        ):
            # A stream outlives its request: it ends when the token expires, and follows
            # grants as they change.
            caller = await recheck(request)
            if caller is None:
                break
            tenants = caller.tenants(Action.READ)
            page = await events_after(
                engine,
                last,
                tenant=tenant,
                tenants=tenants,
                job_id=job,
                event_type=kind,
                limit=EVENT_PAGE,
            )
            for streamed in page:
                event = streamed.event
                data = {**event_view(event), "tenant": event.tenant}
                last = streamed.position
                message = (
                    f"id: {_sse_id(last)}\nevent: {event.type.value}\ndata: {json.dumps(data)}\n\n"
                )
                await response.write(message.encode())
            if page:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                await response.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            if len(page) < EVENT_PAGE:
                await pause(request, EVENT_POLL_SECONDS)
    except ConnectionResetError:
        pass
    except DatabaseUnavailable as exc:
        # The stream has begun: no problem document can follow. It ends, and the client
        # resumes with Last-Event-ID once the database answers again (a 503 until then).
        log.warning("an event stream ended: the database cannot answer now (%s)", exc)
    return response
