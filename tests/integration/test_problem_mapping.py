"""A database that is unwell answers 503 with Retry-After through the real API, never 500.

The middleware maps ``gateway.errors`` only (``gateway.db.engine`` translates the driver's errors
where they enter, see ``test_database_errors.py``); anything else reaching it is a bug, logged,
and a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.problems import problems_middleware
from gateway.backends.nodes_file import StaticInventory
from gateway.db.engine import make_engine
from gateway.domain.scheduling.nodes import Node
from gateway.errors import DatabaseUnavailable
from gateway.settings import Settings
from tests import pg, tokens
from tests.integration.helpers import create_tenant, job_spec
from tests.openapi_check import CheckedClient, Response


def assert_unavailable(response: Response) -> None:
    assert response.status == 503, response.text
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == "5"
    assert response.body["type"] == "https://muster.dev/problems/unavailable"
    assert response.body["detail"] == "the database does not answer"


async def _answer(error: Exception) -> Response:
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[problems_middleware])
    app.router.add_post("/v1/jobs", handler)
    async with TestClient(TestServer(app)) as client, client.post("/v1/jobs") as raw:
        return Response(
            status=raw.status,
            headers=raw.headers,
            body=await raw.json(),
            text="",
            content_type=raw.content_type,
        )


async def test_database_unavailable_answers_503_with_retry_after() -> None:
    assert_unavailable(await _answer(DatabaseUnavailable("a statement failed: ...")))


async def test_an_error_outside_the_tree_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="gateway.api.problems"):
        response = await _answer(RuntimeError("a bug"))
    assert response.status == 500
    assert response.body["detail"] == "the server failed; the error has been logged"
    assert "a bug" not in str(response.body)
    assert any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs"),  # SQLAlchemy's road
        ("POST", "/v1/jobs"),  # a submit: the driver's road (SQLAlchemy's if grants are reloaded)
    ],
)
async def test_a_terminated_connection_answers_503_then_the_api_recovers(
    pg_server: pg.TestServer, database: str, api: CheckedClient, method: str, path: str
) -> None:
    """The PostgreSQL restart that used to answer 500: every pooled connection ends (as in a
    fast shutdown), and each request that meets one is a 503 until the pool has new ones."""
    await create_tenant(api)
    assert (await api.get("/v1/jobs")).status == 200
    assert await pg_server.terminate_backends(make_url(database).database or "") >= 1

    body = {"json": job_spec()} if method == "POST" else {}
    assert_unavailable(await api.request(method, path, **body))
    statuses = []
    for _ in range(6):  # at most one 503 per connection the pool held (5), then answers
        response = await api.get("/v1/jobs")
        statuses.append(response.status)
        if response.status == 200:
            break
        assert_unavailable(response)
    assert statuses[-1] == 200, statuses
    assert (await api.post("/v1/jobs", json=job_spec())).status == 201


@pytest.fixture(params=["nothing-listens", "starting-up", "too-many-clients"])
async def refusing_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Where a database refuses connections: a closed port, or a server that answers FATAL."""
    if request.param == "nothing-listens":
        yield pg.closed_port_url()
    elif request.param == "starting-up":
        async with pg.refusing_server("57P03", "the database system is starting up") as url:
            yield url
    else:
        async with pg.refusing_server("53300", "sorry, too many clients already") as url:
            yield url


@pytest.fixture
async def refusing_api(
    settings: Settings, nodes: tuple[Node, ...], refusing_url: str
) -> AsyncIterator[CheckedClient]:
    engine: AsyncEngine = make_engine(refusing_url, pool_size=2)
    app = make_app(settings, engine, StaticInventory(nodes))
    try:
        async with TestClient(TestServer(app)) as client:
            yield CheckedClient(client, tokens.admin_token(settings))
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/readyz"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs")],
)
async def test_a_database_that_refuses_connections_answers_503(
    refusing_api: CheckedClient, method: str, path: str
) -> None:
    body = {"json": job_spec()} if method == "POST" else {}
    assert_unavailable(await refusing_api.request(method, path, **body))
