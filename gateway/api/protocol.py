"""What the HTTP server answers before a request reaches the application: problem+json too.

aiohttp refuses some requests while parsing them, before routing and before any middleware: a
request line or header over its limits, malformed HTTP, an unsupported method. Its own answer is
text/plain; here it is an RFC 9457 problem document like every other error, with the same
status (``gateway.api.connections.GuardedSite`` serves every connection with a handler derived
from ``ProblemRequestHandler``).

Invariant: the status, the logging and the closing of the connection are aiohttp's own; only the
body changes. A 500's detail names nothing internal.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.api.problems import problem_response

__all__ = ["ProblemRequestHandler"]


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, with problem+json bodies for what it refuses itself."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if sent already
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        if status >= 500:
            detail = "the server could not handle the request"
        else:
            detail = (message or phrase).split("\n", 1)[0][:300]
        response = problem_response(
            status,
            phrase or "Bad request",
            detail,
            slug="bad-request" if status < 500 else "internal",
        )
        response.force_close()
        return response
