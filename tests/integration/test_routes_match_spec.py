"""The router and the OpenAPI document describe the same API: no route without a contract, no
contract without a route, and the document itself is valid OpenAPI 3.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from openapi_spec_validator import validate
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.api.schema import openapi_document
from gateway.backends.nodes_file import StaticInventory
from gateway.db.engine import make_engine
from gateway.settings import BackendSettings, Settings

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
Operation = tuple[str, str]  # (method in upper case, path template)


@pytest.fixture
async def unconnected_engine() -> AsyncIterator[AsyncEngine]:
    """An engine that is never used: building the app needs one, routing does not connect."""
    engine = make_engine("postgresql://muster@127.0.0.1:1/unused", pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def app(tmp_path: Path, unconnected_engine: AsyncEngine) -> web.Application:
    settings = Settings(
        data_dir=tmp_path,
        backend=BackendSettings(kind="static", nodes_file=tmp_path / "nodes.yaml"),
    )
    return make_app(settings, unconnected_engine, StaticInventory(()))


def routed(app: web.Application) -> set[Operation]:
    """Every (method, template) the router serves, without the HEAD twins aiohttp adds to GETs,
    and without the dashboard's (/ui: HTML pages for browsers, not the API)."""
    operations: set[Operation] = set()
    for route in app.router.routes():
        template = route.resource.canonical if route.resource is not None else ""
        if template == "/ui" or template.startswith("/ui/"):
            continue
        operations.add((route.method.upper(), template))
    return {
        (method, template)
        for method, template in operations
        if method != "HEAD" or ("GET", template) not in operations
    }


def documented() -> set[Operation]:
    return {
        (method.upper(), path)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_every_route_is_in_the_openapi_document(app: web.Application) -> None:
    missing = routed(app) - documented()

    assert not missing, f"routes the OpenAPI document does not describe: {sorted(missing)}"


def test_every_documented_operation_has_a_route(app: web.Application) -> None:
    missing = documented() - routed(app)

    assert not missing, f"operations in the OpenAPI document without a route: {sorted(missing)}"


def test_routes_use_the_documents_path_parameter_names(app: web.Application) -> None:
    """``/v1/jobs/{id}`` in both, not ``{job_id}`` in one: the templates compare as strings."""
    templates = {template for _, template in routed(app)}

    assert templates == {path for _, path in documented()}


def test_the_openapi_document_is_valid() -> None:
    validate(dict(openapi_document()))


def test_every_operation_has_a_unique_operation_id() -> None:
    ids = [
        operation["operationId"]
        for item in openapi_document()["paths"].values()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]

    assert all(ids)
    assert len(ids) == len(set(ids))
