"""The local backend: this machine is one node, and replicas run as processes on it.

The node's CPUs, memory and GPUs are read from the machine, each overridable in settings.
Every replica runs under ``gateway.backends.supervisor``, contained as ``sandbox`` decided (its own
user, PID namespace and cgroup where the machine allows), with the same environment contract as
on Kubernetes (TF_CONFIG with 127.0.0.1 and a free port per replica, PyTorch ranks,
CUDA_VISIBLE_DEVICES from the GPU plan, thread variables) and nothing of the gateway's. The
image is recorded and not used: the replica's command runs on this machine.

State lives under the data directory (0700, unreachable by jobs), so a restarted gateway adopts
what is still running: ``local/<job>/<attempt>/<pod>.json`` (the supervisor's pid and start
time, the job's uid, the pod's cgroups and work directory), ``<pod>.plan.json`` (the launch
plan), ``<pod>.exit`` (exit status, written by the supervisor when the command ends),
``ports.json`` (the gang's ports) and ``logs/<job>/<pod>.log`` (0600). A replica works in
``<work dir>/<job>/<pod>`` (MUSTER_LOCAL_WORK_DIR, outside the data directory), made afresh for
each start and removed when it ends.

Invariants: a pod is RUNNING only while the recorded supervisor (same pid and start time) lives;
a pod whose supervisor vanished without an exit status is reported on a lost node, so its job is
handled as after a node loss; deleting a pod stops every process of its container (SIGTERM, then
SIGKILL after the grace period) before its state is removed; cgroups and work directories that
no pod record claims are removed when the runtime first looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from gateway.backends import cgroups
from gateway.backends.base import Gang, PodStatus
from gateway.backends.sandbox import (
    Isolation,
    UidClaims,
    check_reachable,
    choose_uid,
    claim_work_dir,
    instance_name,
    process_env,
)
from gateway.backends.supervisor import remove_tree
from gateway.domain.lifecycle.decisions import ReplicaPhase
from gateway.domain.manifests.environment import Address, ReplicaKey, local_addresses, replica_env
from gateway.domain.resources import QuantityError, memory_bytes
from gateway.domain.scheduling.nodes import GpuMode, Node
from gateway.domain.scheduling.queueing import Placement
from gateway.errors import ConfigError
from gateway.settings import Settings

LOCAL_NODE = "local"
# Directories a replica's mount namespace replaces with private ones (see the supervisor).
SHARED_TMP = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))


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
    cpus = settings.local.cpus if settings.local.cpus is not None else float(os.cpu_count() or 1)
    try:
        memory = (
            memory_bytes(settings.local.memory)
            if settings.local.memory is not None
            else machine_memory()
        )
    except QuantityError as exc:
        raise ConfigError(f"MUSTER_LOCAL_MEMORY: {exc}") from exc
    gpus = settings.local.gpus if settings.local.gpus is not None else detect_gpus()
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


def _private_dir(path: Path, mode: int = 0o700) -> None:
    """Make ``path`` (and missing parents, private too) and give it ``mode`` even if it existed
    with a looser one (an install older than these rules)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    path.chmod(mode)


#: Where the supervisor finds Muster's code: this process's own import path.
_IMPORT_PATH = os.pathsep.join(filter(None, sys.path))
#: Bytes of one replica's output kept in its log; the rest is dropped, with a note.
LOG_BYTES = 100 * 2**20


class LocalRuntime:
    """Replicas as contained processes on this machine. See the module docstring for the layout."""

    def __init__(
        self,
        data_dir: Path,
        *,
        work_dir: Path,
        isolation: Isolation,
        path: str,
        max_pids: int = 4096,
        log_bytes: int = LOG_BYTES,
        hide_files: Sequence[Path] = (),
        grace_seconds: float = 10.0,
    ) -> None:
        self.data_dir = data_dir
        self.state_dir = data_dir / "local"
        self.log_dir = data_dir / "logs"
        self.work_dir = work_dir
        self.isolation = isolation
        self.path = path
        self.max_pids = max_pids
        self.log_bytes = log_bytes
        self.hide_files = tuple(str(p) for p in hide_files if not p.is_relative_to(data_dir))
        self.grace_seconds = grace_seconds
        self._children: set[asyncio.Task[None]] = set()
        self._uids = asyncio.Lock()
        self._swept = False
        for private in (self.state_dir, self.log_dir):
            _private_dir(private)
        # The work root is searchable (not listable) by jobs, whose own directories sit in it;
        # parents made for it hold nothing else, and jobs must pass through them.
        for parent in reversed(work_dir.parents):
            if not parent.exists():
                parent.mkdir(mode=0o755)
                parent.chmod(0o755)
        _private_dir(work_dir, 0o711 if isolation.isolated else 0o700)
        if work_dir.stat().st_uid != os.geteuid():
            raise ConfigError(f"MUSTER_LOCAL_WORK_DIR={work_dir} belongs to another user")
        if isolation.run_as is not None:
            check_reachable(work_dir, isolation.run_as.first)
        shared = [d for d in SHARED_TMP if work_dir.is_relative_to(d)]
        if isolation.namespaces and shared:
            raise ConfigError(
                f"MUSTER_LOCAL_WORK_DIR={work_dir} is under {shared[0]}, which each replica "
                "gets a private copy of; choose a directory such as /var/lib/muster/work"
            )
        if work_dir.is_relative_to(data_dir):
            raise ConfigError(
                f"MUSTER_LOCAL_WORK_DIR={work_dir} is inside the data directory, "
                "which jobs must never reach"
            )
        claim_work_dir(work_dir, data_dir)
        self._claims = UidClaims(instance_name(data_dir)) if isolation.run_as else None
        for log in self.log_dir.glob("*/*.log"):
            with contextlib.suppress(OSError):
                log.chmod(0o600)
                log.parent.chmod(0o700)

    def refusal(self, tenant: str) -> str | None:
        """Why ``tenant``'s jobs may not run here (an unisolated gateway), or None."""
        return self.isolation.refusal(tenant)

    def _pod_dir(self, job_id: str, attempt: int) -> Path:
        return self.state_dir / job_id / str(attempt)

    def log_path(self, job_id: str, name: str) -> Path:
        return self.log_dir / job_id / f"{name}.log"

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]:
        return await asyncio.to_thread(self._observe)

    def _records(self) -> list[tuple[Path, dict[str, Any]]]:
        """Each pod's record (``<pod>.json``) with its path; plans, ports and exits are not."""
        found = []
        for state in sorted(self.state_dir.glob("*/*/*.json")):
            if state.name == "ports.json" or state.name.endswith(".plan.json"):
                continue
            try:
                found.append((state, json.loads(state.read_text("utf-8"))))
            except (OSError, ValueError):
                continue
        return found

    def _observe(self) -> dict[tuple[str, str], PodStatus]:
        records = self._records()
        if not self._swept:
            self._sweep(records)
            self._swept = True
        found: dict[tuple[str, str], PodStatus] = {}
        for state, record in records:
            job_id, name = state.parent.parent.name, state.stem
            exit_code = _read_exit(_exit_file(state, record))
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

    def _sweep(self, records: list[tuple[Path, dict[str, Any]]]) -> None:
        """Remove what an earlier gateway left behind without a record: supervisors (a gateway
        killed between starting one and recording it), cgroups (killing what runs in them) and
        work directories. Each start has its own id, in its cgroup's and work directory's names,
        so nothing of an orphan can be taken for a replica started since."""
        starts = {str(r["start"]) for _, r in records if r.get("start")}
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            plan = cmdline[-1] if len(cmdline) >= 2 else ""
            ours = "gateway.backends.supervisor" in cmdline
            if not ours or not plan.startswith(str(self.state_dir)):
                continue
            # <pod>.<start>.plan.json; a plan of an older gateway has no start and is kept.
            parts = Path(plan).name.split(".")
            if len(parts) < 4 or parts[-3] in starts:
                continue
            with contextlib.suppress(psutil.Error):
                for child in process.children(recursive=True):
                    child.kill()
                process.kill()
        live_cgroups = {Path(d).name for _, r in records for d in r.get("cgroups", ())}
        if self.isolation.cgroups is not None:
            for dirs in self.isolation.cgroups.orphans(live_cgroups):
                cgroups.kill(dirs)
                cgroups.remove(dirs)
        live_work = {str(r["work"]) for _, r in records if r.get("work")}
        with contextlib.suppress(OSError):
            for job_dir in self.work_dir.iterdir():
                if not job_dir.is_dir():
                    continue
                for pod_dir in job_dir.iterdir():
                    if str(pod_dir) not in live_work:
                        remove_tree(str(pod_dir))
                with contextlib.suppress(OSError):
                    job_dir.rmdir()

    def _ports(self, gang: Gang) -> dict[ReplicaKey, int]:
        path = self._pod_dir(gang.job_id, gang.attempt) / "ports.json"
        if path.exists():
            saved = json.loads(path.read_text("utf-8"))
            return {(role, int(index)): port for role, index, port in saved}
        keys = [(p.role, p.index) for p in gang.placements]
        ports = dict(zip(keys, _free_ports(len(keys)), strict=True))
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(json.dumps([[r, i, port] for (r, i), port in ports.items()]), "utf-8")
        return ports

    async def create(self, gang: Gang, names: tuple[str, ...]) -> None:
        addresses = local_addresses(gang.spec, self._ports(gang))
        by_name = {p.pod_name: p for p in gang.placements}
        for name in names:
            await self._start(gang, by_name[name], addresses)

    def _uid_for(self, job_id: str) -> int | None:
        """The job's uid: the one its running replicas have, else a free one of the range that
        no other gateway of this machine has given a live job (``UidClaims``)."""
        users = self.isolation.run_as
        if users is None:
            return None
        in_use = {
            state.parent.parent.name: int(record["uid"])
            for state, record in self._records()
            if record.get("uid") is not None and not _exit_file(state, record).exists()
        }
        for attempt in range(users.last - users.first + 1):
            uid = choose_uid(job_id, users, in_use)
            if self._claims is None or users.shared or self._claims.claim(uid, job_id):
                return uid
            in_use[f"another gateway's {attempt}"] = uid
        raise RuntimeError(f"every uid of {users.first}-{users.last} is in use")

    async def _start(
        self, gang: Gang, placement: Placement, addresses: Mapping[ReplicaKey, Address]
    ) -> None:
        pod_dir = self._pod_dir(gang.job_id, gang.attempt)
        name = placement.pod_name
        state = pod_dir / f"{name}.json"
        if state.exists():
            record = json.loads(state.read_text("utf-8"))
            if not _exit_file(state, record).exists() and _alive(record):
                return  # already running: creating is idempotent
        _private_dir(pod_dir)
        log = self.log_path(gang.job_id, name)
        _private_dir(log.parent)
        refusal = self.isolation.refusal(gang.spec.tenant)
        replica = gang.spec.replica(placement.role)
        assert replica is not None
        command = [*replica.command, *replica.args]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with _open_log(log) as out:
            banner = f"--- muster: starting {name} (attempt {gang.attempt}) at {stamp}\n"
            out.write(banner.encode())
            if refusal is not None or not command:
                out.write(
                    f"muster: not started: {refusal}\n".encode()
                    if refusal
                    else b"muster: the local backend runs a replica's command; this replica "
                    b"has none (the image is not used on this machine)\n"
                )
                exit_file = pod_dir / f"{name}.exit"
                state.write_text(
                    json.dumps({"pid": 0, "create_time": 0, "exit": str(exit_file)}), "utf-8"
                )
                exit_file.write_text("126" if refusal else "127", "utf-8")
                return
            async with self._uids:
                process, record = await self._spawn(gang, placement, addresses, command, out)
                state.write_text(json.dumps(record), "utf-8")
        # Reap the child when it ends; the supervisor has written the exit status by then.
        task = asyncio.create_task(self._reap(process), name=f"reap {name}")
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    async def _spawn(
        self,
        gang: Gang,
        placement: Placement,
        addresses: Mapping[ReplicaKey, Address],
        command: list[str],
        out: Any,
    ) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
        """Prepare the replica's work directory, cgroups and launch plan; start its supervisor.

        Every start has its own id: its cgroup, work directory, plan and exit status are named
        with it, so a supervisor of an earlier start (orphaned by a killed gateway) never touches
        what belongs to this one.
        """
        isolation = self.isolation
        start = secrets.token_hex(4)
        uid = self._uid_for(gang.job_id)
        gid = None
        if uid is not None and isolation.run_as is not None:
            gid = isolation.run_as.gid if isolation.run_as.gid is not None else uid
        work = self.work_dir / gang.job_id / f"{placement.pod_name}.{start}"
        await asyncio.to_thread(self._fresh_work_dir, work, uid, gid)
        devices = tuple(sorted({s.device for s in placement.gpu})) or None
        contract = replica_env(
            gang.spec,
            role=placement.role,
            index=placement.index,
            addresses=addresses,
            gpu_devices=devices,
            cpu_millis=placement.cpu_millis,
        )
        user = isolation.run_as.name if isolation.run_as is not None else _own_user()
        env = process_env(contract, home=work, tmp=work / "tmp", path=self.path, user=user)
        dirs: tuple[str, ...] = ()
        if isolation.cgroups is not None:
            limits = cgroups.PodLimits(
                memory_bytes=placement.memory_bytes,
                cpu_millis=placement.cpu_millis,
                pids=self.max_pids,
            )
            name = f"{gang.job_id}.{gang.attempt}.{placement.pod_name}.{start}"
            dirs = await asyncio.to_thread(isolation.cgroups.create, name, limits)
        pod_dir = self._pod_dir(gang.job_id, gang.attempt)
        exit_file = pod_dir / f"{placement.pod_name}.{start}.exit"
        plan = {
            "command": command,
            "env": env,
            "cwd": str(work),
            "tmp": str(work / "tmp"),
            "uid": uid,
            "gid": gid,
            "namespaces": isolation.namespaces,
            "cgroups": list(dirs),
            "memory_bytes": placement.memory_bytes,
            "log_bytes": self.log_bytes,
            "hide_dirs": [str(self.data_dir)] if isolation.namespaces else [],
            "hide_files": list(self.hide_files) if isolation.namespaces else [],
            "exit": str(exit_file),
        }
        plan_file = pod_dir / f"{placement.pod_name}.{start}.plan.json"
        plan_file.write_text(json.dumps(plan), "utf-8")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.backends.supervisor",
                str(plan_file),
                cwd="/",
                # Only what finding Muster's own code needs: nothing else of the gateway's
                # environment (its settings, credentials) reaches even the supervisor.
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": _IMPORT_PATH},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            cgroups.remove(dirs)
            raise
        record = {
            "pid": process.pid,
            "create_time": psutil.Process(process.pid).create_time(),
            "start": start,
            "uid": uid,
            "cgroups": list(dirs),
            "work": str(work),
            "exit": str(exit_file),
        }
        return process, record

    def _fresh_work_dir(self, work: Path, uid: int | None, gid: int | None) -> None:
        """An empty work directory for one start of a replica, owned by the job's user, with a
        private tmp inside; the job's directory above it is the gateway's (searchable only).

        Made as root by path only while the job can reach none of it: the directory is root's
        (0700) until everything in it is made, and given to the job last, through a descriptor.
        """
        job_dir = work.parent
        remove_tree(str(work))
        for attempt in range(3):
            _private_dir(job_dir, 0o711 if uid is not None else 0o700)
            try:
                work.mkdir(mode=0o700)
                break
            except FileNotFoundError:
                # The supervisor of the job's last replica removed the empty job directory
                # between the two steps: make it again.
                if attempt == 2:
                    raise
        tmp = work / "tmp"
        tmp.mkdir(mode=0o700)
        tmp.chmod(0o1777)
        if uid is None or gid is None:
            return
        os.chown(tmp, uid, gid)
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)

    @staticmethod
    async def _reap(process: asyncio.subprocess.Process) -> None:
        await process.wait()

    async def delete(self, job_id: str, name: str) -> None:
        for state in self.state_dir.glob(f"{job_id}/*/{name}.json"):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(state.read_text("utf-8"))
                if _alive(record):
                    await self._stop(record)
                dirs = tuple(record.get("cgroups", ()))
                await asyncio.to_thread(cgroups.kill, dirs)
                await asyncio.to_thread(cgroups.remove, dirs)
                if record.get("work"):
                    await asyncio.to_thread(remove_tree, str(record["work"]))
            for leftover in state.parent.glob(f"{name}.*"):  # exits and plans of every start
                leftover.unlink(missing_ok=True)
            state.unlink(missing_ok=True)
        job_dir = self.work_dir / job_id
        with contextlib.suppress(OSError):
            job_dir.rmdir()  # the last replica of the job gone
        await asyncio.to_thread(self._release_uid, job_id)

    def _release_uid(self, job_id: str) -> None:
        """Give back the job's uid claim once none of its replicas is recorded any more."""
        if self._claims is None or any(self.state_dir.glob(f"{job_id}/*/*.json")):
            return
        users = self.isolation.run_as
        if users is None or users.shared:
            return
        for path in self._claims.root.iterdir():
            with contextlib.suppress(OSError, ValueError):
                if path.read_text("utf-8").endswith(f" {job_id}"):
                    self._claims.release(int(path.name), job_id)

    async def _stop(self, record: Mapping[str, Any]) -> None:
        """SIGTERM the replica (its supervisor passes it to every process of the container);
        after the grace period, SIGKILL everything that is left."""
        pid = int(record["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if await self._ended(record, self.grace_seconds):
            return
        dirs = tuple(record.get("cgroups", ()))
        if dirs:
            await asyncio.to_thread(cgroups.kill, dirs)
        else:
            # The supervisor's children: the namespace's init (killing it ends the namespace)
            # or, as a subreaper, every descendant of the command.
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
        if await self._ended(record, 2.0):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    @staticmethod
    async def _ended(record: Mapping[str, Any], within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if not _alive(record):
                return True
            await asyncio.sleep(0.05)
        return not _alive(record)

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
                record = json.loads(state.read_text("utf-8"))
                if not _exit_file(state, record).exists() and _alive(record):
                    return True
        return False

    async def close(self) -> None:
        """Stop reaping; replicas keep running and are adopted by the next gateway."""
        for task in list(self._children):
            task.cancel()
        await asyncio.gather(*self._children, return_exceptions=True)
        if self.isolation.cgroups is not None:
            # The data directory's cgroup parents, when no replica is left in them.
            cgroups.remove([str(parent) for _, parent in self.isolation.cgroups.parents], timeout=0)


def _exit_file(state: Path, record: Mapping[str, Any]) -> Path:
    """Where the supervisor of the recorded start writes the replica's exit status."""
    return Path(record["exit"]) if record.get("exit") else state.with_suffix(".exit")


def _open_log(path: Path) -> Any:
    """The replica's log, for appending; only the gateway's user may read it (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "ab")


def _own_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid{os.geteuid()}"


def _read_exit(path: Path) -> int | None:
    try:
        return int(path.read_text("utf-8").strip())
    except (OSError, ValueError):
        return None
