"""The typed answers of Muster's Python client (``gateway.client``, ``gateway.async_client``).

Each model is read from the API's JSON by ``from_json`` and keeps that JSON as ``raw``, so a
field the model does not name is never lost; the fields it names are typed. Models are frozen.

Invariant: ``Job.from_json(job_view_json).raw == job_view_json``; a state outside
``TERMINAL_STATES`` is one a job can still leave.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TERMINAL_STATES",
    "Job",
    "JobEvent",
    "JobRequest",
    "Replica",
    "SseReader",
    "SubmitResult",
]

#: States a job never leaves.
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, kw_only=True, slots=True)
class Replica:
    """One role of a job to submit: ``count`` pods of ``image`` running ``command``.
    ``resources`` are Kubernetes quantities by name (``{"cpu": "4", "memory": "16Gi",
    "gpu": 1, "rdma/hca": 1}``); ``extra`` carries any other field of the API's ReplicaSpec
    (volumes, node_selector, ...) as it is."""

    image: str
    count: int = 1
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, str | int | float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"count": self.count, "image": self.image}
        if self.command:
            document["command"] = list(self.command)
        if self.args:
            document["args"] = list(self.args)
        if self.env:
            document["env"] = dict(self.env)
        if self.resources:
            document["resources"] = dict(self.resources)
        return {**document, **self.extra}


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRequest:
    """A job to submit, as the API's JobSpec: ``replicas`` by role; ``extra`` carries any other
    field of JobSpec (run_policy, callback, priority_class, ...) as it is."""

    name: str
    replicas: Mapping[str, Replica]
    tenant: str | None = None
    framework: str = "generic"
    priority: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "name": self.name,
            "framework": self.framework,
            "replicas": {role: r.to_json() for role, r in self.replicas.items()},
        }
        if self.tenant is not None:
            document["tenant"] = self.tenant
        if self.priority is not None:
            document["priority"] = self.priority
        if self.labels:
            document["labels"] = dict(self.labels)
        return {**document, **self.extra}


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """A job as ``GET /v1/jobs/{id}`` answers it."""

    id: str
    name: str
    tenant: str
    state: str
    attempt: int
    priority: int
    reason: str | None = None
    message: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    finished_at: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            tenant=str(data["tenant"]),
            state=str(data["state"]),
            attempt=int(data.get("attempt", 0)),
            priority=int(data.get("priority", 0)),
            reason=data.get("reason"),
            message=data.get("message"),
            labels=dict(data.get("labels") or {}),
            spec=dict(data.get("spec") or {}),
            created_at=data.get("created_at"),
            finished_at=data.get("finished_at"),
            raw=dict(data),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SubmitResult:
    """A submit's answer: the job, and whether this call created it (False: an earlier call
    with the same Idempotency-Key did, and this is that job)."""

    job: Job
    created: bool
    idempotency_key: str


@dataclass(frozen=True, kw_only=True, slots=True)
class JobEvent:
    """One event of ``GET /v1/events``; ``stream_id`` is what a resumed stream starts after."""

    stream_id: str
    type: str
    job_id: str
    tenant: str
    from_state: str | None = None
    to_state: str | None = None
    reason: str | None = None
    message: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_sse(cls, stream_id: str, data: Mapping[str, Any]) -> JobEvent:
        return cls(
            stream_id=stream_id,
            type=str(data["type"]),
            job_id=str(data["job_id"]),
            tenant=str(data.get("tenant", "")),
            from_state=data.get("from_state"),
            to_state=data.get("to_state"),
            reason=data.get("reason"),
            message=data.get("message"),
            raw=dict(data),
        )


class SseReader:
    """Server-Sent Events read line by line, as either client receives them: ``line`` takes one
    line (its end of line included or not) and gives the event a blank line completes, if any.
    Comments and retry hints give nothing; a message without an id or JSON data is skipped."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def line(self, raw: bytes) -> JobEvent | None:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if text:
            if not text.startswith(":"):
                name, _, value = text.partition(":")
                self._fields[name] = self._fields.get(name, "") + value.removeprefix(" ")
            return None
        fields, self._fields = self._fields, {}
        stream_id, data = fields.get("id"), fields.get("data")
        if stream_id is None or data is None:
            return None
        try:
            return JobEvent.from_sse(stream_id, json.loads(data))
        except (ValueError, KeyError):
            return None
