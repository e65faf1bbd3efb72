"""Errors as RFC 9457 ``application/problem+json`` responses: one middleware for the whole app.

It maps ``gateway.errors`` only: driver, Kubernetes and HTTP client errors were translated where
they entered (a PostgreSQL that cannot serve is a ``DatabaseUnavailable`` by the time it gets here,
whichever way the statement went; see ``gateway.db.engine``).

Invariants: a ``ClientError`` becomes its own 4xx; ``DatabaseUnavailable`` and ``IssuerUnavailable``
a 503 with ``Retry-After``; aiohttp's HTTP exceptions (unknown route, wrong method, body too large)
become problems too; anything else is a bug, logged with its traceback, and answers a bare 500
that reveals nothing. Client input must never reach that last branch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.errors import (
    ClientError,
    DatabaseUnavailable,
    IssuerUnavailable,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://muster.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_document(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra or {})
    return body


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(
            problem_document(status, title, detail, slug=slug, instance=instance, extra=extra)
        ),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def client_problem(exc: ClientError, instance: str | None = None) -> dict[str, Any]:
    """The problem document of a client error: the body of its response, and the answer of one
    job of a batch (``gateway.api.batches``)."""
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationFailed):
        extra["errors"] = [{"pointer": p.pointer, "detail": p.detail} for p in exc.problems]
    return problem_document(
        exc.status, exc.title, exc.detail, slug=exc.slug, instance=instance, extra=extra
    )


def from_client_error(exc: ClientError, instance: str | None) -> web.Response:
    headers: dict[str, str] = {}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after_seconds)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = www_authenticate(exc)
    response = web.Response(
        status=exc.status,
        text=json.dumps(client_problem(exc, instance)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )
    if isinstance(exc, RequestTimeout):
        response.force_close()  # RFC 9110: a 408 says the server closes the connection
    return response


def www_authenticate(exc: Unauthorized) -> str:
    """RFC 6750's challenge: the realm, and the error when a token was sent."""
    if exc.error is None:
        return 'Bearer realm="muster"'
    # error_description allows printable ASCII but for quote and backslash (RFC 6750, 3).
    description = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in exc.detail)
    return f'Bearer realm="muster", error="{exc.error}", error_description="{description}"'


_HTTP_SLUGS = {
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
}


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ClientError as exc:
        return from_client_error(exc, request.path)
    except DatabaseUnavailable as exc:
        log.warning("database unavailable: %s", exc)
        return problem_response(
            503,
            "Service unavailable",
            "the database does not answer",
            slug="unavailable",
            instance=request.path,
            headers={"Retry-After": "5"},
        )
    except IssuerUnavailable as exc:
        log.warning("token issuer unavailable: %s", exc)
        return problem_response(
            503,
            "Service unavailable",
            "the token issuer's signing keys cannot be loaded, so no token can be checked",
            slug="unavailable",
            instance=request.path,
            headers={"Retry-After": "10"},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug, title = _HTTP_SLUGS.get(exc.status, ("http-error", exc.reason))
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else title
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem_response(
            exc.status, title, detail, slug=slug, instance=request.path, headers=headers
        )
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.rel_url.raw_path)
        return problem_response(
            500,
            "Internal server error",
            "the server failed; the error has been logged",
            slug="internal",
            instance=request.path,
        )
