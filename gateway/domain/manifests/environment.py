"""The environment of one replica: the same contract on Kubernetes and on the local backend.

A replica learns its place in the gang from its environment alone. This module computes that
environment from the job spec, the gang's addresses and the replica's planned resources; the
backends differ only in the addresses they pass (``kubernetes_addresses``: headless Service names,
``local_addresses``: 127.0.0.1 with distinct ports).

The formats follow the Kubeflow training operator (v1, ``pkg/controller.v1``), so a training
script written for a TFJob or PyTorchJob runs unchanged:

- ``TF_CONFIG`` (framework tensorflow, more than one replica in the job, as ``isDistributed``):
  ``{"cluster":{...},"task":{"type":...,"index":...},"environment":"cloud"}`` with no spaces, keys
  in that order, cluster roles sorted by name, each a list of ``host:port`` in index order, the
  evaluator included (``genTFConfigJSONStr``).
- PyTorch (framework pytorch): ``MASTER_ADDR``/``MASTER_PORT`` of master 0 (for the master too),
  ``MASTER_ADDR`` being the master's Service name on Kubernetes (``<job>-master-0``, resolved in
  the pod's namespace, as the operator's ``replicaName``), ``WORLD_SIZE`` (one process per pod),
  ``RANK`` (master 0, worker i is i + 1), their ``PET_`` twins for torchrun (``PET_MASTER_ADDR``,
  ``PET_MASTER_PORT``, ``PET_NODE_RANK``, ``PET_NNODES``, ``PET_NPROC_PER_NODE=auto``, the
  operator's default) and ``PYTHONUNBUFFERED=1`` (``envvar.go``, ``master.go`` of v1.9).

Muster adds the device plan of shared-GPU nodes (``CUDA_VISIBLE_DEVICES``, ``CUDA_DEVICE_ORDER``),
thread counts sized to the pod's CPU, and the replica's identity (``MUSTER_*``).

Invariants:
- ``replica_env`` is a pure function of its arguments; it reads no process environment.
- The result maps names to strings with its keys in sorted order, so a rendered pod spec or a
  subprocess environment is the same for the same inputs.
- Precedence: the user's env is the base; every variable Muster sets replaces the user's, except
  the thread variables, which are defaults a user-set value keeps.
- Every (role, index) of the gang has exactly one address; a mapping that lacks one, or names a
  replica the spec does not have, is refused with ``ValueError`` rather than rendered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from gateway.domain.jobs.pods import pod_name
from gateway.domain.jobs.spec import Framework, JobSpec

LOCAL_HOST = "127.0.0.1"

# The operator's default nproc_per_node for a PyTorchJob without an elastic policy.
DEFAULT_NPROC_PER_NODE = "auto"

# Sized to the pod's CPU unless the user sets them: without this, each library starts one thread
# per core of the node, and a pod with 2 CPUs on a 64-core node thrashes.
THREAD_VARIABLES = (
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)

ReplicaKey = tuple[str, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class Address:
    """Where a replica listens: a host name or IP address, and a TCP port; on Kubernetes also the
    name of the replica's Service, which a pod of the same namespace resolves (the operator gives
    PyTorch replicas that bare name as MASTER_ADDR, and TF_CONFIG the full ``host``)."""

    host: str
    port: int
    service: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("an address needs a host")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is outside 1..65535")

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def replica_keys(spec: JobSpec) -> Iterator[ReplicaKey]:
    """Every (role, index) of the gang, in the spec's role order and index order."""
    for replica in spec.replicas:
        for index in range(replica.count):
            yield replica.role, index


def kubernetes_addresses(
    spec: JobSpec, namespace: str, cluster_domain: str | None
) -> dict[ReplicaKey, Address]:
    """The headless Service of each replica: ``<pod>.<namespace>.svc[.<cluster_domain>]``.

    The cluster domain is appended after ``svc`` exactly as the operator's CUSTOM_CLUSTER_DOMAIN
    is; an empty one counts as unset.
    """
    suffix = f".{namespace}.svc" + (f".{cluster_domain}" if cluster_domain else "")
    return {
        (replica.role, index): Address(host=name + suffix, port=replica.port, service=name)
        for replica in spec.replicas
        for index in range(replica.count)
        for name in (pod_name(spec.name, replica.role, index),)
    }


def local_addresses(spec: JobSpec, ports: Mapping[ReplicaKey, int]) -> dict[ReplicaKey, Address]:
    """The local backend's addresses: 127.0.0.1 with the port chosen for each replica."""
    _check_covers(spec, ports, "ports")
    return {key: Address(host=LOCAL_HOST, port=ports[key]) for key in replica_keys(spec)}


def replica_env(
    spec: JobSpec,
    *,
    role: str,
    index: int,
    addresses: Mapping[ReplicaKey, Address],
    gpu_devices: tuple[int, ...] | None,
    cpu_millis: int,
) -> dict[str, str]:
    """The full environment of replica (role, index): the user's env merged with Muster's.

    ``gpu_devices`` is the planned device indices on a shared-GPU node, in the order CUDA should
    number them; None leaves CUDA_VISIBLE_DEVICES unset (device-plugin nodes, where the plugin sets
    it, and pods without a GPU). An empty tuple hides every device. ``cpu_millis`` is the pod's CPU
    limit.
    """
    replica = spec.replica(role)
    if replica is None:
        raise ValueError(f"job {spec.name!r} has no {role!r} replica")
    if not 0 <= index < replica.count:
        raise ValueError(f"{role} index {index} is outside 0..{replica.count - 1}")
    _check_covers(spec, addresses, "addresses")

    # 1. The user's variables are the base.
    env = dict(replica.env)
    # 2. Thread counts are defaults: a user who tuned them keeps the values.
    threads = str(max(1, cpu_millis // 1000))
    for name in THREAD_VARIABLES:
        env.setdefault(name, threads)
    # 3. Topology, devices and identity always win: a stale copy in the user's env would point
    #    the replica at the wrong peers or devices.
    env.update(_identity(spec, role, index))
    env.update(_gpu(gpu_devices))
    if spec.framework is Framework.TENSORFLOW:
        env.update(_tensorflow(spec, role, index, addresses))
    elif spec.framework is Framework.PYTORCH:
        env.update(_pytorch(spec, role, index, addresses))
    return dict(sorted(env.items()))


def tf_config(
    spec: JobSpec, *, role: str, index: int, addresses: Mapping[ReplicaKey, Address]
) -> str:
    """TF_CONFIG as the operator's ``json.Marshal(TFConfig{...})`` writes it, byte for byte.

    Go marshals the struct's fields in declaration order (cluster, task, environment), sorts map
    keys, and puts no spaces between tokens.
    """
    cluster = {
        replica.role: [str(addresses[replica.role, i]) for i in range(replica.count)]
        for replica in sorted(spec.replicas, key=lambda r: r.role)
    }
    config = {
        "cluster": cluster,
        "task": {"type": role, "index": index},
        "environment": "cloud",
    }
    return json.dumps(config, separators=(",", ":"))


def _identity(spec: JobSpec, role: str, index: int) -> dict[str, str]:
    return {
        "MUSTER_JOB_NAME": spec.name,
        "MUSTER_REPLICA_TYPE": role,
        "MUSTER_REPLICA_INDEX": str(index),
    }


def _gpu(gpu_devices: tuple[int, ...] | None) -> dict[str, str]:
    if gpu_devices is None:
        return {}
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(device) for device in gpu_devices),
    }


def _tensorflow(
    spec: JobSpec, role: str, index: int, addresses: Mapping[ReplicaKey, Address]
) -> dict[str, str]:
    # A single replica trains locally; the operator gives it no TF_CONFIG (isDistributed).
    if spec.pod_count == 1:
        return {}
    return {"TF_CONFIG": tf_config(spec, role=role, index=index, addresses=addresses)}


def _pytorch(
    spec: JobSpec, role: str, index: int, addresses: Mapping[ReplicaKey, Address]
) -> dict[str, str]:
    nodes = str(spec.pod_count)
    env = {
        "PYTHONUNBUFFERED": "1",
        "PET_NNODES": nodes,
        "PET_NPROC_PER_NODE": DEFAULT_NPROC_PER_NODE,
    }
    # As in the operator, the rendezvous variables exist only when there is a master to point at;
    # a checked spec always has one.
    if spec.replica("master") is None:
        return env
    master = addresses["master", 0]
    host = master.service or master.host
    rank = str(index + 1 if role == "worker" else index)
    env |= {
        "MASTER_ADDR": host,
        "MASTER_PORT": str(master.port),
        "PET_MASTER_ADDR": host,
        "PET_MASTER_PORT": str(master.port),
        # One process per pod: the operator counts "auto" as 1 when it sizes the world.
        "WORLD_SIZE": nodes,
        "RANK": rank,
        "PET_NODE_RANK": rank,
    }
    return env


def _check_covers(spec: JobSpec, given: Mapping[ReplicaKey, object], what: str) -> None:
    expected = set(replica_keys(spec))
    missing = sorted(expected - given.keys())
    unknown = sorted(set(given) - expected)
    if missing or unknown:
        raise ValueError(
            f"{what} of job {spec.name!r} must cover exactly its replicas; "
            f"missing {missing}, not in the job {unknown}"
        )
