"""The static backend's node list: extended resources by name, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.nodes_file import load_nodes, parse_nodes
from gateway.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nodes.example.yaml"


def test_the_example_node_list_offers_rdma_and_huge_pages_on_a_gpu_node() -> None:
    nodes = {node.name: node for node in load_nodes(EXAMPLE)}
    assert nodes["gpu-a100-0"].extended == {"rdma/hca": 8, "hugepages-2Mi": 16 * 2**30}
    assert nodes["cpu-0"].extended == {}


@pytest.mark.parametrize(
    ("extended", "words"),
    [
        ({"gpus": 1}, "not a resource name"),
        ({"nvidia.com/gpu": 1}, "requested as gpu"),
        ({"rdma/hca": "half"}, "not a Kubernetes quantity"),
        ({"rdma/hca": "500m"}, "not a whole number"),
        (["rdma/hca"], "'extended' must be a mapping"),
    ],
)
def test_a_bad_extended_resource_stops_startup_naming_the_node(
    extended: object, words: str
) -> None:
    document = {"nodes": [{"name": "n0", "cpu": "8", "memory": "8Gi", "extended": extended}]}
    with pytest.raises(ConfigError, match="n0") as error:
        parse_nodes(document, "nodes.yaml")
    assert words in str(error.value)
