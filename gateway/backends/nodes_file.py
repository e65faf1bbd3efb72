"""Node lists from YAML: the static backend's inventory.

Format (see deploy/nodes.example.yaml)::

    nodes:
      - {name: gpu-0, cpu: "32", memory: 128Gi, gpus: 8, gpu_mode: device-plugin,
         labels: {zone: a}, taints: [{key: nvidia.com/gpu, value: present, effect: NoSchedule}],
         ready: true, extended: {rdma/hca: 4, hugepages-2Mi: 8Gi}}

``extended``: the extended resources the node offers, by Kubernetes name, in whole units.

Invariant: a malformed file stops startup with a ConfigError naming the node and field.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway.backends.base import NodeWatchers
from gateway.domain.resources import (
    QuantityError,
    cpu_millis,
    extended_amount,
    extended_name_problem,
    memory_bytes,
)
from gateway.domain.scheduling.nodes import GpuMode, Node, Taint
from gateway.errors import ConfigError

_NODE_KEYS = frozenset(
    {"name", "cpu", "memory", "gpus", "gpu_mode", "labels", "taints", "ready", "extended"}
)
_EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", "NoExecute"})


def parse_nodes(document: Any, source: str) -> tuple[Node, ...]:
    if not isinstance(document, Mapping) or not isinstance(document.get("nodes"), list):
        raise ConfigError(f"{source}: expected a mapping with a 'nodes' list")
    nodes: list[Node] = []
    seen: set[str] = set()
    for index, raw in enumerate(document["nodes"]):
        where = f"{source}: nodes[{index}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = sorted(set(raw) - _NODE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: 'name' is required")
        if name in seen:
            raise ConfigError(f"{where}: node {name!r} is listed twice")
        seen.add(name)
        try:
            cpu = cpu_millis(raw.get("cpu", "0"))
            memory = memory_bytes(raw.get("memory", "0"))
        except QuantityError as exc:
            raise ConfigError(f"{where} ({name}): {exc}") from exc
        gpus = raw.get("gpus", 0)
        if not isinstance(gpus, int) or gpus < 0:
            raise ConfigError(f"{where} ({name}): 'gpus' must be a non-negative integer")
        try:
            mode = GpuMode(raw.get("gpu_mode", "device-plugin" if gpus else "none"))
        except ValueError as exc:
            raise ConfigError(
                f"{where} ({name}): gpu_mode must be one of {', '.join(m.value for m in GpuMode)}"
            ) from exc
        labels = raw.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise ConfigError(f"{where} ({name}): 'labels' must be a mapping")
        taints = []
        for taint in raw.get("taints") or []:
            if not isinstance(taint, Mapping) or taint.get("effect") not in _EFFECTS:
                raise ConfigError(f"{where} ({name}): each taint needs key, value and an effect")
            taints.append(
                Taint(
                    key=str(taint.get("key", "")),
                    value=str(taint.get("value", "")),
                    effect=str(taint["effect"]),
                )
            )
        extended = raw.get("extended") or {}
        if not isinstance(extended, Mapping):
            raise ConfigError(f"{where} ({name}): 'extended' must be a mapping")
        offered: dict[str, int] = {}
        for resource, value in extended.items():
            problem = extended_name_problem(str(resource))
            if problem is not None:
                raise ConfigError(f"{where} ({name}): extended: {problem}")
            try:
                offered[str(resource)] = extended_amount(str(resource), value)
            except QuantityError as exc:
                raise ConfigError(f"{where} ({name}): extended {resource}: {exc}") from exc
        nodes.append(
            Node(
                name=name,
                labels={
                    "kubernetes.io/hostname": name,
                    **{str(k): str(v) for k, v in labels.items()},
                },
                taints=tuple(taints),
                ready=bool(raw.get("ready", True)),
                gpu_mode=mode,
                cpu_millis=cpu,
                memory_bytes=memory,
                gpu_devices=gpus if mode is not GpuMode.NONE else 0,
                extended=offered,
            )
        )
    return tuple(nodes)


def load_nodes(path: Path) -> tuple[Node, ...]:
    try:
        document = yaml.safe_load(path.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"MUSTER_NODES_FILE: cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"MUSTER_NODES_FILE: {path} is not valid YAML: {exc}") from exc
    return parse_nodes(document, str(path))


class StaticInventory(NodeWatchers):
    """Nodes from a file, read at startup and again on ``reload`` (``muster serve`` reloads on
    SIGHUP). A file that no longer parses leaves the nodes as they were."""

    def __init__(self, nodes: tuple[Node, ...], path: Path | None = None) -> None:
        super().__init__()
        self._path = path
        self._nodes = nodes
        self._seen(nodes)

    @classmethod
    def from_file(cls, path: Path) -> StaticInventory:
        return cls(load_nodes(path), path)

    async def nodes(self) -> tuple[Node, ...]:
        return self._nodes

    def replace(self, nodes: tuple[Node, ...]) -> None:
        """Offer ``nodes`` from now on (watchers hear of nodes added or changed)."""
        self._nodes = nodes
        self._seen(nodes)

    def reload(self) -> None:
        """Read the file again; raises ConfigError, and changes nothing, if it does not parse."""
        if self._path is not None:
            self.replace(load_nodes(self._path))
