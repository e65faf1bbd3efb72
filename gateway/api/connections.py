"""Connections: deadlines for slow and idle clients, and a cap on open connections per process.

aiohttp serves each connection with a ``RequestHandler``, configured through the application's
``handler_args`` (``handler_args`` below), and Muster listens through ``GuardedSite``:

1. Idle: aiohttp's ``keepalive_timeout`` (MUSTER_KEEPALIVE_TIMEOUT) closes a connection that has
   no complete request line and headers that long after it opened or after its last response.
2. Headers: a request's line and headers must be complete within MUSTER_HEADER_TIMEOUT of the
   connection opening or of the request's first byte, else the connection is closed unanswered
   (``_GuardedHandler``). aiohttp has no such deadline.
3. Body: ``gateway.api.body`` reads bodies within MUSTER_BODY_TIMEOUT (408). A body the gateway
   does not read (after a 401, say) is read and discarded for at most aiohttp's
   ``lingering_time``, set to the same deadline (10 s at most), then the connection closes.
4. Cap: beyond MUSTER_MAX_CONNECTIONS open connections, a new one is answered 503 and closed at
   once, while the open ones are served (``Connections``). ``connection_cap`` lowers the cap, or
   raises the process's open-file limit, so that the cap is reached before the limit.

Invariants: every deadline runs only while the gateway waits for a client, never while it
answers one, so the event stream and followed logs are never cut. Nothing is added per request:
one timer per connection, armed when it opens and moved lazily (as aiohttp moves its keep-alive
timer), and one counter per site.

Two aiohttp internals are relied on, and ``tests/acceptance/test_slow_clients.py`` and
``tests/integration/test_connection_limits.py`` fail if an upgrade changes them:
``RequestHandler._waiter`` is a pending future exactly while the handler waits for the next
request's line and headers; ``web.Server._kwargs`` are the keyword arguments aiohttp itself
builds each handler with (``Server.__call__``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from gateway.api.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE
from gateway.api.protocol import ProblemRequestHandler
from gateway.errors import ConfigError
from gateway.settings import Settings

if sys.platform != "win32":
    import resource

log = logging.getLogger(__name__)

#: aiohttp's default ``lingering_time``: how long a body the handler left unread is discarded.
LINGERING_SECONDS = 10.0

#: File descriptors kept for all but client connections: the database pool, the local backend's
#: replicas and log files, outbound webhook and Kubernetes connections.
RESERVED_DESCRIPTORS = 256

#: Seconds between two warnings that the cap refuses connections.
REFUSAL_LOG_INTERVAL = 60.0


def handler_args(settings: Settings) -> Mapping[str, Any]:
    """The keyword arguments aiohttp gives each connection's ``RequestHandler``."""
    return {
        "keepalive_timeout": settings.api.keepalive_timeout,
        "lingering_time": min(LINGERING_SECONDS, settings.api.body_timeout),
    }


def connection_cap(max_connections: int, open_files: int | None) -> int:
    """The cap this process can honour with ``open_files`` descriptors (None: no limit)."""
    if open_files is None:
        return max_connections
    return max(1, min(max_connections, open_files - RESERVED_DESCRIPTORS))


def raise_open_file_limit(wanted: int) -> int | None:
    """Raise the soft RLIMIT_NOFILE to ``wanted`` where the hard limit allows (as Go does at
    start; Python leaves it at the soft default, often 1024); the soft limit now, None if none."""
    if sys.platform == "win32":
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        else:
            soft = target
    return None if soft == resource.RLIM_INFINITY else soft


def _refusal() -> bytes:
    """The whole answer to a connection over the cap: a 503 problem, then the connection ends."""
    body = json.dumps(
        {
            "type": PROBLEM_TYPE_BASE + "unavailable",
            "title": "Service unavailable",
            "status": 503,
            "detail": "the gateway has as many open connections as it serves; retry shortly",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


class Connections:
    """The connections a site holds open, against its cap, and its header deadline."""

    REFUSAL = _refusal()

    def __init__(self, *, limit: int, header_timeout: float) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self._warned_at = -REFUSAL_LOG_INTERVAL

    def admit(self, transport: asyncio.Transport) -> bool:
        """Count a new connection in; or, at the cap, answer it 503 and close it."""
        if self.open < self.limit:
            self.open += 1
            return True
        transport.write(self.REFUSAL)
        transport.close()
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= REFUSAL_LOG_INTERVAL:
            self._warned_at = now
            log.warning(
                "%d connections are open, the most MUSTER_MAX_CONNECTIONS allows: new ones are "
                "answered 503 (%d so far)",
                self.open,
                self.refused,
            )
        return False


class _GuardedHandler(ProblemRequestHandler):
    """aiohttp's handler, counted against the site's cap, with a header deadline."""

    __slots__ = ("_admitted", "_connections", "_header_due", "_header_timer")

    def __init__(self, manager: web.Server, connections: Connections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._connections = connections
        self._admitted = False
        # Loop time by which the awaited request's line and headers must be complete; 0 while
        # none is under way (idle, where only aiohttp's keep-alive deadline runs, or answering).
        self._header_due = 0.0
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._connections.admit(cast(asyncio.Transport, transport)):
            return  # aiohttp never sees the connection: no task, no timer
        self._admitted = True
        super().connection_made(transport)
        self._expect_headers_by(self._loop.time() + self._connections.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._connections.open -= 1
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiter = self._waiter
        if waiter is None or waiter.done():
            # A request is being answered (these were body bytes, or pipelined), or these bytes
            # completed one: no header deadline runs.
            self._header_due = 0.0
        elif not self._header_due:
            # The first bytes of a request whose headers are not all here yet.
            self._expect_headers_by(self._loop.time() + self._connections.header_timeout)

    def _expect_headers_by(self, due: float) -> None:
        self._header_due = due
        if self._header_timer is None:  # else the earlier timer fires first and moves itself
            self._header_timer = self._loop.call_at(due, self._check_headers)

    def _check_headers(self) -> None:
        self._header_timer = None
        due = self._header_due
        if not due:
            return  # the headers came in time
        if self._loop.time() < due:  # a later request's deadline
            self._header_timer = self._loop.call_at(due, self._check_headers)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.force_close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections have a header deadline and a cap (see the module)."""

    __slots__ = ("_connections", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        header_timeout: float,
        max_connections: int,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._connections = Connections(limit=max_connections, header_timeout=header_timeout)

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    @property
    def connections(self) -> Connections:
        return self._connections

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        kwargs = server._kwargs  # what aiohttp's own Server.__call__ passes to each handler
        connections = self._connections

        def handler() -> RequestHandler:
            return _GuardedHandler(server, connections, loop=loop, **kwargs)

        try:
            self._server = await loop.create_server(
                handler, self._host, self._port, backlog=self._backlog
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {self._port} on {self._host} is taken (another muster serve?); choose "
                    "another with --port or MUSTER_PORT, or stop what listens there"
                ) from exc
            raise ConfigError(f"cannot listen on {self._host}:{self._port}: {exc}") from exc
