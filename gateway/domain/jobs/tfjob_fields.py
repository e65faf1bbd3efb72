"""What Muster makes of each field of a TFJob manifest, and the record a translation keeps.

`HONOURED`, `IGNORED` and `REFUSED` say, part by part of the manifest, which fields are translated,
which are dropped (with the reason they cannot change the run) and which are refused (with the
reason given to the submitter). `Translation` is what the walk in `tfjob.py` and
`tfjob_replica.py` fills: the spec, the problems, and where each field of the spec came from.

Invariants kept here:

- For every part, the honoured, ignored and refused fields are disjoint, and every part that
  ignores or refuses a field is a part that honours some; `Translation.screen` refuses any field
  a part names in none of them.
- A refused field passes only with a value that changes nothing: null or empty, or one of its
  `HARMLESS` values, compared by type as well as value (``0`` is not ``False``).
- Every problem points into the manifest (a JSON pointer); every origin maps a pointer into the
  spec to one into the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.problems import FieldProblem, pointer

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
    # The job's objects (its parent ConfigMap, and with it what the clean-pod policy kept) are
    # deleted this long after it finished; its record stays.
    "ttlSecondsAfterFinished": "ttl_seconds_after_finished",
}

Where = tuple[str | int, ...]


_PLACEMENT = (
    "Muster places the whole gang itself; nodeSelector, node affinity and tolerations are honoured"
)
_DNS = "Muster names pods and gives each replica a headless Service; TF_CONFIG uses those names"
SIDECAR = f"Muster runs only the container named {CONTAINER}"
#: The pod template's fields carried as the replica's pod fields: the spec's key, the pod's key.
POD_FIELDS: Mapping[str, str] = {
    "volumes": "volumes",
    "init_containers": "initContainers",
    "service_account_name": "serviceAccountName",
    "pod_security_context": "securityContext",
    "host_network": "hostNetwork",
    "host_pid": "hostPID",
    "host_ipc": "hostIPC",
}
#: The main container's fields carried likewise (its imagePullPolicy too, when not the default).
CONTAINER_FIELDS: Mapping[str, str] = {
    "volume_mounts": "volumeMounts",
    "env_from": "envFrom",
    "working_dir": "workingDir",
    "security_context": "securityContext",
}

# Fields each part of the manifest honours. Anything neither here nor in IGNORED is refused.
HONOURED: Mapping[str, frozenset[str]] = {
    "manifest": frozenset({"apiVersion", "kind", "metadata", "spec"}),
    "metadata": frozenset({"name", "namespace", "labels"}),
    "spec": frozenset({"tfReplicaSpecs", "runPolicy", "successPolicy", *RUN_POLICY_FIELDS}),
    "spec (v1alpha1)": frozenset({"replicaSpecs", "terminationPolicy"}),
    "runPolicy": frozenset({*RUN_POLICY_FIELDS, "schedulingPolicy"}),
    # priorityClass is the job's priority class; minAvailable passes only as the whole gang.
    "schedulingPolicy": frozenset({"priorityClass", "minAvailable"}),
    "replica": frozenset({"replicas", "restartPolicy", "template"}),
    "replica (v1alpha1)": frozenset({"replicas", "tfReplicaType", "tfPort", "template"}),
    "template": frozenset({"spec"}),
    # Node affinity is honoured by placement and merged with Muster's pinning.
    "affinity": frozenset({"nodeAffinity"}),
    # restartPolicy of the pod is honoured in v1alpha1; later versions take the replica's.
    # priorityClassName is the job's priority class, when every replica names the same one.
    "pod": frozenset(
        {
            "containers",
            "nodeSelector",
            "tolerations",
            "restartPolicy",
            "terminationGracePeriodSeconds",
            "priorityClassName",
            "affinity",
            # Pod fields, carried exactly (gateway.domain.jobs.pod_fields) under the tenant's
            # pod policy (gateway.domain.jobs.policy).
            *POD_FIELDS.values(),
            "imagePullSecrets",
        }
    ),
    "container": frozenset(
        {
            *("name", "image", "imagePullPolicy", "command", "args", "env", "resources", "ports"),
            *CONTAINER_FIELDS.values(),
        }
    ),
    "env": frozenset({"name", "value", "valueFrom"}),
    "resources": frozenset({"limits", "requests"}),
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
    "spec (v1alpha1)": {
        "RuntimeId": "written by the operator",
        "runtimeId": "written by the operator",
        "tfImage": "used only for a default parameter server, which Muster does not create",
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
    "runPolicy": {"suspend": "a job is queued as soon as it is submitted"},
    "schedulingPolicy": {
        "queue": "Muster does gang admission itself, with a queue per tenant",
        "minResources": "Muster admits a gang when every one of its pods fits, never part of it",
        "scheduleTimeoutSeconds": "a job waits in its queue until it is admitted or cancelled",
    },
    "affinity": dict.fromkeys(("podAffinity", "podAntiAffinity"), _PLACEMENT),
    "pod": {
        "ephemeralContainers": SIDECAR,
        **dict.fromkeys(("nodeName", "topologySpreadConstraints", "schedulerName"), _PLACEMENT),
        **dict.fromkeys(
            ("priority", "preemptionPolicy"),
            "Muster orders and preempts jobs by their priority class (priorityClassName, or "
            "spec.runPolicy.schedulingPolicy.priorityClass), which an admin grants the tenant",
        ),
        "serviceAccount": "use serviceAccountName",
        "automountServiceAccountToken": "pods mount their service account's token",
        "activeDeadlineSeconds": "use spec.runPolicy.activeDeadlineSeconds, for the whole job",
        "runtimeClassName": "pods use the node's default container runtime",
        **dict.fromkeys(
            ("dnsPolicy", "dnsConfig", "hostAliases", "hostname", "subdomain", "setHostnameAsFQDN"),
            _DNS,
        ),
    },
    "container": {
        "volumeDevices": "Muster mounts volumes as file systems (volumeMounts), not as devices",
        **dict.fromkeys(
            ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle"),
            "a replica's outcome is the exit code of its container",
        ),
        **dict.fromkeys(("stdin", "stdinOnce", "tty"), "the container runs without a terminal"),
    },
    "resources": {
        "claims": "Muster allocates cpu, memory, GPUs and extended resources, not resource claims"
    },
    "port": {"hostPort": "replicas reach each other through their Services"},
}
# Values that change nothing, so a refused field may carry them: null and empty values, and these.
HARMLESS: Mapping[str, tuple[object, ...]] = {
    **{
        name: (False,)
        for name in (
            *("enableDynamicWorker", "suspend"),
            *("stdin", "stdinOnce", "tty"),
        )
    },
    "schedulerName": ("default-scheduler",),
    "serviceAccount": ("default",),
    "automountServiceAccountToken": (True,),
    "dnsPolicy": ("ClusterFirst",),
    "hostPort": (0,),
}
_EMPTY: tuple[object, ...] = (None, "", [], {})


@dataclass(frozen=True, kw_only=True, slots=True)
class Origin:
    """Where a field of the spec came from; ``same_shape``: what lies below maps one to one."""

    pointer: str
    same_shape: bool = False


@dataclass(kw_only=True, slots=True)
class Translation:
    spec: dict[str, Any] | None = None
    problems: list[FieldProblem] = field(default_factory=list)
    origins: dict[str, Origin] = field(default_factory=dict)

    def add(self, where: Where, detail: str) -> None:
        self.problems.append(FieldProblem(pointer=pointer(*where), detail=detail))

    def outcome(self, kind: str) -> dict[str, Any] | list[FieldProblem]:
        """The spec, or every problem (a manifest that yielded neither is "not a <kind>")."""
        if self.problems or self.spec is None:
            return self.problems or [FieldProblem(pointer="", detail=f"not a {kind}")]
        return self.spec

    def relocated(self, problems: Sequence[FieldProblem]) -> list[FieldProblem]:
        """Problems found in the translated spec, re-pointed at the manifest fields they came
        from: a pointer with no known origin goes to the closest field that has one, else to the
        manifest."""
        found = []
        for problem in problems:
            at, where = problem.pointer, ""
            while at:
                origin = self.origins.get(at)
                if origin is not None:
                    tail = problem.pointer[len(at) :]
                    where = origin.pointer + tail if origin.same_shape else origin.pointer
                    break
                at = at.rpartition("/")[0]
            found.append(FieldProblem(pointer=where, detail=problem.detail))
        return found

    def came_from(self, spec_at: Where, source: Where, *, same_shape: bool = False) -> None:
        self.origins[pointer(*spec_at)] = Origin(pointer=pointer(*source), same_shape=same_shape)

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
