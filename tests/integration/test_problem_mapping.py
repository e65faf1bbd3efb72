"""Errors that mean "the database is unwell" answer 503 wherever they are raised, never 500."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.problems import problems_middleware


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        ConnectionRefusedError("connection refused"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_a_driver_connection_failure_answers_503_with_a_problem(error: Exception) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[problems_middleware])
    app.router.add_post("/v1/jobs", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/v1/jobs")
        assert response.status == 503
        assert response.content_type == "application/problem+json"
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["detail"] == "the database does not answer"
