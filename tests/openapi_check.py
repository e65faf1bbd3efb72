"""Check every API response against the OpenAPI document.

``CheckedClient`` wraps aiohttp's test client. For each response it finds the route's path template
in the application's router, looks up the operation and the status code in the document, and
validates the content type and the JSON body against the declared schema. An undeclared status code
or a body that breaks its schema fails the test that received it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator, FormatChecker

from gateway.api.schema import openapi_document


@dataclass
class Response:
    status: int
    headers: Any
    body: Any
    text: str
    content_type: str


def _resolve(node: Any, document: dict[str, Any]) -> Any:
    while isinstance(node, dict) and "$ref" in node and len(node) == 1:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def response_schema_declared(template: str, method: str, status: int) -> None:
    operation = openapi_document()["paths"][template][method.lower()]
    assert str(status) in operation["responses"], f"{method} {template} does not declare {status}"


def response_schema(template: str, method: str, status: int, content_type: str) -> Any:
    document = dict(openapi_document())
    path = document["paths"].get(template)
    assert path is not None, f"{template} is not in the OpenAPI document"
    operation = path.get(method.lower())
    assert operation is not None, f"{method} {template} is not in the OpenAPI document"
    responses = operation["responses"]
    declared = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    assert declared is not None, (
        f"{method} {template} answered {status}, which the OpenAPI document does not declare"
    )
    declared = _resolve(declared, document)
    content = declared.get("content", {})
    assert content_type in content, (
        f"{method} {template} {status} answered {content_type}; declared: {sorted(content)}"
    )
    return content[content_type].get("schema", {})


def validate(template: str, method: str, response: Response) -> None:
    if response.status == 204:
        assert not response.text, "a 204 response must have no body"
        response_schema_declared(template, method, 204)
        return
    schema = response_schema(template, method, response.status, response.content_type)
    document = openapi_document()
    wrapped = {**schema, "components": document["components"]}
    Draft202012Validator(wrapped, format_checker=FormatChecker()).validate(response.body)


class CheckedClient:
    """The test client, sending ``token`` as a bearer token (none when it is None)."""

    def __init__(
        self, client: TestClient[web.Request, web.Application], token: str | None = None
    ) -> None:
        self.client = client
        self.app = client.app
        self.token = token

    def as_(self, token: str | None) -> CheckedClient:
        """The same client, sending another token (None: no Authorization header)."""
        return CheckedClient(self.client, token)

    def _template(self, method: str, path: str) -> str | None:
        """The path template of the route that serves ``method path``, if any does."""
        assert self.app is not None
        bare = path.split("?", 1)[0]
        for resource in self.app.router.resources():
            if not any(route.method in (method.upper(), "*") for route in resource):
                continue
            info = resource.get_info()
            pattern = info.get("pattern")  # dynamic resources: /v1/jobs/{id}
            if (pattern is not None and pattern.fullmatch(bare)) or info.get("path") == bare:
                return resource.canonical
        return None

    async def request(self, method: str, path: str, **kwargs: Any) -> Response:
        if self.token is not None:
            headers = dict(kwargs.pop("headers", None) or {})
            headers.setdefault("Authorization", f"Bearer {self.token}")
            kwargs["headers"] = headers
        async with self.client.request(method, path, **kwargs) as raw:
            text = await raw.text()
            content_type = raw.content_type
            body: Any = json.loads(text) if "json" in content_type and text else text
            response = Response(
                status=raw.status,
                headers=raw.headers,
                body=body,
                text=text,
                content_type=content_type,
            )
        template = self._template(method, path)
        if template is not None:
            validate(template, method, response)
        else:
            # No route matched: the answer must still be a problem document.
            assert response.content_type == "application/problem+json", response.text
        return response

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Response:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> Response:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> Response:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)
