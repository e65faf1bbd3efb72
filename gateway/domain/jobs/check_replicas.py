"""The replica checks of a job spec: roles, counts, images, resources, env, node selectors and
tolerations, each replica walked in role order.

Invariants:
- A role is a DNS-1035 label of at most 20 characters, and one the job's framework allows;
  chief, master and evaluator are singletons in a TensorFlow or PyTorch job.
- The pods of all replicas together are at most ``SpecLimits.max_replicas``.
- A replica's grace period is 0 to ``SpecLimits.max_termination_grace_seconds`` seconds (the most
  an admin allows), or absent: the gateway's default.
- A replica is never dropped silently: when it cannot be typed, a problem says so, so a spec
  missing a replica is never accepted.
- Amounts are parsed into Muster's units with the defaults filled in; CPU and memory are never
  zero, and exclusive CPUs are whole CPUs.
- Pod fields (volumes, mounts, service account, security contexts, init containers...) are
  checked in ``gateway.domain.jobs.check_pod``.
- The environment never sets a variable Muster reserves; node selectors may use Muster's label
  prefixes (they select nodes, they label nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.domain.jobs.check_pod import check_node_affinity, check_pod_fields
from gateway.domain.jobs.collector import Checker, check_enum, check_labels, is_mapping
from gateway.domain.jobs.spec import (
    DEFAULT_CPU,
    DEFAULT_MEMORY,
    DEFAULT_PORT,
    Framework,
    ReplicaSpec,
    RestartPolicy,
    Toleration,
)
from gateway.domain.names import (
    DNS_1035_LABEL,
    ENV_NAME,
    IMAGE,
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
)
from gateway.domain.problems import pointer
from gateway.domain.resources import (
    Extended,
    QuantityError,
    Resources,
    cached_cpu_millis,
    cached_gpu_shares,
    cached_memory_bytes,
    extended_amount,
    extended_name_problem,
    format_cpu,
)

TENSORFLOW_ROLES = frozenset({"chief", "master", "worker", "ps", "evaluator"})
PYTORCH_ROLES = frozenset({"master", "worker"})
SINGLETON_ROLES = frozenset({"chief", "master", "evaluator"})


def check_replicas(
    c: Checker, raw: object, framework: Framework | None
) -> tuple[ReplicaSpec, ...] | None:
    if not is_mapping(raw):
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
    c: Checker, role: str, raw: object, where: tuple[str, ...]
) -> ReplicaSpec | None:
    if not is_mapping(raw):
        return None
    ok = True
    for key in ("count", "port", "termination_grace_period_seconds"):
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
    restart_policy = check_enum(c, RestartPolicy, restart, (*where, "restart_policy"))
    selector = check_labels(
        c, raw.get("node_selector", {}), (*where, "node_selector"), allow_reserved=True
    )
    tolerations = _check_tolerations(c, raw.get("tolerations", []), (*where, "tolerations"))
    grace = raw.get("termination_grace_period_seconds")
    grace_ok = _check_grace(c, grace, where)
    port = raw.get("port", DEFAULT_PORT)
    command, args = raw.get("command", []), raw.get("args", [])
    pod = check_pod_fields(c, raw, where, env or ())
    affinity_raw = raw.get("node_affinity")
    affinity = (
        None
        if affinity_raw is None
        else check_node_affinity(c, affinity_raw, (*where, "node_affinity"))
    )
    if not (
        pod is not None
        and (affinity_raw is None or affinity is not None)
        and ok
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
        and grace_ok
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
        termination_grace_period_seconds=grace,
        pod=pod,
        node_affinity=affinity,
    )


def _check_grace(c: Checker, raw: object, where: tuple[str, ...]) -> bool:
    """Whether the replica's grace period is absent (None) or a good number of seconds."""
    if raw is None:
        return True
    if not isinstance(raw, int) or isinstance(raw, bool):
        return False  # the schema reports the type (a float was reported above)
    at = pointer(*where, "termination_grace_period_seconds")
    most = c.limits.max_termination_grace_seconds
    if raw < 0:
        c.add(at, "must be 0 or more seconds")
        return False
    if raw > most:
        c.add(at, f"must be at most {most} seconds: the longest grace period an admin allows")
        return False
    return True


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_resources(c: Checker, raw: object, where: tuple[str, ...]) -> Resources | None:
    if not is_mapping(raw):
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
    extended = _check_extended(c, raw, where)
    if extended is None:
        return None
    return Resources(
        cpu_millis=values["cpu"],
        memory_bytes=values["memory"],
        gpu_shares=values["gpu"],
        extended=extended,
    )


def _check_extended(c: Checker, raw: Mapping[str, Any], where: tuple[str, ...]) -> Extended | None:
    """The extended resources among a replica's resources (every key but cpu, memory and gpu),
    in whole units; None after a problem."""
    amounts: list[tuple[str, int]] = []
    ok = True
    for name in sorted(k for k in raw if k not in ("cpu", "memory", "gpu")):
        value = raw[name]
        problem = extended_name_problem(name)
        if problem is not None:
            c.add(pointer(*where, name), problem)
            ok = False
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            ok = False  # the schema reports the wrong type
            continue
        try:
            amount = extended_amount(name, value)
        except QuantityError as exc:
            c.add(pointer(*where, name), str(exc))
            ok = False
            continue
        if amount:
            amounts.append((name, amount))
    return tuple(amounts) if ok else None


def _check_env(
    c: Checker, raw: object, where: tuple[str, ...]
) -> tuple[tuple[str, str], ...] | None:
    if not is_mapping(raw):
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


def _check_tolerations(
    c: Checker, raw: object, where: tuple[str, ...]
) -> tuple[Toleration, ...] | None:
    if not isinstance(raw, list):
        return None
    result: list[Toleration] = []
    for index, item in enumerate(raw):
        if not is_mapping(item):
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
