"""Long-lived responses end when the gateway shuts down.

An event stream or a followed log can stay open for hours (every dashboard tab holds one). On
shutdown, aiohttp waits up to MUSTER_SHUTDOWN_GRACE for handlers still running; these would use
all of it. So the application's shutdown signal sets ``CLOSING``, and every long-lived handler
ends its response within one poll of it (``pause``) or as soon as it is set (``until_closing``).
Clients resume: an EventSource reconnects with Last-Event-ID, to this replica when it is back
or to another.

Invariant: ``CLOSING`` is set before aiohttp starts waiting for handlers (``on_shutdown`` runs
first), and nothing clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.waits import woken

CLOSING = web.AppKey("closing", asyncio.Event)


def install(app: web.Application) -> None:
    app[CLOSING] = asyncio.Event()
    app.on_shutdown.append(_set_closing)


async def _set_closing(app: web.Application) -> None:
    app[CLOSING].set()


def closing(request: web.Request) -> bool:
    return request.app[CLOSING].is_set()


async def pause(request: web.Request, seconds: float) -> None:
    """Sleep ``seconds``, or less once the gateway is shutting down."""
    await woken(request.app[CLOSING], seconds)


async def until_closing(
    request: web.Request, chunks: AsyncIterator[bytes], *, check_every: float = 5.0
) -> AsyncIterator[bytes]:
    """``chunks`` until they end, the gateway starts shutting down, or the client has gone
    (checked every ``check_every`` seconds while no chunk comes: a followed log of a silent
    replica would otherwise wait for its next line to notice). The source is closed whichever
    way it ends."""
    stop = asyncio.ensure_future(request.app[CLOSING].wait())
    step: asyncio.Future[bytes] | None = None
    try:
        while not stop.done():
            if step is None:
                step = asyncio.ensure_future(anext(chunks))
            waiting: set[asyncio.Future[Any]] = {step, stop}
            done, _ = await asyncio.wait(waiting, timeout=check_every, return_when=FIRST)
            if step not in done:
                if stop in done or _client_gone(request):
                    break
                continue
            finished, step = step, None
            try:
                chunk = finished.result()
            except StopAsyncIteration:
                break
            yield chunk
    finally:
        stop.cancel()
        if step is not None:
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await step
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


FIRST = asyncio.FIRST_COMPLETED


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()
