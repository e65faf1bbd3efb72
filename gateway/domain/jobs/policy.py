"""A tenant's pod policy: what the pods of its jobs may reach beyond their own containers, set by
an admin, and the check of a job spec against it.

The defaults are close to Kubernetes' baseline Pod Security Standard, and stricter where a
tenant boundary needs it:

- ``volume-types``: persistentVolumeClaim, configMap, secret, emptyDir, ephemeral and csi;
  hostPath only when an admin adds it, and then ``host-path``: only under ``host_path_prefixes``
  (none by default), compared by whole path segments.
- ``service-account``: only ``default`` (a pod without a service account name runs as it).
- ``privileged``: no privileged container (main or init) unless ``allow_privileged``.
- ``capabilities``: no capability added unless listed in ``allowed_capabilities`` (none by
  default; IPC_LOCK is the usual one to allow, for RDMA).
- ``host-namespaces``: no hostNetwork, hostPID or hostIPC unless ``allow_host_namespaces``.
- ``tolerations``: a toleration passes only when one of ``tolerations`` (patterns of key,
  operator, value and effect; a part a pattern leaves out matches anything) matches it. None by
  default: a tenant may not tolerate another team's dedicated nodes on its own. Muster's own
  toleration of shared-GPU nodes is added by the manifests and is not the tenant's.

Invariants:
- ``policy_of(policy_document(p)) == p``; a stored document without a key has that key's
  default, so ``{}`` is the default policy.
- ``kubernetes_only`` names every pod field a set, for a backend that honours none of them;
  ``process_unsupported`` is what the local backend (replicas as processes) cannot honour: every
  pod field but ``working_dir``, emptyDir volumes and their plain mounts (only where it can give
  each replica a mount namespace of its own). Both point at each field they refuse and say it
  needs the Kubernetes backend.
- ``check_policy`` returns one problem per breach, its pointer into the spec and its detail
  naming the rule (``pod policy rule 'host-path'``). It reads only the spec and the policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from gateway.domain.jobs.pod_fields import PodFields, parsed
from gateway.domain.jobs.spec import JobSpec, ReplicaSpec, Toleration
from gateway.domain.problems import FieldProblem, pointer

__all__ = [
    "DEFAULT_VOLUME_TYPES",
    "RULES",
    "PodPolicy",
    "TolerationPattern",
    "check_policy",
    "kubernetes_only",
    "needs_policy",
    "policy_document",
    "policy_of",
    "policy_problems",
    "process_unsupported",
]

ALL_VOLUME_TYPES = (
    "persistentVolumeClaim",
    "configMap",
    "secret",
    "emptyDir",
    "ephemeral",
    "csi",
    "hostPath",
)
DEFAULT_VOLUME_TYPES = tuple(sorted(t for t in ALL_VOLUME_TYPES if t != "hostPath"))
RULES = (
    "volume-types",
    "host-path",
    "service-account",
    "privileged",
    "capabilities",
    "host-namespaces",
    "tolerations",
)
_PATTERN_KEYS = ("key", "operator", "value", "effect")


@dataclass(frozen=True, kw_only=True, slots=True)
class TolerationPattern:
    """Tolerations an admin allows: each part given must equal the toleration's."""

    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None

    def matches(self, t: Toleration) -> bool:
        return all(
            want is None or want == got
            for want, got in (
                (self.key, t.key),
                (self.operator, t.operator),
                (self.value, t.value),
                (self.effect, t.effect),
            )
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class PodPolicy:
    volume_types: tuple[str, ...] = DEFAULT_VOLUME_TYPES
    host_path_prefixes: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ("default",)
    allow_privileged: bool = False
    allowed_capabilities: tuple[str, ...] = ()
    allow_host_namespaces: bool = False
    tolerations: tuple[TolerationPattern, ...] = ()


def policy_document(p: PodPolicy) -> dict[str, Any]:
    """The policy as JSON, every key given: what is stored, audited and shown."""
    return {
        "volume_types": list(p.volume_types),
        "host_path_prefixes": list(p.host_path_prefixes),
        "service_accounts": list(p.service_accounts),
        "allow_privileged": p.allow_privileged,
        "allowed_capabilities": list(p.allowed_capabilities),
        "allow_host_namespaces": p.allow_host_namespaces,
        "tolerations": [
            {k: getattr(t, k) for k in _PATTERN_KEYS if getattr(t, k) is not None}
            for t in p.tolerations
        ],
    }


def policy_of(document: Mapping[str, Any], base: PodPolicy | None = None) -> PodPolicy:
    """The policy ``document`` gives, each key left out taken from ``base`` (the default policy
    when None). The document is schema-valid (``PodPolicy`` in the OpenAPI document) or stored."""
    b = base or PodPolicy()
    get = document.get
    return PodPolicy(
        volume_types=_unique(get("volume_types", b.volume_types)),
        host_path_prefixes=_unique(
            p.rstrip("/") or "/" for p in get("host_path_prefixes", b.host_path_prefixes)
        ),
        service_accounts=_unique(get("service_accounts", b.service_accounts)),
        allow_privileged=bool(get("allow_privileged", b.allow_privileged)),
        allowed_capabilities=_unique(
            c.removeprefix("CAP_") for c in get("allowed_capabilities", b.allowed_capabilities)
        ),
        allow_host_namespaces=bool(get("allow_host_namespaces", b.allow_host_namespaces)),
        tolerations=b.tolerations
        if document.get("tolerations") is None
        else tuple(
            TolerationPattern(**{k: t.get(k) for k in _PATTERN_KEYS})
            for t in document["tolerations"]
        ),
    )


def _unique(values: Any) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


def needs_policy(spec: JobSpec) -> bool:
    """Whether the policy could refuse ``spec`` (a spec with no pod fields and no tolerations
    passes every policy, so a submit need not read one)."""
    return any(r.tolerations or r.pod.any for r in spec.replicas)


def policy_problems(spec: JobSpec, policy: PodPolicy) -> list[FieldProblem]:
    """Every breach of ``policy`` in ``spec``, each pointing at its field and naming its rule."""
    problems: list[FieldProblem] = []
    for replica in spec.replicas:
        for where, rule, detail in check_policy(replica, policy):
            problems.append(
                FieldProblem(
                    pointer=pointer("replicas", replica.role, *where),
                    detail=f"{detail} (pod policy rule {rule!r}; an admin sets the tenant's "
                    "pod_policy)",
                )
            )
    return problems


Breach = tuple[tuple[str | int, ...], str, str]


def check_policy(replica: ReplicaSpec, policy: PodPolicy) -> Iterator[Breach]:
    """(where in the replica, rule, what is wrong) for each breach of ``policy``."""
    pod = replica.pod
    for index, text in enumerate(pod.volumes):
        volume = parsed(text)
        kind = next(k for k in volume if k != "name")
        if kind not in policy.volume_types:
            yield (("volumes", index, kind), "volume-types", f"{kind} volumes are not allowed")
        elif kind == "hostPath" and not _under(volume[kind]["path"], policy.host_path_prefixes):
            yield (
                ("volumes", index, kind, "path"),
                "host-path",
                f"hostPath {volume[kind]['path']} is under no allowed prefix",
            )
    account = pod.service_account_name
    if account is not None and account not in policy.service_accounts:
        yield (
            ("service_account_name",),
            "service-account",
            f"service account {account!r} is not allowed",
        )
    for name in ("host_network", "host_pid", "host_ipc"):
        if getattr(pod, name) and not policy.allow_host_namespaces:
            yield ((name,), "host-namespaces", "host namespaces are not allowed")
    contexts: list[tuple[tuple[str | int, ...], Any]] = []
    if pod.security_context is not None:
        contexts.append((("security_context",), parsed(pod.security_context)))
    for index, text in enumerate(pod.init_containers):
        container = parsed(text)
        if "securityContext" in container:
            contexts.append(
                (("init_containers", index, "securityContext"), container["securityContext"])
            )
    for where, context in contexts:
        if context.get("privileged") is True and not policy.allow_privileged:
            yield ((*where, "privileged"), "privileged", "privileged containers are not allowed")
        added = context.get("capabilities", {}).get("add", [])
        for index, capability in enumerate(added):
            if capability.removeprefix("CAP_") not in policy.allowed_capabilities:
                yield (
                    (*where, "capabilities", "add", index),
                    "capabilities",
                    f"adding capability {capability} is not allowed",
                )
    for index, toleration in enumerate(replica.tolerations):
        if not any(p.matches(toleration) for p in policy.tolerations):
            yield (
                ("tolerations", index),
                "tolerations",
                f"the toleration {json.dumps(_toleration_view(toleration))} is not allowed",
            )


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or below one, by whole segments (``/data`` does
    not allow ``/database``); the check refused ``..`` in paths."""
    path = path.rstrip("/") or "/"
    return any(
        path == prefix or path.startswith(prefix if prefix == "/" else prefix + "/")
        for prefix in prefixes
    )


def _toleration_view(t: Toleration) -> dict[str, str]:
    return {
        k: v
        for k, v in (
            ("key", t.key),
            ("operator", t.operator),
            ("value", t.value),
            ("effect", t.effect),
        )
        if v is not None
    }


_PROCESSES = "this gateway runs replicas as local processes"


def _needs_kubernetes(role: str, *where: str | int, what: str) -> FieldProblem:
    return FieldProblem(
        pointer=pointer("replicas", role, *where),
        detail=f"{what} needs the Kubernetes backend; {_PROCESSES}",
    )


def kubernetes_only(spec: JobSpec) -> list[FieldProblem]:
    """The pod fields of ``spec`` that need the Kubernetes backend, for a backend that honours
    plain env and nothing of a pod beyond it."""
    none = PodFields()
    return [
        _needs_kubernetes(replica.role, f.name, what=f.name)
        for replica in spec.replicas
        for f in fields(PodFields)
        if getattr(replica.pod, f.name) != getattr(none, f.name)
    ]


#: The pod fields a backend of processes honours (``process_unsupported`` says how far).
PROCESS_FIELDS = frozenset({"working_dir", "volumes", "volume_mounts"})
#: The keys of a volume mount a backend of processes honours.
PROCESS_MOUNT_KEYS = frozenset({"name", "mountPath", "readOnly"})


def process_unsupported(spec: JobSpec, *, mounts: bool) -> list[FieldProblem]:
    """What of ``spec``'s pod fields a backend that runs replicas as processes cannot honour
    (``gateway.backends.local``), each problem at its field.

    Honoured: plain env; ``working_dir`` (the directory the command starts in); emptyDir
    volumes (a fresh private directory per replica, or a tmpfs for medium Memory), and their
    mounts by name, mountPath and readOnly when ``mounts`` (the backend gives each replica a mount
    namespace of its own, where it mounts them). Refused: every other pod field, every other
    volume type and a mount of one, a mount's subPath (or any other mount key), every mount when
    not ``mounts``, and a mount at ``/``.
    """
    none = PodFields()
    problems: list[FieldProblem] = []
    for replica in spec.replicas:
        role, pod = replica.role, replica.pod
        for f in fields(PodFields):
            if f.name not in PROCESS_FIELDS and getattr(pod, f.name) != getattr(none, f.name):
                problems.append(_needs_kubernetes(role, f.name, what=f.name))
        kinds: dict[str, str] = {}
        for index, text in enumerate(pod.volumes):
            volume = parsed(text)
            kind = next(k for k in volume if k != "name")
            kinds[volume["name"]] = kind
            if kind != "emptyDir":
                problems.append(
                    _needs_kubernetes(role, "volumes", index, kind, what=f"a {kind} volume")
                )
        for index, text in enumerate(pod.volume_mounts):
            mount = parsed(text)
            kind = kinds.get(mount["name"], "undeclared")
            if kind != "emptyDir":
                problems.append(
                    _needs_kubernetes(
                        role, "volume_mounts", index, "name", what=f"mounting a {kind} volume"
                    )
                )
                continue
            for key in sorted(set(mount) - PROCESS_MOUNT_KEYS):
                problems.append(
                    _needs_kubernetes(role, "volume_mounts", index, key, what=f"a mount's {key}")
                )
            if mount["mountPath"].rstrip("/") == "":
                problems.append(
                    FieldProblem(
                        pointer=pointer("replicas", role, "volume_mounts", index, "mountPath"),
                        detail="a volume mounted at / would hide the whole machine from the "
                        f"replica; {_PROCESSES}, which see the machine's file system",
                    )
                )
            elif not mounts:
                problems.append(
                    FieldProblem(
                        pointer=pointer("replicas", role, "volume_mounts", index),
                        detail="mounting a volume needs the Kubernetes backend, or a local "
                        "gateway that gives each replica a mount namespace of its own (one that "
                        f"runs as root); {_PROCESSES} without one",
                    )
                )
    return problems
