"""The check of a replica's pod fields (``gateway.domain.jobs.pod_fields``): each
Kubernetes-shaped object against a small allow-list of keys, with a JSON pointer per problem.

What a field may reach is the tenant's pod policy's to say (``gateway.domain.jobs.policy``); this
check says only what is well formed, and what would collide with Muster's own fields.

Invariants:
- Every object has only the keys its shape lists (anything else is refused at its pointer), and
  each key the type its shape gives; required keys are present.
- A volume has a DNS-1123 label name, unique in the replica, and exactly one source among
  persistentVolumeClaim, configMap, secret, emptyDir, ephemeral, csi and hostPath.
- Every mount (of the main or an init container) names a declared volume and an absolute path,
  each path once per container; a subPath is relative and has no ``..``.
- A variable from ``env_value_from`` is neither in ``env`` nor one Muster reserves, and has
  exactly one source; init containers are uniquely named and none is named like the main
  container (``main``, ``tensorflow``, ``pytorch``), and their variables avoid Muster's too.
- Init containers ask for no resources: the pod's requests stay the main container's, which
  placement accounted for.
- A node affinity has Kubernetes' shape and meaning: at least one required term, operators with
  the values they take (In and NotIn some, Exists and DoesNotExist none, Gt and Lt one integer),
  node fields only ``metadata.name``, preferred weights from 1 to 100.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.domain.jobs.collector import Checker, is_mapping
from gateway.domain.jobs.pod_fields import PodFields, canonical
from gateway.domain.names import (
    DNS_1123_LABEL,
    ENV_NAME,
    IMAGE,
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
)
from gateway.domain.problems import pointer

__all__ = ["POD_FIELD_KEYS", "VOLUME_SOURCES", "check_node_affinity", "check_pod_fields"]

Where = tuple[str | int, ...]
Check = Callable[[Checker, object, Where], bool]

#: The names of the main container (by framework): an init container may not take one.
MAIN_CONTAINER_NAMES = frozenset({"main", "tensorflow", "pytorch"})
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MOST_ITEMS = 64


def _string(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, str) and len(raw) <= 4096:
        return True
    c.add(pointer(*where), "must be a string of at most 4096 characters")
    return False


def _name(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, str) and len(raw) <= 253 and DNS_1123_SUBDOMAIN.fullmatch(raw):
        return True
    c.add(pointer(*where), "must be a DNS-1123 subdomain (lower-case letters, digits, '-', '.')")
    return False


def _boolean(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, bool):
        return True
    c.add(pointer(*where), "must be true or false")
    return False


def _integer(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 2**31:
        return True
    c.add(pointer(*where), "must be a whole number from 0 to 2147483647")
    return False


def _quantity(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?([KMGTPE]i?|[mkMGTPE])?", raw):
        return True
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return True
    c.add(pointer(*where), "must be a Kubernetes quantity such as 1Gi or 512Mi")
    return False


def _absolute(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, str) and raw.startswith("/") and ".." not in raw.split("/"):
        return _string(c, raw, where)
    c.add(pointer(*where), "must be an absolute path without '..'")
    return False


def _relative(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, str) and not raw.startswith("/") and ".." not in raw.split("/"):
        return _string(c, raw, where)
    c.add(pointer(*where), "must be a relative path without '..'")
    return False


def _one_of(*values: str) -> Check:
    def check(c: Checker, raw: object, where: Where) -> bool:
        if raw in values:
            return True
        c.add(pointer(*where), "must be one of " + ", ".join(values))
        return False

    return check


def _list(item: Check) -> Check:
    def check(c: Checker, raw: object, where: Where) -> bool:
        if not isinstance(raw, list) or len(raw) > MOST_ITEMS:
            c.add(pointer(*where), f"must be a list of at most {MOST_ITEMS} items")
            return False
        return all([item(c, value, (*where, i)) for i, value in enumerate(raw)])

    return check


def _string_map(c: Checker, raw: object, where: Where) -> bool:
    if is_mapping(raw) and len(raw) <= MOST_ITEMS and all(isinstance(v, str) for v in raw.values()):
        return True
    c.add(pointer(*where), "must be an object of strings")
    return False


def _object(shape: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    def check(c: Checker, raw: object, where: Where) -> bool:
        if not is_mapping(raw):
            c.add(pointer(*where), "must be an object")
            return False
        ok = True
        for key in required:
            if key not in raw:
                c.add(pointer(*where, key), "is required")
                ok = False
        for key, value in raw.items():
            if key not in shape:
                c.add(pointer(*where, str(key)), f"unknown field {key!r}; allowed: {_keys(shape)}")
                ok = False
            elif not shape[key](c, value, (*where, key)):
                ok = False
        return ok

    return check


def _keys(shape: Mapping[str, Check]) -> str:
    return ", ".join(sorted(shape))


_KEY_TO_PATH = _list(
    _object({"key": _string, "path": _relative, "mode": _integer}, ("key", "path"))
)
_REFERENCE = _object({"name": _name, "optional": _boolean}, ("name",))
_KEY_REFERENCE = _object({"name": _name, "key": _string, "optional": _boolean}, ("name", "key"))

#: Each volume source Muster carries, and its shape.
VOLUME_SOURCES: Mapping[str, Check] = {
    "persistentVolumeClaim": _object({"claimName": _name, "readOnly": _boolean}, ("claimName",)),
    "configMap": _object(
        {"name": _name, "items": _KEY_TO_PATH, "defaultMode": _integer, "optional": _boolean},
        ("name",),
    ),
    "secret": _object(
        {"secretName": _name, "items": _KEY_TO_PATH, "defaultMode": _integer, "optional": _boolean},
        ("secretName",),
    ),
    "emptyDir": _object({"medium": _one_of("", "Memory"), "sizeLimit": _quantity}),
    "ephemeral": _object(
        {
            "volumeClaimTemplate": _object(
                {
                    "metadata": _object({"labels": _string_map, "annotations": _string_map}),
                    "spec": _object(
                        {
                            "accessModes": _list(
                                _one_of("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany")
                            ),
                            "storageClassName": _name,
                            "volumeMode": _one_of("Filesystem", "Block"),
                            "resources": _object(
                                {"requests": _object({"storage": _quantity}, ("storage",))}
                            ),
                        },
                        ("accessModes", "resources"),
                    ),
                },
                ("spec",),
            )
        },
        ("volumeClaimTemplate",),
    ),
    "csi": _object(
        {
            "driver": _name,
            "readOnly": _boolean,
            "fsType": _string,
            "volumeAttributes": _string_map,
            "nodePublishSecretRef": _object({"name": _name}, ("name",)),
        },
        ("driver",),
    ),
    "hostPath": _object(
        {
            "path": _absolute,
            "type": _one_of("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket"),
        },
        ("path",),
    ),
}
_MOUNT = _object(
    {"name": _string, "mountPath": _absolute, "readOnly": _boolean, "subPath": _relative},
    ("name", "mountPath"),
)
_VALUE_FROM = _object(
    {
        "secretKeyRef": _KEY_REFERENCE,
        "configMapKeyRef": _KEY_REFERENCE,
        "fieldRef": _object({"fieldPath": _string, "apiVersion": _string}, ("fieldPath",)),
    }
)
_ENV_FROM = _object({"configMapRef": _REFERENCE, "secretRef": _REFERENCE, "prefix": _string})
_SECCOMP = _object(
    {"type": _one_of("RuntimeDefault", "Localhost"), "localhostProfile": _string}, ("type",)
)
_IDENTITY: Mapping[str, Check] = {
    "runAsUser": _integer,
    "runAsGroup": _integer,
    "runAsNonRoot": _boolean,
    "seccompProfile": _SECCOMP,
}
_CAPABILITY = re.compile(r"[A-Z_]{1,64}")


def _capability(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, str) and _CAPABILITY.fullmatch(raw.removeprefix("CAP_")):
        return True
    c.add(pointer(*where), "must be a capability name such as IPC_LOCK")
    return False


_CONTAINER_SECURITY = _object(
    {
        **_IDENTITY,
        "privileged": _boolean,
        "allowPrivilegeEscalation": _boolean,
        "readOnlyRootFilesystem": _boolean,
        "capabilities": _object({"add": _list(_capability), "drop": _list(_capability)}),
    }
)
_POD_SECURITY = _object(
    {
        **_IDENTITY,
        "fsGroup": _integer,
        "fsGroupChangePolicy": _one_of("OnRootMismatch", "Always"),
        "supplementalGroups": _list(_integer),
    }
)
_PULL_POLICY = _one_of("Always", "IfNotPresent", "Never")


def _image(c: Checker, raw: object, where: Where) -> bool:
    if isinstance(raw, str) and IMAGE.fullmatch(raw):
        return True
    c.add(pointer(*where), "must be a container image reference without spaces")
    return False


_ENV_ENTRY = _object({"name": _string, "value": _string, "valueFrom": _VALUE_FROM}, ("name",))
_INIT_CONTAINER = _object(
    {
        "name": _string,
        "image": _image,
        "command": _list(_string),
        "args": _list(_string),
        "env": _list(_ENV_ENTRY),
        "envFrom": _list(_ENV_FROM),
        "volumeMounts": _list(_MOUNT),
        "workingDir": _absolute,
        "imagePullPolicy": _PULL_POLICY,
        "securityContext": _CONTAINER_SECURITY,
        "restartPolicy": _one_of("Always"),
    },
    ("name", "image"),
)

#: The keys of a replica spec that hold pod fields, each with the shape of its value.
POD_FIELD_KEYS: Mapping[str, Check] = {
    "volumes": _list(_object({"name": _string, **VOLUME_SOURCES}, ("name",))),
    "volume_mounts": _list(_MOUNT),
    "env_value_from": lambda c, raw, where: _env_value_from(c, raw, where),
    "env_from": _list(_ENV_FROM),
    "working_dir": _absolute,
    "image_pull_policy": _PULL_POLICY,
    "service_account_name": _name,
    "image_pull_secrets": _list(_name),
    "pod_security_context": _POD_SECURITY,
    "security_context": _CONTAINER_SECURITY,
    "init_containers": _list(_INIT_CONTAINER),
    "host_network": _boolean,
    "host_pid": _boolean,
    "host_ipc": _boolean,
}


def _env_value_from(c: Checker, raw: object, where: Where) -> bool:
    if not is_mapping(raw) or len(raw) > 256:
        c.add(pointer(*where), "must be an object of at most 256 variables")
        return False
    return all([_VALUE_FROM(c, value, (*where, name)) for name, value in raw.items()])


def check_pod_fields(
    c: Checker, raw: Mapping[str, Any], where: Where, env: tuple[tuple[str, str], ...]
) -> PodFields | None:
    """The pod fields of replica ``raw`` (at ``where``), whose plain variables are ``env``; None
    (with problems added) when one is wrong."""
    present = [key for key in POD_FIELD_KEYS if raw.get(key) is not None]
    if not present:
        return PodFields()
    before = len(c.problems)
    shaped = all([POD_FIELD_KEYS[key](c, raw[key], (*where, key)) for key in present])
    if not shaped or len(c.problems) > before:
        return None
    get = raw.get
    volumes: list[Mapping[str, Any]] = get("volumes") or []
    declared = _volume_names(c, volumes, where)
    _mounts(c, get("volume_mounts") or [], declared, (*where, "volume_mounts"))
    value_from: Mapping[str, Any] = get("env_value_from") or {}
    plain = {name for name, _ in env}
    for name in sorted(value_from):
        _variable(c, name, (*where, "env_value_from", name))
        if name in plain:
            c.add(pointer(*where, "env_value_from", name), f"{name} is also set in env")
        _exactly_one(c, value_from[name], (*where, "env_value_from", name))
    for index, source in enumerate(get("env_from") or []):
        _exactly_one(c, source, (*where, "env_from", index), extra=("prefix",))
    _init_containers(c, get("init_containers") or [], declared, (*where, "init_containers"))
    if len(c.problems) > before:
        return None
    return PodFields(
        volumes=tuple(canonical(v) for v in volumes),
        volume_mounts=tuple(canonical(v) for v in get("volume_mounts") or []),
        env_value_from=tuple((name, canonical(value_from[name])) for name in sorted(value_from)),
        env_from=tuple(canonical(v) for v in get("env_from") or []),
        working_dir=get("working_dir"),
        image_pull_policy=get("image_pull_policy"),
        service_account_name=get("service_account_name"),
        image_pull_secrets=tuple(get("image_pull_secrets") or ()),
        pod_security_context=_text(get("pod_security_context")),
        security_context=_text(get("security_context")),
        init_containers=tuple(canonical(v) for v in get("init_containers") or []),
        host_network=get("host_network") is True,
        host_pid=get("host_pid") is True,
        host_ipc=get("host_ipc") is True,
    )


def _text(value: object) -> str | None:
    return None if value is None else canonical(value)


def _volume_names(c: Checker, volumes: list[Mapping[str, Any]], where: Where) -> set[str]:
    names: set[str] = set()
    for index, volume in enumerate(volumes):
        at = (*where, "volumes", index)
        name = volume["name"]
        if not DNS_1123_LABEL.fullmatch(name):
            c.add(pointer(*at, "name"), f"{name!r} is not a DNS-1123 label")
        elif name in names:
            c.add(pointer(*at, "name"), f"a second volume named {name!r}")
        names.add(name)
        sources = [key for key in volume if key in VOLUME_SOURCES]
        if len(sources) != 1:
            c.add(
                pointer(*at),
                "needs exactly one source: " + ", ".join(VOLUME_SOURCES),
            )
    return names


def _mounts(c: Checker, mounts: list[Mapping[str, Any]], declared: set[str], where: Where) -> None:
    paths: set[str] = set()
    for index, mount in enumerate(mounts):
        if mount["name"] not in declared:
            c.add(pointer(*where, index, "name"), f"no volume is named {mount['name']!r}")
        path = mount["mountPath"].rstrip("/") or "/"
        if path in paths:
            c.add(pointer(*where, index, "mountPath"), f"{path} is mounted twice")
        paths.add(path)


def _variable(c: Checker, name: str, where: Where) -> None:
    if not ENV_NAME.fullmatch(name):
        c.add(pointer(*where), f"{name!r} is not a valid environment variable name")
    elif name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
        c.add(pointer(*where), f"{name} is set by Muster and cannot be overridden")


def _exactly_one(
    c: Checker, raw: Mapping[str, Any], where: Where, extra: tuple[str, ...] = ()
) -> None:
    if len([key for key in raw if key not in extra]) != 1:
        c.add(pointer(*where), "needs exactly one source")


def _init_containers(
    c: Checker, containers: list[Mapping[str, Any]], declared: set[str], where: Where
) -> None:
    names: set[str] = set()
    for index, container in enumerate(containers):
        at = (*where, index)
        name = container["name"]
        if not DNS_1123_LABEL.fullmatch(name):
            c.add(pointer(*at, "name"), f"{name!r} is not a DNS-1123 label")
        elif name in MAIN_CONTAINER_NAMES or name in names:
            c.add(pointer(*at, "name"), f"the name {name!r} is taken")
        names.add(name)
        for i, entry in enumerate(container.get("env") or []):
            _variable(c, entry["name"], (*at, "env", i, "name"))
            if ("value" in entry) == ("valueFrom" in entry):
                c.add(pointer(*at, "env", i), "needs exactly one of value and valueFrom")
            elif "valueFrom" in entry:
                _exactly_one(c, entry["valueFrom"], (*at, "env", i, "valueFrom"))
        for i, source in enumerate(container.get("envFrom") or []):
            _exactly_one(c, source, (*at, "envFrom", i), extra=("prefix",))
        _mounts(c, container.get("volumeMounts") or [], declared, (*at, "volumeMounts"))


# -- node affinity -------------------------------------------------------------------------------

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_REQUIREMENT = _object(
    {"key": _string, "operator": _one_of(*_OPERATORS), "values": _list(_string)},
    ("key", "operator"),
)
_TERM = _object({"matchExpressions": _list(_REQUIREMENT), "matchFields": _list(_REQUIREMENT)})
_NODE_AFFINITY = _object(
    {
        "requiredDuringSchedulingIgnoredDuringExecution": _object(
            {"nodeSelectorTerms": _list(_TERM)}, ("nodeSelectorTerms",)
        ),
        "preferredDuringSchedulingIgnoredDuringExecution": _list(
            _object({"weight": _integer, "preference": _TERM}, ("weight", "preference"))
        ),
    }
)
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


def check_node_affinity(c: Checker, raw: object, where: Where) -> str | None:
    """A replica's node affinity (Kubernetes' NodeAffinity object) as canonical text, or None
    (with problems added). Placement honours the required terms; the preferred ones are carried
    into the pods, where Muster's pinning makes them moot."""
    before = len(c.problems)
    if not _NODE_AFFINITY(c, raw, where) or len(c.problems) > before:
        return None
    assert is_mapping(raw)
    required = raw.get(REQUIRED)
    terms: list[tuple[Any, Where]] = []
    if required is not None:
        if not required["nodeSelectorTerms"]:
            c.add(pointer(*where, REQUIRED, "nodeSelectorTerms"), "must have at least one term")
        terms += [
            (term, (*where, REQUIRED, "nodeSelectorTerms", i))
            for i, term in enumerate(required["nodeSelectorTerms"])
        ]
    for i, preferred in enumerate(raw.get(PREFERRED) or []):
        if not 1 <= preferred["weight"] <= 100:
            c.add(pointer(*where, PREFERRED, i, "weight"), "must be from 1 to 100")
        terms.append((preferred["preference"], (*where, PREFERRED, i, "preference")))
    for term, at in terms:
        for kind in ("matchExpressions", "matchFields"):
            for k, requirement in enumerate(term.get(kind) or []):
                _requirement(c, requirement, kind == "matchFields", (*at, kind, k))
    return None if len(c.problems) > before else canonical(raw)


def _requirement(c: Checker, requirement: Mapping[str, Any], field: bool, where: Where) -> None:
    operator, values = requirement["operator"], requirement.get("values") or []
    if field and requirement["key"] != "metadata.name":
        c.add(pointer(*where, "key"), "the only node field is metadata.name")
    if field and operator not in ("In", "NotIn"):
        c.add(pointer(*where, "operator"), "a node field takes In or NotIn")
    if operator in ("In", "NotIn") and not values:
        c.add(pointer(*where, "values"), f"{operator} needs at least one value")
    elif operator in ("Exists", "DoesNotExist") and values:
        c.add(pointer(*where, "values"), f"{operator} takes no values")
    elif operator in ("Gt", "Lt") and not (len(values) == 1 and _INTEGER.fullmatch(values[0])):
        c.add(pointer(*where, "values"), f"{operator} takes exactly one integer value")
