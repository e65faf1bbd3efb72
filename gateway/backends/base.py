"""The interface every cluster backend offers the loops and the API."""

from __future__ import annotations

from typing import Protocol

from gateway.domain.placement import Node


class Inventory(Protocol):
    """What the cluster offers Muster: nodes with their allocatable resources.

    Resources held by pods that Muster does not own are already subtracted from each node.
    """

    async def nodes(self) -> tuple[Node, ...]: ...
