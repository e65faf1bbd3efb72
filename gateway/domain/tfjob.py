"""Kubeflow TFJob manifests (kubeflow.org/v1alpha1 to v1) translated into Muster job specs.

``POST /v1/jobs`` also accepts a TFJob. The shell parses the body, asks ``is_tfjob``, and hands the
manifest to ``translate_tfjob``, which returns the equivalent Muster job spec document (the dict
that ``check_job_spec`` reads) or every problem found, each pointing into the manifest. The shell
then checks the spec like any other (the schema, then ``check_job_spec``) and re-points those
problems at the manifest with ``relocate_problems``.

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
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.resources import QuantityError, cpu_millis, parse_quantity

KIND = "TFJob"
# v1alpha1 lists its replica specs; every later version keys them by type, with the run policy
# either under spec.runPolicy (v1) or directly in spec (v1alpha2 to early v1).
LIST_FORM_VERSION = "kubeflow.org/v1alpha1"
API_VERSIONS = frozenset(
    {
        LIST_FORM_VERSION,
        "kubeflow.org/v1alpha2",
        "kubeflow.org/v1beta1",
        "kubeflow.org/v1beta2",
        "kubeflow.org/v1",
    }
)
REPLICA_TYPES = ("chief", "master", "worker", "ps", "evaluator")
CONTAINER = "tensorflow"
PORT_NAME = "tfjob-port"
GPU_RESOURCE = "nvidia.com/gpu"
RUN_POLICY_FIELDS = {
    "cleanPodPolicy": "clean_pod_policy",
    "backoffLimit": "backoff_limit",
    "activeDeadlineSeconds": "active_deadline_seconds",
}

Where = tuple[str | int, ...]


_PLACEMENT = "Muster places the whole gang itself; nodeSelector and tolerations are honoured"
_DNS = "Muster names pods and gives each replica a headless Service; TF_CONFIG uses those names"
_SIDECAR = f"Muster runs only the container named {CONTAINER}"
_NO_VOLUMES = "Muster's pods mount no volumes"

# Fields each part of the manifest honours. Anything neither here nor in IGNORED is refused.
HONOURED: Mapping[str, frozenset[str]] = {
    "manifest": frozenset({"apiVersion", "kind", "metadata", "spec"}),
    "metadata": frozenset({"name", "namespace", "labels"}),
    "spec": frozenset({"tfReplicaSpecs", "runPolicy", "successPolicy", *RUN_POLICY_FIELDS}),
    "spec (v1alpha1)": frozenset({"replicaSpecs", "terminationPolicy"}),
    "runPolicy": frozenset(RUN_POLICY_FIELDS),
    "replica": frozenset({"replicas", "restartPolicy", "template"}),
    "replica (v1alpha1)": frozenset({"replicas", "tfReplicaType", "tfPort", "template"}),
    "template": frozenset({"spec"}),
    # restartPolicy of the pod is honoured in v1alpha1; later versions take the replica's.
    "pod": frozenset({"containers", "nodeSelector", "tolerations", "restartPolicy"}),
    "container": frozenset(
        {"name", "image", "imagePullPolicy", "command", "args", "env", "resources", "ports"}
    ),
    "env": frozenset({"name", "value"}),
    "resources": frozenset({"limits", "requests"}),
    "amounts": frozenset({"cpu", "memory", GPU_RESOURCE}),
    "port": frozenset({"name", "containerPort"}),
}

# Fields accepted and dropped, each with the reason it cannot change how the job runs.
IGNORED: Mapping[str, Mapping[str, str]] = {
    "manifest": {"status": "written by the operator, not by the submitter"},
    "metadata": {
        "annotations": "annotations of the TFJob object do not reach its pods",
        **dict.fromkeys(
            (
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "ownerReferences",
                "finalizers",
                "selfLink",
            ),
            "written by the API server about the TFJob object",
        ),
    },
    "spec": {"ttlSecondsAfterFinished": "it deletes the finished TFJob; Muster keeps job records"},
    "spec (v1alpha1)": {
        "RuntimeId": "written by the operator",
        "runtimeId": "written by the operator",
        "tfImage": "used only for a default parameter server, which Muster does not create",
    },
    "runPolicy": {
        "ttlSecondsAfterFinished": "it deletes the finished TFJob; Muster keeps job records"
    },
    "template": {
        "metadata": "Muster sets its own pod labels; template labels and annotations are dropped"
    },
    "container": {
        "terminationMessagePath": "only where Kubernetes stores a message about the exit",
        "terminationMessagePolicy": "only where Kubernetes stores a message about the exit",
    },
    "port": {"protocol": "declaring a port opens nothing", "hostIP": "used only with hostPort"},
}

# Fields Muster cannot honour, each with the reason given after "Muster does not support <field>".
REFUSED: Mapping[str, Mapping[str, str]] = {
    "metadata": {"generateName": "Muster needs metadata.name"},
    "spec": {"enableDynamicWorker": "a gang's size is fixed"},
    "spec (v1alpha1)": {"schedulerName": _PLACEMENT},
    "runPolicy": {
        "schedulingPolicy": "Muster does gang admission itself, with its own queues and the job "
        "spec's priority",
        "suspend": "a job is queued as soon as it is submitted",
    },
    "pod": {
        "volumes": _NO_VOLUMES,
        "initContainers": _SIDECAR,
        "ephemeralContainers": _SIDECAR,
        **dict.fromkeys(
            ("affinity", "nodeName", "topologySpreadConstraints", "schedulerName"), _PLACEMENT
        ),
        **dict.fromkeys(
            ("priorityClassName", "priority", "preemptionPolicy"),
            "Muster orders and preempts jobs by the job spec's priority",
        ),
        **dict.fromkeys(
            ("hostNetwork", "hostPID", "hostIPC"),
            "pods use the cluster network, and TF_CONFIG names their Services",
        ),
        "securityContext": "pods run as their image says",
        **dict.fromkeys(
            ("serviceAccountName", "serviceAccount", "automountServiceAccountToken"),
            "pods run as the namespace's default service account",
        ),
        "imagePullSecrets": "give them to the namespace's default service account instead",
        "activeDeadlineSeconds": "use spec.runPolicy.activeDeadlineSeconds, for the whole job",
        "terminationGracePeriodSeconds": "pods get the default grace period of 30 seconds",
        "runtimeClassName": "pods use the node's default container runtime",
        **dict.fromkeys(
            ("dnsPolicy", "dnsConfig", "hostAliases", "hostname", "subdomain", "setHostnameAsFQDN"),
            _DNS,
        ),
    },
    "container": {
        "volumeMounts": _NO_VOLUMES,
        "volumeDevices": _NO_VOLUMES,
        "envFrom": "give each variable as a {name, value} entry",
        "workingDir": "the container starts where its image says",
        "securityContext": "the container runs as its image says",
        **dict.fromkeys(
            ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle"),
            "a replica's outcome is the exit code of its container",
        ),
        **dict.fromkeys(("stdin", "stdinOnce", "tty"), "the container runs without a terminal"),
    },
    "env": {"valueFrom": "give the variable's value itself"},
    "resources": {"claims": "Muster allocates cpu, memory and nvidia.com/gpu only"},
    "port": {"hostPort": "replicas reach each other through their Services"},
}
# Values that change nothing, so a refused field may carry them: null and empty values, and these.
HARMLESS: Mapping[str, tuple[object, ...]] = {
    **{
        name: (False,)
        for name in (
            *("enableDynamicWorker", "suspend", "hostNetwork", "hostPID", "hostIPC"),
            *("stdin", "stdinOnce", "tty"),
        )
    },
    "schedulerName": ("default-scheduler",),
    "serviceAccountName": ("default",),
    "serviceAccount": ("default",),
    "automountServiceAccountToken": (True,),
    "terminationGracePeriodSeconds": (30,),
    "dnsPolicy": ("ClusterFirst",),
    "hostPort": (0,),
}
_EMPTY: tuple[object, ...] = (None, "", [], {})


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
    translation = _translate(document, tenant)
    if translation.problems or translation.spec is None:
        return translation.problems or [FieldProblem(pointer="", detail="not a TFJob")]
    return translation.spec


def relocate_problems(
    document: Mapping[str, Any], problems: Sequence[FieldProblem], *, tenant: str | None
) -> list[FieldProblem]:
    """Re-point problems found in the translated spec at the manifest fields they came from.

    A pointer with no known origin goes to the closest field that has one, else to the manifest.
    """
    origins = _translate(document, tenant).origins
    return [
        FieldProblem(pointer=_relocate(origins, problem.pointer), detail=problem.detail)
        for problem in problems
    ]


@dataclass(frozen=True, kw_only=True, slots=True)
class _Origin:
    """Where a field of the spec came from; ``same_shape``: what lies below maps one to one."""

    pointer: str
    same_shape: bool = False


def _relocate(origins: Mapping[str, _Origin], spec_pointer: str) -> str:
    at = spec_pointer
    while at:
        origin = origins.get(at)
        if origin is not None:
            return origin.pointer + spec_pointer[len(at) :] if origin.same_shape else origin.pointer
        at = at.rpartition("/")[0]
    return ""


@dataclass(kw_only=True, slots=True)
class _Translation:
    spec: dict[str, Any] | None = None
    problems: list[FieldProblem] = field(default_factory=list)
    origins: dict[str, _Origin] = field(default_factory=dict)

    def add(self, where: Where, detail: str) -> None:
        self.problems.append(FieldProblem(pointer=pointer(*where), detail=detail))

    def came_from(self, spec_at: Where, source: Where, *, same_shape: bool = False) -> None:
        self.origins[pointer(*spec_at)] = _Origin(pointer=pointer(*source), same_shape=same_shape)

    def screen(self, part: str, raw: Mapping[Any, Any], where: Where) -> None:
        """Refuse every field of ``raw`` that ``part`` neither honours nor ignores."""
        honoured, ignored, refused = HONOURED[part], IGNORED.get(part, {}), REFUSED.get(part, {})
        for key, value in raw.items():
            if key in honoured or key in ignored:
                continue
            if key in refused:
                harmless = _EMPTY + HARMLESS.get(key, ())
                if not any(_same(value, fine) for fine in harmless):
                    self.add((*where, str(key)), f"Muster does not support {key}: {refused[key]}")
            else:
                self.add((*where, str(key)), f"Muster does not support {key}")

    def mapping(self, raw: object, where: Where, *, required: bool = False) -> Mapping[Any, Any]:
        """``raw`` as a mapping; a problem (and an empty mapping) when it is anything else."""
        if isinstance(raw, Mapping):
            return raw
        if raw is not None or required:
            self.add(where, "is required" if raw is None else "must be an object")
        return {}

    def sequence(self, raw: object, where: Where) -> list[Any]:
        if isinstance(raw, list):
            return raw
        if raw is not None:
            self.add(where, "must be a list")
        return []


def _same(value: object, harmless: object) -> bool:
    # ``0 == False`` in Python; a harmless False must not let the integer through, nor the reverse.
    return type(value) is type(harmless) and value == harmless


def _translate(document: Mapping[str, Any], tenant: str | None) -> _Translation:
    t = _Translation()
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
    _metadata(t, metadata, tenant, spec)
    spec["framework"] = "tensorflow"
    # 3. The replicas and run policy, in the form of the manifest's version.
    body = t.mapping(document.get("spec"), ("spec",), required=True)
    if api_version == LIST_FORM_VERSION:
        t.screen("spec (v1alpha1)", body, ("spec",))
        spec["replicas"] = _list_form_replicas(t, body)
        spec["run_policy"] = {}
        t.came_from(("run_policy",), ("spec",))
    elif _supported(api_version):
        t.screen("spec", body, ("spec",))
        spec["replicas"] = _map_form_replicas(t, body)
        spec["run_policy"] = _run_policy(t, body)
    labels = metadata.get("labels")
    spec["labels"] = {} if labels is None else copy.deepcopy(labels)
    t.came_from(("labels",), ("metadata", "labels"), same_shape=True)
    if not t.problems:
        t.spec = spec
    return t


def _metadata(
    t: _Translation, metadata: Mapping[Any, Any], tenant: str | None, spec: dict[str, Any]
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


def _map_form_replicas(t: _Translation, body: Mapping[Any, Any]) -> dict[str, Any]:
    at: Where = ("spec", "tfReplicaSpecs")
    t.came_from(("replicas",), at)
    replicas: dict[str, Any] = {}
    seen: set[str] = set()
    for key, raw in t.mapping(body.get("tfReplicaSpecs"), at, required=True).items():
        where = (*at, str(key))
        role = key.lower() if isinstance(key, str) else None
        if role not in REPLICA_TYPES:
            t.add(
                where,
                f"{key!r} is not a TFJob replica type; use Chief, Master, Worker, PS or Evaluator",
            )
            continue
        if role in seen:
            t.add(where, f"a second {role} replica spec (replica types ignore case)")
            continue
        seen.add(role)
        raw = t.mapping(raw, where, required=True)
        t.screen("replica", raw, where)
        if _none_wanted(raw):
            continue
        replica, _ = _replica(t, role, raw, where, port_name=PORT_NAME)
        restart = raw.get("restartPolicy")
        replica["restart_policy"] = "Never" if restart is None else copy.deepcopy(restart)
        if restart is not None:
            t.came_from(("replicas", role, "restart_policy"), (*where, "restartPolicy"))
        replicas[role] = replica
    return replicas


def _list_form_replicas(t: _Translation, body: Mapping[Any, Any]) -> dict[str, Any]:
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
        if _none_wanted(raw):
            continue
        # v1alpha1 takes the TF port from tfPort, never from the container's ports.
        replica, pod = _replica(t, role, raw, where, port_name=None)
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


def _none_wanted(raw: Mapping[Any, Any]) -> bool:
    count = raw.get("replicas")
    return type(count) is int and count == 0


def _termination_policy(
    t: _Translation, body: Mapping[Any, Any], replicas: Mapping[str, Any]
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


def _replica(
    t: _Translation, role: str, raw: Mapping[Any, Any], where: Where, *, port_name: str | None
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
    for name, source in (("node_selector", "nodeSelector"), ("tolerations", "tolerations")):
        if pod.get(source) is not None:
            replica[name] = copy.deepcopy(pod[source])
            t.came_from((*spec_at, name), (*pod_at, source), same_shape=True)
    if isinstance(template.get("spec"), Mapping):
        _container(t, spec_at, pod, pod_at, replica, port_name)
    return replica, pod


def _container(
    t: _Translation,
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
            t.add(
                (*containers_at, index), f"Muster does not support sidecar containers: {_SIDECAR}"
            )
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


def _pull_policy(t: _Translation, container: Mapping[Any, Any], at: Where) -> None:
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


def _env(t: _Translation, spec_at: Where, raw: object, at: Where) -> dict[str, Any]:
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
    t: _Translation, spec_at: Where, raw: object, at: Where, replica: dict[str, Any]
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


def _gpu_count(t: _Translation, value: object, at: Where) -> object:
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
    t: _Translation,
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


def _run_policy(t: _Translation, body: Mapping[Any, Any]) -> dict[str, Any]:
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
