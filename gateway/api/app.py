"""The aiohttp application: routes, middleware and state.

``make_app`` takes everything it needs explicitly (settings and a database engine, and from the
background loops, when they run in the process, leadership, their metrics and the hand-off of
queued jobs), so tests and ``muster serve`` build the same application.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from aiohttp import web
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api import (
    admin,
    batches,
    closing,
    cluster,
    cohorts,
    connections,
    dashboard,
    events,
    jobs,
    metrics,
    priority_classes,
    replicas,
    service,
    usage,
    webhooks,
)
from gateway.api.auth import auth_middleware
from gateway.api.context import (
    AUTHENTICATOR,
    ENGINE,
    INVENTORY,
    NOTIFIER,
    RUNTIME,
    SETTINGS,
    SPEC_LIMITS,
    SUBMITS,
)
from gateway.api.observability import (
    REQUEST_DURATION,
    observability_middleware,
    request_duration_histogram,
)
from gateway.api.problems import problems_middleware
from gateway.auth.authenticator import Authenticator, make_authenticator
from gateway.backends.base import Inventory, Runtime
from gateway.db.channels import Channel
from gateway.db.notify import Notifier
from gateway.db.submits import Submits
from gateway.domain.jobs.spec import SpecLimits
from gateway.domain.scheduling.queueing import PendingJob
from gateway.settings import Settings


def make_app(
    settings: Settings,
    engine: AsyncEngine,
    inventory: Inventory,
    runtime: Runtime | None = None,
    is_leader: Callable[[], bool] = lambda: False,
    collectors: Sequence[Collector] = (),
    authenticator: Authenticator | None = None,
    on_queued: Callable[[PendingJob], None] | None = None,
) -> web.Application:
    """The application. ``is_leader``, ``collectors`` and ``on_queued`` come from the loops'
    runtime (``gateway.loops.runtime``) where it runs: whether this process leads, the loops'
    metrics, and who is told of each job this process queues."""
    # aiohttp's own limit is a backstop; read_json enforces ours (the larger one for a batch of
    # jobs) with a clearer message.
    # The request-id middleware is outermost, so even problem responses carry X-Request-ID.
    app = web.Application(
        middlewares=[observability_middleware, problems_middleware, auth_middleware],
        client_max_size=max(settings.api.max_body_bytes, settings.api.max_batch_body_bytes) + 1,
        handler_args=connections.handler_args(settings),  # the idle and unread-body deadlines
    )
    app[REQUEST_DURATION] = request_duration_histogram()
    app[metrics.IS_LEADER] = is_leader
    app[metrics.COLLECTORS] = tuple(collectors)
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[INVENTORY] = inventory
    app[RUNTIME] = runtime
    app[AUTHENTICATOR] = authenticator or make_authenticator(settings, engine)
    app[NOTIFIER] = Notifier(engine, Channel.JOBS)
    app.cleanup_ctx.append(_notifier)
    app[SUBMITS] = Submits(engine)
    app[SUBMITS].on_queued = on_queued
    app.on_cleanup.append(_finish_submits)
    app[SPEC_LIMITS] = SpecLimits(
        max_replicas=settings.api.max_replicas,
        max_termination_grace_seconds=settings.backend.max_termination_grace_seconds,
    )
    app[service.ISSUER_CACHE] = {}
    closing.install(app)
    app.add_routes(service.routes)
    app.add_routes(jobs.routes)
    app.add_routes(batches.routes)
    app.add_routes(admin.routes)
    app.add_routes(cohorts.routes)
    app.add_routes(priority_classes.routes)
    app.add_routes(cluster.routes)
    app.add_routes(webhooks.routes)
    app.add_routes(metrics.routes)
    app.add_routes(usage.routes)
    app.add_routes(events.routes)
    app.add_routes(replicas.routes)
    dashboard.setup(app)
    return app


async def _finish_submits(app: web.Application) -> None:
    """After the last request: let batch statements still in flight (their requests may have
    been cancelled by the shutdown timeout) commit before the engine goes away."""
    await app[SUBMITS].close()


async def _notifier(app: web.Application) -> AsyncIterator[None]:
    """Run the coalescing NOTIFY sender for as long as the application runs."""
    task = asyncio.create_task(app[NOTIFIER].run(), name="notifier")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[NOTIFIER].flush()
