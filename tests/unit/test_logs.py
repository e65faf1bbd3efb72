"""Log lines carry the context (request id, job id, tenant) bound for the current task; and
whatever text a client put in a record, each record is one line and holds no token."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)

from gateway.logs import (
    REDACTED,
    TRACEBACK_INDENT,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind,
    escape,
    log_context,
)


def _line(message: str, **extra: str) -> dict[str, object]:
    record = logging.LogRecord("gateway.test", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    assert ContextFilter().filter(record)
    parsed: dict[str, object] = json.loads(JsonFormatter().format(record))
    return parsed


def test_a_line_without_context_has_only_the_basics() -> None:
    assert set(_line("hello")) == {"time", "level", "logger", "message"}


def test_bound_context_lands_on_the_record() -> None:
    token = log_context.set({"request_id": "r1"})
    try:
        bind(job_id="j1", tenant="search")
        line = _line("hello")
    finally:
        log_context.reset(token)
    assert line["request_id"] == "r1"
    assert line["job_id"] == "j1"
    assert line["tenant"] == "search"
    assert line["level"] == "info"


def test_explicit_extra_wins_over_the_context() -> None:
    token = log_context.set({"request_id": "r1", "tenant": "search"})
    try:
        line = _line("hello", tenant="ads")
    finally:
        log_context.reset(token)
    assert line["tenant"] == "ads"


async def test_each_task_has_its_own_context() -> None:
    async def serve(request_id: str) -> object:
        log_context.set({"request_id": request_id})
        await asyncio.sleep(0)
        return _line("x")["request_id"]

    assert list(await asyncio.gather(serve("a"), serve("b"))) == ["a", "b"]
    assert log_context.get() is None


# -- hostile text: one record is one line, and no token is written --------------------------------

# A compact JWS as a client sends it: header.payload.signature (base64url).
JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0"
    ".eyJzdWIiOiJhbGljZUBleGFtcGxlLmNvbSIsImF1ZCI6Im11c3RlciJ9"
    ".MEUCIQDkL3bVq0xg2Xkq8sS1c1YbqS9Q4C2ZxFh1n0GqD0mBkAIgW7oP"
)
FORGED = "2026-01-01 00:00:00,000 INFO gateway.api.access: forged"
FORMATTERS: dict[str, Callable[[], logging.Formatter]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
}


def _record(
    message: str,
    *args: object,
    name: str = "gateway.test",
    exc: BaseException | None = None,
    **extra: object,
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def _assert_no_token(output: str) -> None:
    assert "eyJ" not in output
    for segment in JWT.split("."):
        assert segment[3:23] not in output


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        (f"/v1/jobs/x\n{FORGED}", f"/v1/jobs/x\\n{FORGED}"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("x\u2028y\u2029z\x85w", "x\\u2028y\\u2029z\\x85w"),
        ("\x00\x0b\x0c\x1c\x1d\x1e\x7f\x9b", "\\x00\\x0b\\x0c\\x1c\\x1d\\x1e\\x7f\\x9b"),
        ("abc\u202edcba\u2066", "abc\\u202edcba\\u2066"),
        ("lone \udcff surrogate", "lone \\udcff surrogate"),
        ("café 数据 stays", "café 数据 stays"),
    ],
)
@pytest.mark.parametrize("fmt", FORMATTERS)
def test_control_characters_are_escaped_wherever_a_record_carries_them(
    fmt: str, hostile: str, shown: str
) -> None:
    record = _record("serving %s", hostile, name=f"gateway.{hostile}", tenant=hostile)

    output = FORMATTERS[fmt]().format(record)

    assert len(output.splitlines()) == 1  # str.splitlines breaks at every Unicode line boundary
    if fmt == "json":
        assert output.isascii()
        entry = json.loads(output)
        assert entry["message"] == f"serving {shown}"
        assert entry["tenant"] == shown
        assert entry["logger"] == f"gateway.{shown}"
    else:
        assert output.endswith(f" WARNING gateway.{shown}: serving {shown}")


def test_the_text_format_escapes_context_fields_it_is_configured_to_show() -> None:
    formatter = TextFormatter("%(request_id)s %(tenant)s %(job_id)s: %(message)s")
    record = _record("hello", request_id="r1", tenant=f"t\n{FORGED}", job_id="j\x1b")

    assert formatter.format(record) == f"r1 t\\n{FORGED} j\\x1b: hello"


@pytest.mark.parametrize("fmt", FORMATTERS)
def test_a_traceback_keeps_its_lines_but_none_of_them_starts_a_record(fmt: str) -> None:
    try:
        raise ValueError(f"no job named x\n{FORGED}\r\x1b[2K\u2028")
    except ValueError as exc:
        record = _record("failed", exc=exc)

    output = FORMATTERS[fmt]().format(record)

    if fmt == "json":
        assert len(output.splitlines()) == 1
        error = json.loads(output)["error"]
        assert error.startswith("Traceback (most recent call last):")
        assert f"ValueError: no job named x\n{FORGED}\\r\\x1b[2K\\u2028" in error
        return
    first, *rest = output.split("\n")
    assert output.splitlines() == [first, *rest]  # no line break but \n
    assert first.endswith(" WARNING gateway.test: failed")
    assert rest[0] == f"{TRACEBACK_INDENT}Traceback (most recent call last):"
    assert all(line.startswith(TRACEBACK_INDENT) for line in rest)
    assert f"{TRACEBACK_INDENT}{FORGED}\\r\\x1b[2K\\u2028" in rest


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {JWT}",
        f"authorization: bearer\t{JWT}",
        f"token {JWT}",
        f"?access_token={JWT}&x=1",
        JWT[:60],  # cut short, as aiohttp's 100-byte quote cuts it
        repr(f"Bearer {JWT}\x01".encode()),
        JWT.replace("-", "+").replace("_", "/") + "==",  # plain base64
    ],
)
@pytest.mark.parametrize("fmt", FORMATTERS)
def test_no_token_is_written_in_a_message_a_context_value_or_a_traceback(
    fmt: str, text: str
) -> None:
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        record = _record("got %s", text, exc=exc, tenant=text)

    output = FORMATTERS[fmt]().format(record)

    _assert_no_token(output)
    assert REDACTED in output


# What aiohttp's parsers raise on malformed requests: each quotes the request's bytes.
MALFORMED: list[tuple[HttpProcessingError, str]] = [
    (
        LineTooLong(f"Bearer {JWT}".encode()[:100] + b"...", 8190),
        "LineTooLong: a request line or header field over 8190 bytes",
    ),
    (
        BadHttpMessage(
            f"Invalid header value char:\n\n  {f'Authorization: Bearer {JWT}'.encode()!r}\n  ^"
        ),
        "BadHttpMessage: Invalid header value char",
    ),
    (InvalidHeader(f"Bearer {JWT}\x00".encode()), "InvalidHeader: an invalid header"),
    (BadStatusLine(f"GET /\x1b[2J\n{FORGED} HTTP/1.1"), "BadStatusLine: a bad request line"),
    (
        BadHttpMethod(error="Invalid method encountered:\n\n  b'G\\x01T / HTTP/1.1'\n   ^"),
        "BadHttpMethod: Invalid method encountered",
    ),
    (InvalidURLError(f"x?t={JWT}"), "InvalidURLError: an invalid request target"),
    (BadHttpMessage("Too many headers received"), "BadHttpMessage: Too many headers received"),
]


@pytest.mark.parametrize(("exc", "summary"), MALFORMED)
@pytest.mark.parametrize("fmt", FORMATTERS)
def test_a_malformed_request_is_logged_without_the_bytes_aiohttp_quotes(
    fmt: str, exc: HttpProcessingError, summary: str
) -> None:
    record = _record("Error handling request from %s", "127.0.0.1", name="aiohttp.server", exc=exc)

    output = FORMATTERS[fmt]().format(record)

    assert len(output.splitlines()) == 1
    _assert_no_token(output)
    assert "Traceback" not in output
    if fmt == "json":
        assert json.loads(output)["error"] == summary
    else:
        assert output.endswith(f"Error handling request from 127.0.0.1 ({summary})")


@pytest.mark.parametrize("fmt", FORMATTERS)
def test_formatting_leaves_the_record_as_other_handlers_see_it(fmt: str) -> None:
    record = _record("serving %s", "a\nb", tenant="t\n")

    FORMATTERS[fmt]().format(record)

    assert (record.getMessage(), getattr(record, "tenant", None)) == ("serving a\nb", "t\n")
    assert record.name == "gateway.test"


def test_escape_leaves_ordinary_text_alone() -> None:
    text = "GET /v1/jobs/3f2b8c1e -> 200 in 1.2 ms (tenant search, café)"
    assert escape(text) == text
