"""Best fit for one pod: pod classes, the node sets they may use, and a sorted search of each set.

`BestFit` holds a `FreeCapacity` and adds what finding a node for one pod needs: pod classes, the
node sets they may use and their sorted keys; `ClusterState` in `placement.py` holds both and
builds gangs with them.

Invariants kept here:

- Pods of one class are eligible for exactly the same nodes, the nodes `nodes.node_admits` accepts
  (among ready nodes); the indexes by GPU kind, label, taint and extended resource only make that
  cheaper. A class's key holds the names of the extended resources its pods ask for, so every
  node in its sets advertises them; their amounts are checked node by node during the search.
- Every node set keeps a sorted list of keys `(gpu measure, cpu free, memory free, tiebreak, node)`.
  A key in a list is never below the node's real free (it is either current or from before the
  gang being placed took from the node), so a bisect never skips a node that fits; the nodes the
  gang touched are searched on the side with their real values.
- `find` returns the eligible node that leaves the least free, ties broken on the tiebreak (node
  name order unless the caller gives another), so the same inputs always give the same node. It
  never offers a node without room for the pod, nor a reserved one when `honor` is set.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.domain.resources import Extended
from gateway.domain.scheduling.capacity import FreeCapacity, Slices
from gateway.domain.scheduling.nodes import (
    ENFORCED_EFFECTS,
    GPU_FRACTION,
    GPU_INVALID,
    GPU_NONE,
    GPU_WHOLE,
    SHARES_PER_DEVICE,
    PodRequest,
    Taint,
    Term,
    Toleration,
    affinity_admits,
    gpu_kind,
    names_of,
    takes_kind,
    tolerates,
)

# A pod as the hot loop sees it: (class id, gpu kind, cpu, memory, gpu shares, spread, extended).
Need = tuple[int, int, int, int, int, bool, Extended]
Hit = tuple[int, Slices]  # (node index, slices)
_Key = tuple[int, int, int, int, int]  # (gpu measure, cpu free, memory free, tiebreak, node)

# What the first element of a node's sorted key measures, by the kind of GPU request searched.
# Each is also the index of that measure in `capacity.Raw`.
_BY_WHOLE_FREE = 0  # shares on entirely free devices: whole GPUs, and CPU-only pods
_BY_DEVICE_FREE = 1  # free shares of the roomiest device: fractions
_KEY_TYPE = {
    GPU_NONE: _BY_WHOLE_FREE,
    GPU_FRACTION: _BY_DEVICE_FREE,
    GPU_WHOLE: _BY_WHOLE_FREE,
    GPU_INVALID: _BY_WHOLE_FREE,
}


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
    #: Per extended resource the class's pods ask for: (name, free in all, most free on a node).
    extended: tuple[tuple[str, int, int], ...] = ()


class BestFit:
    """The indexes of a best-fit search over one `FreeCapacity`. Never leaves `plan()`.

    For every set of eligible nodes there is a list of keys `(gpu measure, cpu free, memory free,
    tiebreak, node)` kept sorted, so best fit is a bisect plus a short scan instead of a pass over
    every node.

    While a gang is being placed, the nodes it touched keep their old keys in the sorted lists (an
    old key is never below the real free, so a bisect never skips a node that fits) and are
    searched on the side with their real values. `mark_taken()`, before the capacity commits,
    marks them for re-sorting at the next search of each list; a rollback only restores values
    in the capacity. A gang that fails therefore never touches the sorted lists.
    """

    def __init__(
        self,
        free: FreeCapacity,
        *,
        tiebreak: Sequence[int] | None = None,
        like: BestFit | None = None,
    ) -> None:
        """``like``: a search over the same nodes whose eligibility indexes (which depend on
        the nodes alone) this one shares, so a what-if search starts warm."""
        self.free = free
        self.nodes = free.nodes
        count = len(self.nodes)
        self.tiebreak = list(tiebreak) if tiebreak is not None else list(range(count))
        # Eligibility indexes: nodes by gpu kind, by label, by extended resource, and the nodes
        # whose taints matter.
        self._by_kind: dict[int, frozenset[int]]
        self._by_label: dict[tuple[str, str], frozenset[int]]
        self._by_resource: dict[str, frozenset[int]]
        self._tainted: list[tuple[int, tuple[Taint, ...]]]
        if like is not None and like.nodes is self.nodes:
            self._by_kind = like._by_kind
            self._by_label = like._by_label
            self._by_resource = like._by_resource
            self._tainted = like._tainted
        else:
            self._by_kind = {}
            self._by_label = {}
            self._by_resource = {}
            self._tainted = [
                (i, taints)
                for i, node in enumerate(self.nodes)
                if (taints := tuple(t for t in node.taints if t.effect in ENFORCED_EFFECTS))
            ]
        # Pod classes, and the node sets (eligible nodes plus key type) they search.
        self._classes: dict[tuple[object, ...], int] = {}
        self._class_set: list[int] = []  # class id -> node-set id
        self._class_kind: list[int] = []  # class id -> gpu kind
        self._class_ext: list[tuple[str, ...]] = []  # class id -> extended resource names
        self._set_ids: dict[tuple[int, tuple[int, ...]], int] = {}
        self._sets: list[tuple[int, ...]] = []
        self._set_key_type: list[int] = []
        self._masks: list[bytearray] = []
        self._lists: list[list[_Key] | None] = []
        self._node_sets: dict[int, list[int]] = {}  # node -> sets with a built list
        # Per set: nodes whose key changed since the list was last searched, with the key the
        # list still holds. Re-sorting waits for the next search, so a list searched rarely
        # re-sorts a node once however many gangs took from it meanwhile.
        self._stale: list[dict[int, _Key]] = []
        self._class_free: dict[int, ClassFree] = {}

    # -- classes --------------------------------------------------------------------------------

    def class_of(self, pod: PodRequest) -> tuple[int, int]:
        """(class id, gpu kind). Pods of one class are eligible for exactly the same nodes."""
        kind = gpu_kind(pod.gpu_shares)
        selector = pod.node_selector
        tolerations = pod.tolerations
        extended = pod.extended
        affinity = pod.affinity
        if not selector and not tolerations and not extended and not affinity:
            key: tuple[object, ...] = (kind,)
        else:
            names = names_of(extended)
            key = (kind, tuple(sorted(selector.items())), tolerations, names, affinity)
        cls = self._classes.get(key)
        if cls is None:
            cls = self._new_class(key, selector, tolerations, kind, names_of(extended), affinity)
        return cls, kind

    def known_class(self, key: tuple[object, ...]) -> int | None:
        """The id of a class already seen, by its key (``(gpu kind,)`` for a pod without
        selectors, tolerations or extended resources), or None."""
        return self._classes.get(key)

    def _new_class(
        self,
        key: tuple[object, ...],
        selector: Mapping[str, str],
        tolerations: Sequence[Toleration],
        kind: int,
        extended: tuple[str, ...],
        affinity: tuple[Term, ...] = (),
    ) -> int:
        members = self._eligible(selector, tolerations, kind, extended, affinity)
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
        self._class_ext.append(extended)
        self._classes[key] = cls
        return cls

    def _eligible(
        self,
        selector: Mapping[str, str],
        tolerations: Sequence[Toleration],
        kind: int,
        extended: tuple[str, ...] = (),
        affinity: tuple[Term, ...] = (),
    ) -> tuple[int, ...]:
        """The nodes `node_admits` accepts, from indexes instead of a pass over every node
        (but for node affinity, checked on each node that passes the rest)."""
        members = self._by_kind.get(kind)
        if members is None:
            members = self._by_kind[kind] = frozenset(
                i for i, node in enumerate(self.nodes) if node.ready and takes_kind(node, kind)
            )
        for name in extended:
            offering = self._by_resource.get(name)
            if offering is None:
                offering = self._by_resource[name] = frozenset(
                    i for i, node in enumerate(self.nodes) if node.extended.get(name, 0) > 0
                )
            members = members & offering
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
        if affinity:
            nodes = self.nodes
            refused |= {i for i in members if not affinity_admits(nodes[i], affinity)}
        return tuple(sorted(members - refused))

    def _key(self, i: int, key_type: int) -> _Key:
        free = self.free
        first = free.full[i] * SHARES_PER_DEVICE if key_type == _BY_WHOLE_FREE else free.roomiest[i]
        return (first, free.cpu[i], free.mem[i], self.tiebreak[i], i)

    def _listed_key(self, i: int, key_type: int) -> _Key:
        """The key node i has in the sorted lists: from before the current gang touched it."""
        raw = self.free.touched.get(i)
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
            node_sets = self._node_sets
            for i in members:
                found = node_sets.get(i)
                if found is None:
                    node_sets[i] = [set_id]
                else:
                    found.append(set_id)
            return keys
        stale = self._stale[set_id]
        if stale:
            for i, old in stale.items():
                del keys[bisect_left(keys, old)]
                insort(keys, self._listed_key(i, key_type))
            stale.clear()
        return keys

    def mark_taken(self) -> None:
        """The gang assumed into the capacity is kept: its nodes re-sort at their next search.
        Call before the capacity commits (it reads what the gang touched)."""
        tiebreak = self.tiebreak
        key_types = self._set_key_type
        every_stale = self._stale
        node_sets = self._node_sets
        for i, raw in self.free.touched.items():
            for set_id in node_sets.get(i, ()):
                stale = every_stale[set_id]
                if i not in stale:
                    stale[i] = (raw[key_types[set_id]], raw[2], raw[3], tiebreak[i], i)

    # -- search ---------------------------------------------------------------------------------

    def find(self, need: Need, skip: set[int] | None, honor: bool) -> Hit | None:
        """Best fit: the eligible node that leaves the least free, then the lowest tiebreak.

        "Least free" is, in order: of a GPU measure (entirely free devices for whole GPUs and for
        CPU-only pods, which so keep off nodes with whole GPUs to give; the roomiest device for
        fractions), then of CPU, then of memory. That GPU measure also decides whether the GPU
        request fits, so the bisect lands on nodes that fit it.
        """
        cls, kind, cpu, mem, gpu, _, ext = need
        if kind == GPU_INVALID:
            return None
        set_id = self._class_set[cls]
        keys = self._sorted(set_id)
        free = self.free
        blocked = free.blocked if honor and free.any_blocked else None
        touched = free.touched
        devices = free.devices
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
                or (ext and not free.ext_fits(i, ext))
            ):
                continue
            slices = devices(i, kind, gpu)
            if slices is not None:
                best, best_slices = key, slices
                break
        if touched:
            # Nodes this gang already took from sit in the lists under their old keys; judge
            # them on what they have now.
            mask = self._masks[set_id]
            measure = free.full if self._set_key_type[set_id] == _BY_WHOLE_FREE else free.roomiest
            scale = SHARES_PER_DEVICE if measure is free.full else 1
            free_cpu, free_mem = free.cpu, free.mem
            for i in touched:
                first = measure[i] * scale
                if (
                    first < gpu
                    or free_cpu[i] < cpu
                    or free_mem[i] < mem
                    or not mask[i]
                    or (blocked is not None and blocked[i])
                    or (skip and i in skip)
                    or (ext and not free.ext_fits(i, ext))
                ):
                    continue
                key = (first, free_cpu[i], free_mem[i], self.tiebreak[i], i)
                if best is None or key < best:
                    slices = devices(i, kind, gpu)
                    if slices is not None:
                        best, best_slices = key, slices
        return None if best is None else (best[4], best_slices)

    # -- what is left, for messages --------------------------------------------------------------

    def class_free(self, cls: int) -> ClassFree:
        """Free capacity over the class's nodes, reserved ones included. Cached: call at the end."""
        cached = self._class_free.get(cls)
        if cached is not None:
            return cached
        members = self._sets[self._class_set[cls]]
        free = self.free
        if self._class_kind[cls] == GPU_FRACTION:
            gpu_max = max((free.roomiest[i] for i in members), default=0)
        else:
            gpu_max = SHARES_PER_DEVICE * max((free.full[i] for i in members), default=0)
        result = ClassFree(
            nodes=len(members),
            cpu_sum=sum(max(free.cpu[i], 0) for i in members),
            memory_sum=sum(max(free.mem[i], 0) for i in members),
            gpu_sum=sum(free.gfree[i] for i in members),
            cpu_max=max((free.cpu[i] for i in members), default=0),
            memory_max=max((free.mem[i] for i in members), default=0),
            gpu_max=gpu_max,
            extended=tuple(
                (
                    name,
                    sum(max((free.ext[i] or {}).get(name, 0), 0) for i in members),
                    max(((free.ext[i] or {}).get(name, 0) for i in members), default=0),
                )
                for name in self._class_ext[cls]
            ),
        )
        self._class_free[cls] = result
        return result
