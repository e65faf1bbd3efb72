"""The interface every cluster backend offers the loops and the API.

An ``Inventory`` says what nodes exist. A ``Runtime`` runs pods (Kubernetes pods, or processes on
this machine) and reports how they are doing. Pods are identified by (job id, pod name); a pod
belongs to one attempt of its job, so pods of an evicted attempt are told apart from the next.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.domain.scheduling.nodes import Node
from gateway.domain.scheduling.queueing import Placement

if TYPE_CHECKING:  # annotations only: keeps this interface importable on its own
    from gateway.domain.jobs.spec import JobSpec
    from gateway.domain.lifecycle.decisions import ReplicaPhase


class Inventory(Protocol):
    """What the cluster offers Muster: nodes with their allocatable resources.

    Resources held by pods that Muster does not own are already subtracted from each node.
    """

    async def nodes(self) -> tuple[Node, ...]: ...


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
