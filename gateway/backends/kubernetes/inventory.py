"""The nodes Muster may use, read from the cluster: what each offers minus pods Muster does not own.

A node offers its allocatable CPU and memory (``status.allocatable``) and GPUs in one of two modes:

- device plugin: ``nvidia.com/gpu`` allocatable, whole devices;
- shared: labelled ``muster.dev/gpu-sharing=true``; the device count comes from the label
  ``muster.dev/gpu-count`` when it is a whole number, else from ``nvidia.com/gpu`` allocatable.

Every other allocatable name that is an extended resource (``rdma/hca``, ``amd.com/gpu``,
``hugepages-2Mi``, ``ephemeral-storage``...; ``gateway.domain.resources.extended_name_problem``)
is offered by name, in whole units. Its labels, taints and Ready condition come with it.

Every pod that Muster does not manage (no ``app.kubernetes.io/managed-by=muster``), is bound to
a node and has not ended (phase neither Succeeded nor Failed) holds its requests there, extended
resources included, and they are subtracted. Muster's own pods are not: admission subtracts its
own reservations.

Both lists are read on demand and the result is kept for ``max_age`` seconds (one admission cycle
reads it once, not once per job). A watch with periodic resync would make this cheaper on large
clusters; the listing is level-triggered and cannot miss an event, which is why it came first.

Invariants: a node's free amounts are never negative; a quantity that does not parse counts as
nothing offered (for a node) or nothing held (for a pod), with a warning, rather than failing the
whole inventory; nodes come sorted by name.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from kubernetes_asyncio.client import ApiClient

from gateway.backends.base import NodeWatchers
from gateway.backends.kubernetes.client import Kube
from gateway.domain.manifests.kubernetes import (
    GPU_RESOURCE,
    GPU_SHARING_KEY,
    LABEL_MANAGED,
    MANAGER,
)
from gateway.domain.resources import (
    Extended,
    QuantityError,
    amount_of,
    extended_name_problem,
    merged,
    parse_quantity,
)
from gateway.domain.scheduling.nodes import GpuMode, Node, Taint

__all__ = ["GPU_COUNT_LABEL", "KubernetesInventory", "NodeCache", "Usage", "node_from_object"]

log = logging.getLogger(__name__)

GPU_COUNT_LABEL = "muster.dev/gpu-count"
ENDED_PHASES = frozenset({"Succeeded", "Failed"})
DEFAULT_MAX_AGE = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """What pods hold on one node."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    extended: Extended = ()

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            cpu_millis=self.cpu_millis + other.cpu_millis,
            memory_bytes=self.memory_bytes + other.memory_bytes,
            gpus=self.gpus + other.gpus,
            extended=merged(self.extended, other.extended),
        )


def _extended(amounts: Mapping[str, Any], *, up: bool, where: str) -> Extended:
    """The extended resources among a node's allocatable or a container's requests."""
    found = []
    for name in sorted(str(key) for key in amounts):
        if extended_name_problem(name) is None:
            amount = _amount(amounts[name], 1, up=up, where=where)
            if amount > 0:
                found.append((name, amount))
    return tuple(found)


def _amount(value: object, scale: int, *, up: bool, where: str) -> int:
    """A quantity times ``scale``, as an integer: rounded up for what is held, down for what is
    offered, so Muster never counts on more than is there."""
    if value is None:
        return 0
    try:
        if not isinstance(value, str | int | float):
            raise QuantityError(f"{value!r} is not a quantity")
        exact: Decimal = parse_quantity(value) * scale
    except QuantityError as exc:
        log.warning("%s: ignoring quantity %r: %s", where, value, exc)
        return 0
    return int(math.ceil(exact) if up else math.floor(exact))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> Iterable[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def node_from_object(obj: Mapping[str, Any]) -> Node | None:
    """A Node object as Muster sees it, with its whole allocatable; None when it has no name."""
    metadata, spec, status = (_mapping(obj.get(key)) for key in ("metadata", "spec", "status"))
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    labels = {str(k): str(v) for k, v in _mapping(metadata.get("labels")).items()}
    allocatable = _mapping(status.get("allocatable"))
    where = f"node {name}"
    plugin_gpus = _amount(allocatable.get(GPU_RESOURCE), 1, up=False, where=where)
    if labels.get(GPU_SHARING_KEY) == "true":
        mode = GpuMode.SHARED
        count = labels.get(GPU_COUNT_LABEL, "")
        devices = int(count) if count.isdigit() else plugin_gpus
    elif plugin_gpus > 0:
        mode, devices = GpuMode.DEVICE_PLUGIN, plugin_gpus
    else:
        mode, devices = GpuMode.NONE, 0
    taints = tuple(
        Taint(
            key=str(taint["key"]),
            value=str(taint.get("value") or ""),
            effect=str(taint.get("effect") or "NoSchedule"),
        )
        for taint in _items(spec.get("taints"))
        if taint.get("key")
    )
    ready = any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in _items(status.get("conditions"))
    )
    cpu = _amount(allocatable.get("cpu"), 1000, up=False, where=where)
    memory = _amount(allocatable.get("memory"), 1, up=False, where=where)
    return Node(
        name=name,
        labels=labels,
        taints=taints,
        ready=ready,
        gpu_mode=mode,
        cpu_millis=cpu,
        memory_bytes=memory,
        gpu_devices=devices,
        extended=dict(_extended(allocatable, up=False, where=where)),
    )


def _container_requests(container: Mapping[str, Any], where: str) -> Usage:
    requests = _mapping(_mapping(container.get("resources")).get("requests"))
    return Usage(
        cpu_millis=_amount(requests.get("cpu"), 1000, up=True, where=where),
        memory_bytes=_amount(requests.get("memory"), 1, up=True, where=where),
        gpus=_amount(requests.get(GPU_RESOURCE), 1, up=True, where=where),
        extended=_extended(requests, up=True, where=where),
    )


def _larger(a: Usage, b: Usage) -> Usage:
    names = sorted({name for name, _ in (*a.extended, *b.extended)})
    return Usage(
        cpu_millis=max(a.cpu_millis, b.cpu_millis),
        memory_bytes=max(a.memory_bytes, b.memory_bytes),
        gpus=max(a.gpus, b.gpus),
        extended=tuple(
            (name, max(amount_of(a.extended, name), amount_of(b.extended, name))) for name in names
        ),
    )


def pod_usage(pod: Mapping[str, Any]) -> Usage:
    """What a pod holds on its node, as the scheduler counts it: its containers plus sidecars
    (init containers that keep running), or its largest plain init container if that is more,
    plus the runtime class's overhead."""
    spec = _mapping(pod.get("spec"))
    where = "pod {}/{}".format(
        _mapping(pod.get("metadata")).get("namespace"), _mapping(pod.get("metadata")).get("name")
    )
    running = Usage()
    for container in _items(spec.get("containers")):
        running += _container_requests(container, where)
    init_peak = Usage()
    for container in _items(spec.get("initContainers")):
        requests = _container_requests(container, where)
        if container.get("restartPolicy") == "Always":  # a sidecar runs alongside the others
            running += requests
        else:
            init_peak = _larger(init_peak, requests)
    overhead = _mapping(spec.get("overhead"))
    return _larger(running, init_peak) + Usage(
        cpu_millis=_amount(overhead.get("cpu"), 1000, up=True, where=where),
        memory_bytes=_amount(overhead.get("memory"), 1, up=True, where=where),
    )


def foreign_usage(pods: Iterable[Mapping[str, Any]]) -> dict[str, Usage]:
    """What pods Muster does not manage hold, per node; pods that ended or are unbound hold
    nothing."""
    held: dict[str, Usage] = {}
    for pod in pods:
        labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
        if labels.get(LABEL_MANAGED) == MANAGER:
            continue
        if _mapping(pod.get("status")).get("phase") in ENDED_PHASES:
            continue
        node = _mapping(pod.get("spec")).get("nodeName")
        if not isinstance(node, str) or not node:
            continue
        held[node] = held.get(node, Usage()) + pod_usage(pod)
    return held


class NodeCache(NodeWatchers):
    """Every node with its full allocatable, by name, read at most once per ``max_age`` seconds.

    The runtime reads readiness and GPU modes from it; the inventory, what nodes offer.
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._kube = Kube(api)
        self._max_age = max_age
        self._clock = clock
        self._lock = asyncio.Lock()
        self._nodes: dict[str, Node] | None = None
        self._read_at = 0.0

    def _fresh(self) -> bool:
        return self._nodes is not None and self._clock() - self._read_at < self._max_age

    async def get(self) -> Mapping[str, Node]:
        if not self._fresh():
            async with self._lock:  # one listing for every caller waiting on a stale cache
                if not self._fresh():
                    objects = await self._kube.list("/api/v1/nodes")
                    nodes = (node_from_object(obj) for obj in objects)
                    self._nodes = {node.name: node for node in nodes if node is not None}
                    self._read_at = self._clock()
                    self._seen(tuple(self._nodes[name] for name in sorted(self._nodes)))
        assert self._nodes is not None
        return self._nodes


class KubernetesInventory:
    """``Inventory`` over the Kubernetes API; see the module docstring."""

    def __init__(
        self,
        api: ApiClient,
        *,
        nodes: NodeCache | None = None,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = Kube(api)
        if nodes is None:
            nodes = NodeCache(api, max_age=max_age, clock=clock)
        self.node_cache = nodes
        self._max_age = max_age
        self._clock = clock
        self._lock = asyncio.Lock()
        self._nodes: tuple[Node, ...] | None = None
        self._read_at = 0.0

    def _fresh(self) -> bool:
        return self._nodes is not None and self._clock() - self._read_at < self._max_age

    def on_change(self, callback: Callable[[], None]) -> None:
        """Nodes added or changed, as the node cache lists them (the runtime reads it on every
        reconciler pass, so a new node is noticed within a pass)."""
        self.node_cache.on_change(callback)

    async def nodes(self) -> tuple[Node, ...]:
        if not self._fresh():
            async with self._lock:
                if not self._fresh():
                    self._nodes = await self._read()
                    self._read_at = self._clock()
        assert self._nodes is not None
        return self._nodes

    async def _read(self) -> tuple[Node, ...]:
        # The selectors only trim the transfer; foreign_usage() decides on the objects themselves.
        nodes, pods = await asyncio.gather(
            self.node_cache.get(),
            self._kube.list(
                "/api/v1/pods",
                label_selector=f"{LABEL_MANAGED}!={MANAGER}",
                field_selector="status.phase!=Succeeded,status.phase!=Failed",
            ),
        )
        held = foreign_usage(pods)
        return tuple(
            _subtract(nodes[name], held[name]) if name in held else nodes[name]
            for name in sorted(nodes)
        )


def _subtract(node: Node, held: Usage) -> Node:
    return replace(
        node,
        cpu_millis=max(0, node.cpu_millis - held.cpu_millis),
        memory_bytes=max(0, node.memory_bytes - held.memory_bytes),
        gpu_devices=max(0, node.gpu_devices - held.gpus),
        extended={
            name: max(0, amount - amount_of(held.extended, name))
            for name, amount in node.extended.items()
        },
    )
