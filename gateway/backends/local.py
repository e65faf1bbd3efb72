"""The local backend: this machine is one node, and replicas run as processes on it.

The node's CPUs, memory and GPUs are read from the machine, each overridable in settings.
Every replica runs under ``gateway.backends.shim`` in a process group of its own, with the same
environment contract as on Kubernetes (TF_CONFIG with 127.0.0.1 and a free port per replica,
PyTorch ranks, CUDA_VISIBLE_DEVICES from the GPU plan, thread variables). The image is recorded
and not used: the replica's command runs on this machine.

State lives under the data directory, so a restarted gateway adopts what is still running:
``local/<job>/<attempt>/<pod>.json`` (pid and start time, written by the backend),
``local/<job>/<attempt>/<pod>.exit`` (exit status, written by the shim when the command ends),
``local/<job>/<attempt>/ports.json`` (the gang's ports) and ``logs/<job>/<pod>.log``.

Invariants: a pod is RUNNING only while the recorded process (same pid and start time) lives;
a pod whose process vanished without an exit status is reported on a lost node, so its job is
handled as after a node loss; deleting a pod stops its whole process group (SIGTERM, then
SIGKILL after the grace period) before its state is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from gateway.backends.base import Gang, PodStatus
from gateway.domain.lifecycle import ReplicaPhase
from gateway.domain.nodes import GpuMode, Node
from gateway.domain.replica_env import local_addresses, replica_env
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


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _alive(record: Mapping[str, Any]) -> bool:
    try:
        process = psutil.Process(int(record["pid"]))
        same = abs(process.create_time() - float(record["create_time"])) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError):
        return False


class LocalRuntime:
    """Replicas as process groups on this machine. See the module docstring for the layout."""

    def __init__(self, data_dir: Path, *, grace_seconds: float = 10.0) -> None:
        self.state_dir = data_dir / "local"
        self.log_dir = data_dir / "logs"
        self.work_dir = data_dir / "work"
        self.grace_seconds = grace_seconds
        self._children: set[asyncio.Task[None]] = set()

    def _pod_dir(self, job_id: str, attempt: int) -> Path:
        return self.state_dir / job_id / str(attempt)

    def log_path(self, job_id: str, name: str) -> Path:
        return self.log_dir / job_id / f"{name}.log"

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]:
        return await asyncio.to_thread(self._observe)

    def _observe(self) -> dict[tuple[str, str], PodStatus]:
        found: dict[tuple[str, str], PodStatus] = {}
        for state in sorted(self.state_dir.glob("*/*/*.json")):
            if state.name == "ports.json":
                continue
            try:
                record = json.loads(state.read_text("utf-8"))
            except (OSError, ValueError):
                continue
            job_id, name = state.parent.parent.name, state.stem
            exit_file = state.with_suffix(".exit")
            exit_code = _read_exit(exit_file)
            if exit_code is not None:
                phase = ReplicaPhase.SUCCEEDED if exit_code == 0 else ReplicaPhase.FAILED
                node_ready = True
            elif _alive(record):
                phase, node_ready = ReplicaPhase.RUNNING, True
            else:
                # Gone without a word, like a pod on a node that vanished.
                phase, node_ready = ReplicaPhase.MISSING, False
            found[(job_id, name)] = PodStatus(
                job_id=job_id,
                name=name,
                attempt=int(state.parent.name),
                phase=phase,
                exit_code=exit_code,
                node_ready=node_ready,
            )
        return found

    def _ports(self, gang: Gang) -> dict[tuple[str, int], int]:
        path = self._pod_dir(gang.job_id, gang.attempt) / "ports.json"
        if path.exists():
            saved = json.loads(path.read_text("utf-8"))
            return {(role, int(index)): port for role, index, port in saved}
        keys = [(p.role, p.index) for p in gang.placements]
        ports = dict(zip(keys, _free_ports(len(keys)), strict=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([[r, i, port] for (r, i), port in ports.items()]), "utf-8")
        return ports

    async def create(self, gang: Gang, names: tuple[str, ...]) -> None:
        addresses = local_addresses(gang.spec, self._ports(gang))
        by_name = {p.name: p for p in gang.placements}
        for name in names:
            await self._start(gang, by_name[name], addresses)

    async def _start(self, gang: Gang, placement: Any, addresses: Any) -> None:
        pod_dir = self._pod_dir(gang.job_id, gang.attempt)
        state, exit_file = pod_dir / f"{placement.name}.json", pod_dir / f"{placement.name}.exit"
        if (
            state.exists()
            and exit_file.exists() is False
            and _alive(json.loads(state.read_text("utf-8")))
        ):
            return  # already running: creating is idempotent
        exit_file.unlink(missing_ok=True)
        replica = gang.spec.replica(placement.role)
        assert replica is not None
        devices = tuple(sorted({s.device for s in placement.gpu})) or None
        env = replica_env(
            gang.spec,
            role=placement.role,
            index=placement.index,
            addresses=addresses,
            gpu_devices=devices,
            cpu_millis=placement.cpu_millis,
        )
        log = self.log_path(gang.job_id, placement.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        work = self.work_dir / gang.job_id / placement.name
        work.mkdir(parents=True, exist_ok=True)
        command = [*replica.command, *replica.args]
        with log.open("ab") as out:
            out.write(
                f"--- muster: starting {placement.name} (attempt {gang.attempt}) at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode()
            )
            if not command:
                out.write(
                    b"muster: the local backend runs a replica's command; this replica "
                    b"has none (the image is not used on this machine)\n"
                )
                pod_dir.mkdir(parents=True, exist_ok=True)
                state.write_text(json.dumps({"pid": 0, "create_time": 0}), "utf-8")
                exit_file.write_text("127", "utf-8")
                return
            pod_dir.mkdir(parents=True, exist_ok=True)
            # The child inherits this process's environment (PATH, HOME, ...) plus the contract.
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.backends.shim",
                str(exit_file),
                "--",
                *command,
                cwd=work,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        create_time = psutil.Process(process.pid).create_time()
        state.write_text(json.dumps({"pid": process.pid, "create_time": create_time}), "utf-8")
        # Reap the child when it ends; the shim has written the exit status by then.
        task = asyncio.create_task(self._reap(process), name=f"reap {placement.name}")
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    @staticmethod
    async def _reap(process: asyncio.subprocess.Process) -> None:
        await process.wait()

    async def delete(self, job_id: str, name: str) -> None:
        for state in self.state_dir.glob(f"{job_id}/*/{name}.json"):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(state.read_text("utf-8"))
                if _alive(record):
                    await self._stop_group(int(record["pid"]))
            state.with_suffix(".exit").unlink(missing_ok=True)
            state.unlink(missing_ok=True)

    async def _stop_group(self, pid: int) -> None:
        """SIGTERM the process group, then SIGKILL what is left after the grace period."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    async def logs(self, job_id: str, name: str, *, follow: bool) -> AsyncIterator[bytes]:
        path = self.log_path(job_id, name)
        if not path.exists():
            return
        with path.open("rb") as log:
            while True:
                chunk = log.read(64 * 1024)
                if chunk:
                    yield chunk
                    continue
                if not follow or not self._running(job_id, name):
                    return
                await asyncio.sleep(0.2)

    def _running(self, job_id: str, name: str) -> bool:
        for state in self.state_dir.glob(f"{job_id}/*/{name}.json"):
            with contextlib.suppress(OSError, ValueError):
                if not state.with_suffix(".exit").exists() and _alive(
                    json.loads(state.read_text("utf-8"))
                ):
                    return True
        return False

    async def close(self) -> None:
        """Stop reaping; replicas keep running and are adopted by the next gateway."""
        for task in list(self._children):
            task.cancel()
        await asyncio.gather(*self._children, return_exceptions=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group of only zombies still "exists"; count live members.
    return any(
        p.status() != psutil.STATUS_ZOMBIE
        for p in psutil.process_iter(["pid"])
        if _pgid(p.pid) == pgid
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _read_exit(path: Path) -> int | None:
    try:
        return int(path.read_text("utf-8").strip())
    except (OSError, ValueError):
        return None
