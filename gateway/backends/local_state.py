"""The local backend's pod records, and the runtime's index of them.

A pod's state lives in the data directory: ``local/<job>/<attempt>/<pod>.json`` (its record:
the supervisor's pid and start time, the start id, the job's uid, cgroups, work directory, exit
file and grace period, written by the daemon before the replica runs) and
``<pod>.<start>.exit`` (its exit status, written by its supervisor when the command ended).
These files are the truth; a restarted gateway or daemon reads them and adopts what runs.

``PodIndex`` keeps them in memory so that a reconciler pass costs what runs, not what ever ran
(finished pods are kept, as ``clean_pod_policy: Running`` asks): the records are read whole once
(``scan``) and again whenever the connection to the daemon was new, then kept by the daemon's
events, which tell every gateway of the data directory of each start and removal. A pod whose
exit status was read is final (a new start of it is a new record); for every other pod each
pass reads its exit file and checks its supervisor, so a lost event costs nothing but time.

Invariants: a pod is RUNNING only while its recorded supervisor (same pid and start time) lives;
a pod whose supervisor is gone without an exit status is MISSING on a lost node (its job is
handled as after a node loss), and only after its exit file was read once more, after the
supervisor was seen gone; events that come while a scan runs are applied after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from gateway.backends.base import PodStatus
from gateway.domain.lifecycle.decisions import ReplicaPhase

Record = dict[str, Any]
Key = tuple[str, str]  # (job id, pod name)


@dataclass(slots=True)
class Pod:
    """One pod record, as the index holds it."""

    path: Path
    record: Record
    final: PodStatus | None = None  # once its exit status was read: never changes again

    @property
    def key(self) -> Key:
        return (self.path.parent.parent.name, self.path.stem)

    @property
    def attempt(self) -> int:
        return int(self.path.parent.name)

    @property
    def start(self) -> str:
        return str(self.record.get("start") or "")

    @property
    def exit_file(self) -> Path:
        return exit_file(self.path, self.record)


@dataclass(frozen=True, slots=True)
class Look:
    """What one look at a running pod found: its exit code, else whether it runs."""

    pod: Pod
    exit_code: int | None
    alive: bool


def exit_file(path: Path, record: Mapping[str, Any]) -> Path:
    """Where the supervisor of the recorded start writes the replica's exit status."""
    return Path(record["exit"]) if record.get("exit") else path.with_suffix(".exit")


def read_exit(path: Path) -> int | None:
    try:
        return int(path.read_text("utf-8").strip())
    except (OSError, ValueError):
        return None


def alive(record: Mapping[str, Any]) -> bool:
    """Whether the recorded supervisor (the same process: pid and start time) still runs."""
    try:
        process = psutil.Process(int(record["pid"]))
        same = abs(process.create_time() - float(record["create_time"])) < 1.0
        return same and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, ValueError):
        return False


def grace_of(record: Mapping[str, Any], default: float) -> float:
    """The grace period (seconds) the recorded replica started with; ``default`` for a record
    written before replicas had one."""
    seconds = record.get("grace")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return float(seconds)
    return default


def read_records(state_dir: Path, pattern: str = "*/*/*.json") -> list[tuple[Path, Record]]:
    """Each pod's record with its path (plans and ports are not records)."""
    found = []
    for path in sorted(state_dir.glob(pattern)):
        if path.name == "ports.json" or path.name.endswith(".plan.json"):
            continue
        try:
            found.append((path, json.loads(path.read_text("utf-8"))))
        except (OSError, ValueError):
            continue
    return found


def look(pods: Iterable[Pod]) -> list[Look]:
    """Read the exit file of each pod and check its supervisor (file and process reads: run it
    off the event loop)."""
    looks = []
    for pod in pods:
        code = read_exit(pod.exit_file)
        running = code is None and alive(pod.record)
        if code is None and not running:
            code = read_exit(pod.exit_file)  # it may have written one as it ended
        looks.append(Look(pod=pod, exit_code=code, alive=running))
    return looks


def _status(pod: Pod, phase: ReplicaPhase, exit_code: int | None, node_ready: bool) -> PodStatus:
    job_id, name = pod.key
    return PodStatus(
        job_id=job_id,
        name=name,
        attempt=pod.attempt,
        phase=phase,
        exit_code=exit_code,
        node_ready=node_ready,
    )


def ended(pod: Pod, exit_code: int) -> PodStatus:
    phase = ReplicaPhase.SUCCEEDED if exit_code == 0 else ReplicaPhase.FAILED
    return _status(pod, phase, exit_code, True)


class PodIndex:
    """Every pod record of the data directory, in memory. See the module docstring."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.loaded = False
        self._pods: dict[Path, Pod] = {}
        self._running: dict[Path, Pod] = {}  # the pods whose exit status has not been read
        self._held: list[tuple[Path, Record | None, str]] | None = None

    def scan(self) -> dict[Path, Pod]:
        """Read every record and the exit status of each (file reads: run it off the loop)."""
        pods = {}
        for path, record in read_records(self.state_dir):
            pod = Pod(path=path, record=record)
            code = read_exit(pod.exit_file)
            if code is not None:
                pod.final = ended(pod, code)
            pods[path] = pod
        return pods

    def hold(self) -> None:
        """A scan begins: changes heard from now on are applied after it (``install``)."""
        self._held = []

    def install(self, pods: dict[Path, Pod]) -> None:
        held, self._held = self._held or [], None
        self._pods = pods
        self._running = {path: pod for path, pod in pods.items() if pod.final is None}
        self.loaded = True
        for path, record, start in held:
            self._change(path, record, start)

    def forget_all(self) -> None:
        """The daemon's events stopped: read everything afresh at the next look."""
        self.loaded = False

    def put(self, path: Path, record: Record) -> None:
        """A start, with its record (a new start of a pod replaces the last one's)."""
        self._change(path, record, str(record.get("start") or ""))

    def drop(self, path: Path, start: str) -> None:
        """A removal: the pod's state is gone (if ``start`` is still the recorded start)."""
        self._change(path, None, start)

    def _change(self, path: Path, record: Record | None, start: str) -> None:
        if self._held is not None:
            self._held.append((path, record, start))
            return
        known = self._pods.get(path)
        if record is not None:
            if known is None or known.start != start:
                self._pods[path] = self._running[path] = Pod(path=path, record=record)
        elif known is not None and known.start == start:
            del self._pods[path]
            self._running.pop(path, None)

    def get(self, path: Path) -> Pod | None:
        return self._pods.get(path)

    def running(self) -> list[Pod]:
        """The pods whose exit status has not been read yet."""
        return list(self._running.values())

    def records_of(self, jobs: Iterable[str]) -> dict[str, list[Record]]:
        """The records of these jobs' pods, every attempt, by job."""
        wanted = set(jobs)
        found: dict[str, list[Record]] = {job: [] for job in wanted}
        for pod in self._pods.values():
            if pod.key[0] in wanted:
                found[pod.key[0]].append(pod.record)
        return found

    def statuses(self, looks: Iterable[Look]) -> dict[Key, PodStatus]:
        """Every pod's status: the final ones as known, the others as just looked at. Of two
        records of one pod name (two attempts), the later attempt's."""
        seen: dict[Path, PodStatus] = {}
        for found in looks:
            pod = found.pod
            if self._pods.get(pod.path) is not pod:
                continue  # replaced or removed while it was looked at
            if found.exit_code is not None:
                pod.final = ended(pod, found.exit_code)
                self._running.pop(pod.path, None)
            elif found.alive:
                seen[pod.path] = _status(pod, ReplicaPhase.RUNNING, None, True)
            else:
                # Gone without a word, like a pod on a node that vanished.
                seen[pod.path] = _status(pod, ReplicaPhase.MISSING, None, False)
        result: dict[Key, PodStatus] = {}
        for pod in self._pods.values():
            status = pod.final or seen.get(pod.path)
            if status is None:
                continue  # started after the look: the next one sees it
            key = (status.job_id, status.name)
            other = result.get(key)
            if other is None or other.attempt <= status.attempt:
                result[key] = status
        return result

    def uids_in_use(self) -> dict[str, int]:
        """Job id -> uid, of every job with a replica whose exit has not been read."""
        in_use = {}
        for pod in self._running.values():
            uid = pod.record.get("uid")
            if uid is not None:
                in_use[pod.key[0]] = int(uid)
        return in_use
