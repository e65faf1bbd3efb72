"""The pod fields the local backend honours, on real replicas, and those it refuses at submit.

The local backend runs replicas as processes. It honours a replica's ``working_dir`` (the command
starts there, as the job's user; HOME and TMPDIR stay its private work directory) and emptyDir
volumes (a fresh 0700 directory of the job's per replica, or a tmpfs for medium Memory), mounted
at their mountPath in the replica's own mount namespace. Everything else of a pod gets a 422
that points at the field and says it needs the Kubernetes backend.

The runtime tests drive ``LocalRuntime`` as the reconciler does, with the helpers and the
``place`` fixture of ``test_local_runtime``; a test that needs a mount namespace is skipped, with
the reason, where this machine gives none (a gateway that is not root).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.app import make_app
from gateway.backends.local import LocalRuntime
from gateway.backends.nodes_file import StaticInventory
from gateway.backends.sandbox import Isolation
from gateway.domain.jobs.pod_fields import PodFields, canonical
from gateway.domain.scheduling.nodes import Node
from gateway.settings import Settings
from tests import tokens
from tests.integration import test_local_runtime
from tests.integration.helpers import create_tenant, job_spec, row_counts, submit
from tests.integration.test_local_runtime import (
    CONTAINED,
    ENDED,
    ROOT_BASE,
    SUCCEEDED,
    UNISOLATED,
    Changes,
    Place,
    gang,
    names,
    pod,
    state,
    until,
)
from tests.openapi_check import CheckedClient

#: The fixture of a fresh data directory, whose processes are all killed after the test.
place = test_local_runtime.place
FAILED_TO_START = 126


def with_pod(place: Place, job_id: str, script: str, **fields: Any) -> Any:
    """A one-replica job of ``script`` whose replica has the pod fields ``fields`` (volumes and
    mounts as Kubernetes objects)."""
    one = gang(job_id, script)
    for key in ("volumes", "volume_mounts"):
        if key in fields:
            fields[key] = tuple(canonical(v) for v in fields[key])
    replica = dataclasses.replace(one.spec.replicas[0], pod=PodFields(**fields))
    spec = dataclasses.replace(one.spec, replicas=(replica,))
    return dataclasses.replace(one, spec=spec)


async def run_to_end(place: Place, one: Any) -> tuple[tuple[Any, int | None] | None, str]:
    """Start ``one``'s replica, wait for its exit (an event; a replica not run has ended as
    ``create`` returns), and give its state and log."""
    return await run_to_end_on(place.runtime(), one)


async def run_to_end_on(
    runtime: LocalRuntime, one: Any
) -> tuple[tuple[Any, int | None] | None, str]:
    changes = Changes(runtime)
    await runtime.create(one, names(one))
    key = pod(one)
    while True:
        seen = changes.calls
        ended = await state(runtime, key)
        if ended is not None and ended[0] in ENDED:
            return ended, runtime.log_path(*key).read_text("utf-8", "replace")
        await changes.after(seen)


def needs_mount_namespace(place: Place) -> None:
    if not place.isolation.namespaces:
        pytest.skip("this machine gives replicas no mount namespace (the tests are not root)")


def job_dir(place: Place) -> Path:
    """A directory for the job, outside its work area, that its user may enter (0755)."""
    made = place.shared / "job"
    made.mkdir(mode=0o755, exist_ok=True)
    made.chmod(0o755)
    return made


# workingDir ----------------------------------------------------------------------------------


@pytest.mark.parametrize("place", [CONTAINED, UNISOLATED], indirect=True)
async def test_a_replica_starts_in_its_working_dir_and_keeps_its_private_home(
    place: Place,
) -> None:
    where = job_dir(place)
    one = with_pod(
        place,
        "wd",
        'echo "cwd=$(pwd -P)"; echo "home=$HOME"; echo "tmp=$TMPDIR"',
        working_dir=str(where),
    )
    ended, log = await run_to_end(place, one)
    assert ended == SUCCEEDED, log
    assert f"cwd={where}\n" in log
    home = log.split("home=", 1)[1].split("\n", 1)[0]
    assert Path(home).parent == place.work / "wd", log  # the replica's own work directory
    assert f"tmp={home}/tmp\n" in log


@pytest.mark.parametrize("place", [CONTAINED, UNISOLATED], indirect=True)
async def test_a_missing_working_dir_fails_the_replica_saying_why_and_runs_nothing(
    place: Place,
) -> None:
    missing = place.base / "no-such-dir"
    proof = place.shared / "ran"
    one = with_pod(place, "gone", f"touch {proof}", working_dir=str(missing))
    ended, log = await run_to_end(place, one)
    assert ended is not None, log
    assert ended[1] == FAILED_TO_START, log
    assert f"muster: workingDir {missing}: No such file or directory" in log
    assert not proof.exists()  # never started anywhere else


async def test_a_working_dir_the_jobs_user_may_not_enter_fails_the_replica(place: Place) -> None:
    if not place.isolation.isolated:
        pytest.skip("replicas run as the tests' own user here (the tests are not root)")
    closed = place.shared / "roots"
    closed.mkdir(mode=0o700)  # root's: the job's uid may not enter it, though root may
    proof = place.shared / "ran"
    one = with_pod(place, "closed", f"touch {proof}", working_dir=str(closed))
    ended, log = await run_to_end(place, one)
    assert ended is not None, log
    assert ended[1] == FAILED_TO_START, log
    assert f"muster: workingDir {closed}: Permission denied (the job runs as uid" in log
    assert not proof.exists()


# emptyDir ------------------------------------------------------------------------------------


async def test_an_empty_dir_is_a_private_directory_of_the_replica_mounted_at_its_path(
    place: Place,
) -> None:
    needs_mount_namespace(place)
    target = job_dir(place)  # root's, 0755: only the mount lets the job write there
    read_only = place.shared / "ro"
    read_only.mkdir(mode=0o755)
    script = (
        f"echo hello > {target}/note && cat {target}/note && "
        f"stat -c 'owner=%u mode=%a' {target} && "
        f"cat {read_only}/note && "
        f"if touch {read_only}/other 2>/dev/null; then echo ro-writable; else echo ro-refused; fi"
    )
    one = with_pod(
        place,
        "scratch",
        script,
        volumes=[{"name": "scratch", "emptyDir": {}}],
        volume_mounts=[
            {"name": "scratch", "mountPath": str(target)},
            {"name": "scratch", "mountPath": str(read_only), "readOnly": True},
        ],
        working_dir=str(target),  # a working directory may be a volume's mount
    )
    ended, log = await run_to_end(place, one)
    assert ended == SUCCEEDED, log
    assert log.count("hello\n") == 2, log  # written at one mount, read at the other: one volume
    assert "ro-refused" in log
    users = place.isolation.run_as
    assert users is not None
    [owner] = [int(w.split("=")[1]) for w in log.split() if w.startswith("owner=")]
    assert users.first <= owner <= users.last, log
    assert "mode=700" in log.split(), log
    # Nothing went through to the machine's directories, and the volume went with the replica.
    assert list(target.iterdir()) == []
    assert list(read_only.iterdir()) == []
    await until(lambda: not (place.work / "scratch").exists(), "the work directory to go")


async def test_a_memory_empty_dir_is_a_tmpfs_of_its_size_limit(place: Place) -> None:
    needs_mount_namespace(place)
    one = with_pod(
        place,
        "shm",
        "grep ' /dev/shm ' /proc/self/mounts && echo x > /dev/shm/x && cat /dev/shm/x",
        volumes=[{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
        volume_mounts=[{"name": "shm", "mountPath": "/dev/shm"}],
    )
    ended, log = await run_to_end(place, one)
    assert ended == SUCCEEDED, log
    line = [line for line in log.splitlines() if " /dev/shm " in line][-1]  # the top mount
    assert line.startswith("tmpfs /dev/shm tmpfs "), line
    options = line.split()[3].split(",")
    for option in ("size=1024k", "mode=700", "nosuid", "nodev"):
        assert option in options, line


async def test_a_mount_path_missing_on_this_machine_fails_the_replica_and_makes_nothing(
    place: Place,
) -> None:
    needs_mount_namespace(place)
    missing = place.shared / "absent"
    one = with_pod(
        place,
        "nowhere",
        "echo command-ran",
        volumes=[{"name": "v", "emptyDir": {}}],
        volume_mounts=[{"name": "v", "mountPath": str(missing)}],
    )
    ended, log = await run_to_end(place, one)
    assert ended is not None, log
    assert ended[1] == FAILED_TO_START, log
    assert f"mountPath {missing} is no directory on this machine" in log
    assert "command-ran" not in log
    assert not missing.exists()


@pytest.mark.parametrize("place", [UNISOLATED], indirect=True)
async def test_without_a_mount_namespace_a_mount_stops_the_replica_before_it_runs(
    place: Place,
) -> None:
    # A job written under another gateway: this one cannot mount, so it never runs it without.
    one = with_pod(
        place,
        "flat",
        "echo command-ran",
        volumes=[{"name": "v", "emptyDir": {}}],
        volume_mounts=[{"name": "v", "mountPath": str(place.shared)}],
    )
    ended, log = await run_to_end(place, one)
    assert ended is not None, log
    assert ended[1] == FAILED_TO_START, log
    refused = "/replicas/worker/volume_mounts/0: mounting a volume needs the Kubernetes backend"
    assert refused in log
    assert "command-ran" not in log


# Refused at submit ---------------------------------------------------------------------------


@pytest.fixture
def local_runtime(request: pytest.FixtureRequest) -> Iterator[LocalRuntime]:
    """A local runtime (never started: a submit asks it only what it honours) with mount
    namespaces or without (``request.param``)."""
    parent = ROOT_BASE if os.geteuid() == 0 else Path(tempfile.gettempdir())
    parent.mkdir(mode=0o755, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="lpf-", dir=parent))
    (base / "data").mkdir(mode=0o700)
    namespaces = bool(request.param)
    isolation = Isolation(run_as=None, namespaces=namespaces, cgroups=None, trusted_tenants=None)
    try:
        yield LocalRuntime(base / "data", work_dir=base / "work", isolation=isolation, path="/bin")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def local_api(
    settings: Settings, engine: AsyncEngine, nodes: tuple[Node, ...], local_runtime: LocalRuntime
) -> AsyncIterator[CheckedClient]:
    app = make_app(settings, engine, StaticInventory(nodes), runtime=local_runtime)
    async with TestClient(TestServer(app)) as client:
        api = CheckedClient(client, tokens.admin_token(settings))
        await create_tenant(api)
        yield api


def _with(**worker: Any) -> dict[str, Any]:
    return job_spec(replicas={"worker": {"count": 1, "image": "reg/wd:1", **worker}})


EMPTY_DIR = {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}


@pytest.mark.parametrize("local_runtime", [True], indirect=True)
@pytest.mark.parametrize(
    ("worker", "pointers"),
    [
        (
            {"volumes": [{"name": "h", "hostPath": {"path": "/srv"}}]},
            ["/replicas/worker/volumes/0/hostPath"],
        ),
        (
            {
                "volumes": [
                    EMPTY_DIR,
                    {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}},
                ],
                "volume_mounts": [
                    {"name": "scratch", "mountPath": "/dev/shm"},
                    {"name": "data", "mountPath": "/data"},
                ],
            },
            [
                "/replicas/worker/volumes/1/persistentVolumeClaim",
                "/replicas/worker/volume_mounts/1/name",
            ],
        ),
        (
            {"env_value_from": {"KEY": {"secretKeyRef": {"name": "s3", "key": "secret"}}}},
            ["/replicas/worker/env_value_from"],
        ),
        (
            {
                "volumes": [EMPTY_DIR],
                "volume_mounts": [{"name": "scratch", "mountPath": "/w", "subPath": "a"}],
            },
            ["/replicas/worker/volume_mounts/0/subPath"],
        ),
        ({"working_dir": "/w", "host_ipc": True}, ["/replicas/worker/host_ipc"]),
    ],
)
async def test_what_the_local_backend_cannot_honour_is_refused_at_its_field(
    local_api: CheckedClient, engine: AsyncEngine, worker: dict[str, Any], pointers: list[str]
) -> None:
    before = await row_counts(engine)
    response = await local_api.post("/v1/jobs", json=_with(**worker))
    assert response.status == 422, response.text
    errors = response.body["errors"]
    backend = [e for e in errors if "pod policy rule" not in e["detail"]]  # the rest: the policy's
    assert sorted(e["pointer"] for e in backend) == sorted(pointers), errors
    assert all("needs the Kubernetes backend" in e["detail"] for e in backend), errors
    assert await row_counts(engine) == before


@pytest.mark.parametrize("local_runtime", [True], indirect=True)
async def test_a_working_dir_and_mounted_empty_dirs_are_accepted(local_api: CheckedClient) -> None:
    job = await submit(
        local_api,
        _with(
            working_dir="/srv/train",
            volumes=[EMPTY_DIR, {"name": "cache", "emptyDir": {}}],
            volume_mounts=[
                {"name": "scratch", "mountPath": "/dev/shm"},
                {"name": "cache", "mountPath": "/var/cache/train", "readOnly": False},
            ],
        ),
    )
    assert job["spec"]["replicas"]["worker"]["working_dir"] == "/srv/train"


@pytest.mark.parametrize("local_runtime", [False], indirect=True)
async def test_without_mount_namespaces_mounts_are_refused_and_the_rest_accepted(
    local_api: CheckedClient,
) -> None:
    mounted = _with(
        volumes=[{"name": "cache", "emptyDir": {}}],
        volume_mounts=[{"name": "cache", "mountPath": "/var/cache/train"}],
    )
    response = await local_api.post("/v1/jobs", json=mounted)
    assert response.status == 422, response.text
    [error] = response.body["errors"]
    assert error["pointer"] == "/replicas/worker/volume_mounts/0"
    assert "mount namespace" in error["detail"], error
    assert "Kubernetes backend" in error["detail"], error
    await submit(
        local_api, _with(working_dir="/srv/train", volumes=[{"name": "cache", "emptyDir": {}}])
    )


# A daemon that outlived an older gateway -------------------------------------------------------


@pytest.mark.parametrize("place", [UNISOLATED], indirect=True)
async def test_the_daemon_says_it_honours_working_dirs_and_mounts(place: Place) -> None:
    runtime = place.runtime()
    assert await runtime._daemon.features() == {"working_dir", "mounts"}


@pytest.mark.parametrize("place", [UNISOLATED], indirect=True)
async def test_a_daemon_from_before_working_dirs_never_runs_a_replica_without_one(
    place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = place.runtime()
    asked = runtime._daemon._ask_connected

    async def older(message: dict[str, Any]) -> dict[str, Any]:
        if message["op"] == "features":  # what a daemon from before answers an unknown op
            return {"error": "unknown op 'features'"}
        return await asked(message)

    monkeypatch.setattr(runtime._daemon, "_ask_connected", older)
    proof = place.shared / "ran"
    one = with_pod(place, "old", f"touch {proof}", working_dir=str(job_dir(place)))
    ended, log = await run_to_end_on(runtime, one)
    assert ended is not None, log
    assert ended[1] == FAILED_TO_START, log
    assert "the local supervisor daemon predates working_dir" in log
    assert not proof.exists()
