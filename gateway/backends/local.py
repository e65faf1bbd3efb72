"""The local backend: this machine is one node, and replicas run as processes on it.

The node's CPUs, memory and GPUs are read from the machine, each overridable in settings.
Every replica runs under a supervisor of the data directory's supervisor daemon (``daemon``,
started by the first gateway that needs it, and outliving it), contained as ``sandbox`` decided
(its own user, PID namespace and cgroup where the machine allows), with the same environment
contract as on Kubernetes (TF_CONFIG with 127.0.0.1 and a free port per replica, PyTorch ranks,
CUDA_VISIBLE_DEVICES from the GPU plan, thread variables) and nothing of the gateway's. The
image is recorded and not used: the replica's command runs on this machine.

Of a replica's pod fields it honours plain env, ``working_dir`` (where the command starts) and
emptyDir volumes (a private directory per replica start, or a tmpfs for medium Memory, mounted at
their mountPath only where replicas have mount namespaces of their own: ``supervisor``); a submit
with any other is refused with 422 at the field (``unsupported``, from
``gateway.domain.jobs.policy.process_unsupported``), and a replica of a job written elsewhere
that has one is not started, the reason in its log.

State lives under the data directory (0700, unreachable by jobs), so a restarted gateway adopts
what is still running: the pod records and exit files of ``local_state``, ``ports.json`` (the
gang's ports) and ``logs/<job>/<pod>.log`` (0600). A replica works in ``<work dir>/<job>/<pod>``
(MUSTER_LOCAL_WORK_DIR, outside the data directory), made afresh for each start and removed when
it ends.

Exits are pushed: the daemon tells the runtime as soon as a replica's exit status is recorded,
and the runtime calls its ``on_change`` callbacks (the reconciler's wake), so an exit is acted
on within milliseconds, not at the next tick. The exit files stay the truth ``observe`` reads.

Stopping: a deleted replica gets SIGTERM, then SIGKILL once its grace period is over. The grace
is decided as the replica starts (``TerminationGrace``: its spec's, else
MUSTER_TERMINATION_GRACE_SECONDS, never above MUSTER_MAX_TERMINATION_GRACE_SECONDS) and kept in
its pod record, so ``delete``, which has only the pod's name, gives it that grace, also from a
gateway started since. ``delete`` returns once the replica is gone: within its grace period plus
``STOP_MARGIN_SECONDS``.

Invariants: a pod is RUNNING only while the recorded supervisor (same pid and start time) lives;
a pod whose supervisor vanished without an exit status is reported on a lost node, so its job is
handled as after a node loss; deleting a pod stops every process of its container (SIGTERM, then
SIGKILL after its grace period) before its state is removed; cgroups and work directories that
no pod record claims are removed when the runtime first looks (listed before the records are
read, so nothing of a start in flight is taken for an orphan).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from gateway.backends import cgroups
from gateway.backends.base import Gang, NodeWatchers, PodStatus, PodWatchers
from gateway.backends.daemon_client import DaemonLink, Event
from gateway.backends.local_state import (
    Pod,
    PodIndex,
    Record,
    alive,
    exit_file,
    grace_of,
    look,
    read_exit,
    read_records,
)
from gateway.backends.replica import remove_tree
from gateway.backends.sandbox import (
    Isolation,
    UidClaims,
    check_reachable,
    choose_uid,
    claim_work_dir,
    instance_name,
    process_env,
)
from gateway.domain.jobs.pod_fields import PodFields, parsed
from gateway.domain.jobs.policy import process_unsupported
from gateway.domain.jobs.spec import JobSpec, TerminationGrace
from gateway.domain.manifests.environment import Address, ReplicaKey, local_addresses, replica_env
from gateway.domain.problems import FieldProblem, pointer
from gateway.domain.resources import QuantityError, memory_bytes
from gateway.domain.scheduling.nodes import GpuMode, Node
from gateway.domain.scheduling.queueing import Placement
from gateway.errors import ConfigError
from gateway.settings import Settings
from gateway.waits import within

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


class LocalInventory(NodeWatchers):
    """This machine, one node (it never changes while the gateway runs)."""

    def __init__(self, node: Node) -> None:
        super().__init__()
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


def _private_dir(path: Path, mode: int = 0o700) -> None:
    """Make ``path`` (and missing parents, private too) and give it ``mode`` even if it existed
    with a looser one (an install older than these rules)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    path.chmod(mode)


#: Bytes of a replica's log file before it is rotated (the part before kept as ``.1``).
LOG_BYTES = 100 * 2**20
#: How long a stop may take beyond the replica's grace period before ``delete`` gives up on this
#: pass (the daemon kills the container at the grace, and its supervisor two seconds later).
STOP_MARGIN_SECONDS = 10.0


class LocalRuntime(PodWatchers):
    """Replicas as contained processes on this machine. See the module docstring."""

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
        grace: TerminationGrace | None = None,
    ) -> None:
        """``grace``: the grace period of a replica whose spec gives none, and the cap."""
        super().__init__()
        self.data_dir = data_dir
        self.state_dir = data_dir / "local"
        self.log_dir = data_dir / "logs"
        self.work_dir = work_dir
        self.isolation = isolation
        self.path = path
        self.max_pids = max_pids
        self.log_bytes = log_bytes
        self.hide_files = tuple(str(p) for p in hide_files if not p.is_relative_to(data_dir))
        self.grace = grace if grace is not None else TerminationGrace()
        self._uids = asyncio.Lock()
        # Job -> the uid this runtime claimed for it, until its replicas are all over.
        self._claimed: dict[str, int] = {}
        self._inherited: list[tuple[int, str]] = []  # found by the first sweep, in a thread
        self._reading = asyncio.Lock()
        self._swept = False
        self._index = PodIndex(self.state_dir)
        self._daemon = DaemonLink(self.state_dir, on_event=self._heard, on_lost=self._lost)
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
        for log in (*self.log_dir.glob("*/*.log"), *self.log_dir.glob("*/*.log.1")):
            with contextlib.suppress(OSError):
                log.chmod(0o600)
                log.parent.chmod(0o700)

    def refusal(self, tenant: str) -> str | None:
        """Why ``tenant``'s jobs may not run here (an unisolated gateway), or None."""
        return self.isolation.refusal(tenant)

    def health(self) -> str | None:
        """This machine's processes are always known (the daemon is started on demand)."""
        return None

    async def remove(self, job_id: str, job_name: str, namespace: str) -> None:
        """Forget the replicas the job's clean_pod_policy kept (their records and work
        directories), as Kubernetes collects a finished job's pods; their logs stay readable."""
        await self._delete(job_id, "*")
        await asyncio.to_thread(_remove_job_state, self.state_dir / job_id)

    def unsupported(self, spec: JobSpec) -> list[FieldProblem]:
        """Replicas run as processes: of the pod fields, only a working directory and emptyDir
        volumes are honoured, and the volumes mounted only where each replica has a mount
        namespace of its own (``process_unsupported``)."""
        return process_unsupported(spec, mounts=self.isolation.namespaces)

    def _pod_dir(self, job_id: str, attempt: int) -> Path:
        return self.state_dir / job_id / str(attempt)

    def log_path(self, job_id: str, name: str) -> Path:
        return self.log_dir / job_id / f"{name}.log"

    # What the daemon says --------------------------------------------------------------------

    def _heard(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "started":
            self._index.put(Path(event["record"]), event["fields"])
        elif kind == "removed":
            self._index.drop(Path(event["record"]), str(event["start"]))
        elif kind == "exited":
            self._changed()

    def _lost(self) -> None:
        """The daemon went away: read every record afresh, and look at once (a new daemon is
        started by the next look)."""
        self._index.forget_all()
        self._changed()

    async def _ready(self) -> None:
        """Connected to the daemon, with every record read since the connection began."""
        async with self._reading:
            if await self._daemon.connect() or not self._index.loaded:
                self._index.hold()
                try:
                    pods = await asyncio.to_thread(self._read_all)
                except BaseException:
                    self._index.install({})
                    self._index.forget_all()
                    raise
                self._index.install(pods)
                inherited, self._inherited = self._inherited, []
                for uid, job in inherited:
                    self._claimed.setdefault(job, uid)

    def _read_all(self) -> dict[Path, Pod]:
        """Every record; the first time, what no record claims is removed too."""
        if self._swept:
            return self._index.scan()
        # Listed before the records are read: a start after the listing is no candidate, and
        # one before it wrote its record before making its cgroup and work directory.
        cgroup_dirs = self.isolation.cgroups.orphans(()) if self.isolation.cgroups else []
        work_dirs = _work_dirs(self.work_dir)
        pods = self._index.scan()
        records = [pod.record for pod in pods.values()]
        if self._claims is not None:
            # Claims of jobs a gateway of this data directory ran before: released as soon as
            # their replicas are over, like this runtime's own.
            running = {pod.key[0] for pod in pods.values() if pod.final is None}
            self._inherited = [(u, job) for u, job in self._claims.held() if job not in running]
        live_cgroups = {Path(d).name for r in records for d in r.get("cgroups") or ()}
        for dirs in cgroup_dirs:
            if Path(dirs[0]).name not in live_cgroups:
                cgroups.kill(dirs)
                cgroups.remove(dirs)
        live_work = {str(r["work"]) for r in records if r.get("work")}
        for pod_dir in work_dirs:
            if str(pod_dir) not in live_work:
                remove_tree(str(pod_dir))
                with contextlib.suppress(OSError):
                    pod_dir.parent.rmdir()
        self._swept = True
        return pods

    # The Runtime protocol ----------------------------------------------------------------------

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]:
        await self._ready()
        looks = await asyncio.to_thread(look, self._index.running())
        statuses = self._index.statuses(looks)
        if self._claimed:
            await self._release_finished()
        return statuses

    async def _release_finished(self) -> None:
        """Give back the uid claims of jobs whose replicas are all over: each exit read and each
        supervisor gone (it clears the uid's keyrings and work directory after the exit), so
        the next job given the uid finds nothing of this one. Finished pods are kept (a job's
        ``clean_pod_policy``), so waiting for their deletion would hold uids for ever."""
        async with self._uids:
            in_use = self._index.uids_in_use()
            done = [job for job in self._claimed if job not in in_use]
            if not done or self._claims is None:
                return
            records = self._index.records_of(done)
            claims = self._claims

            def release() -> list[str]:
                released = []
                for job in done:
                    if not any(alive(record) for record in records[job]):
                        claims.release(self._claimed[job], job)
                        released.append(job)
                return released

            for job in await asyncio.to_thread(release):
                del self._claimed[job]

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
        await self._ready()
        addresses = local_addresses(gang.spec, self._ports(gang))
        by_name = {p.pod_name: p for p in gang.placements}
        starts = [by_name[name] for name in names if not self._running(gang, name)]
        if not starts:
            return
        uid = await self._uid_for(gang.job_id)
        await asyncio.gather(*(self._start(gang, p, addresses, uid) for p in starts))

    def _running(self, gang: Gang, name: str) -> bool:
        """Whether this attempt's replica ``name`` runs already (creating is idempotent)."""
        pod = self._index.get(self._pod_dir(gang.job_id, gang.attempt) / f"{name}.json")
        if pod is None or pod.final is not None:
            return False
        return read_exit(pod.exit_file) is None and alive(pod.record)

    async def _uid_for(self, job_id: str) -> int | None:
        """The job's uid: the one its running replicas have, else a free one of the range that
        no other gateway of this machine has given a live job (``UidClaims``)."""
        users = self.isolation.run_as
        if users is None:
            return None
        async with self._uids:
            in_use = self._index.uids_in_use()
            if job_id in in_use:
                return in_use[job_id]
            for attempt in range(users.last - users.first + 1):
                uid = choose_uid(job_id, users, in_use)
                if self._claims is None or users.shared:
                    return uid
                if await asyncio.to_thread(self._claims.claim, uid, job_id):
                    self._claimed[job_id] = uid
                    return uid
                in_use[f"another gateway's {attempt}"] = uid
        raise RuntimeError(f"every uid of {users.first}-{users.last} is in use")

    async def _start(
        self,
        gang: Gang,
        placement: Placement,
        addresses: Mapping[ReplicaKey, Address],
        uid: int | None,
    ) -> None:
        name = placement.pod_name
        path = self._pod_dir(gang.job_id, gang.attempt) / f"{name}.json"
        replica = gang.spec.replica(placement.role)
        assert replica is not None
        command = [*replica.command, *replica.args]
        start = secrets.token_hex(4)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        banner = f"--- muster: starting {name} (attempt {gang.attempt}) at {stamp}\n"
        refusal = self.isolation.refusal(gang.spec.tenant)
        if refusal is None:
            # A job written under another backend or gateway: what this one cannot honour
            # stops the replica, never runs it without.
            prefix = pointer("replicas", placement.role) + "/"
            refusal = next(
                (
                    f"{p.pointer}: {p.detail}"
                    for p in self.unsupported(gang.spec)
                    if p.pointer.startswith(prefix)
                ),
                None,
            )
        if refusal is not None or not command:
            why = (
                f"muster: not started: {refusal}\n"
                if refusal
                else "muster: the local backend runs a replica's command; this replica has "
                "none (the image is not used on this machine)\n"
            )
            record = await asyncio.to_thread(
                self._not_started, path, start, banner + why, 126 if refusal else 127
            )
            self._index.put(path, record)
            await self._daemon.request("recorded", record=str(path), fields=record)
            return
        plan = self._plan(gang, placement, addresses, command, uid, start)
        needed = {"working_dir"} if plan["working_dir"] is not None else set()
        needed |= {"mounts"} if plan["mounts"] else set()
        missing = sorted(needed - await self._daemon.features()) if needed else []
        if missing:
            # A daemon started by an older gateway would run the replica without them.
            why = (
                f"muster: not started: the local supervisor daemon predates {', '.join(missing)}; "
                "it leaves once no gateway is connected and no replica runs\n"
            )
            record = await asyncio.to_thread(self._not_started, path, start, banner + why, 126)
            self._index.put(path, record)
            await self._daemon.request("recorded", record=str(path), fields=record)
            return
        plan.update(
            record=str(path),
            banner=banner,
            log=str(self.log_path(gang.job_id, name)),
            grace=self.grace.of(replica),  # kept in the record, for delete
        )
        answer = await self._daemon.request("start", plan=plan)
        self._index.put(path, answer["record"])

    def _not_started(self, path: Path, start: str, text: str, code: int) -> Record:
        """The record and exit status of a replica that is not run, and why, in its log."""
        log = self.log_path(path.parent.parent.name, path.stem)
        _private_dir(log.parent)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as out:
            out.write(text.encode())
        _private_dir(path.parent)
        exit_path = path.parent / f"{path.stem}.{start}.exit"
        exit_path.write_text(str(code), "utf-8")
        record: Record = {"pid": 0, "create_time": 0, "start": start, "exit": str(exit_path)}
        path.write_text(json.dumps(record), "utf-8")
        return record

    def _plan(
        self,
        gang: Gang,
        placement: Placement,
        addresses: Mapping[ReplicaKey, Address],
        command: list[str],
        uid: int | None,
        start: str,
    ) -> dict[str, Any]:
        """The launch plan of one start of a replica (``replica.run`` reads it).

        Every start has its own id: its cgroup, work directory and exit status are named with
        it, so a supervisor of an earlier start never touches what belongs to this one.
        """
        isolation = self.isolation
        gid = None
        if uid is not None and isolation.run_as is not None:
            gid = isolation.run_as.gid if isolation.run_as.gid is not None else uid
        work = self.work_dir / gang.job_id / f"{placement.pod_name}.{start}"
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
        cgroup: dict[str, Any] | None = None
        dirs: tuple[str, ...] = ()
        if isolation.cgroups is not None:
            name = f"{gang.job_id}.{gang.attempt}.{placement.pod_name}.{start}"
            dirs = isolation.cgroups.dirs(name)
            cgroup = {
                "version": isolation.cgroups.version,
                "parents": [[c, str(p)] for c, p in isolation.cgroups.parents],
                "name": name,
                "memory_bytes": placement.memory_bytes,
                "cpu_millis": placement.cpu_millis,
                "pids": self.max_pids,
            }
        pod_dir = self._pod_dir(gang.job_id, gang.attempt)
        replica = gang.spec.replica(placement.role)
        pod = replica.pod if replica is not None else PodFields()
        volumes, mounts = _empty_dirs(pod, placement.memory_bytes)
        return {
            "start": start,
            "command": command,
            "env": env,
            "cwd": str(work),
            "tmp": str(work / "tmp"),
            "working_dir": pod.working_dir,
            "volumes": volumes,
            "mounts": mounts,
            "uid": uid,
            "gid": gid,
            "namespaces": isolation.namespaces,
            "cgroup": cgroup,
            "cgroups": list(dirs),
            "memory_bytes": placement.memory_bytes,
            "log_bytes": self.log_bytes,
            "hide_dirs": [str(self.data_dir)] if isolation.namespaces else [],
            "hide_files": list(self.hide_files) if isolation.namespaces else [],
            "exit": str(pod_dir / f"{placement.pod_name}.{start}.exit"),
        }

    async def delete(self, job_id: str, name: str) -> None:
        await self._delete(job_id, name)

    async def _delete(self, job_id: str, name: str) -> None:
        """Stop and forget the pod ``name`` of the job (``*``: every pod it has)."""
        await self._ready()
        # The files are the truth: every attempt's record of the pod.
        for path, record in await asyncio.to_thread(
            read_records, self.state_dir, f"{job_id}/*/{name}.json"
        ):
            start = str(record.get("start") or path)
            if read_exit(exit_file(path, record)) is None and alive(record):
                # The grace the replica started with (a record older than grace periods has
                # none: the default's).
                grace = grace_of(record, self.grace.default_seconds)
                await within(
                    self._daemon.request("stop", start=start, grace=grace),
                    grace + STOP_MARGIN_SECONDS,
                )
            await asyncio.to_thread(_remove_pod, path, record)
            self._index.drop(path, start)
            await self._daemon.request("forget", record=str(path), start=start)
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

    async def logs(self, job_id: str, name: str, *, follow: bool) -> AsyncIterator[bytes]:
        """The pod's log: its rotated part (``.1``) first, then the current file; followed
        across rotations. The current file is opened first, so a rotation while ``.1`` is read
        loses nothing (the file held is the one that became ``.1``, read next, whole); after a
        rotation the file held is read to its end before the new one is opened (the supervisor
        never writes to a file it has renamed)."""
        path = self.log_path(job_id, name)
        older = path.with_name(path.name + ".1")
        try:
            log = path.open("rb")
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(FileNotFoundError), older.open("rb") as rotated:
                if os.fstat(rotated.fileno()).st_ino != os.fstat(log.fileno()).st_ino:
                    while chunk := rotated.read(64 * 1024):
                        yield chunk
            while True:
                chunk = log.read(64 * 1024)
                if chunk:
                    yield chunk
                    continue
                if _rotated(path, log):
                    while chunk := log.read(64 * 1024):  # what came before the rename
                        yield chunk
                    log.close()
                    log = path.open("rb")
                    continue
                if not follow or not self._writes_log(job_id, name):
                    return
                await asyncio.sleep(0.2)
        finally:
            log.close()

    def _writes_log(self, job_id: str, name: str) -> bool:
        """Whether a replica of the pod still runs (its log may grow)."""
        for path, record in read_records(self.state_dir, f"{job_id}/*/{name}.json"):
            if read_exit(exit_file(path, record)) is None and alive(record):
                return True
        return False

    async def close(self) -> None:
        """Disconnect from the daemon; replicas keep running and are adopted by the next
        gateway."""
        await self._daemon.close()
        if self.isolation.cgroups is not None:
            # The data directory's cgroup parents, when no replica is left in them.
            cgroups.remove([str(parent) for _, parent in self.isolation.cgroups.parents], timeout=0)


def _rotated(path: Path, reading: BinaryIO) -> bool:
    """Whether the log at ``path`` is another file than the one being read (it was rotated)."""
    try:
        return path.stat().st_ino != os.fstat(reading.fileno()).st_ino
    except FileNotFoundError:
        return False


def _remove_job_state(job_dir: Path) -> None:
    """Remove a job's state directory once no pod record is left in it: what remains is its
    attempts' ``ports.json``, which only its replicas read."""
    with contextlib.suppress(OSError):
        for attempt in job_dir.iterdir():
            if any(path.name != "ports.json" for path in attempt.iterdir()):
                return
        for attempt in job_dir.iterdir():
            (attempt / "ports.json").unlink(missing_ok=True)
            attempt.rmdir()
        job_dir.rmdir()


def _remove_pod(path: Path, record: Mapping[str, Any]) -> None:
    """Remove what is left of a stopped pod: its cgroups (killing any process still in them),
    its work directory, and its state files of every start."""
    dirs = tuple(record.get("cgroups") or ())
    cgroups.kill(dirs)
    cgroups.remove(dirs)
    if record.get("work"):
        remove_tree(str(record["work"]))
    for leftover in path.parent.glob(f"{path.stem}.*"):  # exits and plans of every start
        leftover.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _empty_dirs(pod: PodFields, memory: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The plan's emptyDir volumes (name, medium, and for medium Memory the tmpfs size: the
    sizeLimit, never above the replica's memory, which is also the size without one) and their
    mounts (volume, path, read_only), in the order given. ``unsupported`` refused every other
    volume and mount before the job was written."""
    volumes: list[dict[str, Any]] = []
    for text in pod.volumes:
        volume = parsed(text)
        source = volume.get("emptyDir")
        if source is None:
            continue
        medium = source.get("medium") or ""
        size = None
        if medium == "Memory":
            size = memory
            with contextlib.suppress(QuantityError):
                limit = memory_bytes(source.get("sizeLimit", 0))
                if limit > 0:
                    size = min(limit, memory) if memory > 0 else limit
        volumes.append({"name": volume["name"], "medium": medium, "size_bytes": size})
    names = {v["name"] for v in volumes}
    mounts = [
        {"volume": m["name"], "path": m["mountPath"], "read_only": bool(m.get("readOnly"))}
        for m in map(parsed, pod.volume_mounts)
        if m["name"] in names
    ]
    return volumes, mounts


def _work_dirs(work_dir: Path) -> list[Path]:
    """Every replica work directory under the work root (``<job>/<pod>.<start>``)."""
    found: list[Path] = []
    with contextlib.suppress(OSError):
        for job_dir in work_dir.iterdir():
            if job_dir.is_dir():
                with contextlib.suppress(OSError):
                    found.extend(job_dir.iterdir())
    return found


def _own_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid{os.geteuid()}"
