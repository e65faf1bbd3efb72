"""Choose the backend named by MUSTER_BACKEND."""

from __future__ import annotations

from gateway.backends.base import Inventory
from gateway.backends.local import LocalInventory, local_node
from gateway.backends.nodes_file import StaticInventory
from gateway.errors import ConfigError
from gateway.settings import Settings


def make_inventory(settings: Settings) -> Inventory:
    if settings.backend == "static":
        if settings.nodes_file is None:
            raise ConfigError("MUSTER_BACKEND=static needs MUSTER_NODES_FILE")
        return StaticInventory.from_file(settings.nodes_file)
    if settings.backend == "local":
        return LocalInventory(local_node(settings))
    raise ConfigError(
        "MUSTER_BACKEND=kubernetes is not available in this version yet; use local or static"
    )
