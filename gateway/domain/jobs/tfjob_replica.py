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
  number of devices, as in Kubernetes. Whole CPUs requested at their limit are exclusive.
- An ``imagePullPolicy`` other than Kubernetes' default for the image is refused: another policy
  could run another image.
- Values are deep-copied verbatim and judged later by the schema and ``check_job_spec``; every
  field copied records its origin in the manifest.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gateway.domain.jobs.tfjob_fields import CONTAINER, GPU_RESOURCE, SIDECAR, Translation, Where
from gateway.domain.resources import QuantityError, cpu_millis, parse_quantity


def translate_replica(
    t: Translation, role: str, raw: Mapping[Any, Any], where: Where, *, port_name: str | None
) -> tuple[dict[str, Any], Mapping[Any, Any]]:
    """The fields every version shares, and the pod spec for the version-specific ones."""
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
    if isinstance(template.get("spec"), Mapping):
        _container(t, spec_at, pod, pod_at, replica, port_name)
    return replica, pod


def _container(
    t: Translation,
    spec_at: Where,
    pod: Mapping[Any, Any],
    pod_at: Where,
    replica: dict[str, Any],
    port_name: str | None,
) -> None:
    """Fill ``replica`` from the container named tensorflow; refuse every other container."""
    containers_at = (*pod_at, "containers")
    chosen: tuple[int, Mapping[Any, Any]] | None = None
    for index, raw in enumerate(t.sequence(pod.get("containers"), containers_at)):
        container = t.mapping(raw, (*containers_at, index), required=True)
        if container.get("name") != CONTAINER:
            t.add((*containers_at, index), f"Muster does not support sidecar containers: {SIDECAR}")
        elif chosen is not None:
            t.add((*containers_at, index, "name"), f"a second container named {CONTAINER}")
        else:
            chosen = (index, container)
    if chosen is None:
        t.add(containers_at, f"needs a container named {CONTAINER}: Muster runs that one")
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
    _pull_policy(t, container, at)
    replica["env"] = _env(t, spec_at, container.get("env"), (*at, "env"))
    _resources(t, spec_at, container.get("resources"), (*at, "resources"), replica)
    _port(t, spec_at, container.get("ports"), (*at, "ports"), replica, port_name)


def _pull_policy(t: Translation, container: Mapping[Any, Any], at: Where) -> None:
    """Muster's pods take Kubernetes' default pull policy; another could run another image."""
    policy, image = container.get("imagePullPolicy"), container.get("image")
    if policy is None or not isinstance(image, str):
        return
    # Kubernetes' default: Always for the tag latest or for no tag and no digest.
    name, _, digest = image.partition("@")
    tag = name.rpartition("/")[2].partition(":")[2]
    default = "Always" if tag == "latest" or not (tag or digest) else "IfNotPresent"
    if policy != default:
        t.add(
            (*at, "imagePullPolicy"),
            f"Muster does not support imagePullPolicy {policy}: its pods use Kubernetes' default "
            f"for this image, {default}",
        )


def _env(t: Translation, spec_at: Where, raw: object, at: Where) -> dict[str, Any]:
    env: dict[str, Any] = {}
    t.came_from((*spec_at, "env"), at)
    for index, entry in enumerate(t.sequence(raw, at)):
        entry = t.mapping(entry, (*at, index), required=True)
        t.screen("env", entry, (*at, index))
        name = entry.get("name")
        if not isinstance(name, str):
            t.add((*at, index, "name"), "is required" if name is None else "must be a string")
            continue
        # As in Kubernetes, the last entry of a name wins.
        value = entry.get("value")
        env[name] = "" if value is None else copy.deepcopy(value)
        t.came_from((*spec_at, "env", name), (*at, index))
    return env


def _resources(
    t: Translation, spec_at: Where, raw: object, at: Where, replica: dict[str, Any]
) -> None:
    """Limits, else requests, per resource; whole CPUs requested at their limit are exclusive."""
    resources = t.mapping(raw, at)
    t.screen("resources", resources, at)
    limits = t.mapping(resources.get("limits"), (*at, "limits"))
    requests = t.mapping(resources.get("requests"), (*at, "requests"))
    t.screen("amounts", limits, (*at, "limits"))
    t.screen("amounts", requests, (*at, "requests"))
    amounts: dict[str, Any] = {}
    for name, source in (("cpu", "cpu"), ("memory", "memory"), ("gpu", GPU_RESOURCE)):
        side, values = ("limits", limits) if source in limits else ("requests", requests)
        if source not in values:
            continue
        source_at = (*at, side, source)
        value = _gpu_count(t, values[source], source_at) if name == "gpu" else values[source]
        amounts[name] = copy.deepcopy(value)
        t.came_from((*spec_at, "resources", name), source_at)
    if amounts:
        replica["resources"] = amounts
        t.came_from((*spec_at, "resources"), at)
    limit = _millis(limits.get("cpu"))
    if limit is not None and limit > 0 and limit % 1000 == 0:
        requested = _millis(requests["cpu"]) if "cpu" in requests else limit
        replica["exclusive_cpus"] = requested == limit
        t.came_from((*spec_at, "exclusive_cpus"), at)


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
