"""Placing a gang: every pod of a job on a node, or none of them.

`admission.plan()` decides *which* jobs go; this module decides *where* their pods go. It knows
nodes, GPU devices and holdings, and nothing about tenants, quotas or queues. `ClusterState` is the
working copy of free capacity that one cycle places into. It holds the free capacity and its undo
(`capacity.FreeCapacity`, as ``capacity``) and the search for one pod's node
(`best_fit.BestFit`, as ``search``), and adds what is about whole gangs.

Invariants kept here:

- A placement made through `ClusterState` never drives a node's free CPU or memory, or any GPU
  device's free shares, below zero. Over-commitment that arrives in the holdings is kept as it is
  and never made worse. A pod never spans nodes.
- A gang is placed whole or not at all: one that does not fit leaves the state exactly as it
  found it ("assume, then write", with undo), and one that fits stays assumed until `commit()`
  or `rollback()`.
- Pods are placed largest first (GPU, CPU, memory), ties broken on the pod name; nodes are
  indexed in name order and every search breaks ties on that index (or on the tiebreak the caller
  gives), so the same inputs always give the same placement.
- The failure memos only ever turn away what cannot fit: free capacity only shrinks within a
  cycle, so a shape that failed keeps failing, and so does any shape at least as large.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import attrgetter

from gateway.domain.resources import Extended
from gateway.domain.scheduling.best_fit import BestFit, Hit, Need
from gateway.domain.scheduling.capacity import FreeCapacity, Slices
from gateway.domain.scheduling.nodes import GPU_INVALID, Holding, Node, PodRequest, gpu_kind

_NAME = attrgetter("name")
_GPU = attrgetter("gpu_shares")
_SHAPE = attrgetter("gpu_shares", "cpu_millis", "memory_bytes", "spread", "extended")
_SELECTOR = attrgetter("node_selector")
_TOLERATIONS = attrgetter("tolerations")
_EXTENDED = attrgetter("extended")
_AFFINITY = attrgetter("affinity")
# A shape the failure memos keep: (cpu, memory, gpu shares, extended amounts).
_Shape = tuple[int, int, int, Extended]


@dataclass(frozen=True, kw_only=True, slots=True)
class Gang:
    """The pods of one job as placement sees them, largest first."""

    needs: tuple[Need, ...]
    order: tuple[int, ...]  # for each need, the index of its pod in the job
    signature: tuple[tuple[Need, int], ...]  # runs of equal needs: equal gangs, equal signature


class ClusterState:
    """The working copy of free capacity that one cycle places gangs into. Never leaves `plan()`."""

    def __init__(
        self,
        nodes: Sequence[Node],
        holdings: Iterable[Holding] = (),
        *,
        tiebreak: Sequence[int] | None = None,
        capacity: FreeCapacity | None = None,
        like: ClusterState | None = None,
    ) -> None:
        """``capacity``, when given, is the free capacity to place into (``nodes`` and
        ``holdings`` are then its own): a what-if of preemption (``FreeCapacity.copy``), which
        shares the node indexes of the state it is ``like``."""
        self.capacity = FreeCapacity(nodes, holdings) if capacity is None else capacity
        self.search: BestFit = BestFit(
            self.capacity, tiebreak=tiebreak, like=None if like is None else like.search
        )
        self.nodes = self.capacity.nodes
        self.find = self.search.find
        self.class_free = self.search.class_free
        # Failure memos, per class: the minimal (cpu, memory, gpu, extended) shapes known not to
        # fit. Free capacity only shrinks within a cycle, so a shape that failed keeps failing,
        # and so does any shape at least as large in every resource. "open" memos hold failures
        # that may be due to reserved nodes, "all" memos failures on every node.
        self._failed_open: dict[int, list[_Shape]] = {}
        self._failed_all: dict[int, list[_Shape]] = {}
        # Whole gangs that failed. Greedy placement is not strictly monotone in free capacity,
        # so this can, rarely, turn away a gang that a retry would have placed; it never lets
        # anything through, and it keeps a long queue of identical gangs cheap.
        self._failed_gangs_open: set[tuple[tuple[Need, int], ...]] = set()
        self._failed_gangs_all: set[tuple[tuple[Need, int], ...]] = set()

    # -- gangs ----------------------------------------------------------------------------------

    def gang_of(self, pods: Sequence[PodRequest]) -> Gang:
        """The pods of one job in placement order: largest first (GPU, CPU, memory; ties on name).

        Replicas of a role are identical but for their name, so the work here is per group of
        identical pods, not per pod: one class lookup and one `Need` object per group.
        """
        groups: dict[tuple[object, ...], list[int]] = {}
        if any(map(_SELECTOR, pods)) or any(map(_TOLERATIONS, pods)) or any(map(_AFFINITY, pods)):
            for k, pod in enumerate(pods):
                selector = pod.node_selector
                tolerations = pod.tolerations
                key = (
                    *_SHAPE(pod),
                    tuple(selector.items()) if selector else (),
                    id(tolerations) if tolerations else 0,
                    pod.affinity,
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
            cls, kind = self.search.class_of(pod)
            need = (
                cls,
                kind,
                pod.cpu_millis,
                pod.memory_bytes,
                pod.gpu_shares,
                pod.spread,
                pod.extended,
            )
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

    def place_gang(self, gang: Gang, honor: bool) -> list[Hit] | None:
        """Place every pod of a gang, in its order, or nothing.

        On success the placement stays applied until `commit()` or `rollback()`; on failure the
        state is restored and the failure is memoized when it does not depend on the gang itself.
        """
        capacity = self.capacity
        assert not capacity.journal, "commit or roll back the previous gang first"
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
                capacity.rollback()
                self._learn(needs, k, signature, honor)
                return None
            i, slices = hit
            capacity.take(i, need[2], need[3], slices, need[6])
            if need[5]:
                spread_used.add(i)
            hits.append(hit)
            last, last_node = need, i
        return hits

    def commit(self) -> None:
        """Keep the gang just placed."""
        self.search.mark_taken()
        self.capacity.commit()

    def rollback(self) -> None:
        """Give back the gang just placed."""
        self.capacity.rollback()

    def _fits(self, i: int, need: Need) -> Slices | None:
        _, kind, cpu, mem, gpu, _, ext = need
        capacity = self.capacity
        if capacity.cpu[i] < cpu or capacity.mem[i] < mem or capacity.gfree[i] < gpu:
            return None
        if ext and not capacity.ext_fits(i, ext):
            return None
        return capacity.devices(i, kind, gpu)

    def _learn(
        self, needs: Sequence[Need], k: int, signature: tuple[tuple[Need, int], ...], honor: bool
    ) -> None:
        scoped = honor and self.capacity.any_blocked
        (self._failed_gangs_open if scoped else self._failed_gangs_all).add(signature)
        need = needs[k]
        # The pod may have failed only because earlier pods of its own gang took the room; check
        # it alone against the restored state before memoizing its shape.
        if k > 0 and self.find(need, None, honor) is not None:
            return
        memo = self._failed_open if scoped else self._failed_all
        shape = (need[2], need[3], need[4], need[6])
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
                shape = (need[2], need[3], need[4], need[6])
                if frontier and any(_dominates(shape, f) for f in frontier):
                    return True
        return False

    def surely_fails(self, pods: Sequence[PodRequest]) -> bool:
        """A cheap test before the gang is built: True only if no node at all could take it now.

        Checks the largest GPU request against the most free devices on any node, and, for pods
        without selectors or tolerations, each shape against the failure memo.
        """
        if self.capacity.no_device_fits(max(map(_GPU, pods), default=0)):
            return True
        memo = self._failed_all
        if (
            not memo
            or any(map(_SELECTOR, pods))
            or any(map(_TOLERATIONS, pods))
            or any(map(_EXTENDED, pods))
            or any(map(_AFFINITY, pods))
        ):
            return False
        for gpu, cpu, mem, _, _ in dict.fromkeys(map(_SHAPE, pods)):
            cls = self.search.known_class((gpu_kind(gpu),))
            frontier = memo.get(cls) if cls is not None else None
            if frontier and any(_dominates((cpu, mem, gpu, ()), f) for f in frontier):
                return True
        return False


def _dominates(a: _Shape, b: _Shape) -> bool:
    """a needs at least as much as b in every resource. Shapes of one class ask for the same
    extended resources (their names are part of the class), so their amounts pair up."""
    if not (a[0] >= b[0] and a[1] >= b[1] and a[2] >= b[2]):
        return False
    ext_a, ext_b = a[3], b[3]
    return ext_a == ext_b or all(x[1] >= y[1] for x, y in zip(ext_a, ext_b, strict=True))
