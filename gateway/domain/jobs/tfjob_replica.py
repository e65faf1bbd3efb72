"""One replica type of a TFJob: its pod template and the container named ``tensorflow``, as the
replica of a Muster job spec.

`translate_replica()` is called by `tfjob.py` for each replica type that runs pods, in either form
of the manifest, and fills the fields every version shares; the version-specific ones (the
restart policy, v1alpha1's tfPort) stay with the caller.

Invariants kept here:

- Exactly one container, the one named ``tensorflow``, becomes the replica; every other container
  is refused as a sidecar, and a second ``tensorflow`` container is refused too.
- The pod's ``terminationGracePeriodSeconds`` becomes the replica's grace period (null: the
  gateway's default).
- Resources come from limits, else requests, per resource; ``nvidia.com/gpu`` must be a whole
  number of devices, as in Kubernetes. Whole CPUs requested at their limit are exclusive. Every
  other resource name is an extended resource (``rdma/hca``, ``hugepages-2Mi``...) carried by
  name; Kubernetes never over-commits those, so a request that differs from its limit is refused.
- Pod fields (volumes, init containers, service account, pull secrets, security contexts, host
  namespaces; the container's mounts, envFrom, workingDir, securityContext and ``valueFrom``
  variables) are carried exactly, as the spec's pod fields (``gateway.domain.jobs.pod_fields``);
  a value that sets nothing (null, false, empty, the ``default`` service account, the image's
  default ``imagePullPolicy``) is left out, so it changes nothing.
- Values are deep-copied verbatim and judged later by the schema and ``check_job_spec``; every
  field copied records its origin in the manifest.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gateway.domain.jobs.tfjob_fields import (
    CONTAINER,
    CONTAINER_FIELDS,
    GPU_RESOURCE,
    POD_FIELDS,
    Translation,
    Where,
)
from gateway.domain.resources import QuantityError, cpu_millis, parse_quantity


def translate_replica(
    t: Translation,
    role: str,
    raw: Mapping[Any, Any],
    where: Where,
    *,
    port_name: str | None,
    container: str = CONTAINER,
) -> tuple[dict[str, Any], Mapping[Any, Any]]:
    """The fields every version shares, and the pod spec for the version-specific ones.
    ``container`` names the container that becomes the replica (a PyTorchJob's is ``pytorch``)."""
    spec_at: Where = ("replicas", role)
    t.came_from(spec_at, where)
    count = raw.get("replicas")
    replica: dict[str, Any] = {"count": 1 if count is None else copy.deepcopy(count)}
    if count is not None:
        t.came_from((*spec_at, "count"), (*where, "replicas"))
    template = t.mapping(raw.get("template"), (*where, "template"), required=True)
    t.screen("template", template, (*where, "template"))
    pod_at = (*where, "template", "spec")
    pod = t.mapping(template.get("spec"), pod_at, required="template" in raw)
    t.screen("pod", pod, pod_at)
    for name, source in (
        ("node_selector", "nodeSelector"),
        ("tolerations", "tolerations"),
        # Checked against the admin's cap by check_job_spec, whose problem points back here.
        ("termination_grace_period_seconds", "terminationGracePeriodSeconds"),
    ):
        if pod.get(source) is not None:
            replica[name] = copy.deepcopy(pod[source])
            t.came_from((*spec_at, name), (*pod_at, source), same_shape=True)
    _carry(t, spec_at, pod, pod_at, replica, POD_FIELDS)
    if not _unset(pod.get("affinity")):
        affinity = t.mapping(pod["affinity"], (*pod_at, "affinity"))
        t.screen("affinity", affinity, (*pod_at, "affinity"))
        if not _unset(affinity.get("nodeAffinity")):
            replica["node_affinity"] = copy.deepcopy(affinity["nodeAffinity"])
            t.came_from(
                (*spec_at, "node_affinity"), (*pod_at, "affinity", "nodeAffinity"), same_shape=True
            )
    if not _unset(pod.get("imagePullSecrets")):
        _pull_secrets(t, spec_at, pod["imagePullSecrets"], (*pod_at, "imagePullSecrets"), replica)
    if isinstance(template.get("spec"), Mapping):
        _container(t, spec_at, pod, pod_at, replica, port_name, container)
    return replica, pod


def _container(
    t: Translation,
    spec_at: Where,
    pod: Mapping[Any, Any],
    pod_at: Where,
    replica: dict[str, Any],
    port_name: str | None,
    name: str,
) -> None:
    """Fill ``replica`` from the container named ``name``; refuse every other container."""
    containers_at = (*pod_at, "containers")
    chosen: tuple[int, Mapping[Any, Any]] | None = None
    for index, raw in enumerate(t.sequence(pod.get("containers"), containers_at)):
        container = t.mapping(raw, (*containers_at, index), required=True)
        if container.get("name") != name:
            sidecar = f"Muster runs only the container named {name}"
            t.add((*containers_at, index), f"Muster does not support sidecar containers: {sidecar}")
        elif chosen is not None:
            t.add((*containers_at, index, "name"), f"a second container named {name}")
        else:
            chosen = (index, container)
    if chosen is None:
        t.add(containers_at, f"needs a container named {name}: Muster runs that one")
        return
    index, container = chosen
    at = (*containers_at, index)
    t.screen("container", container, at)
    if container.get("image") is None:
        t.add((*at, "image"), "is required")
    for name in ("image", "command", "args"):
        if container.get(name) is not None:
            replica[name] = copy.deepcopy(container[name])
            t.came_from((*spec_at, name), (*at, name), same_shape=True)
    _pull_policy(t, spec_at, container, at, replica)
    _carry(t, spec_at, container, at, replica, CONTAINER_FIELDS)
    replica["env"], value_from = _env(t, spec_at, container.get("env"), (*at, "env"))
    if value_from:
        replica["env_value_from"] = value_from
    _resources(t, spec_at, container.get("resources"), (*at, "resources"), replica)
    _port(t, spec_at, container.get("ports"), (*at, "ports"), replica, port_name)


def _unset(value: object) -> bool:
    """Whether a pod field's value sets nothing: null, false or empty (``0`` is not false)."""
    return value is None or value is False or (type(value) in (str, list, dict) and not value)


def _carry(
    t: Translation,
    spec_at: Where,
    raw: Mapping[Any, Any],
    at: Where,
    replica: dict[str, Any],
    fields: Mapping[str, str],
) -> None:
    """Copy each of ``fields`` (spec key: manifest key) that sets something, as it is; the
    default service account is no service account."""
    for name, source in fields.items():
        value = raw.get(source)
        if _unset(value) or (source == "serviceAccountName" and value == "default"):
            continue
        replica[name] = copy.deepcopy(value)
        t.came_from((*spec_at, name), (*at, source), same_shape=True)


def _pull_secrets(
    t: Translation, spec_at: Where, raw: object, at: Where, replica: dict[str, Any]
) -> None:
    """``[{name: regcred}]`` -> ``[regcred]``; anything else is copied for the check to refuse."""
    if isinstance(raw, list) and all(isinstance(e, Mapping) and set(e) == {"name"} for e in raw):
        replica["image_pull_secrets"] = [copy.deepcopy(e["name"]) for e in raw]
        for index in range(len(raw)):
            t.came_from((*spec_at, "image_pull_secrets", index), (*at, index, "name"))
    else:
        replica["image_pull_secrets"] = copy.deepcopy(raw)
    t.came_from((*spec_at, "image_pull_secrets"), at)


def _pull_policy(
    t: Translation,
    spec_at: Where,
    container: Mapping[Any, Any],
    at: Where,
    replica: dict[str, Any],
) -> None:
    """A pull policy other than Kubernetes' default for the image is carried; the default is
    the same as none."""
    policy, image = container.get("imagePullPolicy"), container.get("image")
    if policy is None or not isinstance(image, str):
        return
    # Kubernetes' default: Always for the tag latest or for no tag and no digest.
    name, _, digest = image.partition("@")
    tag = name.rpartition("/")[2].partition(":")[2]
    default = "Always" if tag == "latest" or not (tag or digest) else "IfNotPresent"
    if policy != default:
        replica["image_pull_policy"] = copy.deepcopy(policy)
        t.came_from((*spec_at, "image_pull_policy"), (*at, "imagePullPolicy"))


def _env(
    t: Translation, spec_at: Where, raw: object, at: Where
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plain variables, and those from ``valueFrom``, by name."""
    env: dict[str, Any] = {}
    value_from: dict[str, Any] = {}
    t.came_from((*spec_at, "env"), at)
    for index, entry in enumerate(t.sequence(raw, at)):
        entry = t.mapping(entry, (*at, index), required=True)
        t.screen("env", entry, (*at, index))
        name = entry.get("name")
        if not isinstance(name, str):
            t.add((*at, index, "name"), "is required" if name is None else "must be a string")
            continue
        # As in Kubernetes, the last entry of a name wins.
        value, source = entry.get("value"), entry.get("valueFrom")
        env.pop(name, None)
        value_from.pop(name, None)
        if source is not None:
            if value is not None:
                t.add((*at, index), "has both value and valueFrom")
            value_from[name] = copy.deepcopy(source)
            t.came_from(
                (*spec_at, "env_value_from", name), (*at, index, "valueFrom"), same_shape=True
            )
        else:
            env[name] = "" if value is None else copy.deepcopy(value)
            t.came_from((*spec_at, "env", name), (*at, index))
    return env, value_from


def _resources(
    t: Translation, spec_at: Where, raw: object, at: Where, replica: dict[str, Any]
) -> None:
    """Limits, else requests, per resource; whole CPUs requested at their limit are exclusive."""
    resources = t.mapping(raw, at)
    t.screen("resources", resources, at)
    limits = t.mapping(resources.get("limits"), (*at, "limits"))
    requests = t.mapping(resources.get("requests"), (*at, "requests"))
    amounts: dict[str, Any] = {}
    for name, source in (("cpu", "cpu"), ("memory", "memory"), ("gpu", GPU_RESOURCE)):
        side, values = ("limits", limits) if source in limits else ("requests", requests)
        if source not in values:
            continue
        source_at = (*at, side, source)
        value = _gpu_count(t, values[source], source_at) if name == "gpu" else values[source]
        amounts[name] = copy.deepcopy(value)
        t.came_from((*spec_at, "resources", name), source_at)
    # Every other name is an extended resource (rdma/hca, hugepages-2Mi...): never
    # over-committed, so a request is its limit; the spec's check judges the name and amount.
    own = ("cpu", "memory", GPU_RESOURCE)
    for source in sorted({str(k) for k in (*limits, *requests)} - set(own)):
        side, values = ("limits", limits) if source in limits else ("requests", requests)
        if (
            source in limits
            and source in requests
            and not _same_amount(limits[source], requests[source])
        ):
            t.add(
                (*at, "requests", source),
                f"{source} is an extended resource, never over-committed: its request must "
                "equal its limit",
            )
            continue
        amounts[source] = copy.deepcopy(values[source])
        t.came_from((*spec_at, "resources", source), (*at, side, source))
    if amounts:
        replica["resources"] = amounts
        t.came_from((*spec_at, "resources"), at)
    limit = _millis(limits.get("cpu"))
    if limit is not None and limit > 0 and limit % 1000 == 0:
        requested = _millis(requests["cpu"]) if "cpu" in requests else limit
        replica["exclusive_cpus"] = requested == limit
        t.came_from((*spec_at, "exclusive_cpus"), at)


def _same_amount(a: object, b: object) -> bool:
    """Whether two quantities are the same amount ("1" and 1 are); unparsable ones compare as
    they are (the spec's check reports them)."""
    try:
        if isinstance(a, str | int | float) and isinstance(b, str | int | float):
            return parse_quantity(a) == parse_quantity(b)
    except QuantityError:
        pass
    return a == b


def _millis(value: object) -> int | None:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    try:
        return cpu_millis(value)
    except QuantityError:
        return None  # check_job_spec reports the bad quantity


def _gpu_count(t: Translation, value: object, at: Where) -> object:
    """``nvidia.com/gpu`` as Muster's GPU number: Kubernetes allows whole devices only."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return value  # the schema reports the type
    try:
        amount = parse_quantity(value)
    except QuantityError as exc:
        t.add(at, str(exc))
        return value
    if amount != amount.to_integral_value():
        t.add(at, "must be a whole number of devices")
        return value
    return int(amount)


def _port(
    t: Translation,
    spec_at: Where,
    raw: object,
    at: Where,
    replica: dict[str, Any],
    port_name: str | None,
) -> None:
    """The port named ``port_name`` is the replica's TF port; other declared ports open nothing."""
    for index, entry in enumerate(t.sequence(raw, at)):
        entry = t.mapping(entry, (*at, index), required=True)
        t.screen("port", entry, (*at, index))
        if port_name is not None and entry.get("name") == port_name and "port" not in replica:
            # containerPort is required by Kubernetes; a missing one is "port: null" to the schema.
            replica["port"] = copy.deepcopy(entry.get("containerPort"))
            t.came_from((*spec_at, "port"), (*at, index, "containerPort"))
