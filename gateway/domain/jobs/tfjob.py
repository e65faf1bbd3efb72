"""Kubeflow TFJob manifests (kubeflow.org/v1alpha1 to v1) translated into Muster job specs.

``POST /v1/jobs`` also accepts a TFJob. The shell parses the body, asks ``is_tfjob``, and hands the
manifest to ``translate_tfjob``, which returns the equivalent Muster job spec document (the dict
that ``check_job_spec`` reads) or every problem found, each pointing into the manifest. The shell
then checks the spec like any other (the schema, then ``check_job_spec``) and re-points those
problems at the manifest with ``relocate_problems``. This module walks the manifest (envelope,
metadata, replica types, run policy); ``tfjob_replica.py`` translates one replica's pod and
container, and ``tfjob_fields.py`` lists what becomes of every field. ``pytorchjob.py`` walks a
PyTorchJob with the same parts: the public functions here that take a ``Translation``.

Invariants:
- Nothing changes the run silently. Every field of the manifest is honoured, or listed in
  ``IGNORED`` with the reason it cannot change the run, or refused with a problem: the message in
  ``REFUSED`` where the field is known, "Muster does not support <field>" otherwise. A refused
  field written with a value that changes nothing (``hostNetwork: false``, ``volumes: []``) passes.
- ``translate_tfjob`` and ``relocate_problems`` never raise on any JSON-like value, and never return
  both a spec and problems.
- The translator interprets only what it must (the structure it walks, replica types, the
  container named ``tensorflow``, env entries, resources, ports). Every other value is deep-copied
  verbatim and judged later by the schema and ``check_job_spec``, so the rules live in one place.
- Defaults are the operator's where Muster has the same one (1 replica, ``restartPolicy`` Never,
  port 2222, ``cleanPodPolicy`` Running); where the TFJob has none, Muster's apply
  (``backoffLimit`` 3). A replica type with ``replicas: 0`` runs no pod and is left out.
- A gang runs at one priority: the job's priority class is
  ``spec.runPolicy.schedulingPolicy.priorityClass`` and every replica's pod
  ``priorityClassName``, which must all name the same class where given (a replica that names
  none, beside one that names a class, differs from it). Whether the tenant may use it is the
  submit's to say, as for any job spec. ``schedulingPolicy.minAvailable`` passes only as the size
  of the whole gang, which is what Muster admits.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.domain.jobs.tfjob_fields import (
    API_VERSIONS,
    CONTAINER,
    KIND,
    LIST_FORM_VERSION,
    PORT_NAME,
    REPLICA_TYPES,
    RUN_POLICY_FIELDS,
    Translation,
    Where,
)
from gateway.domain.jobs.tfjob_replica import translate_replica
from gateway.domain.problems import FieldProblem, pointer

#: A replica's pod spec, with where it sits in the manifest.
ReplicaPod = tuple[Where, Mapping[Any, Any]]


def is_tfjob(document: object) -> bool:
    """Whether a request body is a TFJob manifest of a version Muster translates."""
    return (
        isinstance(document, Mapping)
        and document.get("kind") == KIND
        and _supported(document.get("apiVersion"))
    )


def _supported(api_version: object) -> bool:
    # A frozenset lookup hashes its argument, and a list or object in the manifest is unhashable.
    return isinstance(api_version, str) and api_version in API_VERSIONS


def translate_tfjob(
    document: Mapping[str, Any], *, tenant: str | None
) -> dict[str, Any] | list[FieldProblem]:
    """The Muster job spec equivalent to a TFJob manifest, or every problem, pointing into it.

    ``tenant`` is the tenant the caller submits for; ``None`` takes it from metadata.namespace.
    """
    return _translate(document, tenant).outcome("TFJob")


def relocate_problems(
    document: Mapping[str, Any], problems: Sequence[FieldProblem], *, tenant: str | None
) -> list[FieldProblem]:
    """Re-point problems found in the translated spec at the manifest fields they came from.

    A pointer with no known origin goes to the closest field that has one, else to the manifest.
    """
    return _translate(document, tenant).relocated(problems)


def _translate(document: Mapping[str, Any], tenant: str | None) -> Translation:
    t = Translation()
    if not isinstance(document, Mapping):
        t.add((), "a TFJob manifest must be an object")
        return t
    # 1. The envelope: what the manifest is.
    if document.get("kind") != KIND:
        t.add(("kind",), f"must be {KIND}")
    api_version = document.get("apiVersion")
    if not _supported(api_version):
        t.add(("apiVersion",), "must be one of " + ", ".join(sorted(API_VERSIONS)))
    t.screen("manifest", document, ())
    # 2. Metadata: the job's name, tenant and labels.
    metadata = t.mapping(document.get("metadata"), ("metadata",), required=True)
    t.screen("metadata", metadata, ("metadata",))
    spec: dict[str, Any] = {}
    translate_metadata(t, metadata, tenant, spec)
    spec["framework"] = "tensorflow"
    # 3. The replicas and run policy, in the form of the manifest's version.
    body = t.mapping(document.get("spec"), ("spec",), required=True)
    pods: list[ReplicaPod] = []
    scheduling: Mapping[Any, Any] = {}
    if api_version == LIST_FORM_VERSION:
        t.screen("spec (v1alpha1)", body, ("spec",))
        spec["replicas"] = _list_form_replicas(t, body, pods)
        spec["run_policy"] = {}
        t.came_from(("run_policy",), ("spec",))
    elif _supported(api_version):
        t.screen("spec", body, ("spec",))
        spec["replicas"] = translate_replica_specs(t, body, pods, TFJOB_FORM)
        spec["run_policy"] = translate_run_policy(t, body)
        scheduling = translate_scheduling_policy(t, body, spec["replicas"])
    labels = metadata.get("labels")
    spec["labels"] = {} if labels is None else copy.deepcopy(labels)
    t.came_from(("labels",), ("metadata", "labels"), same_shape=True)
    # 4. The priority class, which the whole gang shares.
    translate_priority_class(t, scheduling, pods, spec)
    if not t.problems:
        t.spec = spec
    return t


def translate_metadata(
    t: Translation, metadata: Mapping[Any, Any], tenant: str | None, spec: dict[str, Any]
) -> None:
    if metadata.get("name") is None:
        t.add(("metadata", "name"), "is required")
    spec["name"] = copy.deepcopy(metadata.get("name"))
    t.came_from(("name",), ("metadata", "name"))
    namespace = metadata.get("namespace")
    if tenant is None:
        if namespace is None:
            t.add(("metadata", "namespace"), "is required: it names the tenant")
        spec["tenant"] = copy.deepcopy(namespace)
        t.came_from(("tenant",), ("metadata", "namespace"))
    else:
        if namespace is not None and namespace != tenant:
            t.add(
                ("metadata", "namespace"),
                f"the job is submitted for tenant {tenant!r}; its namespace must be that or absent",
            )
        spec["tenant"] = tenant


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicaForm:
    """How a kind of Kubeflow job keys its replica specs (v1's map form), and its operator's
    defaults for one: the container that runs, the port's name and default, the restart policy."""

    kind: str
    specs: str
    types: tuple[str, ...]
    container: str
    port_name: str
    #: None: the replica's port is Muster's default, which is the operator's too.
    default_port: int | None
    default_restart_policy: str


TFJOB_FORM = ReplicaForm(
    kind=KIND,
    specs="tfReplicaSpecs",
    types=("Chief", "Master", "Worker", "PS", "Evaluator"),
    container=CONTAINER,
    port_name=PORT_NAME,
    default_port=None,
    default_restart_policy="Never",
)


def translate_replica_specs(
    t: Translation, body: Mapping[Any, Any], pods: list[ReplicaPod], form: ReplicaForm
) -> dict[str, Any]:
    """The replica specs of ``spec.<form.specs>``, keyed by replica type (case ignored)."""
    at: Where = ("spec", form.specs)
    t.came_from(("replicas",), at)
    replicas: dict[str, Any] = {}
    seen: set[str] = set()
    roles = [name.lower() for name in form.types]
    for key, raw in t.mapping(body.get(form.specs), at, required=True).items():
        where = (*at, str(key))
        role = key.lower() if isinstance(key, str) else None
        if role not in roles:
            *others, last = form.types
            t.add(
                where,
                f"{key!r} is not a {form.kind} replica type; use {', '.join(others)} or {last}",
            )
            continue
        if role in seen:
            t.add(where, f"a second {role} replica spec (replica types ignore case)")
            continue
        seen.add(role)
        raw = t.mapping(raw, where, required=True)
        t.screen("replica", raw, where)
        if none_wanted(raw):
            continue
        replica, pod = translate_replica(
            t, role, raw, where, port_name=form.port_name, container=form.container
        )
        keep_pod(pods, where, pod)
        if form.default_port is not None:
            replica.setdefault("port", form.default_port)
        restart = raw.get("restartPolicy")
        replica["restart_policy"] = (
            form.default_restart_policy if restart is None else copy.deepcopy(restart)
        )
        if restart is not None:
            t.came_from(("replicas", role, "restart_policy"), (*where, "restartPolicy"))
        replicas[role] = replica
    return replicas


def _list_form_replicas(
    t: Translation, body: Mapping[Any, Any], pods: list[ReplicaPod]
) -> dict[str, Any]:
    at: Where = ("spec", "replicaSpecs")
    t.came_from(("replicas",), at)
    replicas: dict[str, Any] = {}
    seen: set[str] = set()
    for index, raw in enumerate(t.sequence(body.get("replicaSpecs"), at)):
        where = (*at, index)
        raw = t.mapping(raw, where, required=True)
        t.screen("replica (v1alpha1)", raw, where)
        kind = raw.get("tfReplicaType", "MASTER")  # the operator's default
        role = kind.lower() if isinstance(kind, str) else None
        if role not in REPLICA_TYPES:
            t.add((*where, "tfReplicaType"), "must be one of CHIEF, MASTER, WORKER, PS, EVALUATOR")
            continue
        if role in seen:
            t.add((*where, "tfReplicaType"), f"a second {kind} replica spec")
            continue
        seen.add(role)
        if none_wanted(raw):
            continue
        # v1alpha1 takes the TF port from tfPort, never from the container's ports.
        replica, pod = translate_replica(t, role, raw, where, port_name=None)
        keep_pod(pods, where, pod)
        # v1alpha1 runs the pod's own restart policy; later versions have one per replica type.
        restart = pod.get("restartPolicy")
        replica["restart_policy"] = "Never" if restart is None else copy.deepcopy(restart)
        if restart is not None:
            t.came_from(
                ("replicas", role, "restart_policy"), (*where, "template", "spec", "restartPolicy")
            )
        if raw.get("tfPort") is not None:
            replica["port"] = copy.deepcopy(raw["tfPort"])
            t.came_from(("replicas", role, "port"), (*where, "tfPort"))
        replicas[role] = replica
    if replicas:
        _termination_policy(t, body, replicas)
    return replicas


def keep_pod(pods: list[ReplicaPod], where: Where, pod: Mapping[Any, Any]) -> None:
    """Keep a replica's pod spec for its priority class. An empty one (or none) is left out: it
    names no class, and having no container, it is refused anyway."""
    if pod:
        pods.append(((*where, "template", "spec"), pod))


def none_wanted(raw: Mapping[Any, Any]) -> bool:
    count = raw.get("replicas")
    return type(count) is int and count == 0


def _termination_policy(
    t: Translation, body: Mapping[Any, Any], replicas: Mapping[str, Any]
) -> None:
    """v1alpha1 names the replica whose exit ends the job; Muster's rule must name the same one."""
    raw = body.get("terminationPolicy")
    if raw is None:
        return
    chief = raw.get("chief") if isinstance(raw, Mapping) else None
    deciding = next((role for role in ("chief", "master") if role in replicas), "worker")
    if isinstance(chief, Mapping):
        name, index = chief.get("replicaName"), chief.get("replicaIndex")
        first = index is None or (type(index) is int and index == 0)
        if isinstance(name, str) and name.lower() == deciding and first:
            return
    t.add(
        ("spec", "terminationPolicy"),
        f"Muster does not support this terminationPolicy: the job ends with {deciding} 0 "
        "(the chief, else the master, else worker 0)",
    )


def translate_run_policy(t: Translation, body: Mapping[Any, Any]) -> dict[str, Any]:
    """spec.runPolicy (v1), or the same fields directly in spec (v1alpha2 to early v1)."""
    policy_at: Where = ("spec", "runPolicy")
    nested = t.mapping(body.get("runPolicy"), policy_at)
    t.screen("runPolicy", nested, policy_at)
    t.came_from(("run_policy",), policy_at if "runPolicy" in body else ("spec",))
    run_policy: dict[str, Any] = {}
    for source, name in RUN_POLICY_FIELDS.items():
        inner, outer = nested.get(source), body.get(source)
        if inner is not None and outer is not None and inner != outer:
            t.add(("spec", source), f"differs from spec.runPolicy.{source}")
        if inner is not None:
            run_policy[name] = copy.deepcopy(inner)
            t.came_from(("run_policy", name), (*policy_at, source))
        elif outer is not None:
            run_policy[name] = copy.deepcopy(outer)
            t.came_from(("run_policy", name), ("spec", source))
    success = body.get("successPolicy")
    if success not in (None, ""):
        run_policy["success_policy"] = copy.deepcopy(success)
        t.came_from(("run_policy", "success_policy"), ("spec", "successPolicy"))
    return run_policy


def translate_scheduling_policy(
    t: Translation, body: Mapping[Any, Any], replicas: Mapping[str, Any]
) -> Mapping[Any, Any]:
    """spec.runPolicy.schedulingPolicy (v1): its priorityClass is taken by
    ``translate_priority_class``; minAvailable passes only as the size of the whole gang; the rest
    is refused."""
    policy_at: Where = ("spec", "runPolicy")
    nested = body.get("runPolicy")
    raw = nested.get("schedulingPolicy") if isinstance(nested, Mapping) else None
    at: Where = (*policy_at, "schedulingPolicy")
    policy = t.mapping(raw, at)
    t.screen("schedulingPolicy", policy, at)
    minimum = policy.get("minAvailable")
    counts = [replica.get("count") for replica in replicas.values()]
    if minimum is not None and all(type(count) is int for count in counts):
        gang = sum(counts)
        if type(minimum) is not int or minimum != gang:
            t.add(
                (*at, "minAvailable"),
                f"Muster does not support minAvailable {minimum!r}: it admits the whole gang of "
                f"{gang} pods or none of it (leave minAvailable out, or make it {gang})",
            )
    return policy


def translate_priority_class(
    t: Translation, scheduling: Mapping[Any, Any], pods: Sequence[ReplicaPod], spec: dict[str, Any]
) -> None:
    """The job's priority class: schedulingPolicy.priorityClass and each replica's
    priorityClassName, which must name the same class wherever one is named (an empty name is
    none, as in Kubernetes)."""
    named: list[tuple[Where, object]] = []
    wanted = scheduling.get("priorityClass")
    if wanted not in (None, ""):
        named.append((("spec", "runPolicy", "schedulingPolicy", "priorityClass"), wanted))
    in_pods = [((*at, "priorityClassName"), pod.get("priorityClassName")) for at, pod in pods]
    if any(value not in (None, "") for _, value in in_pods):
        # Once one replica names a class, every one must: a pod without it runs at another.
        named += [(at, None if value == "" else value) for at, value in in_pods]
    if not named:
        return
    first_at, first = named[0]
    for at, value in named[1:]:
        if type(value) is not type(first) or value != first:
            t.add(
                at,
                f"{_names(value)}, but {pointer(*first_at)} {_names(first)}: every pod of a "
                "gang runs at one priority",
            )
    spec["priority_class"] = copy.deepcopy(first)
    t.came_from(("priority_class",), first_at)


def _names(value: object) -> str:
    return "names no priority class" if value is None else f"names priority class {value!r}"
