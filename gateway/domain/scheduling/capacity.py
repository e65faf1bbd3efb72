"""Free capacity: what is left of each node after Muster's holdings, and the working copy a cycle
takes from.

`free_capacity()` reports it (the cluster API and the metrics); `FreeCapacity` is the mutable copy
that one admission cycle assumes pods into and undoes. `best_fit.BestFit` searches it and
`placement.ClusterState` places gangs into it; both hold it, neither extends it.

Invariants kept here:

- Holdings on a node that left the inventory count for nothing; a holding's slice of a device the
  node does not have is ignored.
- Over-commitment that arrives in the holdings (free below zero) is kept as it is, never made
  worse: `devices` only chooses devices with room, and the best-fit search only offers nodes
  with room. The free sums count what is usable, so a node over its capacity adds nothing to
  them, not less.
- Extended resources are counted per node and name (`ext`); a pod takes them only from a node
  that advertises every name it asks for, never below zero, and holdings of a name a node no
  longer advertises are ignored. They are not part of the sorted keys: the search checks them.
- A fractional GPU request (1..99 shares) sits on exactly one device: the fullest device that
  still fits. A whole request (k * 100 shares) takes k entirely free devices, lowest first.
- Every take is journaled: `rollback()` gives back exactly what was taken since the last
  `commit()`, free sums, device counts and bounds included. Only `give_back` (a preempted
  gang, on a `copy()`) makes capacity grow otherwise.
- The bounds behind `no_device_fits` (most entirely free devices on a ready node, roomiest
  device of a ready shared node) only fall within a cycle, except when a take is rolled back;
  they are upper bounds, so they never turn away a pod that fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.domain.resources import Extended
from gateway.domain.scheduling.nodes import (
    GPU_FRACTION,
    GPU_NONE,
    SHARES_PER_DEVICE,
    GpuMode,
    Holding,
    Node,
)

Slices = tuple[tuple[int, int], ...]  # (device, shares)
# The values a node had before the gang being placed touched it, the keys `best_fit.py` sorts on:
# (whole free: shares on entirely free devices, roomiest device, cpu free, memory free).
Raw = tuple[int, int, int, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeFree:
    """Free capacity of one node after Muster's holdings; `gpu` is free shares per device."""

    name: str
    ready: bool
    gpu_mode: GpuMode
    cpu_millis: int
    memory_bytes: int
    gpu: tuple[int, ...]
    #: Free extended resources by name (what the node advertises less Muster's holdings).
    extended: tuple[tuple[str, int], ...] = ()


def _device_count(node: Node) -> int:
    return 0 if node.gpu_mode is GpuMode.NONE else max(node.gpu_devices, 0)


#: Free extended resources of one node by name; None for a node that advertises none.
ExtFree = dict[str, int] | None


def free_after_holdings(
    nodes: Sequence[Node], holdings: Iterable[Holding]
) -> tuple[list[int], list[int], list[list[int]], list[ExtFree]]:
    index = {node.name: i for i, node in enumerate(nodes)}
    cpu = [node.cpu_millis for node in nodes]
    mem = [node.memory_bytes for node in nodes]
    devs = [[SHARES_PER_DEVICE] * _device_count(node) for node in nodes]
    ext: list[ExtFree] = [
        {name: amount for name, amount in node.extended.items() if amount > 0} or None
        for node in nodes
    ]
    for holding in holdings:
        i = index.get(holding.node)
        if i is None:  # a node that left the inventory: its pods hold nothing we can use
            continue
        cpu[i] -= holding.cpu_millis
        mem[i] -= holding.memory_bytes
        for gpu_slice in holding.gpu:
            if 0 <= gpu_slice.device < len(devs[i]):
                devs[i][gpu_slice.device] -= gpu_slice.shares
        offered = ext[i]
        if holding.extended and offered is not None:
            for name, amount in holding.extended:
                if name in offered:  # a name the node no longer advertises holds nothing
                    offered[name] -= amount
    return cpu, mem, devs, ext


def free_capacity(nodes: Sequence[Node], holdings: Iterable[Holding]) -> tuple[NodeFree, ...]:
    """Free CPU, memory and per-device GPU shares of every node, in name order."""
    ordered = sorted(nodes, key=lambda node: node.name)
    cpu, mem, devs, ext = free_after_holdings(ordered, holdings)
    return tuple(
        NodeFree(
            name=node.name,
            ready=node.ready,
            gpu_mode=node.gpu_mode,
            cpu_millis=cpu[i],
            memory_bytes=mem[i],
            gpu=tuple(devs[i]),
            extended=tuple(sorted((ext[i] or {}).items())),
        )
        for i, node in enumerate(ordered)
    )


class FreeCapacity:
    """Per-node free CPU, memory, GPU shares per device and extended resources, kept in plain
    lists by node index.

    Nodes are indexed in name order. A pod is taken with `take()`, which journals it and keeps
    the node's values from before the gang in `touched`; `commit()` keeps what was taken and
    `rollback()` gives it back.
    """

    def __init__(self, nodes: Sequence[Node], holdings: Iterable[Holding] = ()) -> None:
        self.nodes = tuple(sorted(nodes, key=lambda node: node.name))
        count = len(self.nodes)
        self.cpu, self.mem, self.devs, self.ext = free_after_holdings(self.nodes, holdings)
        # Free GPU counts only devices with room: an over-committed device must not hide the
        # free shares of its neighbours from the sorted keys, which are upper bounds on fit.
        self.gfree = [sum(max(d, 0) for d in devs) for devs in self.devs]
        self.full = [d.count(SHARES_PER_DEVICE) for d in self.devs]
        self.roomiest = [max(max(devs, default=0), 0) for devs in self.devs]
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
        # Sized by the most devices of a node: a preempted gang given back can free them all.
        self._by_full = [0] * (max(map(len, self.devs), default=0) + 1)
        self._by_device_free = [0] * (SHARES_PER_DEVICE + 1)
        for i in ready:
            self._by_full[self.full[i]] += 1
            if self._shared[i]:
                for free in self.devs[i]:
                    self._by_device_free[_bucket(free)] += 1
        self._top_full = len(self._by_full) - 1
        self._top_device_free = SHARES_PER_DEVICE
        # The gang being placed: what it took, and the values its nodes had before (the keys
        # they still have in the sorted lists of `best_fit.py`).
        self.journal: list[tuple[int, int, int, Slices, Extended]] = []
        self.touched: dict[int, Raw] = {}

    def raw(self, i: int) -> Raw:
        return (self.full[i] * SHARES_PER_DEVICE, self.roomiest[i], self.cpu[i], self.mem[i])

    def ext_fits(self, i: int, ext: Extended) -> bool:
        """Whether node i has every extended resource of ``ext`` free."""
        offered = self.ext[i]
        if offered is None:
            return False
        return all(offered.get(name, 0) >= amount for name, amount in ext)

    # -- GPU devices ----------------------------------------------------------------------------

    def devices(self, i: int, kind: int, gpu: int) -> Slices | None:
        """The device slices a pod of this GPU kind would take on node i, or None."""
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

    def no_device_fits(self, gpu: int) -> bool:
        """True only if no ready node has the devices for a pod asking `gpu` shares now."""
        if gpu >= SHARES_PER_DEVICE:
            while self._top_full > 0 and not self._by_full[self._top_full]:
                self._top_full -= 1
            return gpu // SHARES_PER_DEVICE > self._top_full
        if gpu > 0:
            while self._top_device_free > 0 and not self._by_device_free[self._top_device_free]:
                self._top_device_free -= 1
            return gpu > self._top_device_free
        return False

    # -- assume and undo ------------------------------------------------------------------------

    def _apply(
        self, i: int, cpu: int, mem: int, slices: Slices, sign: int, ext: Extended = ()
    ) -> None:
        """Take (sign 1) or give back (sign -1) a pod's requests on node i. Hot: no max()."""
        if ext:
            offered = self.ext[i]
            if offered is not None:
                for name, amount in ext:
                    if name in offered:
                        offered[name] -= sign * amount
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

    def take(self, i: int, cpu: int, mem: int, slices: Slices, ext: Extended = ()) -> None:
        """Assume a pod on node i (journaled until ``commit`` or ``rollback``)."""
        if i not in self.touched:
            self.touched[i] = self.raw(i)
        self._apply(i, cpu, mem, slices, 1, ext)
        self.journal.append((i, cpu, mem, slices, ext))

    def rollback(self) -> None:
        """Undo everything taken since the last commit."""
        journal = self.journal
        while journal:
            i, cpu, mem, slices, ext = journal.pop()
            self._apply(i, cpu, mem, slices, -1, ext)
        self.touched.clear()

    def commit(self) -> None:
        """Keep everything taken since the last commit."""
        self.touched.clear()
        self.journal.clear()

    # -- what-ifs -------------------------------------------------------------------------------

    def copy(self) -> FreeCapacity:
        """An independent copy, with nothing journaled: what preemption tries its what-ifs on
        (cheaper than building one from the holdings again)."""
        if self.journal:
            raise ValueError("copy() of a capacity with a gang in progress")
        twin = FreeCapacity.__new__(FreeCapacity)
        twin.nodes = self.nodes
        twin.cpu, twin.mem = list(self.cpu), list(self.mem)
        twin.devs = [list(devs) for devs in self.devs]
        twin.ext = [None if offered is None else dict(offered) for offered in self.ext]
        twin.gfree, twin.full, twin.roomiest = (
            list(self.gfree),
            list(self.full),
            list(self.roomiest),
        )
        twin.blocked, twin.any_blocked = bytearray(self.blocked), self.any_blocked
        twin._ready, twin._shared = self._ready, self._shared
        twin.free_cpu, twin.free_mem, twin.free_gpu = self.free_cpu, self.free_mem, self.free_gpu
        twin.blocked_cpu, twin.blocked_mem = self.blocked_cpu, self.blocked_mem
        twin.blocked_gpu = self.blocked_gpu
        twin._by_full, twin._by_device_free = list(self._by_full), list(self._by_device_free)
        twin._top_full, twin._top_device_free = self._top_full, self._top_device_free
        twin.journal, twin.touched = [], {}
        return twin

    def give_back(self, i: int, cpu: int, mem: int, slices: Slices, ext: Extended = ()) -> None:
        """What a pod held on node i is free again (its gang was preempted); not journaled. A
        node that is not ready gives nothing back: nothing can be placed there anyway."""
        if self._ready[i]:
            self._apply(i, cpu, mem, slices, -1, ext)

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


def _bucket(free: int) -> int:
    return 0 if free < 0 else SHARES_PER_DEVICE if free > SHARES_PER_DEVICE else free
