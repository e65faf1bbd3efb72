"""An informer: one collection of the Kubernetes API kept in memory by a list, then a watch.

``Informer.run`` lists the collection once (page by page, with its selectors), keeps what
``keep`` makes of each object, and then watches from the list's resourceVersion with bookmarks:

- ADDED and MODIFIED replace an object's kept value (``keep`` returning None drops it), DELETED
  drops it, BOOKMARK only moves the resourceVersion on; every change calls the listeners with
  the key, the old and the new value (None for absent);
- a watch that ends (the server's ``timeoutSeconds``, or a proxy closing it) is renewed from the
  last resourceVersion, without a list;
- 410 Gone (the resourceVersion is older than the server keeps; as an ERROR event or as the
  watch's status) relists, and the relist tells the listeners every difference from the cache,
  so an object that changed or went away while the watch was down is never lost;
- a dropped connection, a 5xx or a timeout resumes after a backoff (``Backoff``: 0.2 s doubling
  to 10 s, with jitter), from the last resourceVersion.

``fresh`` is what callers trust: synced at least once and heard from the server (an event, a
bookmark, a list, or a watch opened) within ``stale_after`` seconds. An informer that is not
fresh keeps its cache as last known: callers decide what may be done on it (the runtime creates
and evicts nothing on a stale cache).

Invariants: the cache equals the server's collection as of ``resource_version`` once synced (up to
``keep``); listeners run on the event loop, in the order of the events; ``lists`` counts the list
calls made (one at start, one per 410), ``watches`` the watches opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.backends.kubernetes.client import Kube
from gateway.errors import KubernetesError, KubernetesGone, KubernetesUnavailable
from gateway.waits import woken

__all__ = ["Backoff", "Informer", "WatchCollector", "object_key"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: (key, old value, new value): None for absent.
Listener = Callable[[str, Any, Any], None]

#: How long a watch runs before the server ends it (it is then renewed without a list).
WATCH_SECONDS = 290
#: The silence after which a watch is taken for dead: the API server sends a bookmark about
#: once a minute on a quiet collection.
READ_TIMEOUT_SECONDS = 120.0
STALE_AFTER_SECONDS = 150.0


def object_key(obj: Mapping[str, Any]) -> str | None:
    """``namespace/name``, or ``name`` for a cluster-scoped object; None without a name."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    return f"{namespace}/{name}" if isinstance(namespace, str) and namespace else name


def _version(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
    return version if isinstance(version, str) and version else None


class Backoff:
    """Waits between failed attempts: ``first`` seconds doubling to ``most``, each with up to
    20% jitter, back to ``first`` after a success."""

    def __init__(self, first: float = 0.2, most: float = 10.0) -> None:
        self.first, self.most = first, most
        self.failures = 0

    def next(self) -> float:
        wait: float = min(self.most, self.first * 2.0**self.failures)
        self.failures += 1
        return wait * (1 + random.random() * 0.2)

    def reset(self) -> None:
        self.failures = 0


class Informer(Generic[T]):
    """One collection kept by list-then-watch; see the module docstring."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        keep: Callable[[Mapping[str, Any]], T | None],
        *,
        name: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_seconds: int = WATCH_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        stale_after: float = STALE_AFTER_SECONDS,
        backoff: tuple[float, float] = (0.2, 10.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.path = path
        self.keep = keep
        self.name = name
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_seconds = watch_seconds
        self.read_timeout = read_timeout
        self.stale_after = stale_after
        self.backoff = Backoff(*backoff)
        self.clock = clock
        self.items: dict[str, T] = {}
        self.resource_version: str | None = None
        self.synced = asyncio.Event()
        self.connected = False
        self.heard_at: float | None = None
        self.lists = 0
        self.watches = 0
        self.error: str | None = None
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None

    # -- what callers read ---------------------------------------------------------------------

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def fresh(self) -> bool:
        """Synced, and heard from the server within ``stale_after`` seconds."""
        return (
            self.synced.is_set()
            and self.heard_at is not None
            and self.clock() - self.heard_at <= self.stale_after
        )

    def staleness(self) -> float | None:
        """Seconds since the server was last heard from; None before the first list."""
        return None if self.heard_at is None else max(0.0, self.clock() - self.heard_at)

    async def wait_synced(self, seconds: float) -> bool:
        """Whether the first list came within ``seconds``."""
        await woken(self.synced, seconds)
        return self.synced.is_set()

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"informer {self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """List, then watch, for ever (until cancelled)."""
        while True:
            try:
                if self.resource_version is None:
                    await self._relist()
                await self._watch()
            except KubernetesGone:
                log.info("informer %s: resourceVersion too old; listing again", self.name)
                self.resource_version = None
            except (KubernetesError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.connected = False
                self.error = str(exc) or type(exc).__name__
                wait = self.backoff.next()
                log.warning("informer %s: %s; resuming in %.1f s", self.name, self.error, wait)
                await asyncio.sleep(wait)
            except Exception as exc:  # a listener's bug must not end the informer for good
                self.connected = False
                self.error = f"{type(exc).__name__}: {exc}"
                self.resource_version = None  # the cache may be half-updated: list again
                wait = self.backoff.next()
                log.exception("informer %s failed; listing again in %.1f s", self.name, wait)
                await asyncio.sleep(wait)

    async def _relist(self) -> None:
        objects, version = await self.kube.list_versioned(
            self.path, label_selector=self.label_selector, field_selector=self.field_selector
        )
        self.lists += 1
        fresh: dict[str, T] = {}
        for obj in objects:
            key = object_key(obj)
            kept = self.keep(obj) if key is not None else None
            if key is not None and kept is not None:
                fresh[key] = kept
        before, self.items = self.items, fresh
        self.resource_version = version
        self._heard()
        self.synced.set()
        for key in sorted(before.keys() | fresh.keys()):
            old, new = before.get(key), fresh.get(key)
            if old != new:
                self._tell(key, old, new)

    async def _watch(self) -> None:
        query: dict[str, str | int] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": self.watch_seconds,
        }
        if self.resource_version is not None:
            query["resourceVersion"] = self.resource_version
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=self.read_timeout)
        buffer = b""
        opened = False
        try:
            async for chunk in self.kube.stream(self.path, query, limits=timeout):
                if not opened:
                    opened = True
                    self._opened()
                if not chunk:
                    continue
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._event(json.loads(line))
        except KubernetesUnavailable as exc:
            if opened and isinstance(exc.__cause__, aiohttp.ServerTimeoutError):
                # Silent for ``read_timeout``: renew the watch. Silence does not refresh
                # ``heard_at``, so a server that only ever accepts and never speaks goes stale.
                log.debug("informer %s: a silent watch is renewed", self.name)
                return
            raise
        if not opened:
            self._opened()
        if buffer.strip():
            self._event(json.loads(buffer))

    def _opened(self) -> None:
        self.watches += 1
        self._heard()
        self.backoff.reset()

    def _heard(self) -> None:
        self.connected = True
        self.error = None
        self.heard_at = self.clock()

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, Mapping):
            return
        self._heard()
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise KubernetesGone(
                    f"watch {self.path}: {obj.get('message') or 'too old'}", status=410
                )
            raise KubernetesError(f"watch {self.path}: {obj.get('message') or obj}")
        version = _version(obj)
        if version is not None:
            self.resource_version = version
        if kind == "BOOKMARK":
            return
        key = object_key(obj)
        if key is None:
            return
        old = self.items.get(key)
        new = self.keep(obj) if kind in ("ADDED", "MODIFIED") else None
        if new is None:
            self.items.pop(key, None)
        else:
            self.items[key] = new
        if old != new:
            self._tell(key, old, new)

    def _tell(self, key: str, old: T | None, new: T | None) -> None:
        for listener in self._listeners:
            listener(key, old, new)


class WatchCollector(Collector):
    """The informers' figures for /metrics: whether each is fresh, how long its API server has
    been silent, how many objects it keeps, and the lists and watches it has made."""

    def __init__(self, informers: Iterable[Informer[Any]]) -> None:
        self.informers = tuple(informers)

    def collect(self) -> Iterator[Any]:
        fresh = GaugeMetricFamily(
            "muster_kubernetes_watch_fresh",
            "1 while the informer is synced and has heard from the API server recently; 0 while "
            "the cluster's state is unknown (nothing is created or evicted then)",
            labels=["collection"],
        )
        silence = GaugeMetricFamily(
            "muster_kubernetes_watch_silence_seconds",
            "Seconds since the informer last heard from the API server",
            labels=["collection"],
        )
        kept = GaugeMetricFamily(
            "muster_kubernetes_cached_objects",
            "Objects the informer keeps in memory",
            labels=["collection"],
        )
        lists = CounterMetricFamily(
            "muster_kubernetes_lists",
            "List calls made (one at start, one per 410 Gone)",
            labels=["collection"],
        )
        watches = CounterMetricFamily(
            "muster_kubernetes_watches", "Watches opened", labels=["collection"]
        )
        for informer in self.informers:
            label = [informer.name]
            fresh.add_metric(label, 1.0 if informer.fresh and informer.connected else 0.0)
            silence.add_metric(label, informer.staleness() or 0.0)
            kept.add_metric(label, float(len(informer.items)))
            lists.add_metric(label, float(informer.lists))
            watches.add_metric(label, float(informer.watches))
        yield from (fresh, silence, kept, lists, watches)
