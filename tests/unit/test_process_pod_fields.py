"""What a backend of processes (the local backend) honours of a replica's pod fields: a working
directory and emptyDir volumes with plain mounts (those only with mount namespaces); every other
pod field, volume type and mount feature is refused at its pointer, naming the Kubernetes
backend."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.policy import process_unsupported
from gateway.domain.jobs.spec import JobSpec
from tests.unit.test_pod_fields import PRODUCTION

EMPTY = {"name": "scratch", "emptyDir": {}}
SHM = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}


def _spec(**worker: Any) -> JobSpec:
    spec = check_job_spec(
        {
            "name": "p",
            "tenant": "t",
            "replicas": {"worker": {"count": 1, "image": "reg/wd:1", "env": {"K": "V"}, **worker}},
        }
    )
    assert isinstance(spec, JobSpec), spec
    return spec


def _refused(spec: JobSpec, *, mounts: bool = True) -> list[str]:
    problems = process_unsupported(spec, mounts=mounts)
    assert all("Kubernetes backend" in p.detail for p in problems), problems
    return [p.pointer for p in problems]


@pytest.mark.parametrize("mounts", [True, False])
def test_plain_env_a_working_dir_and_unmounted_empty_dirs_are_honoured(mounts: bool) -> None:
    assert _refused(_spec(), mounts=mounts) == []
    assert _refused(_spec(working_dir="/srv/w", volumes=[EMPTY, SHM]), mounts=mounts) == []


def test_empty_dirs_mounted_by_name_path_and_read_only_are_honoured_with_mount_namespaces() -> None:
    spec = _spec(
        volumes=[EMPTY, SHM],
        volume_mounts=[
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "scratch", "mountPath": "/scratch", "readOnly": True},
        ],
    )
    assert _refused(spec) == []
    assert _refused(spec, mounts=False) == [
        "/replicas/worker/volume_mounts/0",
        "/replicas/worker/volume_mounts/1",
    ]


def test_other_volumes_their_mounts_and_sub_paths_are_refused_at_their_fields() -> None:
    spec = _spec(
        volumes=[
            EMPTY,
            {"name": "h", "hostPath": {"path": "/srv"}},
            {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
        ],
        volume_mounts=[
            {"name": "scratch", "mountPath": "/a", "subPath": "x"},
            {"name": "h", "mountPath": "/b"},
            {"name": "scratch", "mountPath": "/"},
        ],
    )
    problems = process_unsupported(spec, mounts=True)
    assert [p.pointer for p in problems] == [
        "/replicas/worker/volumes/1/hostPath",
        "/replicas/worker/volumes/2/persistentVolumeClaim",
        "/replicas/worker/volume_mounts/0/subPath",
        "/replicas/worker/volume_mounts/1/name",
        "/replicas/worker/volume_mounts/2/mountPath",
    ]
    details = [p.detail for p in problems]
    assert details[0].startswith("a hostPath volume needs the Kubernetes backend")
    assert details[3].startswith("mounting a hostPath volume needs the Kubernetes backend")
    assert "hide the whole machine" in details[4]


def test_every_other_pod_field_is_refused_with_the_kubernetes_wording() -> None:
    spec = _spec(**PRODUCTION)
    pointers = _refused(spec)
    assert "/replicas/worker/working_dir" not in pointers
    for field in (
        "env_value_from",
        "env_from",
        "image_pull_policy",
        "service_account_name",
        "image_pull_secrets",
        "pod_security_context",
        "security_context",
        "init_containers",
    ):
        assert f"/replicas/worker/{field}" in pointers, pointers
    problem = next(
        p for p in process_unsupported(spec, mounts=True) if p.pointer.endswith("env_value_from")
    )
    assert problem.detail == (
        "env_value_from needs the Kubernetes backend; this gateway runs replicas as local processes"
    )
