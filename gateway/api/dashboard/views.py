"""How a page asks the API: the API's own handler, run with the caller's request and access.

Invariant: ``api_get`` resolves the path through the application's router and runs the handler
it finds on a copy of the page's request (same access, same credentials, the given query), so a
page can read nothing the caller could not read through the API, and gets the same 404s and 403s
(as exceptions, which ``page`` turns into an error page).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from gateway.api.dashboard.render import render
from gateway.errors import ClientError, DatabaseUnavailable, NotFound

PageHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def api_get(request: web.Request, path: str, query: Mapping[str, str] | None = None) -> Any:
    """The JSON the API answers to GET ``path`` with ``query``, for the page's caller. ``path``
    is made of ids the page checked: one that would carry a query, a fragment or an escape of its
    own is refused, so a crafted id cannot reach another route than the page meant."""
    if any(c in path for c in "?#%\\") or "/." in path:
        raise NotFound(f"{path[:100]} does not exist")
    url = URL(path).with_query({key: value for key, value in (query or {}).items() if value})
    sub = request.clone(method="GET", rel_url=url)
    match = await request.app.router.resolve(sub)
    if match.http_exception is not None:
        raise match.http_exception
    # As aiohttp's own dispatch does (Application._handle): the handler reads match_info, and
    # request.app through it.
    match.add_app(request.app)
    match.freeze()
    sub._match_info = match
    response = await match.handler(sub)
    if not isinstance(response, web.Response) or response.body is None:
        raise TypeError(f"{path} does not answer a JSON body")
    return orjson.loads(response.body)  # type: ignore[arg-type]


def page(handler: PageHandler) -> PageHandler:
    """A page handler whose refusals (404, 403, 400, ...) and database outages are error pages
    for a browser, and problem documents for anything else."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ClientError as exc:
            if not wants_html(request):
                raise
            return error_page(request, exc.status, exc.title, exc.detail)
        except web.HTTPException as exc:
            if exc.status < 400 or not wants_html(request):
                raise
            return error_page(request, exc.status, exc.reason, exc.reason)
        except DatabaseUnavailable:
            if not wants_html(request):
                raise
            response = error_page(
                request,
                503,
                "Service unavailable",
                "The database does not answer; this page retries by itself.",
            )
            response.headers["Retry-After"] = "5"
            return response

    return wrapped


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return render(
        request, "error.html", {"title": title, "status": status, "detail": detail}, status=status
    )


def wants_html(request: web.Request) -> bool:
    return (
        "text/html" in request.headers.get("Accept", "")
        or request.headers.get("X-Muster-Live") == "1"
    )
