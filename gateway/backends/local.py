"""This machine as a single node: its CPUs, memory and GPUs, each overridable in settings."""

from __future__ import annotations

import os
import shutil
import subprocess

from gateway.domain.placement import GpuMode, Node
from gateway.domain.resources import QuantityError, memory_bytes
from gateway.errors import ConfigError
from gateway.settings import Settings

LOCAL_NODE = "local"


def detect_gpus() -> int:
    """Devices listed by ``nvidia-smi -L``, or 0 when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return 0
    try:
        listing = subprocess.run(
            [binary, "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def local_node(settings: Settings) -> Node:
    cpus = settings.local_cpus if settings.local_cpus is not None else float(os.cpu_count() or 1)
    try:
        memory = (
            memory_bytes(settings.local_memory)
            if settings.local_memory is not None
            else machine_memory()
        )
    except QuantityError as exc:
        raise ConfigError(f"MUSTER_LOCAL_MEMORY: {exc}") from exc
    gpus = settings.local_gpus if settings.local_gpus is not None else detect_gpus()
    if gpus < 0:
        raise ConfigError("MUSTER_LOCAL_GPUS must not be negative")
    return Node(
        name=LOCAL_NODE,
        labels={"kubernetes.io/hostname": LOCAL_NODE, "muster.dev/gpu-sharing": "true"},
        gpu_mode=GpuMode.SHARED if gpus else GpuMode.NONE,
        cpu_millis=int(cpus * 1000),
        memory_bytes=memory,
        gpu_devices=gpus,
    )


class LocalInventory:
    def __init__(self, node: Node) -> None:
        self._nodes = (node,)

    async def nodes(self) -> tuple[Node, ...]:
        return self._nodes
