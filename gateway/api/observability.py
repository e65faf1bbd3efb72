"""Request ids and request timing: one middleware, outermost, so even errors carry both.

The request id comes from the client's ``X-Request-ID`` (1..128 printable ASCII characters) or is
generated (a uuid4 in hex); it is echoed in the response's ``X-Request-ID`` and put on every log
record written while serving the request (see ``gateway.logs.ContextFilter``), including a DEBUG
line per request on the ``gateway.api.access`` logger. Each request's
duration is observed in ``muster_http_request_duration_seconds`` under its route's path template.
What the client chose (its path, a tenant name in the URL) is escaped by the log formatters
(``gateway.logs``), not here.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Histogram

from gateway.logs import log_context

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 128
UNMATCHED_ROUTE = "unmatched"

log = logging.getLogger("gateway.api.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_duration_histogram() -> Histogram:
    """A histogram for one application, registered in no global registry."""
    return Histogram(
        "muster_http_request_duration_seconds",
        "Time to serve an HTTP request, by route template, method and status.",
        ["route", "method", "status"],
        registry=None,
    )


REQUEST_DURATION = web.AppKey("request_duration", Histogram)


def valid_request_id(value: str | None) -> bool:
    return (
        value is not None
        and 0 < len(value) <= MAX_REQUEST_ID
        and all(" " <= ch < "\x7f" for ch in value)
    )


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None or request.match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    return resource.canonical


@web.middleware
async def observability_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER)
    request_id = given if given is not None and valid_request_id(given) else uuid.uuid4().hex
    token = log_context.set({"request_id": request_id})
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        seconds = time.perf_counter() - started
        route = route_template(request)
        histogram = request.app.get(REQUEST_DURATION)
        if histogram is not None:
            histogram.labels(route, request.method, str(status)).observe(seconds)
        # One line per request, carrying the request id like every other record written here.
        # The path as sent (still percent-encoded): what the client wrote, and no decoded %0A.
        path = request.rel_url.raw_path
        log.debug("%s %s -> %d in %.1f ms", request.method, path, status, seconds * 1000)
        log_context.reset(token)
