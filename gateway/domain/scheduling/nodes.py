"""Nodes and pods as placement sees them, and which node may ever run which pod.

A `Node` is what Muster may use of a Kubernetes node (allocatable minus pods Muster does not own), a
`Holding` what one of Muster's own pods already holds there, a `PodRequest` what one pod of a gang
asks for. Free capacity is in `capacity.py`; the search for a node in `best_fit.py` and
`placement.py`.

Invariants kept here:

- GPU amounts are shares, `SHARES_PER_DEVICE` to a device. A request is of exactly one kind
  (`gpu_kind`): none, a fraction of one device (1..99 shares), whole devices (k * 100 shares), or
  invalid; the kind is part of a pod's class.
- Shared nodes take fractions and whole devices, device-plugin nodes only whole devices, nodes
  without GPUs neither (`takes_kind`).
- Extended resources (``rdma/hca``, ``hugepages-2Mi``, ...) are whole units a node advertises
  (`Node.extended`) and a pod requests (`PodRequest.extended`); a node that does not advertise a
  name (or advertises none of it) never runs a pod that asks for it.
- A pod's required node affinity (`PodRequest.affinity`) is Kubernetes' nodeSelectorTerms: a
  node matches when any term matches, a term when all its requirements hold (`affinity_admits`);
  no terms: any node.
- `node_admits` is the one definition of "may ever run this pod, capacity aside": readiness, the
  node selector, the required node affinity, the NoSchedule and NoExecute taints
  (`ENFORCED_EFFECTS`) against the tolerations, the GPU kind and the extended resources'
  names. The indexes in `best_fit.py` must agree with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.domain.resources import GPU_SHARES_PER_DEVICE, Extended

SHARES_PER_DEVICE = GPU_SHARES_PER_DEVICE  # one GPU device, in the shares placement counts

# Kinds of GPU request. They decide which nodes are eligible, so they are part of a pod's class.
GPU_NONE = 0
GPU_FRACTION = 1
GPU_WHOLE = 2
GPU_INVALID = 3

ENFORCED_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


class GpuMode(StrEnum):
    NONE = "none"
    DEVICE_PLUGIN = "device-plugin"
    SHARED = "shared"


@dataclass(frozen=True, kw_only=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"  # NoSchedule | PreferNoSchedule | NoExecute


@dataclass(frozen=True, kw_only=True, slots=True)
class Toleration:
    """Kubernetes semantics: key None with operator Exists tolerates every taint."""

    key: str | None
    operator: str = "Equal"  # Equal | Exists
    value: str | None = None
    effect: str | None = None  # None matches every effect


@dataclass(frozen=True, kw_only=True, slots=True)
class Requirement:
    """One requirement of a node selector term: a label (or, with ``field``, the node's
    ``metadata.name``) and an operator: In, NotIn, Exists, DoesNotExist, Gt or Lt."""

    key: str
    operator: str
    values: tuple[str, ...] = ()
    field: bool = False


#: A node selector term: every requirement must hold (an empty term matches no node).
Term = tuple[Requirement, ...]


def _holds(node: Node, requirement: Requirement) -> bool:
    if requirement.field:
        value: str | None = node.name if requirement.key == "metadata.name" else None
    else:
        value = node.labels.get(requirement.key)
    operator = requirement.operator
    if operator == "In":
        return value is not None and value in requirement.values
    if operator == "NotIn":
        return value is None or value not in requirement.values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(requirement.values) == 1:
        try:
            label, bound = int(value), int(requirement.values[0])
        except ValueError:
            return False
        return label > bound if operator == "Gt" else label < bound
    return False


def affinity_admits(node: Node, terms: Sequence[Term]) -> bool:
    """Whether ``node`` matches required node affinity ``terms`` (any term; none: any node)."""
    if not terms:
        return True
    return any(term and all(_holds(node, r) for r in term) for term in terms)


@dataclass(frozen=True, kw_only=True, slots=True)
class GpuSlice:
    device: int
    shares: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Node:
    """A node as Muster may use it: allocatable minus pods that Muster does not own."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    gpu_mode: GpuMode = GpuMode.NONE
    cpu_millis: int
    memory_bytes: int
    gpu_devices: int = 0
    #: Extended resources the node offers Muster, by name (allocatable minus others' pods).
    extended: Mapping[str, int] = field(default_factory=dict)


def newly_offered(before: Iterable[Node], after: Iterable[Node]) -> tuple[str, ...]:
    """The names of nodes in ``after`` that ``before`` did not have as they are now: added, or
    changed (back to Ready, more allocatable, other labels or taints). Any of them may admit a
    job that could not be admitted before; a node that only went away cannot."""
    known = {node.name: node for node in before}
    return tuple(sorted(node.name for node in after if known.get(node.name) != node))


def names_of(extended: Extended) -> tuple[str, ...]:
    """The names of an extended amount, in order: part of a pod's class."""
    return tuple(name for name, _ in extended)


@dataclass(frozen=True, kw_only=True, slots=True)
class Holding:
    """What one admitted or running Muster pod already holds on a node."""

    node: str
    cpu_millis: int
    memory_bytes: int
    gpu: tuple[GpuSlice, ...] = ()
    extended: Extended = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class PodRequest:
    name: str
    role: str
    index: int = 0  # the replica's index within its role
    cpu_millis: int
    memory_bytes: int
    gpu_shares: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    spread: bool = False  # parameter servers: distinct nodes when possible
    extended: Extended = ()
    #: Required node affinity: nodeSelectorTerms, any of which a node must match.
    affinity: tuple[Term, ...] = ()


def gpu_kind(shares: int) -> int:
    if shares == 0:
        return GPU_NONE
    if 0 < shares < SHARES_PER_DEVICE:
        return GPU_FRACTION
    if shares > 0 and shares % SHARES_PER_DEVICE == 0:
        return GPU_WHOLE
    return GPU_INVALID


def tolerates(tolerations: Iterable[Toleration], taint: Taint) -> bool:
    for tol in tolerations:
        if tol.effect is not None and tol.effect != taint.effect:
            continue
        if tol.key is None:
            # An empty key is only valid with Exists, and then it matches every taint.
            if tol.operator == "Exists":
                return True
            continue
        if tol.key != taint.key:
            continue
        if tol.operator == "Exists" or (tol.value or "") == taint.value:
            return True
    return False


def node_admits(
    node: Node,
    selector: Mapping[str, str],
    tolerations: Sequence[Toleration],
    kind: int,
    *,
    ignore_ready: bool = False,
    extended: Iterable[str] = (),
    affinity: Sequence[Term] = (),
) -> bool:
    """Whether `node` may ever run a pod of this class (capacity aside); ``extended``: the
    names of the extended resources the pod asks for; ``affinity``: its required node affinity."""
    if not (node.ready or ignore_ready):
        return False
    if affinity and not affinity_admits(node, affinity):
        return False
    offered = node.extended
    for name in extended:
        if offered.get(name, 0) <= 0:
            return False
    labels = node.labels
    for key, value in selector.items():
        if labels.get(key) != value:
            return False
    for taint in node.taints:
        if taint.effect in ENFORCED_EFFECTS and not tolerates(tolerations, taint):
            return False
    return takes_kind(node, kind)


def takes_kind(node: Node, kind: int) -> bool:
    """GPU modes: shared nodes take fractions and wholes, device-plugin nodes only wholes."""
    if kind == GPU_NONE:
        return True
    if kind == GPU_FRACTION:
        return node.gpu_mode is GpuMode.SHARED and node.gpu_devices > 0
    if kind == GPU_WHOLE:
        return node.gpu_mode is not GpuMode.NONE and node.gpu_devices > 0
    return False
