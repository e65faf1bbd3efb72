"""The job spec: what a client submits, checked for meaning and turned into typed values.

The JSON Schema in ``openapi/openapi.yaml`` checks the shape of a body (types, required and unknown
fields). This module checks what a schema cannot say well: Kubernetes quantities, GPU fractions,
which roles a framework allows, DNS names, the replica cap, and the names Muster itself owns.

Invariants:
- ``check_job_spec`` never raises on any JSON value; it returns every problem it finds, each with a
  JSON pointer, and returns a ``JobSpec`` only when there is none.
- A ``JobSpec`` is complete: every default is filled in, every amount is an integer in Muster's
  units (see ``gateway.domain.resources``), and replicas are in a stable order (by role name).
- ``to_document`` of a ``JobSpec`` is a spec that ``check_job_spec`` accepts and maps to an equal
  ``JobSpec``: what is stored can always be read back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeGuard, TypeVar

from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.resources import (
    GPU_SHARES_PER_DEVICE,
    QuantityError,
    cached_cpu_millis,
    cached_gpu_shares,
    cached_memory_bytes,
    format_cpu,
    format_gpu,
    format_memory,
)


def _is_mapping(value: object) -> TypeGuard[Mapping[Any, Any]]:
    # Parsed JSON is made of dicts: skip the slower ABC check for them.
    return type(value) is dict or isinstance(value, Mapping)


# DNS-1035 labels: Service names must start with a letter, so job and role names must too.
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
IMAGE = re.compile(r"^\S+$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(
    rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}$"
)
LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")

# Variables that carry the gang's topology or device plan. Muster writes them; a client may not.
RESERVED_ENV = frozenset(
    {
        "TF_CONFIG",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
    }
)
RESERVED_ENV_PREFIXES = ("PET_", "MUSTER_")
MUSTER_LABEL_PREFIXES = ("muster.dev/", "training.kubeflow.org/")

_E = TypeVar("_E", bound=StrEnum)

DEFAULT_CPU = "1"
DEFAULT_MEMORY = "1Gi"
DEFAULT_PORT = 2222
PRIORITY_RANGE = (-1000, 1000)


class Framework(StrEnum):
    TENSORFLOW = "tensorflow"
    PYTORCH = "pytorch"
    GENERIC = "generic"


class RestartPolicy(StrEnum):
    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    ALWAYS = "Always"
    EXIT_CODE = "ExitCode"


class CleanPodPolicy(StrEnum):
    RUNNING = "Running"
    ALL = "All"
    NONE = "None"


class SuccessPolicy(StrEnum):
    DEFAULT = "Default"
    ALL_WORKERS = "AllWorkers"


class CallbackEvent(StrEnum):
    ADMITTED = "job.admitted"
    RUNNING = "job.running"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    REQUEUED = "job.requeued"


DEFAULT_CALLBACK_EVENTS = (CallbackEvent.SUCCEEDED, CallbackEvent.FAILED, CallbackEvent.CANCELLED)

TENSORFLOW_ROLES = frozenset({"chief", "master", "worker", "ps", "evaluator"})
PYTORCH_ROLES = frozenset({"master", "worker"})
SINGLETON_ROLES = frozenset({"chief", "master", "evaluator"})


@dataclass(frozen=True, kw_only=True, slots=True)
class SpecLimits:
    """Caps that come from settings, passed in so the core reads no configuration itself."""

    max_replicas: int = 512
    max_priority: int = PRIORITY_RANGE[1]


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    cpu_millis: int
    memory_bytes: int
    gpu_shares: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicaSpec:
    role: str
    count: int
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    resources: Resources
    exclusive_cpus: bool = False
    restart_policy: RestartPolicy = RestartPolicy.NEVER
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    port: int = DEFAULT_PORT


@dataclass(frozen=True, kw_only=True, slots=True)
class RunPolicy:
    backoff_limit: int = 3
    active_deadline_seconds: int | None = None
    ready_timeout_seconds: int = 600
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.RUNNING
    success_policy: SuccessPolicy = SuccessPolicy.DEFAULT


@dataclass(frozen=True, kw_only=True, slots=True)
class Callback:
    url: str
    events: tuple[CallbackEvent, ...] = DEFAULT_CALLBACK_EVENTS


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    name: str
    tenant: str
    framework: Framework
    priority: int = 0
    replicas: tuple[ReplicaSpec, ...]
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    callback: Callback | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def pod_count(self) -> int:
        return sum(replica.count for replica in self.replicas)

    def replica(self, role: str) -> ReplicaSpec | None:
        return next((r for r in self.replicas if r.role == role), None)

    def total(self) -> Resources:
        """What the whole gang asks for, summed over every pod."""
        return Resources(
            cpu_millis=sum(r.resources.cpu_millis * r.count for r in self.replicas),
            memory_bytes=sum(r.resources.memory_bytes * r.count for r in self.replicas),
            gpu_shares=sum(r.resources.gpu_shares * r.count for r in self.replicas),
        )


class _Checker:
    """Collects problems while walking a spec; every ``_check_*`` tolerates any JSON value."""

    def __init__(self, limits: SpecLimits) -> None:
        self.limits = limits
        self.problems: list[FieldProblem] = []

    def add(self, where: str, detail: str) -> None:
        self.problems.append(FieldProblem(pointer=where, detail=detail))


def check_job_spec(raw: object, limits: SpecLimits | None = None) -> JobSpec | list[FieldProblem]:
    """Check a spec's meaning. Returns the typed spec, or every problem found (never both)."""
    checker = _Checker(limits or SpecLimits())
    if not _is_mapping(raw):
        return [FieldProblem(pointer="", detail="the job spec must be a JSON object")]
    spec = _check_spec(checker, raw)
    if checker.problems or spec is None:
        return checker.problems or [FieldProblem(pointer="", detail="the job spec is invalid")]
    return spec


def _check_spec(c: _Checker, raw: Mapping[str, Any]) -> JobSpec | None:
    name = raw.get("name")
    if isinstance(name, str) and not DNS_1035_LABEL.fullmatch(name):
        c.add(
            pointer("name"),
            f"{name!r} is not a DNS-1035 label: lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters",
        )
    tenant = raw.get("tenant")
    if isinstance(tenant, str) and not DNS_1123_LABEL.fullmatch(tenant):
        c.add(pointer("tenant"), f"{tenant!r} is not a DNS-1123 label")
    framework_raw = raw.get("framework", Framework.GENERIC.value)
    framework: Framework | None = None
    if isinstance(framework_raw, str):
        try:
            framework = Framework(framework_raw)
        except ValueError:
            c.add(
                pointer("framework"),
                f"unknown framework {framework_raw!r}; use one of "
                + ", ".join(f.value for f in Framework),
            )
    priority = raw.get("priority", 0)
    low, high = PRIORITY_RANGE
    if isinstance(priority, int) and not isinstance(priority, bool) and not low <= priority <= high:
        c.add(pointer("priority"), f"must be between {low} and {high}")
    replicas = _check_replicas(c, raw.get("replicas"), framework)
    run_policy = _check_run_policy(c, raw.get("run_policy", {}))
    callback = _check_callback(c, raw.get("callback"))
    labels = _check_labels(c, raw.get("labels", {}), ("labels",))
    if c.problems or framework is None or replicas is None or run_policy is None:
        return None
    if not isinstance(name, str) or not isinstance(tenant, str) or not isinstance(priority, int):
        return None
    if labels is None:
        return None
    return JobSpec(
        name=name,
        tenant=tenant,
        framework=framework,
        priority=priority,
        replicas=replicas,
        run_policy=run_policy,
        callback=callback,
        labels=labels,
    )


def _check_replicas(
    c: _Checker, raw: object, framework: Framework | None
) -> tuple[ReplicaSpec, ...] | None:
    if not _is_mapping(raw):
        return None
    if not raw:
        c.add(pointer("replicas"), "a job needs at least one replica")
        return None
    result: list[ReplicaSpec] = []
    total = 0
    for role in sorted(raw):
        where = ("replicas", role)
        if not DNS_1035_LABEL.fullmatch(role) or len(role) > 20:
            c.add(
                pointer(*where), f"role {role!r} is not a DNS-1035 label of at most 20 characters"
            )
        elif framework is Framework.TENSORFLOW and role not in TENSORFLOW_ROLES:
            c.add(
                pointer(*where),
                f"role {role!r} is not a TensorFlow role; use "
                + ", ".join(sorted(TENSORFLOW_ROLES)),
            )
        elif framework is Framework.PYTORCH and role not in PYTORCH_ROLES:
            c.add(pointer(*where), f"role {role!r} is not a PyTorch role; use master, worker")
        before = len(c.problems)
        replica = _check_replica(c, role, raw[role], where)
        if replica is None and len(c.problems) == before:
            # Never drop a replica silently: a spec missing one would still be accepted.
            c.add(pointer(*where), "this replica spec is invalid")
        if replica is not None:
            total += replica.count
            typed = framework in (Framework.TENSORFLOW, Framework.PYTORCH)
            if typed and role in SINGLETON_ROLES and replica.count != 1:
                c.add(pointer(*where, "count"), f"a job has exactly one {role}")
            result.append(replica)
    if total > c.limits.max_replicas:
        c.add(
            pointer("replicas"),
            f"the job has {total} pods; at most {c.limits.max_replicas} are allowed",
        )
    roles = set(raw)
    if framework is Framework.TENSORFLOW:
        if not roles & {"chief", "master", "worker"}:
            c.add(pointer("replicas"), "a TensorFlow job needs a chief (or master) or a worker")
        if {"chief", "master"} <= roles:
            c.add(
                pointer("replicas", "master"), "a TensorFlow job has a chief or a master, not both"
            )
    if framework is Framework.PYTORCH and "master" not in roles:
        c.add(pointer("replicas"), "a PyTorch job needs a master (its rank 0)")
    return tuple(result)


def _check_replica(
    c: _Checker, role: str, raw: object, where: tuple[str, ...]
) -> ReplicaSpec | None:
    if not _is_mapping(raw):
        return None
    ok = True
    for key in ("count", "port"):
        if isinstance(raw.get(key), float):
            c.add(pointer(*where, key), "must be a whole number written without a fraction")
            ok = False
    count = raw.get("count", 1)
    if isinstance(count, int) and not isinstance(count, bool):
        if count < 1:
            c.add(pointer(*where, "count"), "must be at least 1")
            ok = False
        elif count > c.limits.max_replicas:
            c.add(pointer(*where, "count"), f"must be at most {c.limits.max_replicas}")
            ok = False
    else:
        ok = False
    image = raw.get("image")
    if isinstance(image, str):
        if not IMAGE.fullmatch(image):
            c.add(pointer(*where, "image"), "must be a container image reference without spaces")
            ok = False
    else:
        ok = False
    resources = _check_resources(c, raw.get("resources", {}), (*where, "resources"))
    exclusive = raw.get("exclusive_cpus", False)
    if exclusive is True and resources is not None and resources.cpu_millis % 1000:
        c.add(
            pointer(*where, "exclusive_cpus"),
            f"exclusive CPUs need a whole number of CPUs, not {format_cpu(resources.cpu_millis)}",
        )
        ok = False
    env = _check_env(c, raw.get("env", {}), (*where, "env"))
    restart = raw.get("restart_policy", RestartPolicy.NEVER.value)
    restart_policy = _enum(c, RestartPolicy, restart, (*where, "restart_policy"))
    selector = _check_labels(
        c, raw.get("node_selector", {}), (*where, "node_selector"), allow_reserved=True
    )
    tolerations = _check_tolerations(c, raw.get("tolerations", []), (*where, "tolerations"))
    port = raw.get("port", DEFAULT_PORT)
    command, args = raw.get("command", []), raw.get("args", [])
    if not (
        ok
        and resources
        and env is not None
        and restart_policy
        and selector is not None
        and tolerations is not None
        and isinstance(port, int)
        and isinstance(count, int)
        and isinstance(image, str)
        and _strings(command)
        and _strings(args)
        and isinstance(exclusive, bool)
    ):
        return None
    return ReplicaSpec(
        role=role,
        count=count,
        image=image,
        command=tuple(command),
        args=tuple(args),
        env=env,
        resources=resources,
        exclusive_cpus=exclusive,
        restart_policy=restart_policy,
        node_selector=selector,
        tolerations=tolerations,
        port=port,
    )


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_resources(c: _Checker, raw: object, where: tuple[str, ...]) -> Resources | None:
    if not _is_mapping(raw):
        return None
    values: dict[str, int] = {}
    parsers = (
        ("cpu", cached_cpu_millis, DEFAULT_CPU),
        ("memory", cached_memory_bytes, DEFAULT_MEMORY),
        ("gpu", cached_gpu_shares, 0),
    )
    for key, parse, default in parsers:
        value = raw.get(key, default)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            continue  # the schema reports the wrong type
        try:
            values[key] = parse(value)
        except QuantityError as exc:
            c.add(pointer(*where, key), str(exc))
    if len(values) != 3:
        return None
    if values["cpu"] == 0:
        c.add(pointer(*where, "cpu"), "must be more than 0")
        return None
    if values["memory"] == 0:
        c.add(pointer(*where, "memory"), "must be more than 0")
        return None
    return Resources(
        cpu_millis=values["cpu"], memory_bytes=values["memory"], gpu_shares=values["gpu"]
    )


def _check_env(
    c: _Checker, raw: object, where: tuple[str, ...]
) -> tuple[tuple[str, str], ...] | None:
    if not _is_mapping(raw):
        return None
    ok = True
    for name in sorted(raw):
        if not ENV_NAME.fullmatch(name):
            c.add(pointer(*where, name), f"{name!r} is not a valid environment variable name")
            ok = False
        elif name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
            c.add(pointer(*where, name), f"{name} is set by Muster and cannot be overridden")
            ok = False
        elif not isinstance(raw[name], str):
            ok = False
    return tuple((k, raw[k]) for k in sorted(raw)) if ok else None


def _check_labels(
    c: _Checker, raw: object, where: tuple[str, ...], *, allow_reserved: bool = False
) -> tuple[tuple[str, str], ...] | None:
    if not _is_mapping(raw):
        return None
    ok = True
    for key in sorted(raw):
        value = raw[key]
        if not LABEL_KEY.fullmatch(key) or len(key) > 253:
            c.add(pointer(*where, key), f"{key!r} is not a valid Kubernetes label key")
            ok = False
        elif not allow_reserved and key.startswith(MUSTER_LABEL_PREFIXES):
            c.add(pointer(*where, key), f"labels under {key.split('/')[0]}/ are set by Muster")
            ok = False
        if not isinstance(value, str):
            ok = False
        elif not LABEL_VALUE.fullmatch(value):
            c.add(pointer(*where, key), f"{value!r} is not a valid Kubernetes label value")
            ok = False
    return tuple((k, raw[k]) for k in sorted(raw)) if ok else None


def _check_tolerations(
    c: _Checker, raw: object, where: tuple[str, ...]
) -> tuple[Toleration, ...] | None:
    if not isinstance(raw, list):
        return None
    result: list[Toleration] = []
    for index, item in enumerate(raw):
        if not _is_mapping(item):
            return None
        operator = item.get("operator", "Equal")
        if operator == "Exists" and item.get("value") not in (None, ""):
            c.add(pointer(*where, index, "value"), "a toleration with operator Exists has no value")
            return None
        if operator == "Equal" and not item.get("key"):
            c.add(pointer(*where, index, "key"), "a toleration with operator Equal needs a key")
            return None
        result.append(
            Toleration(
                key=item.get("key"),
                operator=operator,
                value=item.get("value"),
                effect=item.get("effect"),
                toleration_seconds=item.get("tolerationSeconds"),
            )
        )
    return tuple(result)


def _check_run_policy(c: _Checker, raw: object) -> RunPolicy | None:
    if not _is_mapping(raw):
        return None
    where = ("run_policy",)
    clean = _enum(
        c, CleanPodPolicy, raw.get("clean_pod_policy", "Running"), (*where, "clean_pod_policy")
    )
    success = _enum(
        c, SuccessPolicy, raw.get("success_policy", "Default"), (*where, "success_policy")
    )
    backoff = raw.get("backoff_limit", 3)
    deadline = raw.get("active_deadline_seconds")
    ready = raw.get("ready_timeout_seconds", 600)
    if not (
        clean
        and success
        and isinstance(backoff, int)
        and isinstance(ready, int)
        and (deadline is None or isinstance(deadline, int))
    ):
        return None
    return RunPolicy(
        backoff_limit=backoff,
        active_deadline_seconds=deadline,
        ready_timeout_seconds=ready,
        clean_pod_policy=clean,
        success_policy=success,
    )


def _check_callback(c: _Checker, raw: object) -> Callback | None:
    if not _is_mapping(raw):
        return None
    url = raw.get("url")
    events_raw = raw.get("events", [e.value for e in DEFAULT_CALLBACK_EVENTS])
    if not isinstance(url, str) or not isinstance(events_raw, list):
        return None
    if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s]*)?", url, flags=re.IGNORECASE):
        c.add(pointer("callback", "url"), "must be an absolute http(s) URL without credentials")
        return None
    events: list[CallbackEvent] = []
    for index, event in enumerate(events_raw):
        value = _enum(c, CallbackEvent, event, ("callback", "events", index))
        if value is None:
            return None
        if value not in events:
            events.append(value)
    return Callback(url=url, events=tuple(events))


def _enum(c: _Checker, kind: type[_E], value: object, where: Sequence[str | int]) -> _E | None:
    if not isinstance(value, str):
        return None
    try:
        return kind(value)
    except ValueError:
        c.add(pointer(*where), f"{value!r} is not one of " + ", ".join(m.value for m in kind))
        return None


def to_document(spec: JobSpec) -> dict[str, Any]:
    """The spec as JSON with every default filled in: what Muster stores and returns."""
    return {
        "name": spec.name,
        "tenant": spec.tenant,
        "framework": spec.framework.value,
        "priority": spec.priority,
        "replicas": {r.role: _replica_document(r) for r in spec.replicas},
        "run_policy": {
            "backoff_limit": spec.run_policy.backoff_limit,
            "active_deadline_seconds": spec.run_policy.active_deadline_seconds,
            "ready_timeout_seconds": spec.run_policy.ready_timeout_seconds,
            "clean_pod_policy": spec.run_policy.clean_pod_policy.value,
            "success_policy": spec.run_policy.success_policy.value,
        },
        "callback": None
        if spec.callback is None
        else {"url": spec.callback.url, "events": [e.value for e in spec.callback.events]},
        "labels": dict(spec.labels),
    }


def _replica_document(r: ReplicaSpec) -> dict[str, Any]:
    return {
        "count": r.count,
        "image": r.image,
        "command": list(r.command),
        "args": list(r.args),
        "env": dict(r.env),
        "resources": {
            "cpu": format_cpu(r.resources.cpu_millis),
            "memory": format_memory(r.resources.memory_bytes),
            "gpu": format_gpu(r.resources.gpu_shares),
        },
        "exclusive_cpus": r.exclusive_cpus,
        "restart_policy": r.restart_policy.value,
        "node_selector": dict(r.node_selector),
        "tolerations": [_toleration_document(t) for t in r.tolerations],
        "port": r.port,
    }


def _toleration_document(t: Toleration) -> dict[str, Any]:
    doc: dict[str, Any] = {"operator": t.operator}
    for key, value in (
        ("key", t.key),
        ("value", t.value),
        ("effect", t.effect),
        ("tolerationSeconds", t.toleration_seconds),
    ):
        if value is not None:
            doc[key] = value
    return doc


def whole_devices(shares: int) -> int:
    """The number of whole devices a request of ``shares`` takes (0 for a fraction)."""
    return shares // GPU_SHARES_PER_DEVICE if shares % GPU_SHARES_PER_DEVICE == 0 else 0
