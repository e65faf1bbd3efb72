"""Choose the backend named by MUSTER_BACKEND: where nodes come from and where pods run."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

from gateway.backends.base import Inventory, Runtime
from gateway.backends.kubernetes.client import kube_client
from gateway.backends.kubernetes.inventory import KubernetesInventory, NodeCache
from gateway.backends.kubernetes.runtime import KubernetesRuntime
from gateway.backends.local import LocalInventory, LocalRuntime, local_node
from gateway.backends.nodes_file import StaticInventory
from gateway.backends.sandbox import instance_name, probe_isolation
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
        isolation = await asyncio.to_thread(
            functools.partial(
                probe_isolation,
                settings.local_run_as,
                settings.local_trusted_tenants,
                instance=instance_name(settings.data_dir),
            )
        )
        return Backend(
            inventory=LocalInventory(local_node(settings)),
            runtime=LocalRuntime(
                settings.data_dir,
                work_dir=settings.work_dir,
                isolation=isolation,
                path=settings.local_path,
                max_pids=settings.local_max_pids,
                hide_files=(settings.issuer_key_file,),
                grace_seconds=settings.shutdown_grace,
            ),
        )
    api = await kube_client(settings.kubeconfig, qps=settings.kube_qps, burst=settings.kube_burst)
    nodes = NodeCache(api)  # listed once for the inventory and the runtime's node checks
    return Backend(
        inventory=KubernetesInventory(api, nodes=nodes),
        runtime=KubernetesRuntime(api, cluster_domain=settings.cluster_domain, nodes=nodes),
    )
