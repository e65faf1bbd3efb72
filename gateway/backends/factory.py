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
from gateway.backends.simulated import SimulatedRuntime
from gateway.domain.jobs.spec import TerminationGrace
from gateway.errors import ConfigError
from gateway.settings import Settings


@dataclass(frozen=True, kw_only=True, slots=True)
class Backend:
    inventory: Inventory
    # None: admitted jobs are planned but nothing runs them (the static backend, unless it
    # simulates runs).
    runtime: Runtime | None


async def make_backend(settings: Settings) -> Backend:
    grace = TerminationGrace(
        default_seconds=settings.backend.termination_grace_seconds,
        max_seconds=settings.backend.max_termination_grace_seconds,
    )
    if settings.backend.kind == "static":
        if settings.backend.nodes_file is None:
            raise ConfigError("MUSTER_BACKEND=static needs MUSTER_NODES_FILE")
        static = StaticInventory.from_file(settings.backend.nodes_file)
        return Backend(
            inventory=static,
            runtime=SimulatedRuntime(static) if settings.backend.simulate_runs else None,
        )
    if settings.backend.kind == "local":
        isolation = await asyncio.to_thread(
            functools.partial(
                probe_isolation,
                settings.local.run_as,
                settings.local.trusted_tenants,
                instance=instance_name(settings.data_dir),
            )
        )
        return Backend(
            inventory=LocalInventory(local_node(settings)),
            runtime=LocalRuntime(
                settings.data_dir,
                work_dir=settings.work_dir,
                isolation=isolation,
                path=settings.local.path,
                max_pids=settings.local.max_pids,
                log_bytes=settings.local.log_bytes,
                hide_files=(settings.issuer_key_file,),
                grace=grace,
            ),
        )
    api = await kube_client(
        settings.kubernetes.kubeconfig, qps=settings.kubernetes.qps, burst=settings.kubernetes.burst
    )
    nodes = NodeCache(api)  # listed once for the inventory and the runtime's node checks
    return Backend(
        inventory=KubernetesInventory(api, nodes=nodes),
        runtime=KubernetesRuntime(
            api, cluster_domain=settings.kubernetes.cluster_domain, nodes=nodes, grace=grace
        ),
    )
