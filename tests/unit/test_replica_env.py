"""The replica environment: TF_CONFIG and PyTorch variables as the training operator writes them.

The expected strings are written by hand in the operator's format (Go ``json.Marshal`` of its
``TFConfig`` struct), not computed, so a change of format shows up here byte for byte.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.manifests.environment import (
    THREAD_VARIABLES,
    Address,
    kubernetes_addresses,
    local_addresses,
    replica_env,
)


def _spec(framework: str, replicas: dict[str, dict[str, Any]], name: str = "j") -> JobSpec:
    raw = {"name": name, "tenant": "t", "framework": framework, "replicas": replicas}
    spec = check_job_spec(raw)
    assert isinstance(spec, JobSpec), spec
    return spec


def _env(
    spec: JobSpec,
    role: str,
    index: int = 0,
    *,
    namespace: str = "ns",
    cluster_domain: str | None = None,
    gpu_devices: tuple[int, ...] | None = None,
    cpu_millis: int = 1000,
) -> dict[str, str]:
    return replica_env(
        spec,
        role=role,
        index=index,
        addresses=kubernetes_addresses(spec, namespace, cluster_domain),
        gpu_devices=gpu_devices,
        cpu_millis=cpu_millis,
    )


# -- TensorFlow ------------------------------------------------------------------------------------

TF_GANG = _spec(
    "tensorflow",
    {
        "chief": {"image": "i"},
        "worker": {"count": 2, "image": "i"},
        "ps": {"count": 2, "image": "i"},
        "evaluator": {"image": "i"},
    },
)

_CLUSTER = (
    '{"chief":["j-chief-0.ns.svc:2222"],'
    '"evaluator":["j-evaluator-0.ns.svc:2222"],'
    '"ps":["j-ps-0.ns.svc:2222","j-ps-1.ns.svc:2222"],'
    '"worker":["j-worker-0.ns.svc:2222","j-worker-1.ns.svc:2222"]}'
)

TF_CONFIGS = {
    ("chief", 0): '{"cluster":' + _CLUSTER + ',"task":{"type":"chief","index":0},'
    '"environment":"cloud"}',
    ("evaluator", 0): '{"cluster":' + _CLUSTER + ',"task":{"type":"evaluator","index":0},'
    '"environment":"cloud"}',
    ("ps", 0): '{"cluster":' + _CLUSTER + ',"task":{"type":"ps","index":0},"environment":"cloud"}',
    ("ps", 1): '{"cluster":' + _CLUSTER + ',"task":{"type":"ps","index":1},"environment":"cloud"}',
    ("worker", 0): '{"cluster":' + _CLUSTER + ',"task":{"type":"worker","index":0},'
    '"environment":"cloud"}',
    ("worker", 1): '{"cluster":' + _CLUSTER + ',"task":{"type":"worker","index":1},'
    '"environment":"cloud"}',
}


@pytest.mark.parametrize(("role", "index"), TF_CONFIGS.keys())
def test_tf_config_of_every_replica_is_the_operators_byte_for_byte(role: str, index: int) -> None:
    assert _env(TF_GANG, role, index)["TF_CONFIG"] == TF_CONFIGS[role, index]


def test_tf_config_matches_the_design_example() -> None:
    spec = _spec(
        "tensorflow",
        {"chief": {"image": "i"}, "worker": {"count": 2, "image": "i"}, "ps": {"image": "i"}},
    )
    assert _env(spec, "worker", 1)["TF_CONFIG"] == (
        '{"cluster":{"chief":["j-chief-0.ns.svc:2222"],"ps":["j-ps-0.ns.svc:2222"],'
        '"worker":["j-worker-0.ns.svc:2222","j-worker-1.ns.svc:2222"]},'
        '"task":{"type":"worker","index":1},"environment":"cloud"}'
    )


def test_a_single_replica_tensorflow_job_gets_no_tf_config() -> None:
    spec = _spec("tensorflow", {"worker": {"image": "i"}})
    assert "TF_CONFIG" not in _env(spec, "worker")


def test_two_workers_alone_are_distributed() -> None:
    spec = _spec("tensorflow", {"worker": {"count": 2, "image": "i"}})
    assert _env(spec, "worker", 0)["TF_CONFIG"] == (
        '{"cluster":{"worker":["j-worker-0.ns.svc:2222","j-worker-1.ns.svc:2222"]},'
        '"task":{"type":"worker","index":0},"environment":"cloud"}'
    )


def test_custom_cluster_domain_is_appended_after_svc() -> None:
    spec = _spec("tensorflow", {"chief": {"image": "i"}, "ps": {"image": "i", "port": 3333}})
    env = _env(spec, "ps", cluster_domain="cluster.local")
    assert env["TF_CONFIG"] == (
        '{"cluster":{"chief":["j-chief-0.ns.svc.cluster.local:2222"],'
        '"ps":["j-ps-0.ns.svc.cluster.local:3333"]},'
        '"task":{"type":"ps","index":0},"environment":"cloud"}'
    )


@pytest.mark.parametrize("domain", [None, ""])
def test_no_cluster_domain_leaves_hosts_at_svc(domain: str | None) -> None:
    addresses = kubernetes_addresses(TF_GANG, "ns", domain)
    assert addresses["ps", 1] == Address(host="j-ps-1.ns.svc", port=2222, service="j-ps-1")


def test_other_frameworks_get_no_tf_config() -> None:
    spec = _spec("generic", {"worker": {"count": 2, "image": "i"}})
    assert "TF_CONFIG" not in _env(spec, "worker")


# -- PyTorch ---------------------------------------------------------------------------------------

TORCH_GANG = _spec(
    "pytorch", {"master": {"image": "i", "port": 23456}, "worker": {"count": 3, "image": "i"}}
)


@pytest.mark.parametrize(
    ("role", "index", "rank"),
    [("master", 0, "0"), ("worker", 0, "1"), ("worker", 1, "2"), ("worker", 2, "3")],
)
def test_pytorch_rendezvous_variables(role: str, index: int, rank: str) -> None:
    env = _env(TORCH_GANG, role, index)
    torch = {name: value for name, value in env.items() if not name.startswith(("MUSTER_",))}
    for name in THREAD_VARIABLES:
        torch.pop(name)
    assert torch == {
        "MASTER_ADDR": "j-master-0",
        "MASTER_PORT": "23456",
        "PET_MASTER_ADDR": "j-master-0",
        "PET_MASTER_PORT": "23456",
        "PET_NNODES": "4",
        "PET_NODE_RANK": rank,
        "PET_NPROC_PER_NODE": "auto",
        "PYTHONUNBUFFERED": "1",
        "RANK": rank,
        "WORLD_SIZE": "4",
    }


def test_pytorch_on_the_local_backend_points_at_the_local_master() -> None:
    ports = {("master", 0): 40001, ("worker", 0): 40002, ("worker", 1): 40003, ("worker", 2): 40004}
    env = replica_env(
        TORCH_GANG,
        role="worker",
        index=2,
        addresses=local_addresses(TORCH_GANG, ports),
        gpu_devices=None,
        cpu_millis=1000,
    )
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["RANK"]) == ("127.0.0.1", "40001", "3")


# -- GPUs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("devices", "visible"),
    [((3,), "3"), ((0, 1), "0,1")],
    ids=["fraction on device 3", "two whole devices"],
)
def test_shared_gpu_plan_sets_visible_devices(devices: tuple[int, ...], visible: str) -> None:
    env = _env(TF_GANG, "worker", gpu_devices=devices)
    assert env["CUDA_VISIBLE_DEVICES"] == visible
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_no_gpu_plan_leaves_cuda_variables_to_the_device_plugin() -> None:
    env = _env(TF_GANG, "worker", gpu_devices=None)
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert "CUDA_DEVICE_ORDER" not in env


# -- threads, user env, identity -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu_millis", "threads"), [(4000, "4"), (4500, "4"), (1000, "1"), (500, "1")]
)
def test_thread_variables_are_whole_cpus_and_at_least_one(cpu_millis: int, threads: str) -> None:
    env = _env(TF_GANG, "worker", cpu_millis=cpu_millis)
    assert {name: env[name] for name in THREAD_VARIABLES} == dict.fromkeys(
        THREAD_VARIABLES, threads
    )


def test_user_thread_setting_wins_and_other_user_variables_pass_through() -> None:
    spec = _spec(
        "generic",
        {"worker": {"image": "i", "env": {"OMP_NUM_THREADS": "16", "DATA": "s3://b"}}},
    )
    env = _env(spec, "worker", cpu_millis=4000)
    assert env["OMP_NUM_THREADS"] == "16"
    assert env["MKL_NUM_THREADS"] == "4"
    assert env["DATA"] == "s3://b"


def test_muster_topology_wins_over_a_user_copy() -> None:
    # The spec check refuses reserved names; an env that slips past it still loses.
    spec = _spec("pytorch", {"master": {"image": "i"}, "worker": {"image": "i"}})
    master, worker = spec.replicas
    forged = replace(worker, env=(("MUSTER_JOB_NAME", "other"), ("RANK", "7")))
    spec = replace(spec, replicas=(master, forged))
    env = _env(spec, "worker")
    assert (env["RANK"], env["MUSTER_JOB_NAME"]) == ("1", "j")


def test_identity_and_sorted_keys() -> None:
    env = _env(TF_GANG, "ps", 1)
    assert (env["MUSTER_JOB_NAME"], env["MUSTER_REPLICA_TYPE"], env["MUSTER_REPLICA_INDEX"]) == (
        "j",
        "ps",
        "1",
    )
    assert list(env) == sorted(env)


def test_the_environment_is_the_same_on_both_backends_but_for_addresses() -> None:
    ports = {key: 41000 + n for n, key in enumerate(kubernetes_addresses(TF_GANG, "ns", None))}
    local = replica_env(
        TF_GANG,
        role="worker",
        index=1,
        addresses=local_addresses(TF_GANG, ports),
        gpu_devices=(2,),
        cpu_millis=2000,
    )
    cluster = _env(TF_GANG, "worker", 1, gpu_devices=(2,), cpu_millis=2000)
    assert local.keys() == cluster.keys()
    assert {k for k in local if local[k] != cluster[k]} == {"TF_CONFIG"}


# -- addresses -------------------------------------------------------------------------------------


def test_local_addresses_use_loopback_and_the_given_ports() -> None:
    spec = _spec("tensorflow", {"chief": {"image": "i"}, "worker": {"count": 2, "image": "i"}})
    ports = {("chief", 0): 41000, ("worker", 0): 41001, ("worker", 1): 41002}
    assert local_addresses(spec, ports) == {
        ("chief", 0): Address(host="127.0.0.1", port=41000),
        ("worker", 0): Address(host="127.0.0.1", port=41001),
        ("worker", 1): Address(host="127.0.0.1", port=41002),
    }
    env = replica_env(
        spec,
        role="chief",
        index=0,
        addresses=local_addresses(spec, ports),
        gpu_devices=None,
        cpu_millis=1000,
    )
    assert env["TF_CONFIG"] == (
        '{"cluster":{"chief":["127.0.0.1:41000"],"worker":["127.0.0.1:41001","127.0.0.1:41002"]},'
        '"task":{"type":"chief","index":0},"environment":"cloud"}'
    )


def test_long_job_names_use_the_shortened_pod_name_as_host() -> None:
    name = "a" * 60
    spec = _spec("tensorflow", {"worker": {"count": 2, "image": "i"}}, name=name)
    host = kubernetes_addresses(spec, "ns", None)["worker", 1].host
    label = host.split(".")[0]
    assert len(label) <= 63
    assert host == f"{label}.ns.svc"


@pytest.mark.parametrize(
    "ports",
    [{("chief", 0): 41000}, {("chief", 0): 41000, ("worker", 0): 41001, ("ps", 0): 41002}],
    ids=["missing", "unknown"],
)
def test_addresses_must_cover_exactly_the_gang(ports: dict[tuple[str, int], int]) -> None:
    spec = _spec("tensorflow", {"chief": {"image": "i"}, "worker": {"image": "i"}})
    with pytest.raises(ValueError, match="exactly its replicas"):
        local_addresses(spec, ports)
    addresses = {key: Address(host="h", port=port) for key, port in ports.items()}
    with pytest.raises(ValueError, match="exactly its replicas"):
        replica_env(
            spec, role="chief", index=0, addresses=addresses, gpu_devices=None, cpu_millis=1000
        )


@pytest.mark.parametrize(
    ("spec", "role", "index"),
    [(TORCH_GANG, "ps", 0), (TF_GANG, "worker", 2), (TF_GANG, "worker", -1)],
    ids=["no such role", "index past count", "negative index"],
)
def test_unknown_replica_is_refused(spec: JobSpec, role: str, index: int) -> None:
    with pytest.raises(ValueError, match=role):
        _env(spec, role, index)


@pytest.mark.parametrize("port", [0, 65536])
def test_address_port_must_be_a_tcp_port(port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        Address(host="h", port=port)
