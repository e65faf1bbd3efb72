"""The interface every cluster backend offers the loops and the API.

An ``Inventory`` says what nodes exist. A ``Runtime`` runs pods (Kubernetes pods, or processes on
this machine) and reports how they are doing. Pods are identified by (job id, pod name); a pod
belongs to one attempt of its job, so pods of an evicted attempt are told apart from the next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.domain.scheduling.nodes import Node, newly_offered
from gateway.domain.scheduling.queueing import Placement

if TYPE_CHECKING:  # annotations only: keeps this interface importable on its own
    from gateway.domain.jobs.spec import JobSpec
    from gateway.domain.lifecycle.decisions import ReplicaPhase
    from gateway.domain.problems import FieldProblem


class Inventory(Protocol):
    """What the cluster offers Muster: nodes with their allocatable resources.

    Resources held by pods that Muster does not own are already subtracted from each node.
    """

    async def nodes(self) -> tuple[Node, ...]: ...

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the inventory learns of a node added or changed (see
        ``NodeWatchers``), so that admission fills it at once."""
        ...


class NodeWatchers:
    """The ``on_change`` half of an ``Inventory``: an inventory calls ``_seen`` with each node
    list it learns, and the callbacks run when one offers a node the previous did not have as
    it is (``newly_offered``). The first list is news to nobody."""

    def __init__(self) -> None:
        self._watchers: list[Callable[[], None]] = []
        self._last_seen: tuple[Node, ...] | None = None

    def on_change(self, callback: Callable[[], None]) -> None:
        self._watchers.append(callback)

    def _seen(self, nodes: tuple[Node, ...]) -> None:
        before, self._last_seen = self._last_seen, nodes
        if before is not None and newly_offered(before, nodes):
            self._offered()

    def _offered(self) -> None:
        """A node was added or now offers more: every callback runs."""
        for watcher in self._watchers:
            watcher()


@dataclass(frozen=True, kw_only=True, slots=True)
class Gang:
    """One attempt of an admitted job: its spec and every pod's placement.

    The backend derives each pod's environment (TF_CONFIG, ranks, devices) from the whole gang,
    because every replica must know where the others are.
    """

    job_id: str
    spec: JobSpec
    namespace: str
    attempt: int
    placements: tuple[Placement, ...]  # as admission planned them


@dataclass(frozen=True, kw_only=True, slots=True)
class PodStatus:
    job_id: str
    name: str
    attempt: int
    phase: ReplicaPhase
    exit_code: int | None
    node_ready: bool = True


class Runtime(Protocol):
    """Runs pods. Every method is idempotent: creating a pod that exists for the same job and
    attempt succeeds, and deleting a pod that is gone succeeds."""

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]: ...

    async def create(self, gang: Gang, names: tuple[str, ...]) -> None: ...

    async def delete(self, job_id: str, name: str) -> None: ...

    def logs(self, job_id: str, name: str, *, follow: bool) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...

    def refusal(self, tenant: str) -> str | None:
        """Why this runtime will not run ``tenant``'s jobs (a local gateway that cannot isolate
        them), or None."""
        ...

    def unsupported(self, spec: JobSpec) -> list[FieldProblem]:
        """The pod fields of ``spec`` this runtime cannot honour, each pointing at its field
        (the submit refuses them with 422)."""
        ...

    async def remove(self, job_id: str, job_name: str, namespace: str) -> None:
        """Delete what a finished job left on the cluster once its TTL passed (Kubernetes: its
        parent ConfigMap, and with it what the clean-pod policy kept; elsewhere the kept
        replicas, which ``observe`` then no longer reports). Idempotent."""
        ...

    def health(self) -> str | None:
        """Why the runtime does not know the cluster's state now (its API server unreachable or
        silent), or None: /readyz says it, and ``observe`` raises while it lasts."""
        ...

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) whenever a pod's status may have changed
        without anyone asking (a local replica exited), so the reconciler need not wait for its
        next tick. Only a hurry: ``observe`` stays the truth, and a runtime that never calls it
        (Kubernetes, whose pods are polled) is still correct. See ``PodWatchers``."""
        ...


class PodWatchers:
    """The ``on_change`` half of a ``Runtime``: a runtime calls ``_changed`` when it learns that
    a pod changed, and every callback runs."""

    def __init__(self) -> None:
        self._pod_watchers: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        self._pod_watchers.append(callback)

    def _changed(self) -> None:
        for watcher in self._pod_watchers:
            watcher()
