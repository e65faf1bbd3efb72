"""JSON log lines carry the context (request id, job id, tenant) bound for the current task."""

from __future__ import annotations

import asyncio
import json
import logging

from gateway.logs import ContextFilter, JsonFormatter, bind, log_context


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

    assert await asyncio.gather(serve("a"), serve("b")) == ["a", "b"]
    assert log_context.get() is None
