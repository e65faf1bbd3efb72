"""What can go wrong talking to the Kubernetes API, as one exception tree.

Every error leaves ``gateway.backends.kubernetes`` as one of these: ``ApiException`` from
kubernetes-asyncio and aiohttp's connection errors are translated where the request is made
(``gateway.backends.kubernetes.client.Kube``), with ``raise ... from exc``::

    MusterError
    └── KubernetesError          any failure of a Kubernetes API call; .status, .reason, .message
        ├── NotFound             404: no such object (deleting one that is gone counts as success)
        ├── Conflict             409: the object's state forbids the operation
        │   ├── AlreadyExists    409 on a create (reason AlreadyExists): the name is taken
        │   └── NameTaken        not from the server: the name is taken by another job's object,
        │                        which Muster leaves alone; names both jobs
        ├── Forbidden            401, 403: the service account may not do this
        ├── Invalid              400, 422: the server refused the object or the request
        └── Unavailable          429, 5xx, connection errors and timeouts: try again later

These are not ``gateway.errors.ClientError``s: a 404 from Kubernetes is no 404 for Muster's own
callers. Import them module-qualified (``from gateway.backends.kubernetes import errors``) where
``gateway.errors`` names are in scope too.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import MusterError

__all__ = [
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Invalid",
    "KubernetesError",
    "NameTaken",
    "NotFound",
    "Unavailable",
    "from_status",
]


class KubernetesError(MusterError):
    """A Kubernetes API call failed. ``status`` is the HTTP status, None without a response."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason


class NotFound(KubernetesError):
    pass


class Conflict(KubernetesError):
    pass


class AlreadyExists(Conflict):
    pass


class NameTaken(Conflict):
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


class Forbidden(KubernetesError):
    pass


class Invalid(KubernetesError):
    pass


class Unavailable(KubernetesError):
    pass


def from_status(
    status: int, body: str | bytes | None, *, what: str, creating: bool = False
) -> KubernetesError:
    """The error for an HTTP error response; ``body`` is a Kubernetes ``Status`` when it parses.

    A 409 answering a create means the name is taken, whatever the reason says (the API server
    says ``AlreadyExists``; emulators do not always).
    """
    reason, message = _status_fields(body)
    text = f"{what}: {status} {reason or ''}".rstrip() + (f": {message}" if message else "")
    kind: type[KubernetesError]
    if status == 404:
        kind = NotFound
    elif status == 409:
        kind = AlreadyExists if creating or reason == "AlreadyExists" else Conflict
    elif status in (401, 403):
        kind = Forbidden
    elif status in (400, 422):
        kind = Invalid
    elif status == 429 or status >= 500:
        kind = Unavailable
    else:
        kind = KubernetesError
    return kind(text, status=status, reason=reason)


def _status_fields(body: str | bytes | None) -> tuple[str | None, str | None]:
    if not body:
        return None, None
    try:
        status: Any = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return None, text[:500]
    if not isinstance(status, dict):
        return None, None
    reason, message = status.get("reason"), status.get("message")
    return (
        reason if isinstance(reason, str) else None,
        message[:500] if isinstance(message, str) else None,
    )
