"""Reading request bodies: size limit, deadline, media type and strict JSON.

Invariants: a body over the limit is refused before it is buffered whole (413); a body still
arriving when the gateway starts to read it must be complete within the application's
MUSTER_BODY_TIMEOUT (408, and the connection closes), so one that trickles in cannot hold a
connection, and a body that came with its headers costs no timer; only JSON media
types are accepted (415), with curl's default form type tolerated so ``curl -d @job.json`` works;
JSON that does not parse, has duplicate keys, NaN/Infinity or absurd nesting is a 400, and so
is a body cut short by the client going away (nobody reads that answer, but it is no server
error); text that PostgreSQL cannot store (NUL, unpaired surrogates) is a 422 naming the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import parse_qs

import yaml
from aiohttp import StreamReader, web

from gateway.api import schema
from gateway.api.context import SETTINGS
from gateway.domain.problems import FieldProblem, pointer
from gateway.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
)

JSON_TYPES = frozenset({"application/json", "application/x-www-form-urlencoded", "text/plain"})


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # in C; only an object with a repeated key has fewer entries than pairs
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(f"the JSON object has the key {key!r} twice")
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not valid JSON")


YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
MAX_YAML_ALIASES = 16  # enough for a shared command; few enough that no alias bomb expands


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that refuses more than a few aliases (a "billion laughs" document)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise BadRequest(f"the YAML body uses more than {MAX_YAML_ALIASES} aliases")
        return super().compose_node(parent, index)


async def read_document(request: web.Request, max_bytes: int) -> Any:
    """A JSON body, or a YAML one when the media type says so (Kubernetes manifests)."""
    if request.content_type not in YAML_TYPES:
        return await read_json(request, max_bytes)
    text = await _read_text(request, max_bytes)
    try:
        value = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise BadRequest(f"the body is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("the YAML body is nested too deeply") from exc
    try:
        # YAML has more types than JSON (dates, binary): keep what JSON can say, as JSON says it.
        value = json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"the YAML body cannot be expressed as JSON: {exc}") from exc
    _refuse_unstorable(value)
    return value


async def read_form(request: web.Request, max_bytes: int) -> dict[str, str]:
    """A small HTML form's body (application/x-www-form-urlencoded, at most ``max_bytes``, within
    the body deadline), each field's first value."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("send the form as application/x-www-form-urlencoded")
    text = await _read_text(request, max_bytes)
    try:
        fields = parse_qs(text, max_num_fields=20)
    except ValueError as exc:
        raise BadRequest(f"the form cannot be read: {exc}") from exc
    return {key: values[0] for key, values in fields.items()}


async def _read_text(request: web.Request, max_bytes: int) -> str:
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(
            f"the body has {request.content_length} bytes; the limit is {max_bytes}"
        )
    if request.content.is_eof():  # the whole body came with the headers: nothing to wait for
        raw = await _read_capped(request.content, max_bytes)
    else:
        timeout = request.app[SETTINGS].api.body_timeout
        try:
            async with asyncio.timeout(timeout):
                raw = await _read_capped(request.content, max_bytes)
        except TimeoutError as exc:
            raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from exc
    if not raw.strip():
        raise BadRequest("the request needs a body")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from exc


async def _read_capped(content: StreamReader, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the body is larger than the limit of {max_bytes} bytes")
            chunks.append(chunk)
    except ConnectionResetError as exc:  # aiohttp's "Connection lost": the client went away
        raise BadRequest("the connection closed before the whole body arrived") from exc
    return b"".join(chunks)


async def read_checked(request: web.Request, max_bytes: int, component: str) -> Any:
    """A JSON body that conforms to ``#/components/schemas/<component>`` (else 400, 413, 415,
    or 422 listing every violation)."""
    body = await read_json(request, max_bytes)
    problems = schema.check(component, body)
    if problems:
        raise ValidationFailed(problems)
    return body


async def read_json(request: web.Request, max_bytes: int) -> Any:
    media = request.content_type
    if request.body_exists and media and media not in JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(f"send JSON (application/json), not {media}")
    text = await _read_text(request, max_bytes)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise BadRequest("the JSON body is nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise BadRequest(f"the body is not usable JSON: {exc}") from exc
    # NUL and lone surrogates can only arrive as \u escapes: most bodies skip the walk.
    if "\\u" in text and ("\\u0000" in text or re.search(r"\\u[dD][89a-fA-F]", text)):
        _refuse_unstorable(value)
    return value


def _refuse_unstorable(value: Any) -> None:
    """PostgreSQL cannot store NUL characters or unpaired surrogates in text or JSONB: 422."""
    problems: list[FieldProblem] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if _unstorable(key):
                    problems.append(
                        FieldProblem(pointer=pointer(*path), detail=f"a key {_unstorable(key)}")
                    )
                stack.append(((*path, key), child))
        elif isinstance(item, list):
            stack.extend(((*path, index), child) for index, child in enumerate(item))
        elif isinstance(item, str) and _unstorable(item):
            problems.append(
                FieldProblem(pointer=pointer(*path), detail=f"the text {_unstorable(item)}")
            )
    if problems:
        raise ValidationFailed(sorted(problems, key=lambda p: p.pointer))


def _unstorable(text: str) -> str:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired UTF-16 surrogate, which is not valid Unicode"
    return ""
