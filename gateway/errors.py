"""The one exception tree of Muster.

Every error Muster raises on purpose is one of these, defined here and nowhere else. Driver,
Kubernetes and HTTP errors are translated where they enter (``raise ... from exc``): PostgreSQL's
in ``gateway.db.engine``, the Kubernetes API's in ``gateway.backends.kubernetes.errors``, the
token issuer's in ``gateway.auth``. One middleware in ``gateway.api.problems`` maps the tree onto
RFC 9457 problem responses (the status is on the right; anything else is a logged 500)::

    MusterError
    ├── ConfigError                  settings are missing or malformed (startup fails fast)
    ├── DatabaseUnavailable          PostgreSQL cannot be reached, or cannot serve now          503
    ├── IssuerUnavailable            the token issuer's keys cannot be loaded                   503
    ├── KubernetesError              a Kubernetes API call failed; .status, .reason, .message
    │   ├── KubernetesNotFound       404: no such object (deleting one that is gone succeeds)
    │   ├── KubernetesConflict       409: the object's state forbids the operation
    │   │   ├── KubernetesAlreadyExists  409 on a create: the name is taken
    │   │   └── KubernetesNameTaken  not from the server: the name is taken by another job's
    │   │                            object, which Muster leaves alone; names both jobs
    │   ├── KubernetesGone           410: a watch's resourceVersion is too old; list again
    │   ├── KubernetesForbidden      401, 403: the service account may not do this
    │   ├── KubernetesInvalid        400, 422: the server refused the object or the request
    │   └── KubernetesUnavailable    429, 5xx, connection errors and timeouts: try again later
    ├── AddressRefused               the SSRF guard will not connect a webhook to this address;
    │                                also an OSError, so aiohttp's connector reports it
    ├── ClientError                  the caller's request cannot be honoured                   4xx
    │   ├── BadRequest               malformed syntax, e.g. JSON that does not parse           400
    │   ├── Unauthorized             no bearer token, or one that is refused                   401
    │   │   └── InvalidToken         the token does not verify; the message says why
    │   ├── Forbidden                the caller may not do this                                403
    │   ├── NotFound                 no such object (or not visible to the caller)             404
    │   ├── RequestTimeout           the body did not arrive within MUSTER_BODY_TIMEOUT        408
    │   ├── Conflict                 the object's state forbids the operation                  409
    │   ├── PayloadTooLarge          the body is over the limit                                413
    │   ├── UnsupportedMediaType     the body is not JSON                                      415
    │   ├── ValidationFailed         the body parses but breaks the schema; lists every        422
    │   │                            problem with a JSON pointer
    │   └── TooManyRequests          a limit is reached; carries Retry-After                   429
    ├── BadDocument                  command line: the file to submit is not one JSON or    exit 1
    │                                YAML mapping
    ├── JobsRefused                  command line: the gateway refused some jobs of a batch  exit 1
    │                                (each refusal was printed as it came)
    ├── ProofRefused                 command line: a server's answer to the issuer-key
    │                                challenge is no proof (becomes Unproven)
    └── RequestFailed                command line: a request to the gateway did not succeed
        ├── ApiProblem               the gateway answered 4xx/5xx (RFC 9457 problem)        exit 1
        ├── Unreachable              no usable answer: refused, unknown host, timeout,      exit 2
        │                            broken connection, not JSON
        ├── WaitTimedOut             a client's wait(job) ran out of time; .job as last read
        └── Unproven                 the server at a loopback URL did not prove it holds    exit 2
                                     the local issuer's key, so no token of the command's
                                     own was sent

The Kubernetes errors are not ``ClientError``s: a 404 from Kubernetes is no 404 for Muster's own
callers, so they carry a ``Kubernetes`` prefix and reach the middleware's 500 if nobody handles
them. Two exceptions stay outside the tree by design: ``gateway.domain.resources.QuantityError``
(a ``ValueError``: the domain imports only the standard library, and every caller turns it into
a ``FieldProblem``, a ``ConfigError`` or a logged warning) and ``gateway.backends.supervisor``'s
``SandboxError`` (the replica supervisor runs as its own process and never raises into the
gateway). ``tests/unit/test_errors.py`` checks this drawing against the classes.

Invariants: ``ClientError.status`` is always a 4xx code, so client input never becomes a 500; a
``DatabaseUnavailable`` never stands for an integrity or data error of a statement (those reach the
repositories, which turn them into ``Conflict`` or ``ValidationFailed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.domain.problems import FieldProblem

__all__ = [
    "AddressRefused",
    "ApiProblem",
    "BadDocument",
    "BadRequest",
    "ClientError",
    "ConfigError",
    "Conflict",
    "DatabaseUnavailable",
    "FieldProblem",
    "Forbidden",
    "InvalidToken",
    "IssuerUnavailable",
    "JobsRefused",
    "KubernetesAlreadyExists",
    "KubernetesConflict",
    "KubernetesError",
    "KubernetesForbidden",
    "KubernetesInvalid",
    "KubernetesNameTaken",
    "KubernetesNotFound",
    "KubernetesUnavailable",
    "MusterError",
    "NotFound",
    "PayloadTooLarge",
    "ProofRefused",
    "RequestFailed",
    "RequestTimeout",
    "TooManyRequests",
    "Unauthorized",
    "Unproven",
    "Unreachable",
    "UnsupportedMediaType",
    "ValidationFailed",
]

#: What an SSRF refusal says wherever it is printed: which host, addresses and range were refused
#: would map Muster's own network for the tenant (``AddressRefused.detail`` keeps them).
SSRF_REFUSED = "refused by the SSRF guard"
SSRF_PRIVATE_ADDRESS = f"{SSRF_REFUSED}: private or reserved address"


class MusterError(Exception):
    """The root of every error Muster raises on purpose."""


class ConfigError(MusterError):
    """A setting is missing or malformed; the process refuses to start."""


class DatabaseUnavailable(MusterError):
    """PostgreSQL could not be reached, refused the connection, lost it, or cannot serve now."""


class IssuerUnavailable(MusterError):
    """The token issuer's signing keys could not be loaded (and none were loaded before), so no
    token can be checked; the token may well be good."""


# ---------------------------------------------------------------------------------------------
# The Kubernetes API (translated in gateway.backends.kubernetes.errors).


class KubernetesError(MusterError):
    """A Kubernetes API call failed. ``status`` is the HTTP status, None without a response."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class KubernetesNotFound(KubernetesError):
    pass


class KubernetesConflict(KubernetesError):
    pass


class KubernetesAlreadyExists(KubernetesConflict):
    pass


class KubernetesNameTaken(KubernetesConflict):
    """An object Muster wants to create exists already and belongs to another job (or to none)."""

    def __init__(
        self, *, kind: str, namespace: str, name: str, job_id: str, owner_job_id: str | None
    ) -> None:
        owner = f"job {owner_job_id}" if owner_job_id else "an object Muster did not create"
        super().__init__(
            f"{kind} {namespace}/{name} is needed by job {job_id} but belongs to {owner}; "
            "it is left as it is",
            status=409,
            reason="AlreadyExists",
        )
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.job_id = job_id
        self.owner_job_id = owner_job_id


class KubernetesGone(KubernetesError):
    """410 Gone: a watch's resourceVersion is older than the API server keeps; list again."""


class KubernetesForbidden(KubernetesError):
    pass


class KubernetesInvalid(KubernetesError):
    pass


class KubernetesUnavailable(KubernetesError):
    pass


# ---------------------------------------------------------------------------------------------
# Webhook delivery.


class AddressRefused(MusterError, OSError):
    """A connection the SSRF guard will not make.

    Also an ``OSError``: the guard refuses inside aiohttp's resolver and socket factory, and
    aiohttp turns only an ``OSError`` raised there into a ``ClientConnectorError`` whose
    ``os_error`` is this, the error the delivery loop records as a failed attempt. Its text is
    ``SSRF_PRIVATE_ADDRESS`` wherever it is printed (aiohttp's errors quote it); ``detail`` says
    which host, which addresses and why, for the server log.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(SSRF_PRIVATE_ADDRESS)
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# The API's 4xx.


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


class InvalidToken(Unauthorized):
    """The bearer token is not acceptable; the message says why (it goes to the client, with
    RFC 6750's ``invalid_token``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, error="invalid_token")


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


# ---------------------------------------------------------------------------------------------
# The command line's (gateway.client, gateway.cli_client, gateway.cli_token).


class BadDocument(MusterError):
    """The file to submit is not one JSON or YAML mapping."""


class JobsRefused(MusterError):
    """Some jobs of a batch were refused; each refusal was printed as it came."""


class ProofRefused(MusterError):
    """An answer is not a proof of holding our key; the message says why, for the user."""


class RequestFailed(MusterError):
    """A request to the gateway did not succeed."""


class ApiProblem(RequestFailed):
    """The gateway answered with an error; ``errors`` lists (pointer, detail) for a 422."""

    def __init__(
        self, status: int, title: str, detail: str, errors: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(f"{title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors


class Unreachable(RequestFailed):
    """No usable answer from the gateway at ``url``; ``refused`` when nothing listens there."""

    def __init__(self, url: str, reason: str, *, refused: bool = False) -> None:
        super().__init__(f"cannot reach Muster at {url}: {reason}")
        self.url = url
        self.reason = reason
        self.refused = refused


class WaitTimedOut(RequestFailed):
    """A client's ``wait`` ran out of time before the job ended; ``job`` is the job as last read
    (it goes on: nothing was cancelled)."""

    def __init__(self, job: Any, seconds: float) -> None:
        super().__init__(f"job {job.name} ({job.id}) is still {job.state} after {seconds:g} s")
        self.job = job
        self.seconds = seconds


class Unproven(RequestFailed):
    """The server at ``url`` did not prove it holds the local issuer's key; ``reason`` says how."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"the server at {url} did not prove it is this machine's Muster ({reason}), so no "
            "token was sent to it; pass --token or set MUSTER_TOKEN"
        )
        self.url = url
        self.reason = reason
