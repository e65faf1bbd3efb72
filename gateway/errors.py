"""The one exception tree of Muster.

Every error that crosses a layer boundary is one of these. Driver, Kubernetes and HTTP errors are
translated where they enter (``raise ... from exc``), and one middleware in ``gateway.api.problems``
maps this tree onto RFC 9457 problem responses::

    MusterError
    ├── ConfigError                  settings are missing or malformed (startup fails fast)
    ├── DatabaseUnavailable          PostgreSQL cannot be reached                        503
    ├── IssuerUnavailable            the token issuer's keys cannot be loaded            503
    └── ClientError                  the caller's request cannot be honoured              4xx
        ├── BadRequest               malformed syntax, e.g. JSON that does not parse      400
        ├── Unauthorized             no bearer token, or one that does not verify         401
        ├── Forbidden                the caller may not do this                           403
        ├── NotFound                 no such object (or not visible to the caller)        404
        ├── RequestTimeout           the body did not arrive within MUSTER_BODY_TIMEOUT   408
        ├── Conflict                 the object's state forbids the operation             409
        ├── PayloadTooLarge          the body is over the limit                           413
        ├── UnsupportedMediaType     the body is not JSON                                 415
        ├── ValidationFailed         the body parses but breaks the schema; lists every   422
        │                            problem with a JSON pointer
        └── TooManyRequests          a limit is reached; carries Retry-After              429

Invariant: ``ClientError.status`` is always a 4xx code, so client input never becomes a 500.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.domain.problems import FieldProblem

__all__ = [
    "BadRequest",
    "ClientError",
    "ConfigError",
    "Conflict",
    "DatabaseUnavailable",
    "FieldProblem",
    "Forbidden",
    "IssuerUnavailable",
    "MusterError",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
]


class MusterError(Exception):
    """The root of every error Muster raises on purpose."""


class ConfigError(MusterError):
    """A setting is missing or malformed; the process refuses to start."""


class DatabaseUnavailable(MusterError):
    """PostgreSQL could not be reached or refused the connection."""


class IssuerUnavailable(MusterError):
    """The token issuer's signing keys could not be loaded, so no token can be checked."""


class ClientError(MusterError):
    """The request cannot be honoured because of something the client sent."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ClientError):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ClientError):
    """Answered with ``WWW-Authenticate: Bearer`` (RFC 6750); ``error`` is its error code,
    ``invalid_token`` when a token was sent, None when none was."""

    status, slug, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(detail)
        self.error = error


class Forbidden(ClientError):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ClientError):
    status, slug, title = 404, "not-found", "Not found"


class RequestTimeout(ClientError):
    """Answered with ``Connection: close``: a client this slow does not get to send another."""

    status, slug, title = 408, "request-timeout", "Request timeout"


class Conflict(ClientError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ClientError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ClientError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(ClientError):
    status, slug, title = 422, "validation", "The request is invalid"

    def __init__(self, problems: Sequence[FieldProblem], detail: str | None = None) -> None:
        if not problems:
            raise ValueError("ValidationFailed needs at least one problem")
        count = len(problems)
        summary = problems[0].detail if count == 1 else f"{count} problems in the request"
        super().__init__(detail or summary)
        self.problems = tuple(problems)


class TooManyRequests(ClientError):
    status, slug, title = 429, "too-many-requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds
