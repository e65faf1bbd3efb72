"""Simulated replicas for the static backend: jobs run through their whole lifecycle, no process.

With ``MUSTER_SIMULATE_RUNS`` the static backend runs each replica here instead of planning
admissions that nothing runs: a replica "runs" from its creation for as long as its command
says, then exits, and the reconciler drives the job through running to its end exactly as it
does with real processes or pods. Benchmarks (``bench/churn.py``) and demos use it to replay
workloads at a scale no machine could run.

What a replica's command (``command`` then ``args``) means:

- ``sleep N`` (also ``sh -c "sleep N"``): exits 0 after N seconds (N a decimal number);
- ``true`` / ``false``: exits 0 / 1 at once;
- anything else: runs until it is deleted.

A replica whose node is NotReady or gone (as the inventory says) is reported on a lost node, so
node failures take the same path as on Kubernetes.

Invariants: every method is idempotent (``Runtime``); a start and an exit are reported to the
``on_change`` callbacks as they happen, on the event loop, never found by polling; a replica that
is deleted never exits afterwards; nothing here starts a process or touches the file system.
"""

from __future__ import annotations

import asyncio
import math
import re
import shlex
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from gateway.backends.base import Gang, Inventory, PodStatus, PodWatchers
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.lifecycle.decisions import ReplicaPhase
from gateway.domain.problems import FieldProblem

_SLEEP = re.compile(r"sleep\s+(\d+(?:\.\d*)?|\.\d+)")


def run_seconds(argv: tuple[str, ...]) -> tuple[float, int] | None:
    """How long a replica with this command runs and the code it exits with; None: until it
    is deleted (see the module docstring)."""
    words = list(argv)
    if len(words) == 3 and words[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and words[1] == "-c":
        try:
            words = shlex.split(words[2])
        except ValueError:  # unbalanced quotes: no command this runner knows
            return None
    line = " ".join(words)
    if line in ("true", "/bin/true"):
        return 0.0, 0
    if line in ("false", "/bin/false"):
        return 0.0, 1
    match = _SLEEP.fullmatch(line)
    if match is None or not math.isfinite(seconds := float(match[1])):
        return None
    return seconds, 0


@dataclass(kw_only=True, slots=True)
class _Replica:
    attempt: int
    node: str
    phase: ReplicaPhase
    exit_code: int | None = None
    timer: asyncio.TimerHandle | None = None


class SimulatedRuntime(PodWatchers):
    """A ``Runtime`` whose replicas are timers (see the module docstring)."""

    def __init__(self, inventory: Inventory | None = None) -> None:
        """``inventory``: where a replica learns that its node went NotReady or away (it is
        then reported on a lost node, as a pod is); without one, nodes never fail."""
        super().__init__()
        self._inventory = inventory
        self._replicas: dict[tuple[str, str], _Replica] = {}
        # The pod names of each job with a replica here (what ``remove`` forgets).
        self._by_job: dict[str, set[str]] = {}

    async def observe(self) -> Mapping[tuple[str, str], PodStatus]:
        ready = None
        if self._inventory is not None:
            ready = {node.name for node in await self._inventory.nodes() if node.ready}
        return {
            key: PodStatus(
                job_id=key[0],
                name=key[1],
                attempt=replica.attempt,
                phase=replica.phase,
                exit_code=replica.exit_code,
                node_ready=ready is None or replica.node in ready,
            )
            for key, replica in self._replicas.items()
        }

    async def create(self, gang: Gang, names: tuple[str, ...]) -> None:
        loop = asyncio.get_running_loop()
        started = False
        for name in names:
            key = (gang.job_id, name)
            existing = self._replicas.get(key)
            if existing is not None and existing.attempt == gang.attempt:
                continue
            self._forget(key)
            node = next((p.node for p in gang.placements if p.pod_name == name), "")
            replica = self._replicas[key] = _Replica(
                attempt=gang.attempt, node=node, phase=ReplicaPhase.RUNNING
            )
            self._by_job.setdefault(gang.job_id, set()).add(name)
            started = True
            runs = run_seconds(_argv(gang.spec, gang, name))
            if runs is not None:
                seconds, code = runs
                replica.timer = loop.call_later(seconds, self._exit, key, replica, code)
        if started:  # running now, as a pod's watch would say once its containers started
            loop.call_soon(self._changed)

    def _exit(self, key: tuple[str, str], replica: _Replica, code: int) -> None:
        if self._replicas.get(key) is not replica:
            return
        replica.phase = ReplicaPhase.SUCCEEDED if code == 0 else ReplicaPhase.FAILED
        replica.exit_code = code
        replica.timer = None
        self._changed()

    async def delete(self, job_id: str, name: str) -> None:
        self._forget((job_id, name))

    def _forget(self, key: tuple[str, str]) -> None:
        replica = self._replicas.pop(key, None)
        if replica is None:
            return
        if replica.timer is not None:
            replica.timer.cancel()
        names = self._by_job[key[0]]
        names.discard(key[1])
        if not names:
            del self._by_job[key[0]]

    async def logs(self, job_id: str, name: str, *, follow: bool) -> AsyncIterator[bytes]:
        if (job_id, name) in self._replicas:
            yield b"(a simulated replica writes no output)\n"

    async def close(self) -> None:
        for key in list(self._replicas):
            self._forget(key)

    def refusal(self, tenant: str) -> str | None:
        return None

    def unsupported(self, spec: JobSpec) -> list[FieldProblem]:
        """A simulated cluster runs no containers: it takes every pod field, as Kubernetes."""
        return []

    def health(self) -> str | None:
        return None

    async def remove(self, job_id: str, job_name: str, namespace: str) -> None:
        """Forget the replicas the job's clean_pod_policy kept, as Kubernetes collects them."""
        for name in list(self._by_job.get(job_id, ())):
            self._forget((job_id, name))


def _argv(spec: JobSpec, gang: Gang, pod_name: str) -> tuple[str, ...]:
    """The command and arguments of the replica a pod runs."""
    role = next((p.role for p in gang.placements if p.pod_name == pod_name), None)
    replica = None if role is None else spec.replica(role)
    return () if replica is None else (*replica.command, *replica.args)
