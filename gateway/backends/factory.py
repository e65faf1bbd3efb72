"""Choose the backend named by MUSTER_BACKEND: where nodes come from and where pods run."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backends.base import Inventory, Runtime
from gateway.backends.kubernetes.client import kube_client
from gateway.backends.kubernetes.inventory import KubernetesInventory, NodeCache
from gateway.backends.kubernetes.runtime import KubernetesRuntime
from gateway.backends.local import LocalInventory, LocalRuntime, local_node
from gateway.backends.nodes_file import StaticInventory
from gateway.errors import ConfigError
from gateway.settings import Settings


@dataclass(frozen=True, kw_only=True, slots=True)
class Backend:
    inventory: Inventory
    # None: admitted jobs are planned but nothing runs them (the static backend).
    runtime: Runtime | None


async def make_backend(settings: Settings) -> Backend:
    if settings.backend == "static":
        if settings.nodes_file is None:
            raise ConfigError("MUSTER_BACKEND=static needs MUSTER_NODES_FILE")
        return Backend(inventory=StaticInventory.from_file(settings.nodes_file), runtime=None)
    if settings.backend == "local":
        return Backend(
            inventory=LocalInventory(local_node(settings)),
            runtime=LocalRuntime(settings.data_dir, grace_seconds=settings.shutdown_grace),
        )
    api = await kube_client(settings.kubeconfig, qps=settings.kube_qps, burst=settings.kube_burst)
    nodes = NodeCache(api)  # listed once for the inventory and the runtime's node checks
    return Backend(
        inventory=KubernetesInventory(api, nodes=nodes),
        runtime=KubernetesRuntime(api, cluster_domain=settings.cluster_domain, nodes=nodes),
    )
