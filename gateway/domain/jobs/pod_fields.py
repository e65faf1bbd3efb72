"""The production pod fields of a replica: volumes and mounts, env from secrets and config maps,
working directory, pull policy and secrets, service account, security contexts, init containers
and host namespaces, as a frozen value and as the keys of a stored replica document.

The Kubernetes-shaped parts (a volume, a mount, a ``valueFrom``, a security context, an init
container) are kept as canonical JSON text: ``gateway.domain.jobs.check_pod`` has checked each
against a small allow-list of keys, and the manifests copy them into the pod as they are. Canonical
text keeps a spec a hashable value and makes equal objects compare equal.

Invariants:
- ``PodFields()`` is a replica without any of these fields, and such a replica's document has
  none of their keys: documents stored before these fields existed read back unchanged, and
  documents of replicas without them are what they were.
- ``pod_fields_of(pod_fields_document(p)) == p`` for every ``PodFields`` the check returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["PodFields", "canonical", "parsed", "pod_fields_document", "pod_fields_of"]


def canonical(value: object) -> str:
    """``value`` as canonical JSON text: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parsed(text: str) -> Any:
    return json.loads(text)


@dataclass(frozen=True, kw_only=True, slots=True)
class PodFields:
    """What a replica's pods carry besides Muster's own fields; defaults: none of them."""

    #: Kubernetes Volume objects, in the order given.
    volumes: tuple[str, ...] = ()
    #: Kubernetes VolumeMount objects of the main container, in the order given.
    volume_mounts: tuple[str, ...] = ()
    #: (variable name, its ``valueFrom`` object), sorted by name.
    env_value_from: tuple[tuple[str, str], ...] = ()
    #: Kubernetes EnvFromSource objects, in the order given (``env`` wins over them).
    env_from: tuple[str, ...] = ()
    working_dir: str | None = None
    image_pull_policy: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    #: The pod's and the main container's securityContext objects.
    pod_security_context: str | None = None
    security_context: str | None = None
    #: Kubernetes Container objects run before the main one (restartPolicy Always: sidecars).
    init_containers: tuple[str, ...] = ()
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False

    @property
    def any(self) -> bool:
        return self != _NONE


_NONE = PodFields()
#: The document keys of the pod fields, one per field of ``PodFields``.
_KEYS = tuple(f.name for f in fields(PodFields))
_OBJECTS = ("pod_security_context", "security_context")
_OBJECT_LISTS = ("volumes", "volume_mounts", "env_from", "init_containers")


def pod_fields_document(p: PodFields) -> dict[str, Any]:
    """The keys of a replica document that ``p`` sets: only those that differ from the default."""
    document: dict[str, Any] = {}
    for f in fields(PodFields):
        value = getattr(p, f.name)
        if value == getattr(_NONE, f.name):
            continue
        if f.name in _OBJECT_LISTS:
            document[f.name] = [parsed(item) for item in value]
        elif f.name in _OBJECTS:
            document[f.name] = parsed(value)
        elif f.name == "env_value_from":
            document[f.name] = {name: parsed(text) for name, text in value}
        elif f.name == "image_pull_secrets":
            document[f.name] = list(value)
        else:
            document[f.name] = value
    return document


def pod_fields_of(document: Mapping[str, Any]) -> PodFields:
    """The pod fields of a stored replica document (absent keys: the defaults)."""
    if not any(key in document for key in _KEYS):
        return _NONE
    get = document.get
    return PodFields(
        volumes=tuple(canonical(v) for v in get("volumes", ())),
        volume_mounts=tuple(canonical(v) for v in get("volume_mounts", ())),
        env_value_from=tuple(
            (name, canonical(v)) for name, v in sorted(get("env_value_from", {}).items())
        ),
        env_from=tuple(canonical(v) for v in get("env_from", ())),
        working_dir=get("working_dir"),
        image_pull_policy=get("image_pull_policy"),
        service_account_name=get("service_account_name"),
        image_pull_secrets=tuple(get("image_pull_secrets", ())),
        pod_security_context=_maybe(get("pod_security_context")),
        security_context=_maybe(get("security_context")),
        init_containers=tuple(canonical(v) for v in get("init_containers", ())),
        host_network=bool(get("host_network", False)),
        host_pid=bool(get("host_pid", False)),
        host_ipc=bool(get("host_ipc", False)),
    )


def _maybe(value: object) -> str | None:
    return None if value is None else canonical(value)
