"""Kubeflow PyTorchJob manifests (kubeflow.org/v1) translated into Muster job specs.

``POST /v1/jobs`` accepts a PyTorchJob as it accepts a TFJob (``kubeflow.py`` tells the kinds
apart). The walk is the TFJob's, with its parts from ``tfjob.py`` (metadata, run policy,
scheduling policy, priority class, replica specs) and ``tfjob_replica.py`` (one replica's pod and
container); this module holds what differs: the kind, the replica types, the container and port,
the operator's defaults, and the spec's own fields. The replicas then get the environment the
training operator gives a PyTorchJob's (``gateway.domain.manifests.environment``).

Invariants:
- As for a TFJob, nothing changes the run silently: every field is honoured, ignored with a
  reason, or refused with a problem pointing at it; ``translate_pytorchjob`` and
  ``relocate_problems`` never raise on any JSON-like value, and never return both a spec and
  problems.
- Replica types are Master (rank 0; ``check_job_spec`` keeps it to exactly one pod) and Worker
  (ranks 1 to n), their keys compared ignoring case as the operator's defaulting does.
- Defaults are the operator's (``pytorch_defaults.go``, ``pytorch_types.go``): 1 replica,
  ``restartPolicy`` OnFailure, port 23456 named ``pytorchjob-port`` on the container named
  ``pytorch``, ``cleanPodPolicy`` None, ``nprocPerNode`` auto.
- ``elasticPolicy`` is refused whatever it holds, even ``{}`` (the operator turns elastic mode on
  for any policy): Muster runs fixed-size gangs. ``nprocPerNode`` passes only as ``auto``, the
  default that Muster's environment states (``PET_NPROC_PER_NODE=auto``, one rank per pod).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.domain.jobs.tfjob import (
    ReplicaForm,
    ReplicaPod,
    translate_metadata,
    translate_priority_class,
    translate_replica_specs,
    translate_run_policy,
    translate_scheduling_policy,
)
from gateway.domain.jobs.tfjob_fields import RUN_POLICY_FIELDS, Translation, Where
from gateway.domain.problems import FieldProblem

KIND = "PyTorchJob"
API_VERSION = "kubeflow.org/v1"
CONTAINER = "pytorch"
PORT_NAME = "pytorchjob-port"
DEFAULT_PORT = 23456
DEFAULT_CLEAN_POD_POLICY = "None"
DEFAULT_NPROC_PER_NODE = "auto"

FORM = ReplicaForm(
    kind=KIND,
    specs="pytorchReplicaSpecs",
    types=("Master", "Worker"),
    container=CONTAINER,
    port_name=PORT_NAME,
    default_port=DEFAULT_PORT,
    default_restart_policy="OnFailure",
)

# What becomes of each field of spec: honoured, dropped (with why it cannot change the run), or
# refused (with the reason given to the submitter) unless its value changes nothing.
SPEC_HONOURED = frozenset({"pytorchReplicaSpecs", "runPolicy", *RUN_POLICY_FIELDS})
SPEC_IGNORED: Mapping[str, str] = {}
FIXED_SIZE = "Muster runs fixed-size gangs"
SPEC_REFUSED: Mapping[str, str] = {
    "elasticPolicy": f"{FIXED_SIZE}: give Master and Worker a fixed number of replicas, which "
    "the job is admitted with and keeps until it ends",
    "nprocPerNode": f"Muster sets PET_NPROC_PER_NODE={DEFAULT_NPROC_PER_NODE} (the operator's "
    "default) and counts one rank per pod in WORLD_SIZE; start torchrun with --nproc-per-node "
    "in the container's command instead",
}
SPEC_HARMLESS: Mapping[str, tuple[object, ...]] = {"nprocPerNode": (DEFAULT_NPROC_PER_NODE,)}


def is_pytorchjob(document: object) -> bool:
    """Whether a request body is a PyTorchJob manifest of the version Muster translates."""
    return (
        isinstance(document, Mapping)
        and document.get("kind") == KIND
        and document.get("apiVersion") == API_VERSION
    )


def translate_pytorchjob(
    document: Mapping[str, Any], *, tenant: str | None
) -> dict[str, Any] | list[FieldProblem]:
    """The Muster job spec equivalent to a PyTorchJob manifest, or every problem, pointing into
    it. ``tenant`` is the tenant the caller submits for; ``None`` takes it from
    metadata.namespace."""
    return _translate(document, tenant).outcome(KIND)


def relocate_problems(
    document: Mapping[str, Any], problems: Sequence[FieldProblem], *, tenant: str | None
) -> list[FieldProblem]:
    """Re-point problems found in the translated spec at the manifest fields they came from."""
    return _translate(document, tenant).relocated(problems)


def _translate(document: Mapping[str, Any], tenant: str | None) -> Translation:
    t = Translation()
    if not isinstance(document, Mapping):
        t.add((), "a PyTorchJob manifest must be an object")
        return t
    # 1. The envelope: what the manifest is.
    if document.get("kind") != KIND:
        t.add(("kind",), f"must be {KIND}")
    if document.get("apiVersion") != API_VERSION:
        t.add(("apiVersion",), f"must be {API_VERSION}")
    t.screen("manifest", document, ())
    # 2. Metadata: the job's name, tenant and labels, as for a TFJob.
    metadata = t.mapping(document.get("metadata"), ("metadata",), required=True)
    t.screen("metadata", metadata, ("metadata",))
    spec: dict[str, Any] = {}
    translate_metadata(t, metadata, tenant, spec)
    spec["framework"] = "pytorch"
    # 3. The replicas and run policy, with the operator's defaults.
    body = t.mapping(document.get("spec"), ("spec",), required=True)
    _screen_spec(t, body)
    pods: list[ReplicaPod] = []
    spec["replicas"] = translate_replica_specs(t, body, pods, FORM)
    run_policy = translate_run_policy(t, body)
    run_policy.setdefault("clean_pod_policy", DEFAULT_CLEAN_POD_POLICY)
    spec["run_policy"] = run_policy
    scheduling = translate_scheduling_policy(t, body, spec["replicas"])
    labels = metadata.get("labels")
    spec["labels"] = {} if labels is None else copy.deepcopy(labels)
    t.came_from(("labels",), ("metadata", "labels"), same_shape=True)
    # 4. The priority class, which the whole gang shares.
    translate_priority_class(t, scheduling, pods, spec)
    if not t.problems:
        t.spec = spec
    return t


def _screen_spec(t: Translation, body: Mapping[Any, Any]) -> None:
    """Refuse every field of spec that is neither honoured nor ignored, as ``Translation.screen``
    does for the parts a TFJob shares."""
    at: Where = ("spec",)
    for key, value in body.items():
        if key in SPEC_HONOURED or key in SPEC_IGNORED:
            continue
        if key not in SPEC_REFUSED:
            t.add((*at, str(key)), f"Muster does not support {key}")
        elif value is not None and not _harmless(str(key), value):
            t.add((*at, str(key)), f"Muster does not support {key}: {SPEC_REFUSED[key]}")


def _harmless(key: str, value: object) -> bool:
    # By type as well as value, as for a TFJob's fields; an empty elasticPolicy is not harmless.
    return any(type(value) is type(fine) and value == fine for fine in SPEC_HARMLESS.get(key, ()))
