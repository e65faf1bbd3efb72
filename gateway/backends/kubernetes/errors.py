"""Where a Kubernetes API status becomes one of ``gateway.errors``' ``KubernetesError``s.

``gateway.backends.kubernetes.client.Kube`` catches kubernetes-asyncio's ``ApiException`` (and
error responses it reads itself) and raises ``from_status(...)`` from it; aiohttp's connection
errors and timeouts become ``KubernetesUnavailable`` there. The classes live in the one tree of
``gateway.errors``; this module holds only the mapping::

    404                              KubernetesNotFound
    409 (reason AlreadyExists, or    KubernetesAlreadyExists (a KubernetesConflict)
         any 409 answering a create)
    409 otherwise                    KubernetesConflict
    401, 403                         KubernetesForbidden
    400, 422                         KubernetesInvalid
    410                              KubernetesGone (a watch must list again)
    429, 5xx                         KubernetesUnavailable
    anything else                    KubernetesError
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import (
    KubernetesAlreadyExists,
    KubernetesConflict,
    KubernetesError,
    KubernetesForbidden,
    KubernetesGone,
    KubernetesInvalid,
    KubernetesNotFound,
    KubernetesUnavailable,
)

__all__ = ["from_status"]


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
        kind = KubernetesNotFound
    elif status == 409:
        taken = creating or reason == "AlreadyExists"
        kind = KubernetesAlreadyExists if taken else KubernetesConflict
    elif status == 410:
        kind = KubernetesGone
    elif status in (401, 403):
        kind = KubernetesForbidden
    elif status in (400, 422):
        kind = KubernetesInvalid
    elif status == 429 or status >= 500:
        kind = KubernetesUnavailable
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
