"""Choose the backend named by MUSTER_BACKEND: where nodes come from and where pods run."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backends.base import Inventory, Runtime
from gateway.backends.local import LocalInventory, LocalRuntime, local_node
from gateway.backends.nodes_file import StaticInventory
from gateway.errors import ConfigError
from gateway.settings import Settings


@dataclass(frozen=True, kw_only=True, slots=True)
class Backend:
    inventory: Inventory
    # None: admitted jobs are planned but nothing runs them (the static backend).
    runtime: Runtime | None


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "static":
        if settings.nodes_file is None:
            raise ConfigError("MUSTER_BACKEND=static needs MUSTER_NODES_FILE")
        return Backend(inventory=StaticInventory.from_file(settings.nodes_file), runtime=None)
    if settings.backend == "local":
        return Backend(
            inventory=LocalInventory(local_node(settings)),
            runtime=LocalRuntime(settings.data_dir, grace_seconds=settings.shutdown_grace),
        )
    raise ConfigError(
        "MUSTER_BACKEND=kubernetes is not available in this version yet; use local or static"
    )
