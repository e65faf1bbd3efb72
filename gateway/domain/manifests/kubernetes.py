"""Kubernetes objects of a job: its parent ConfigMap, one Pod and one headless Service per replica.

The Kubernetes backend creates exactly what these functions return; they decide every field, the
backend only sends them. The objects follow the Kubeflow training operator (v1), so tools written
for TFJobs and PyTorchJobs find the pods and services where they expect them:

- Names: a pod and its Service are both ``pod_name(job, role, index)``; the parent is
  ``<job>-muster``, shortened with a hash suffix like a pod name when too long.
- Labels: ``training.kubeflow.org/job-name``, ``/replica-type`` (the role in lower case) and
  ``/replica-index``, plus ``muster.dev/job-id`` and ``muster.dev/tenant``. Every object also
  carries ``app.kubernetes.io/managed-by: muster``; pods carry ``muster.dev/attempt`` too, so a
  pod of an evicted attempt is told apart from the next one. The user's job labels go on pods and
  services underneath Muster's (the job spec refuses Muster's prefixes in them).
- Services: headless, selecting exactly job-name, replica-type and replica-index, on the port named
  like the operator's (``tfjob-port``, ``pytorchjob-port``; ``muster-port`` for generic jobs).
- Ownership: the parent ConfigMap owns every pod and service of the job, so deleting it
  garbage-collects the whole job in one call.

Stopping: each pod's ``terminationGracePeriodSeconds`` is its replica's grace period, else the
gateway's default, capped by the most an admin allows (``TerminationGrace``, passed in: nothing
here reads settings). Deleting the pod later asks for the same grace (``deleting.py``).

Placement: Muster has already checked fit, so each pod is pinned to its planned node by a required
node affinity on ``kubernetes.io/hostname`` and left to the default scheduler to bind; a
replica's own node affinity is merged in, never in its place (every required term of its own
gets the pinning added). Parameter servers also prefer distinct nodes through a pod
anti-affinity, as placement did.

GPU modes, from the planned node:

- device-plugin: whole devices only, requested as ``nvidia.com/gpu`` (requests equal limits); the
  plugin picks the devices and sets the container's visible devices itself.
- shared: no ``nvidia.com/gpu``; ``CUDA_VISIBLE_DEVICES`` lists the planned devices, and the pod
  tolerates the sharing taint ``muster.dev/gpu-sharing=true:NoSchedule``. A pod without GPU
  shares on a shared node gets an empty ``CUDA_VISIBLE_DEVICES``: the runtime exposes every
  device there, and a CPU-only TensorFlow replica would otherwise claim memory on all of them.

Pod fields: a replica's volumes, mounts, ``valueFrom`` and ``envFrom`` variables, working
directory, pull policy and secrets, service account, security contexts, init containers and host
namespaces (``gateway.domain.jobs.pod_fields``) are copied into the pod exactly as the replica
gives them; Muster's own fields are set first and never replaced (its variables win over a
``valueFrom`` of the same name, and over ``envFrom`` as Kubernetes lets ``env`` win).

Invariants:

- Pure and deterministic: the same arguments give equal dicts, with keys in the same order; every
  list that comes from a mapping or a set is sorted. Nothing reads the environment or the clock.
- Manifests are plain JSON values (dicts, lists, strings, ints, bools) with Kubernetes' camelCase
  field names, and valid in strict mode: no field Kubernetes does not know, no null values.
- A plan that disagrees with its spec (a name that is not ``pod_name(job, role, index)``, a role
  or index the job lacks, GPU shares the node's mode cannot serve) is refused with ``ValueError``
  rather than rendered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.domain.jobs.pod_fields import PodFields, parsed
from gateway.domain.jobs.pods import MAX_NAME, pod_name
from gateway.domain.jobs.spec import Framework, JobSpec, ReplicaSpec, TerminationGrace, Toleration
from gateway.domain.manifests.environment import kubernetes_addresses, replica_env
from gateway.domain.resources import format_cpu, format_extended, format_memory
from gateway.domain.scheduling.nodes import SHARES_PER_DEVICE, GpuMode
from gateway.domain.scheduling.queueing import Placement

__all__ = [
    "GPU_RESOURCE",
    "GPU_SHARING_KEY",
    "HOSTNAME_KEY",
    "LABEL_ATTEMPT",
    "LABEL_JOB_ID",
    "LABEL_JOB_NAME",
    "LABEL_MANAGED",
    "LABEL_REPLICA_INDEX",
    "LABEL_REPLICA_TYPE",
    "LABEL_TENANT",
    "MANAGER",
    "NODE_ANNOTATION",
    "Owner",
    "container_name",
    "job_labels",
    "parent_manifest",
    "parent_name",
    "parent_owner",
    "pod_manifest",
    "port_name",
    "replica_labels",
    "service_manifest",
]

LABEL_JOB_NAME = "training.kubeflow.org/job-name"
LABEL_REPLICA_TYPE = "training.kubeflow.org/replica-type"
LABEL_REPLICA_INDEX = "training.kubeflow.org/replica-index"
LABEL_JOB_ID = "muster.dev/job-id"
LABEL_TENANT = "muster.dev/tenant"
LABEL_ATTEMPT = "muster.dev/attempt"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "muster"

NODE_ANNOTATION = "muster.dev/node"
HOSTNAME_KEY = "kubernetes.io/hostname"
GPU_RESOURCE = "nvidia.com/gpu"
# Shared-GPU nodes carry this label, and may carry it as a NoSchedule taint to keep other pods off.
GPU_SHARING_KEY = "muster.dev/gpu-sharing"
PARENT_SUFFIX = "muster"
PS_ROLE = "ps"
PS_ANTI_AFFINITY_WEIGHT = 100

# The operator's default container and port names, so its tooling and users' habits carry over.
_CONTAINER_NAMES = {
    Framework.TENSORFLOW: "tensorflow",
    Framework.PYTORCH: "pytorch",
    Framework.GENERIC: "main",
}
_PORT_NAMES = {
    Framework.TENSORFLOW: "tfjob-port",
    Framework.PYTORCH: "pytorchjob-port",
    Framework.GENERIC: "muster-port",
}
_SHARING_TOLERATION = {
    "key": GPU_SHARING_KEY,
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Owner:
    """The object that owns a pod or service: deleting it garbage-collects them."""

    api_version: str
    kind: str
    name: str
    uid: str


def job_labels(*, job_id: str, job_name: str, tenant: str) -> dict[str, str]:
    """The labels that identify a job: they select every object of it."""
    return {LABEL_JOB_NAME: job_name, LABEL_JOB_ID: job_id, LABEL_TENANT: tenant}


def replica_labels(
    *, job_id: str, job_name: str, tenant: str, role: str, index: int
) -> dict[str, str]:
    """The job's labels plus the replica's type (lower case, as the operator) and index."""
    return job_labels(job_id=job_id, job_name=job_name, tenant=tenant) | {
        LABEL_REPLICA_TYPE: role.lower(),
        LABEL_REPLICA_INDEX: str(index),
    }


def container_name(framework: Framework) -> str:
    return _CONTAINER_NAMES[framework]


def port_name(framework: Framework) -> str:
    return _PORT_NAMES[framework]


def parent_name(job_name: str) -> str:
    """``<job>-muster``, cut and given a hash suffix of the full name like ``pod_name``."""
    full = f"{job_name}-{PARENT_SUFFIX}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    tail = f"-{PARENT_SUFFIX}-{digest}"
    return job_name[: MAX_NAME - len(tail)].rstrip("-") + tail


def parent_owner(*, job_name: str, uid: str) -> Owner:
    """The owner reference to the job's parent ConfigMap, once it exists and has a uid."""
    return Owner(api_version="v1", kind="ConfigMap", name=parent_name(job_name), uid=uid)


def parent_manifest(*, job_id: str, job_name: str, tenant: str, namespace: str) -> dict[str, Any]:
    """The ConfigMap that owns every pod and service of the job; it holds no data."""
    labels = job_labels(job_id=job_id, job_name=job_name, tenant=tenant)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": parent_name(job_name),
            "namespace": namespace,
            "labels": labels | {LABEL_MANAGED: MANAGER},
        },
    }


def pod_manifest(
    spec: JobSpec,
    plan: Placement,
    *,
    gpu_mode: GpuMode,
    job_id: str,
    tenant: str,
    namespace: str,
    attempt: int,
    owner: Owner | None,
    cluster_domain: str | None,
    grace: TerminationGrace,
    hostname: str | None = None,
) -> dict[str, Any]:
    """The Pod of one replica, pinned to its planned node (whose GPU mode is ``gpu_mode``, and
    whose ``kubernetes.io/hostname`` label is ``hostname``: on some clouds it differs from the
    node's name; None: the name), given the grace period ``grace`` says for its replica."""
    replica = _replica(spec, plan.role, plan.index)
    if plan.pod_name != pod_name(spec.name, plan.role, plan.index):
        raise ValueError(
            f"pod {plan.pod_name!r} should be named {pod_name(spec.name, plan.role, plan.index)!r}"
        )
    gpu_count, gpu_devices = _gpu_plan(plan, gpu_mode)
    env = replica_env(
        spec,
        role=plan.role,
        index=plan.index,
        addresses=kubernetes_addresses(spec, namespace, cluster_domain),
        gpu_devices=gpu_devices,
        cpu_millis=plan.cpu_millis,
    )
    labels = replica_labels(
        job_id=job_id, job_name=spec.name, tenant=tenant, role=plan.role, index=plan.index
    )
    metadata = _metadata(
        plan.pod_name,
        namespace,
        dict(spec.labels) | labels | {LABEL_ATTEMPT: str(attempt), LABEL_MANAGED: MANAGER},
        owner,
    )
    metadata["annotations"] = {NODE_ANNOTATION: plan.node}

    container: dict[str, Any] = {"name": container_name(spec.framework), "image": replica.image}
    if replica.command:
        container["command"] = list(replica.command)
    if replica.args:
        container["args"] = list(replica.args)
    container["env"] = _env(env, replica.pod)
    container["ports"] = [{"name": port_name(spec.framework), "containerPort": replica.port}]
    container["resources"] = _resources(replica, plan, gpu_count)
    _container_fields(container, replica.pod)

    pod_spec: dict[str, Any] = {
        # Muster restarts replicas itself, per the replica's restart policy and the job's backoff
        # limit, as the operator does for ExitCode: kubelet must not restart them behind its back,
        # or exit codes and restart counts would never reach the lifecycle decisions.
        "restartPolicy": "Never",
        # Between SIGTERM and SIGKILL when the pod is deleted (cancelled, preempted, evicted).
        "terminationGracePeriodSeconds": grace.of(replica),
        # Service links add variables for every Service in the namespace: a large gang would get
        # thousands, and they could shadow the contract's own.
        "enableServiceLinks": False,
        # No hostname or subdomain: as with the operator, peers reach a replica through its own
        # headless Service, named like the pod, not through a pod subdomain.
        "containers": [container],
        "affinity": _affinity(plan, job_id, replica.node_affinity, hostname or plan.node),
    }
    if replica.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(replica.node_selector))
    tolerations = [_toleration(t) for t in replica.tolerations]
    if gpu_mode is GpuMode.SHARED and _SHARING_TOLERATION not in tolerations:
        tolerations.append(dict(_SHARING_TOLERATION))
    if tolerations:
        pod_spec["tolerations"] = tolerations
    _pod_fields(pod_spec, replica.pod)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _env(env: dict[str, str], pod: PodFields) -> list[dict[str, Any]]:
    """Muster's variables and the replica's plain ones, with the replica's ``valueFrom`` ones,
    by name; a name Muster sets keeps Muster's value."""
    entries: dict[str, dict[str, Any]] = {
        name: {"name": name, "valueFrom": parsed(text)} for name, text in pod.env_value_from
    }
    entries |= {name: {"name": name, "value": value} for name, value in env.items()}
    return [entries[name] for name in sorted(entries)]


def _container_fields(container: dict[str, Any], pod: PodFields) -> None:
    """The main container's pod fields, exactly as the replica gives them."""
    if pod.env_from:
        # Kubernetes lets env win over envFrom, so Muster's variables still win.
        container["envFrom"] = [parsed(text) for text in pod.env_from]
    if pod.working_dir is not None:
        container["workingDir"] = pod.working_dir
    if pod.image_pull_policy is not None:
        container["imagePullPolicy"] = pod.image_pull_policy
    if pod.volume_mounts:
        container["volumeMounts"] = [parsed(text) for text in pod.volume_mounts]
    if pod.security_context is not None:
        container["securityContext"] = parsed(pod.security_context)


def _pod_fields(pod_spec: dict[str, Any], pod: PodFields) -> None:
    """The pod's own pod fields, exactly as the replica gives them; Muster's fields (pinning,
    restart policy, containers' names) are set already and none of these replaces them."""
    if pod.init_containers:
        pod_spec["initContainers"] = [parsed(text) for text in pod.init_containers]
    if pod.volumes:
        pod_spec["volumes"] = [parsed(text) for text in pod.volumes]
    if pod.service_account_name is not None:
        pod_spec["serviceAccountName"] = pod.service_account_name
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in pod.image_pull_secrets]
    if pod.pod_security_context is not None:
        pod_spec["securityContext"] = parsed(pod.pod_security_context)
    if pod.host_network:
        pod_spec["hostNetwork"] = True
        # Peers are still found through their Services' DNS names.
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if pod.host_pid:
        pod_spec["hostPID"] = True
    if pod.host_ipc:
        pod_spec["hostIPC"] = True


def service_manifest(
    spec: JobSpec,
    *,
    role: str,
    index: int,
    job_id: str,
    tenant: str,
    namespace: str,
    owner: Owner | None,
) -> dict[str, Any]:
    """The headless Service that gives replica (role, index) its stable DNS name."""
    replica = _replica(spec, role, index)
    labels = replica_labels(
        job_id=job_id, job_name=spec.name, tenant=tenant, role=role, index=index
    )
    # Exactly the operator's selector: the pods of every attempt match, so the Service outlives
    # evictions and restarts and the replica's address never changes.
    selector = {
        key: labels[key] for key in (LABEL_JOB_NAME, LABEL_REPLICA_TYPE, LABEL_REPLICA_INDEX)
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            pod_name(spec.name, role, index),
            namespace,
            dict(spec.labels) | labels | {LABEL_MANAGED: MANAGER},
            owner,
        ),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [
                {
                    "name": port_name(spec.framework),
                    "port": replica.port,
                    "targetPort": replica.port,
                }
            ],
        },
    }


def _replica(spec: JobSpec, role: str, index: int) -> ReplicaSpec:
    replica = spec.replica(role)
    if replica is None:
        raise ValueError(f"job {spec.name!r} has no {role!r} replica")
    if not 0 <= index < replica.count:
        raise ValueError(f"{role} index {index} is outside 0..{replica.count - 1}")
    return replica


def _metadata(
    name: str, namespace: str, labels: dict[str, str], owner: Owner | None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return metadata


def _gpu_plan(plan: Placement, gpu_mode: GpuMode) -> tuple[int, tuple[int, ...] | None]:
    """(whole devices to request from the device plugin, devices for CUDA_VISIBLE_DEVICES)."""
    shares = sum(s.shares for s in plan.gpu)
    if gpu_mode is GpuMode.DEVICE_PLUGIN:
        if shares % SHARES_PER_DEVICE:
            raise ValueError(
                f"pod {plan.pod_name!r}: a device-plugin node serves whole GPUs only, not "
                f"{shares} shares"
            )
        # The plugin picks the devices; the planned indices only account for how many are taken.
        return shares // SHARES_PER_DEVICE, None
    if gpu_mode is GpuMode.SHARED:
        # Sorted like the local backend's, so a replica sees its devices in the same order on both.
        # No shares: an empty tuple hides every device (see the module docstring).
        return 0, tuple(sorted({s.device for s in plan.gpu}))
    if shares:
        raise ValueError(f"pod {plan.pod_name!r} has GPU slices on node {plan.node!r} without GPUs")
    return 0, None


def _resources(replica: ReplicaSpec, plan: Placement, gpu_count: int) -> dict[str, Any]:
    cpu, memory = format_cpu(plan.cpu_millis), format_memory(plan.memory_bytes)
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    # A memory limit always: a replica over its reservation is killed, not its neighbours. A CPU
    # limit only for exclusive CPUs, where requests == limits gives Guaranteed QoS and kubelet's
    # static CPU manager pins whole cores. Otherwise there is none: a CFS quota throttles bursty
    # input pipelines, and the thread variables are already sized to the request.
    limits: dict[str, str] = {"cpu": cpu, "memory": memory} if replica.exclusive_cpus else {}
    limits.setdefault("memory", memory)
    if gpu_count:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpu_count)
    # Extended resources as placement counted them: never over-committed, request == limit.
    for name, amount in plan.extended:
        requests[name] = limits[name] = format_extended(name, amount)
    return {"requests": requests, "limits": limits}


def _affinity(
    plan: Placement, job_id: str, node_affinity: str | None, hostname: str
) -> dict[str, Any]:
    """Muster's pinning to the planned node, merged with the replica's own node affinity: each
    of its required terms (any of which must match) gets the pinning added (so every term pins),
    and its preferred terms are kept as they are."""
    pinned = {"key": HOSTNAME_KEY, "operator": "In", "values": [hostname]}
    own: Mapping[str, Any] = {} if node_affinity is None else parsed(node_affinity)
    required = own.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = [
        {**term, "matchExpressions": [*(term.get("matchExpressions") or ()), pinned]}
        for term in required.get("nodeSelectorTerms") or ()
    ] or [{"matchExpressions": [pinned]}]
    node: dict[str, Any] = {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
    }
    preferred = own.get("preferredDuringSchedulingIgnoredDuringExecution")
    if preferred:
        node["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    affinity: dict[str, Any] = {"nodeAffinity": node}
    if plan.role == PS_ROLE:
        # Preferred, not required: placement spreads parameter servers when it can and packs
        # them when it must; a required rule would leave a packed gang unschedulable.
        affinity["podAntiAffinity"] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": PS_ANTI_AFFINITY_WEIGHT,
                    "podAffinityTerm": {
                        "labelSelector": {
                            "matchLabels": {LABEL_JOB_ID: job_id, LABEL_REPLICA_TYPE: PS_ROLE}
                        },
                        "topologyKey": HOSTNAME_KEY,
                    },
                }
            ]
        }
    return affinity


def _toleration(toleration: Toleration) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in (
        ("key", toleration.key),
        ("operator", toleration.operator),
        ("value", toleration.value),
        ("effect", toleration.effect),
        ("tolerationSeconds", toleration.toleration_seconds),
    ):
        if value is not None:
            result[key] = value
    return result
