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

Both are kept by informers (``gateway.backends.kubernetes.informer``): listed once, then
watched, keeping only what Muster reads (a ``Node``; a pod's node and requests), and others'
requests summed per node as their events arrive. An admission cycle reads the cache and sends
no request; idle, Muster's only calls are the watches and their renewals.

Invariants: a node's free amounts are never negative; a quantity that does not parse counts as
nothing offered (for a node) or nothing held (for a pod), with a warning, rather than failing the
whole inventory; nodes come sorted by name.
"""

from __future__ import annotations

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
from gateway.backends.kubernetes.informer import Informer
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
from gateway.domain.scheduling.nodes import GpuMode, Node, Taint, newly_offered
from gateway.errors import KubernetesUnavailable

__all__ = [
    "GPU_COUNT_LABEL",
    "KubernetesInventory",
    "NodeCache",
    "Usage",
    "foreign_holding",
    "node_from_object",
    "synced",
]

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

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            cpu_millis=self.cpu_millis - other.cpu_millis,
            memory_bytes=self.memory_bytes - other.memory_bytes,
            gpus=self.gpus - other.gpus,
            extended=merged(self.extended, other.extended, -1),
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


#: How long a first list may take before callers are told the API server is unavailable.
SYNC_SECONDS = 30.0
#: How long a node may be NotReady before its pods count as lost (kube-controller-manager's
#: node-monitor grace is 40 s; its eviction of pods comes minutes later).
NODE_LOST_GRACE_SECONDS = 60.0


async def synced(informer: Informer[Any], seconds: float = SYNC_SECONDS) -> None:
    """Start ``informer`` if it is not running and wait for its first list; raise
    ``KubernetesUnavailable`` (naming the last error) when it does not come in ``seconds``."""
    informer.start()
    if not await informer.wait_synced(seconds):
        raise KubernetesUnavailable(
            f"cannot list {informer.path} from the API server"
            + (f": {informer.error}" if informer.error else "")
        )


class NodeCache(NodeWatchers):
    """Every node with its full allocatable, by name, kept by an informer (one list, then a
    watch). The runtime reads readiness and GPU modes from it; the inventory, what nodes offer.

    A node is *lost* (its pods evicted) only when the API server says so: the node is deleted,
    or NotReady for ``lost_after`` seconds of ``clock`` as this cache saw it. ``watch`` goes to
    the informer (its timeouts, its own clock for staleness).
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        lost_after: float = NODE_LOST_GRACE_SECONDS,
        **watch: Any,
    ) -> None:
        super().__init__()
        self._clock = clock
        self.lost_after = lost_after
        self.informer: Informer[Node] = Informer(
            Kube(api), "/api/v1/nodes", node_from_object, name="nodes", **watch
        )
        self.informer.on_change(self._changed_node)
        #: Nodes NotReady now, with the time this cache first saw them so.
        self.not_ready_since: dict[str, float] = {}

    async def get(self) -> Mapping[str, Node]:
        await synced(self.informer)
        return self.informer.items

    def lost(self, name: str) -> bool:
        """Whether a node's pods count as lost: not listed, or NotReady past the grace."""
        if name not in self.informer.items:
            return True
        since = self.not_ready_since.get(name)
        return since is not None and self._clock() - since >= self.lost_after

    def _changed_node(self, name: str, old: Node | None, new: Node | None) -> None:
        if new is not None and not new.ready:
            self.not_ready_since.setdefault(name, self._clock())
        else:
            self.not_ready_since.pop(name, None)
        if new is not None and newly_offered(() if old is None else (old,), (new,)):
            self._offered()

    async def close(self) -> None:
        await self.informer.stop()


def foreign_holding(pod: Mapping[str, Any]) -> tuple[str, Usage] | None:
    """What a pod Muster does not manage holds, and on which node; None for Muster's own pods
    and for pods that ended or are not bound."""
    labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
    if labels.get(LABEL_MANAGED) == MANAGER:
        return None
    if _mapping(pod.get("status")).get("phase") in ENDED_PHASES:
        return None
    node = _mapping(pod.get("spec")).get("nodeName")
    if not isinstance(node, str) or not node:
        return None
    return node, pod_usage(pod)


class KubernetesInventory:
    """``Inventory`` over the Kubernetes API, from two informers: the nodes (``NodeCache``) and
    the pods Muster does not manage (their requests summed per node as events arrive); see the
    module docstring."""

    def __init__(
        self,
        api: ApiClient,
        *,
        nodes: NodeCache | None = None,
        **watch: Any,
    ) -> None:
        if nodes is None:
            nodes = NodeCache(api, **watch)
        self.node_cache = nodes
        # The selectors only trim the transfer; foreign_holding() decides on the objects.
        self.others: Informer[tuple[str, Usage]] = Informer(
            Kube(api),
            "/api/v1/pods",
            foreign_holding,
            name="others' pods",
            label_selector=f"{LABEL_MANAGED}!={MANAGER}",
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
            **watch,
        )
        self.others.on_change(self._changed_pod)
        nodes.informer.on_change(self._changed_node)
        self._held: dict[str, Usage] = {}
        self._nodes: tuple[Node, ...] | None = None

    def on_change(self, callback: Callable[[], None]) -> None:
        """Nodes added or changed so that they offer more, as the node informer hears it."""
        self.node_cache.on_change(callback)

    @property
    def informers(self) -> tuple[Informer[Any], ...]:
        return (self.node_cache.informer, self.others)

    async def nodes(self) -> tuple[Node, ...]:
        found = await self.node_cache.get()
        await synced(self.others)
        if self._nodes is None:
            held = self._held
            self._nodes = tuple(
                _subtract(found[name], held[name]) if name in held else found[name]
                for name in sorted(found)
            )
        return self._nodes

    def _changed_node(self, name: str, old: Node | None, new: Node | None) -> None:
        self._nodes = None

    def _changed_pod(
        self, key: str, old: tuple[str, Usage] | None, new: tuple[str, Usage] | None
    ) -> None:
        held = self._held
        if old is not None:
            left = held[old[0]] - old[1]
            if left == Usage():
                del held[old[0]]
            else:
                held[old[0]] = left
        if new is not None:
            held[new[0]] = held.get(new[0], Usage()) + new[1]
        self._nodes = None

    async def close(self) -> None:
        await self.others.stop()
        await self.node_cache.close()


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
