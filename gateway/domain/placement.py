"""Node-level fit: which node may take a pod, and the working copy of free capacity a cycle uses.

`admission.plan()` decides *which* jobs go; this module decides *where* their pods go. It knows
nodes, GPU devices and holdings, and nothing about tenants, quotas or queues.

Invariants kept here:

- A placement made through `ClusterState` never drives a node's free CPU or memory, or any GPU
  device's free shares, below zero. Over-commitment that arrives in the holdings is kept as it is
  and never made worse.
- A fractional GPU request (1..99 shares) sits on exactly one device: the fullest device that still
  fits. A whole request (k * 100 shares) takes k entirely free devices. A pod never spans nodes.
- Every change to a `ClusterState` is journaled, so a gang that does not fit leaves the state
  exactly as it found it ("assume, then write", with undo).
- Nodes are indexed in name order and every search breaks ties on that index, so the same inputs
  always give the same placement.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import groupby
from operator import attrgetter

SHARES_PER_DEVICE = 100

# Kinds of GPU request. They decide which nodes are eligible, so they are part of a pod's class.
GPU_NONE = 0
GPU_FRACTION = 1
GPU_WHOLE = 2
GPU_INVALID = 3

_ENFORCED_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


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


@dataclass(frozen=True, kw_only=True, slots=True)
class Holding:
    """What one admitted or running Muster pod already holds on a node."""

    node: str
    cpu_millis: int
    memory_bytes: int
    gpu: tuple[GpuSlice, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class PodRequest:
    name: str
    role: str
    cpu_millis: int
    memory_bytes: int
    gpu_shares: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    spread: bool = False  # parameter servers: distinct nodes when possible


@dataclass(frozen=True, kw_only=True, slots=True)
class Placement:
    pod_name: str
    node: str
    gpu: tuple[GpuSlice, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeFree:
    """Free capacity of one node after Muster's holdings; `gpu` is free shares per device."""

    name: str
    ready: bool
    gpu_mode: GpuMode
    cpu_millis: int
    memory_bytes: int
    gpu: tuple[int, ...]


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
) -> bool:
    """Whether `node` may ever run a pod of this class (capacity aside)."""
    if not (node.ready or ignore_ready):
        return False
    labels = node.labels
    for key, value in selector.items():
        if labels.get(key) != value:
            return False
    for taint in node.taints:
        if taint.effect in _ENFORCED_EFFECTS and not tolerates(tolerations, taint):
            return False
    return _takes_kind(node, kind)


def _takes_kind(node: Node, kind: int) -> bool:
    """GPU modes: shared nodes take fractions and wholes, device-plugin nodes only wholes."""
    if kind == GPU_NONE:
        return True
    if kind == GPU_FRACTION:
        return node.gpu_mode is GpuMode.SHARED and node.gpu_devices > 0
    if kind == GPU_WHOLE:
        return node.gpu_mode is not GpuMode.NONE and node.gpu_devices > 0
    return False


def _device_count(node: Node) -> int:
    return 0 if node.gpu_mode is GpuMode.NONE else max(node.gpu_devices, 0)


def _free_after_holdings(
    nodes: Sequence[Node], holdings: Iterable[Holding]
) -> tuple[list[int], list[int], list[list[int]]]:
    index = {node.name: i for i, node in enumerate(nodes)}
    cpu = [node.cpu_millis for node in nodes]
    mem = [node.memory_bytes for node in nodes]
    devs = [[SHARES_PER_DEVICE] * _device_count(node) for node in nodes]
    for holding in holdings:
        i = index.get(holding.node)
        if i is None:  # a node that left the inventory: its pods hold nothing we can use
            continue
        cpu[i] -= holding.cpu_millis
        mem[i] -= holding.memory_bytes
        for gpu_slice in holding.gpu:
            if 0 <= gpu_slice.device < len(devs[i]):
                devs[i][gpu_slice.device] -= gpu_slice.shares
    return cpu, mem, devs


def free_capacity(nodes: Sequence[Node], holdings: Iterable[Holding]) -> tuple[NodeFree, ...]:
    """Free CPU, memory and per-device GPU shares of every node, in name order."""
    ordered = sorted(nodes, key=lambda node: node.name)
    cpu, mem, devs = _free_after_holdings(ordered, holdings)
    return tuple(
        NodeFree(
            name=node.name,
            ready=node.ready,
            gpu_mode=node.gpu_mode,
            cpu_millis=cpu[i],
            memory_bytes=mem[i],
            gpu=tuple(devs[i]),
        )
        for i, node in enumerate(ordered)
    )


# A pod as the hot loop sees it: (class id, gpu kind, cpu, memory, gpu shares, spread).
Need = tuple[int, int, int, int, int, bool]
Slices = tuple[tuple[int, int], ...]  # (device, shares)
Hit = tuple[int, Slices]  # (node index, slices)
_Key = tuple[int, int, int, int, int]  # (gpu measure, cpu free, memory free, tiebreak, node)
_Raw = tuple[int, int, int, int]  # (whole free, roomiest device, cpu free, memory free)

# What the first element of a node's sorted key measures, by the kind of GPU request searched.
_BY_WHOLE_FREE = 0  # shares on entirely free devices: whole GPUs, and CPU-only pods
_BY_DEVICE_FREE = 1  # free shares of the roomiest device: fractions
_KEY_TYPE = {
    GPU_NONE: _BY_WHOLE_FREE,
    GPU_FRACTION: _BY_DEVICE_FREE,
    GPU_WHOLE: _BY_WHOLE_FREE,
    GPU_INVALID: _BY_WHOLE_FREE,
}
_NAME = attrgetter("name")
_GPU = attrgetter("gpu_shares")
_SHAPE = attrgetter("gpu_shares", "cpu_millis", "memory_bytes", "spread")
_SELECTOR = attrgetter("node_selector")
_TOLERATIONS = attrgetter("tolerations")


@dataclass(frozen=True, kw_only=True, slots=True)
class Gang:
    """The pods of one job as placement sees them, largest first."""

    needs: tuple[Need, ...]
    order: tuple[int, ...]  # for each need, the index of its pod in the job
    signature: tuple[tuple[Need, int], ...]  # runs of equal needs: equal gangs, equal signature


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassFree:
    """Free capacity over the nodes eligible for one pod class, for waiting messages."""

    nodes: int
    cpu_sum: int
    memory_sum: int
    gpu_sum: int
    cpu_max: int
    memory_max: int
    gpu_max: int  # whole: most entirely free devices on a node (in shares); fraction: best device


class ClusterState:
    """The working copy of free capacity that one cycle places into. Never leaves `plan()`.

    Per-node values live in plain lists. For every set of eligible nodes there is a list of keys
    `(gpu measure, cpu free, memory free, tiebreak, node)` kept sorted, so best fit is a bisect
    plus a short scan instead of a pass over every node.

    While a gang is being placed, the nodes it touched keep their old keys in the sorted lists (an
    old key is never below the real free, so a bisect never skips a node that fits) and are
    searched on the side with their real values. `commit()` marks them for re-sorting at the
    next search of each list; `rollback()` only restores values. A gang that fails therefore
    never touches the sorted lists.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        holdings: Iterable[Holding] = (),
        *,
        tiebreak: Sequence[int] | None = None,
    ) -> None:
        self.nodes = tuple(sorted(nodes, key=lambda node: node.name))
        count = len(self.nodes)
        self.cpu, self.mem, self.devs = _free_after_holdings(self.nodes, holdings)
        # Free GPU counts only devices with room: an over-committed device must not hide the
        # free shares of its neighbours from the sorted keys, which are upper bounds on fit.
        self.gfree = [sum(max(d, 0) for d in devs) for devs in self.devs]
        self.full = [d.count(SHARES_PER_DEVICE) for d in self.devs]
        self.roomiest = [max(max(devs, default=0), 0) for devs in self.devs]
        self.tiebreak = list(tiebreak) if tiebreak is not None else list(range(count))
        # Reserved nodes: no pod may go there while `honor` is set on a search.
        self.blocked = bytearray(count)
        self.any_blocked = False
        self._ready = [node.ready for node in self.nodes]
        ready = [i for i in range(count) if self._ready[i]]
        # Free sums over ready nodes, of what can actually be used (never below zero per node).
        self.free_cpu = sum(max(self.cpu[i], 0) for i in ready)
        self.free_mem = sum(max(self.mem[i], 0) for i in ready)
        self.free_gpu = sum(self.gfree[i] for i in ready)
        self.blocked_cpu = self.blocked_mem = self.blocked_gpu = 0
        # Upper bounds for a cheap "surely not" before a job's gang is built: how many ready
        # nodes have k entirely free devices, and how many devices of ready shared nodes have v
        # free shares. The tops only fall within a cycle, except when a gang is rolled back.
        self._shared = [node.ready and node.gpu_mode is GpuMode.SHARED for node in self.nodes]
        self._by_full = [0] * (max(self.full, default=0) + 1)
        self._by_device_free = [0] * (SHARES_PER_DEVICE + 1)
        for i in ready:
            self._by_full[self.full[i]] += 1
            if self._shared[i]:
                for free in self.devs[i]:
                    self._by_device_free[_bucket(free)] += 1
        self._top_full = len(self._by_full) - 1
        self._top_device_free = SHARES_PER_DEVICE
        # Eligibility indexes: nodes by gpu kind, by label, and the nodes whose taints matter.
        self._by_kind: dict[int, frozenset[int]] = {}
        self._by_label: dict[tuple[str, str], frozenset[int]] = {}
        self._tainted = [
            (i, taints)
            for i, node in enumerate(self.nodes)
            if (taints := tuple(t for t in node.taints if t.effect in _ENFORCED_EFFECTS))
        ]
        # Pod classes, and the node sets (eligible nodes plus key type) they search.
        self._classes: dict[tuple[object, ...], int] = {}
        self._class_set: list[int] = []  # class id -> node-set id
        self._class_kind: list[int] = []  # class id -> gpu kind
        self._set_ids: dict[tuple[int, tuple[int, ...]], int] = {}
        self._sets: list[tuple[int, ...]] = []
        self._set_key_type: list[int] = []
        self._masks: list[bytearray] = []
        self._lists: list[list[_Key] | None] = []
        self._node_sets: list[list[int]] = [[] for _ in range(count)]  # sets with a built list
        # Per set: nodes whose key changed since the list was last searched, with the key the
        # list still holds. Re-sorting waits for the next search, so a list searched rarely
        # re-sorts a node once however many gangs took from it meanwhile.
        self._stale: list[dict[int, _Key]] = []
        # The gang being placed: what it took, and the values its nodes had before (the keys
        # they still have in the sorted lists).
        self._journal: list[tuple[int, int, int, Slices]] = []
        self._touched: dict[int, _Raw] = {}
        # Failure memos, per class: the minimal (cpu, memory, gpu) shapes known not to fit. Free
        # capacity only shrinks within a cycle, so a shape that failed keeps failing, and so does
        # any shape at least as large in every resource. "open" memos hold failures that may be
        # due to reserved nodes, "all" memos failures on every node.
        self._failed_open: dict[int, list[tuple[int, int, int]]] = {}
        self._failed_all: dict[int, list[tuple[int, int, int]]] = {}
        # Whole gangs that failed. Greedy placement is not strictly monotone in free capacity,
        # so this can, rarely, turn away a gang that a retry would have placed; it never lets
        # anything through, and it keeps a long queue of identical gangs cheap.
        self._failed_gangs_open: set[tuple[tuple[Need, int], ...]] = set()
        self._failed_gangs_all: set[tuple[tuple[Need, int], ...]] = set()
        self._class_free: dict[int, ClassFree] = {}

    # -- classes --------------------------------------------------------------------------------

    def gang_of(self, pods: Sequence[PodRequest]) -> Gang:
        """The pods of one job in placement order: largest first (GPU, CPU, memory; ties on name).

        Replicas of a role are identical but for their name, so the work here is per group of
        identical pods, not per pod: one class lookup and one `Need` object per group.
        """
        groups: dict[tuple[object, ...], list[int]] = {}
        if any(map(_SELECTOR, pods)) or any(map(_TOLERATIONS, pods)):
            for k, pod in enumerate(pods):
                selector = pod.node_selector
                tolerations = pod.tolerations
                key = (
                    *_SHAPE(pod),
                    tuple(selector.items()) if selector else (),
                    id(tolerations) if tolerations else 0,
                )
                members = groups.get(key)
                if members is None:
                    groups[key] = [k]
                else:
                    members.append(k)
        else:
            # The common case, done in C: no constraints, so the shape alone is the group.
            shapes = list(map(_SHAPE, pods))
            for shape, run in groupby(range(len(pods)), shapes.__getitem__):
                members = groups.get(shape)
                if members is None:
                    groups[shape] = list(run)
                else:
                    members.extend(run)
        names = list(map(_NAME, pods))
        # (size, first name, need, members), the members of each group in name order.
        entries: list[tuple[tuple[int, int, int], str, Need, list[int]]] = []
        for members in groups.values():
            pod = pods[members[0]]
            cls, kind = self.class_of(pod)
            need = (cls, kind, pod.cpu_millis, pod.memory_bytes, pod.gpu_shares, pod.spread)
            if len(members) > 1:
                members.sort(key=names.__getitem__)
            size = (-pod.gpu_shares, -pod.cpu_millis, -pod.memory_bytes)
            entries.append((size, names[members[0]], need, members))
        entries.sort(key=lambda entry: (entry[0], entry[1]))
        needs: list[Need] = []
        order: list[int] = []
        for n, (size, _, need, members) in enumerate(entries):
            if (n > 0 and entries[n - 1][0] == size) or (
                n + 1 < len(entries) and entries[n + 1][0] == size
            ):
                break
            needs.extend([need] * len(members))
            order.extend(members)
        else:
            signature = tuple((entry[2], len(entry[3])) for entry in entries)
            return Gang(needs=tuple(needs), order=tuple(order), signature=signature)
        # Groups of the same size but other constraints: interleave them by name, as one sort.
        merged = sorted(
            (size, names[k], need, k) for size, _, need, members in entries for k in members
        )
        needs = [entry[2] for entry in merged]
        signature = tuple((need, 1) for need in needs)
        return Gang(
            needs=tuple(needs), order=tuple(entry[3] for entry in merged), signature=signature
        )

    def class_of(self, pod: PodRequest) -> tuple[int, int]:
        """(class id, gpu kind). Pods of one class are eligible for exactly the same nodes."""
        kind = gpu_kind(pod.gpu_shares)
        selector = pod.node_selector
        tolerations = pod.tolerations
        if not selector and not tolerations:
            key: tuple[object, ...] = (kind,)
        else:
            key = (kind, tuple(sorted(selector.items())), tolerations)
        cls = self._classes.get(key)
        if cls is None:
            cls = self._new_class(key, selector, tolerations, kind)
        return cls, kind

    def _new_class(
        self,
        key: tuple[object, ...],
        selector: Mapping[str, str],
        tolerations: Sequence[Toleration],
        kind: int,
    ) -> int:
        members = self._eligible(selector, tolerations, kind)
        key_type = _KEY_TYPE[kind]
        set_id = self._set_ids.get((key_type, members))
        if set_id is None:
            set_id = len(self._sets)
            self._set_ids[(key_type, members)] = set_id
            self._sets.append(members)
            self._set_key_type.append(key_type)
            mask = bytearray(len(self.nodes))
            for i in members:
                mask[i] = 1
            self._masks.append(mask)
            self._lists.append(None)
            self._stale.append({})
        cls = len(self._class_set)
        self._class_set.append(set_id)
        self._class_kind.append(kind)
        self._classes[key] = cls
        return cls

    def _eligible(
        self, selector: Mapping[str, str], tolerations: Sequence[Toleration], kind: int
    ) -> tuple[int, ...]:
        """The nodes `node_admits` accepts, from indexes instead of a pass over every node."""
        members = self._by_kind.get(kind)
        if members is None:
            members = self._by_kind[kind] = frozenset(
                i for i, node in enumerate(self.nodes) if node.ready and _takes_kind(node, kind)
            )
        for label in selector.items():
            with_label = self._by_label.get(label)
            if with_label is None:
                key, value = label
                with_label = self._by_label[label] = frozenset(
                    i for i, node in enumerate(self.nodes) if node.labels.get(key) == value
                )
            members = members & with_label
        refused = {
            i
            for i, taints in self._tainted
            if i in members and not all(tolerates(tolerations, taint) for taint in taints)
        }
        return tuple(sorted(members - refused))

    def _key(self, i: int, key_type: int) -> _Key:
        first = self.full[i] * SHARES_PER_DEVICE if key_type == _BY_WHOLE_FREE else self.roomiest[i]
        return (first, self.cpu[i], self.mem[i], self.tiebreak[i], i)

    def _raw(self, i: int) -> _Raw:
        return (self.full[i] * SHARES_PER_DEVICE, self.roomiest[i], self.cpu[i], self.mem[i])

    def _listed_key(self, i: int, key_type: int) -> _Key:
        """The key node i has in the sorted lists: from before the current gang touched it."""
        raw = self._touched.get(i)
        if raw is None:
            return self._key(i, key_type)
        return (raw[key_type], raw[2], raw[3], self.tiebreak[i], i)

    def _sorted(self, set_id: int) -> list[_Key]:
        """The set's sorted keys, current but for the nodes the gang being placed touched."""
        keys = self._lists[set_id]
        key_type = self._set_key_type[set_id]
        if keys is None:
            members = self._sets[set_id]
            keys = sorted(self._listed_key(i, key_type) for i in members)
            self._lists[set_id] = keys
            for i in members:
                self._node_sets[i].append(set_id)
            return keys
        stale = self._stale[set_id]
        if stale:
            for i, old in stale.items():
                del keys[bisect_left(keys, old)]
                insort(keys, self._listed_key(i, key_type))
            stale.clear()
        return keys

    # -- search ---------------------------------------------------------------------------------

    def find(self, need: Need, skip: set[int] | None, honor: bool) -> Hit | None:
        """Best fit: the eligible node that leaves the least free, then the lowest tiebreak.

        "Least free" is, in order: of a GPU measure (entirely free devices for whole GPUs and for
        CPU-only pods, which so keep off nodes with whole GPUs to give; the roomiest device for
        fractions), then of CPU, then of memory. That GPU measure also decides whether the GPU
        request fits, so the bisect lands on nodes that fit it.
        """
        cls, kind, cpu, mem, gpu, _ = need
        if kind == GPU_INVALID:
            return None
        set_id = self._class_set[cls]
        keys = self._sorted(set_id)
        blocked = self.blocked if honor and self.any_blocked else None
        touched = self._touched
        best: _Key | None = None
        best_slices: Slices = ()
        n = len(keys)
        pos = bisect_left(keys, (gpu, cpu))
        while pos < n:
            key = keys[pos]
            kg, kc, km, _, i = key
            if kc < cpu:
                # Inside one GPU level keys ascend by CPU: jump to the first that has enough.
                pos = bisect_left(keys, (kg, cpu), pos + 1)
                continue
            pos += 1
            if (
                km < mem
                or (blocked is not None and blocked[i])
                or (skip and i in skip)
                or i in touched
            ):
                continue
            slices = self._devices(i, kind, gpu)
            if slices is not None:
                best, best_slices = key, slices
                break
        if touched:
            # Nodes this gang already took from sit in the lists under their old keys; judge
            # them on what they have now.
            mask = self._masks[set_id]
            measure = self.full if self._set_key_type[set_id] == _BY_WHOLE_FREE else self.roomiest
            scale = SHARES_PER_DEVICE if measure is self.full else 1
            free_cpu, free_mem = self.cpu, self.mem
            for i in touched:
                first = measure[i] * scale
                if (
                    first < gpu
                    or free_cpu[i] < cpu
                    or free_mem[i] < mem
                    or not mask[i]
                    or (blocked is not None and blocked[i])
                    or (skip and i in skip)
                ):
                    continue
                key = (first, free_cpu[i], free_mem[i], self.tiebreak[i], i)
                if best is None or key < best:
                    slices = self._devices(i, kind, gpu)
                    if slices is not None:
                        best, best_slices = key, slices
        return None if best is None else (best[4], best_slices)

    def _devices(self, i: int, kind: int, gpu: int) -> Slices | None:
        if kind == GPU_NONE:
            return ()
        devs = self.devs[i]
        if kind == GPU_FRACTION:
            best = -1
            best_free = SHARES_PER_DEVICE + 1
            for d, free in enumerate(devs):
                if gpu <= free < best_free:
                    best, best_free = d, free
            return ((best, gpu),) if best >= 0 else None
        count = gpu // SHARES_PER_DEVICE
        if self.full[i] < count:
            return None
        whole = [d for d, free in enumerate(devs) if free == SHARES_PER_DEVICE][:count]
        return tuple((d, SHARES_PER_DEVICE) for d in whole)

    # -- assume and undo ------------------------------------------------------------------------

    def _apply(self, i: int, cpu: int, mem: int, slices: Slices, sign: int) -> None:
        """Take (sign 1) or give back (sign -1) a pod's requests on node i. Hot: no max()."""
        old_cpu = self.cpu[i]
        old_mem = self.mem[i]
        new_cpu = self.cpu[i] = old_cpu - sign * cpu
        new_mem = self.mem[i] = old_mem - sign * mem
        # The free sums count what is usable: a node over its capacity adds nothing, not less.
        self.free_cpu += (new_cpu if new_cpu > 0 else 0) - (old_cpu if old_cpu > 0 else 0)
        self.free_mem += (new_mem if new_mem > 0 else 0) - (old_mem if old_mem > 0 else 0)
        if not slices:
            return
        devs = self.devs[i]
        full_before = full = self.full[i]
        gpu = 0
        by_device_free = self._by_device_free if self._shared[i] else None
        for d, shares in slices:
            before = devs[d]
            after = devs[d] = before - sign * shares
            gpu += (after if after > 0 else 0) - (before if before > 0 else 0)
            if before == SHARES_PER_DEVICE:
                full -= 1
            if after == SHARES_PER_DEVICE:
                full += 1
            if by_device_free is not None:
                by_device_free[_bucket(before)] -= 1
                by_device_free[_bucket(after)] += 1
                if after > self._top_device_free:
                    self._top_device_free = _bucket(after)
        self.full[i] = full
        roomiest = max(devs)
        self.roomiest[i] = roomiest if roomiest > 0 else 0
        self.gfree[i] += gpu
        self.free_gpu += gpu
        self._by_full[full_before] -= 1
        self._by_full[full] += 1
        if full > self._top_full:
            self._top_full = full

    def _take(self, i: int, cpu: int, mem: int, slices: Slices) -> None:
        if i not in self._touched:
            self._touched[i] = self._raw(i)
        self._apply(i, cpu, mem, slices, 1)
        self._journal.append((i, cpu, mem, slices))

    def rollback(self) -> None:
        """Undo everything taken since the last commit."""
        journal = self._journal
        while journal:
            i, cpu, mem, slices = journal.pop()
            self._apply(i, cpu, mem, slices, -1)
        self._touched.clear()

    def commit(self) -> None:
        """Keep everything taken since the last commit; its nodes re-sort at their next search."""
        tiebreak = self.tiebreak
        key_types = self._set_key_type
        every_stale = self._stale
        for i, raw in self._touched.items():
            for set_id in self._node_sets[i]:
                stale = every_stale[set_id]
                if i not in stale:
                    stale[i] = (raw[key_types[set_id]], raw[2], raw[3], tiebreak[i], i)
        self._touched.clear()
        self._journal.clear()

    def place_gang(self, gang: Gang, honor: bool) -> list[Hit] | None:
        """Place every pod of a gang, in its order, or nothing.

        On success the placement stays applied until `commit()` or `rollback()`; on failure the
        state is restored and the failure is memoized when it does not depend on the gang itself.
        """
        assert not self._journal, "commit or roll back the previous gang first"
        needs = gang.needs
        signature = gang.signature
        if self._known_to_fail(signature, honor):
            return None
        spread_used: set[int] = set()
        hits: list[Hit] = []
        last: Need | None = None
        last_node = -1
        for k, need in enumerate(needs):
            hit = None
            if need[5]:
                if spread_used:
                    hit = self.find(need, spread_used, honor)
            elif need == last:
                # The same shape again: the node that was the best fit is still the best if the
                # pod fits there, since only that node changed and it now has less free.
                slices = self._fits(last_node, need)
                if slices is not None:
                    hit = (last_node, slices)
            if hit is None:
                # Spreading is a preference: reuse a node rather than fail the gang.
                hit = self.find(need, None, honor)
            if hit is None:
                self.rollback()
                self._learn(needs, k, signature, honor)
                return None
            i, slices = hit
            self._take(i, need[2], need[3], slices)
            if need[5]:
                spread_used.add(i)
            hits.append(hit)
            last, last_node = need, i
        return hits

    def _fits(self, i: int, need: Need) -> Slices | None:
        _, kind, cpu, mem, gpu, _ = need
        if self.cpu[i] < cpu or self.mem[i] < mem or self.gfree[i] < gpu:
            return None
        return self._devices(i, kind, gpu)

    def _learn(
        self, needs: Sequence[Need], k: int, signature: tuple[tuple[Need, int], ...], honor: bool
    ) -> None:
        scoped = honor and self.any_blocked
        (self._failed_gangs_open if scoped else self._failed_gangs_all).add(signature)
        need = needs[k]
        # The pod may have failed only because earlier pods of its own gang took the room; check
        # it alone against the restored state before memoizing its shape.
        if k > 0 and self.find(need, None, honor) is not None:
            return
        memo = self._failed_open if scoped else self._failed_all
        shape = (need[2], need[3], need[4])
        frontier = memo.setdefault(need[0], [])
        frontier[:] = [f for f in frontier if not _dominates(f, shape)]
        frontier.append(shape)

    def _known_to_fail(self, signature: tuple[tuple[Need, int], ...], honor: bool) -> bool:
        if signature in self._failed_gangs_all or (honor and signature in self._failed_gangs_open):
            return True
        memos = (self._failed_all, self._failed_open) if honor else (self._failed_all,)
        for need, _ in signature:
            if need[1] == GPU_INVALID:
                return True
            for memo in memos:
                frontier = memo.get(need[0])
                if frontier and any(_dominates((need[2], need[3], need[4]), f) for f in frontier):
                    return True
        return False

    def surely_fails(self, pods: Sequence[PodRequest]) -> bool:
        """A cheap test before the gang is built: True only if no node at all could take it now.

        Checks the largest GPU request against the most free devices on any node, and, for pods
        without selectors or tolerations, each shape against the failure memo.
        """
        top = max(map(_GPU, pods), default=0)
        if top >= SHARES_PER_DEVICE:
            while self._top_full > 0 and not self._by_full[self._top_full]:
                self._top_full -= 1
            if top // SHARES_PER_DEVICE > self._top_full:
                return True
        elif top > 0:
            while self._top_device_free > 0 and not self._by_device_free[self._top_device_free]:
                self._top_device_free -= 1
            if top > self._top_device_free:
                return True
        memo = self._failed_all
        if not memo or any(map(_SELECTOR, pods)) or any(map(_TOLERATIONS, pods)):
            return False
        for gpu, cpu, mem, _ in dict.fromkeys(map(_SHAPE, pods)):
            cls = self._classes.get((gpu_kind(gpu),))
            frontier = memo.get(cls) if cls is not None else None
            if frontier and any(_dominates((cpu, mem, gpu), f) for f in frontier):
                return True
        return False

    # -- reservations ---------------------------------------------------------------------------

    def block(self, nodes: Iterable[int]) -> None:
        """Reserve nodes: searches that honor reservations skip them from now on."""
        for i in nodes:
            if self.blocked[i]:
                continue
            self.blocked[i] = 1
            self.any_blocked = True
            if self._ready[i]:
                self.blocked_cpu += max(self.cpu[i], 0)
                self.blocked_mem += max(self.mem[i], 0)
                self.blocked_gpu += self.gfree[i]

    # -- what is left, for messages --------------------------------------------------------------

    def class_free(self, cls: int) -> ClassFree:
        """Free capacity over the class's nodes, reserved ones included. Cached: call at the end."""
        cached = self._class_free.get(cls)
        if cached is not None:
            return cached
        members = self._sets[self._class_set[cls]]
        if self._class_kind[cls] == GPU_FRACTION:
            gpu_max = max((self.roomiest[i] for i in members), default=0)
        else:
            gpu_max = SHARES_PER_DEVICE * max((self.full[i] for i in members), default=0)
        result = ClassFree(
            nodes=len(members),
            cpu_sum=sum(max(self.cpu[i], 0) for i in members),
            memory_sum=sum(max(self.mem[i], 0) for i in members),
            gpu_sum=sum(self.gfree[i] for i in members),
            cpu_max=max((self.cpu[i] for i in members), default=0),
            memory_max=max((self.mem[i] for i in members), default=0),
            gpu_max=gpu_max,
        )
        self._class_free[cls] = result
        return result


def _bucket(free: int) -> int:
    return 0 if free < 0 else SHARES_PER_DEVICE if free > SHARES_PER_DEVICE else free


def _dominates(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """a needs at least as much as b in every resource."""
    return a[0] >= b[0] and a[1] >= b[1] and a[2] >= b[2]
