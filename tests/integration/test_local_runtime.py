"""The local runtime over its supervisor daemon (``gateway.backends.daemon``), driven directly.

Each test drives ``LocalRuntime`` as the reconciler does (``create``, ``observe``, ``delete``,
``on_change``) on real replicas: as root they are contained as in production (a uid of their
own, PID and mount namespaces, cgroups), some tests run them unisolated as well. Nothing here
synchronises by sleeping: a test waits for the runtime's ``on_change`` callback or for a process
to end, and polls a condition against a deadline only where no event exists (a replica's own
output, a file written while no daemon runs).

What is proven: an exit reaches the gateway as an event, after its status is recorded; every
gateway of a data directory shares one daemon and hears every change; the daemon outlives
gateways, replicas outlive the daemon, and a new daemon adopts them; deleting stops a replica's
whole tree, also when the daemon dies in the middle of it; a stopped replica gets SIGTERM and the
grace period of its own spec (kept in its record, so a restarted gateway honours it) before
SIGKILL; starting is idempotent; the daemon and the replicas hold nothing of the gateway and a
replica reaches nothing of the daemon.
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
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from gateway.backends import cgroups
from gateway.backends.base import Gang
from gateway.backends.daemon import IDLE_SECONDS, PID_FILE, READY, RUNNING, SOCKET
from gateway.backends.daemon_client import IMPORT_PATH
from gateway.backends.local import LocalRuntime
from gateway.backends.replica import PROCESS_NAME
from gateway.backends.sandbox import (
    DEFAULT_RUN_AS,
    Isolation,
    UidClaims,
    instance_name,
    probe_isolation,
)
from gateway.domain.jobs.spec import Framework, JobSpec, ReplicaSpec, TerminationGrace
from gateway.domain.lifecycle.decisions import ReplicaPhase
from gateway.domain.resources import Resources
from gateway.domain.scheduling.queueing import Placement
from tests.acceptance.local_helpers import DEAF, TIDY

#: As root, replicas run as other users: their directories must be reachable by them.
ROOT_BASE = Path("/var/lib/muster-tests")
DAEMON = "gateway.backends.daemon"
REPLICA_NAME = PROCESS_NAME.decode()
#: The longest any one wait may take: generous, since the machine is shared.
WAIT = 30.0
MIB = 2**20
CLAIMS = Path("/run/muster/uids")
CONTAINED = "contained"
UNISOLATED = "unisolated"
ENDED = (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED)


# Directories, runtimes and cleanup ------------------------------------------------------------


@dataclass
class Place:
    """One data directory with its work directory, a directory replicas and the test share, and
    everything the test started there."""

    base: Path
    isolation: Isolation
    runtimes: list[LocalRuntime] = field(default_factory=list)
    #: In the command line of every sleeper a test's replicas start: found and killed by it.
    marker: str = field(default_factory=lambda: f"3600.{secrets.randbelow(10**9):09d}")

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def shared(self) -> Path:
        return self.base / "shared"

    @property
    def state(self) -> Path:
        return self.data / "local"

    def runtime(self, *, grace: int = 1, track: bool = True) -> LocalRuntime:
        """A runtime (a gateway) of this data directory, whose replicas get ``grace`` seconds
        unless their spec says otherwise; closed after the test if ``track``."""
        made = LocalRuntime(
            self.data,
            work_dir=self.work,
            isolation=self.isolation,
            path="/usr/bin:/bin",
            grace=TerminationGrace(default_seconds=grace),
        )
        if track:
            self.runtimes.append(made)
        return made

    def release(self, job_id: str) -> None:
        """Let the replicas of ``job_id`` that wait for it end."""
        (self.shared / f"release-{job_id}").touch()

    def wait_for_release(self, job_id: str) -> str:
        """A shell line that waits until the test releases ``job_id``."""
        release = self.shared / f"release-{job_id}"
        return f"while [ ! -e {release} ]; do sleep 0.05; done"


@pytest.fixture(params=[CONTAINED])
async def place(request: pytest.FixtureRequest) -> AsyncIterator[Place]:
    """A fresh data directory; afterwards every runtime is closed and every process of the data
    directory (daemon, supervisors, replicas) is killed, its cgroups and uid claims removed."""
    base = _make_base()
    contained = request.param == CONTAINED and os.geteuid() == 0
    isolation = probe_isolation(
        DEFAULT_RUN_AS, ["*"], instance=instance_name(base / "data"), probe=contained
    )
    made = Place(base=base, isolation=isolation)
    try:
        yield made
    finally:
        for runtime in made.runtimes:
            with contextlib.suppress(Exception):
                await runtime.close()
        await asyncio.to_thread(_clean_up, made)


def _make_base() -> Path:
    parent = ROOT_BASE if os.geteuid() == 0 else Path(tempfile.gettempdir())
    parent.mkdir(mode=0o755, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="lr-", dir=parent))
    base.chmod(0o755)
    (base / "data").mkdir(mode=0o700)
    (base / "shared").mkdir(mode=0o755)
    return base


def _clean_up(place: Place) -> None:
    victims: dict[int, psutil.Process] = {}
    for process in [*supervision(place.state), *sleepers(place.marker)]:
        victims[process.pid] = process
        with contextlib.suppress(psutil.Error):
            for child in process.children(recursive=True):
                victims[child.pid] = child
    for process in victims.values():
        with contextlib.suppress(psutil.Error):
            process.kill()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in victims) and time.monotonic() < deadline:
        time.sleep(0.01)  # killed: only the kernel's part is left
    groups = place.isolation.cgroups
    if groups is not None:
        for dirs in groups.orphans(()):
            cgroups.kill(dirs)
            cgroups.remove(dirs)
        cgroups.remove([str(parent) for _, parent in groups.parents])
    tag = instance_name(place.data) + " "
    with contextlib.suppress(OSError):
        for claim in CLAIMS.iterdir():
            with contextlib.suppress(OSError):
                if claim.read_text("utf-8").startswith(tag):
                    claim.unlink()
    shutil.rmtree(place.base, ignore_errors=True)


# Processes -----------------------------------------------------------------------------------


def supervision(state: Path) -> list[psutil.Process]:
    """Every live process of the data directory's supervision: the daemon (and a launcher of
    one), the replicas' supervisors and their namespaces' inits (forks of the daemon, so with
    its command line)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status", "ppid", "name"]):
        cmdline = process.info["cmdline"] or []
        ours = DAEMON in cmdline and str(state) in cmdline
        if ours and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def daemons(state: Path) -> list[psutil.Process]:
    """The data directory's daemons (a fork not yet named a replica's has the daemon as its
    parent, so is not one)."""
    found = supervision(state)
    pids = {process.pid for process in found}
    return [p for p in found if p.info["name"] != REPLICA_NAME and p.info["ppid"] not in pids]


def supervisors(state: Path) -> list[psutil.Process]:
    """The replicas' supervisors, one per replica (its namespace's init is a fork of it)."""
    named = [p for p in supervision(state) if p.info["name"] == REPLICA_NAME]
    pids = {process.pid for process in named}
    return [p for p in named if p.info["ppid"] not in pids]


def the_daemon(state: Path) -> int:
    """The pid of the one daemon of the data directory (its pid file names it)."""
    found = daemons(state)
    assert len(found) == 1, found
    assert int((state / PID_FILE).read_text().split()[0]) == found[0].pid
    return found[0].pid


def sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if marker in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> None:
    """Wait until ``pid`` ended (a zombie has ended)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        deadline = time.monotonic() + WAIT
        while process.status() != psutil.STATUS_ZOMBIE:
            try:
                process.wait(timeout=0.1)
                return
            except psutil.TimeoutExpired:
                assert time.monotonic() < deadline, f"process {pid} did not end"


# Jobs ----------------------------------------------------------------------------------------


def gang(
    job_id: str,
    script: str,
    *,
    count: int = 1,
    program: str = "/bin/sh",
    grace: int | None = None,
) -> Gang:
    """A one-role job whose replicas run ``script`` (a shell script, or with ``program``
    python3, a Python program), with the grace period ``grace`` (None: the runtime's)."""
    flag = "-c"
    replica = ReplicaSpec(
        role="worker",
        count=count,
        image="none",
        command=(program, flag, script),
        resources=Resources(cpu_millis=1000, memory_bytes=256 * MIB),
        termination_grace_period_seconds=grace,
    )
    spec = JobSpec(name=job_id, tenant="t", framework=Framework.GENERIC, replicas=(replica,))
    placements = tuple(
        Placement(
            pod_name=f"{job_id}-worker-{index}",
            role="worker",
            index=index,
            node="local",
            cpu_millis=1000,
            memory_bytes=256 * MIB,
        )
        for index in range(count)
    )
    return Gang(job_id=job_id, spec=spec, namespace="t", attempt=0, placements=placements)


def pod(one: Gang, index: int = 0) -> tuple[str, str]:
    return (one.job_id, one.placements[index].pod_name)


def names(one: Gang) -> tuple[str, ...]:
    return tuple(p.pod_name for p in one.placements)


def record_path(runtime: LocalRuntime, key: tuple[str, str]) -> Path:
    return runtime.state_dir / key[0] / "0" / f"{key[1]}.json"


def record(runtime: LocalRuntime, key: tuple[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = json.loads(record_path(runtime, key).read_text("utf-8"))
    return fields


class Changes:
    """The runtime's ``on_change`` calls, counted; ``probe`` (if given) runs in each call and
    what it returns is kept."""

    def __init__(self, runtime: LocalRuntime, probe: Callable[[], Any] | None = None) -> None:
        self.calls = 0
        self.seen: list[Any] = []
        self._probe = probe
        self._called = asyncio.Event()
        runtime.on_change(self._call)

    def _call(self) -> None:
        self.calls += 1
        if self._probe is not None:
            self.seen.append(self._probe())
        self._called.set()

    async def after(self, count: int) -> None:
        """Wait until the callback has been called more than ``count`` times."""
        async with asyncio.timeout(WAIT):
            while self.calls <= count:
                self._called.clear()
                await self._called.wait()


async def until(predicate: Callable[[], Any], what: str) -> Any:
    """Poll ``predicate`` until it holds, for conditions no event announces."""
    deadline = time.monotonic() + WAIT
    while not (value := await asyncio.to_thread(predicate)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return value


async def logged(runtime: LocalRuntime, key: tuple[str, str], text: str) -> None:
    """Wait until the replica wrote ``text`` (its own output: no event announces it)."""
    log = runtime.log_path(*key)
    await until(lambda: log.exists() and text in log.read_text("utf-8", "replace"), text)


async def state(
    runtime: LocalRuntime, key: tuple[str, str]
) -> tuple[ReplicaPhase, int | None] | None:
    """What one ``observe()`` says of the pod: its phase and exit code, or None."""
    status = (await runtime.observe()).get(key)
    return None if status is None else (status.phase, status.exit_code)


def exists(path: str | Path) -> bool:
    return Path(path).exists()


RUNNING_NOW = (ReplicaPhase.RUNNING, None)
SUCCEEDED = (ReplicaPhase.SUCCEEDED, 0)


def long_running(place: Place, job_id: str, *, spawn: bool = False) -> Gang:
    """A replica that says ``ready`` and runs until the test releases its job (with ``spawn``,
    with a sleeper child that must die with it)."""
    child = f"sleep {place.marker} & " if spawn else ""
    return gang(job_id, f"{child}echo ready; {place.wait_for_release(job_id)}; echo done")


# a. Exits are pushed -------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "ended"), [(0, ReplicaPhase.SUCCEEDED), (3, ReplicaPhase.FAILED)])
@pytest.mark.parametrize("place", [CONTAINED, UNISOLATED], indirect=True)
async def test_an_exit_is_pushed_after_its_status_is_recorded_and_observe_shows_it_at_once(
    place: Place, code: int, ended: ReplicaPhase
) -> None:
    runtime = place.runtime()
    one = gang("exits", f"sleep {place.marker} & echo spawned; exit {code}")
    key = pod(one)

    def probe() -> tuple[bool, bool]:
        # In the callback: is the exit status written, and did the child die with the replica?
        exit_file = Path(record(runtime, key)["exit"])
        return exit_file.exists(), bool(sleepers(place.marker))

    changes = Changes(runtime, probe)
    await runtime.create(one, names(one))
    await changes.after(0)  # no observe() and no tick: the exit event alone wakes this
    assert changes.seen[0] == (True, False)  # status recorded, child gone, then the event
    status = (await runtime.observe())[key]  # one look, right after the event
    assert (status.phase, status.exit_code) == (ended, code)
    assert "spawned" in runtime.log_path(*key).read_text()
    assert changes.calls == 1  # one exit, one call
    assert not sleepers(place.marker)


# b. Two gateways, one daemon -----------------------------------------------------------------


async def test_two_runtimes_of_one_data_dir_share_one_daemon_and_hear_each_others_exits(
    place: Place,
) -> None:
    first, second = place.runtime(), place.runtime()
    # Both find no daemon and start one at once: one is left, and both talk to it.
    await asyncio.gather(first.observe(), second.observe())
    daemon = the_daemon(place.state)
    heard = [Changes(first), Changes(second)]
    mine, theirs = long_running(place, "mine"), long_running(place, "theirs")
    await asyncio.gather(first.create(mine, names(mine)), second.create(theirs, names(theirs)))
    # Each learnt of the other's start from the daemon's event, without reading the records.
    for runtime in (first, second):
        statuses = await runtime.observe()
        assert {statuses[pod(mine)].phase, statuses[pod(theirs)].phase} == {ReplicaPhase.RUNNING}
    place.release("mine")
    place.release("theirs")
    for changes in heard:
        await changes.after(1)  # both exits, each heard by both runtimes
    for runtime in (first, second):
        statuses = await runtime.observe()
        assert statuses[pod(mine)].phase is ReplicaPhase.SUCCEEDED
        assert statuses[pod(theirs)].phase is ReplicaPhase.SUCCEEDED
    assert the_daemon(place.state) == daemon


def race_launchers(state: Path, count: int) -> list[list[str]]:
    """Start ``count`` daemons of ``state`` at once, as gateways do; what each said."""
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", DAEMON, str(state)],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": IMPORT_PATH},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for _ in range(count)
    ]
    return [launcher.communicate(timeout=WAIT)[0].split() for launcher in launchers]


async def test_launchers_racing_for_one_data_dir_leave_one_daemon(place: Place) -> None:
    place.runtime()  # makes the state directory
    said = await asyncio.to_thread(race_launchers, place.state, 4)
    ready = [words for words in said if words[0] == READY]
    assert len(ready) == 1, said
    assert all(words == [RUNNING] for words in said if words[0] != READY), said
    assert the_daemon(place.state) == int(ready[0][1])
    # A gateway uses the daemon that runs.
    runtime = place.runtime()
    await runtime.observe()
    assert the_daemon(place.state) == int(ready[0][1])


# c. The daemon outlives the gateway ----------------------------------------------------------


async def test_a_closed_runtime_leaves_the_daemon_and_replica_running_and_the_next_adopts_it(
    place: Place,
) -> None:
    first = place.runtime()
    one = long_running(place, "kept")
    await first.create(one, names(one))
    await logged(first, pod(one), "ready")
    daemon = the_daemon(place.state)
    supervisor = record(first, pod(one))["pid"]
    await first.close()  # the gateway goes away
    assert alive(daemon)
    assert alive(supervisor)
    second = place.runtime()
    changes = Changes(second)
    assert await state(second, pod(one)) == RUNNING_NOW
    assert the_daemon(place.state) == daemon  # the same daemon, not a new one
    place.release("kept")
    await changes.after(0)
    assert await state(second, pod(one)) == SUCCEEDED
    assert "done" in second.log_path(*pod(one)).read_text()


async def test_with_no_gateway_and_no_replica_the_daemon_leaves_and_a_new_one_starts_later(
    place: Place,
) -> None:
    runtime = place.runtime()
    await runtime.observe()
    daemon = the_daemon(place.state)
    await runtime.close()
    started = time.monotonic()
    await asyncio.to_thread(gone, daemon)
    assert time.monotonic() - started >= IDLE_SECONDS * 0.9
    assert not (place.state / SOCKET).exists()
    assert not (place.state / PID_FILE).exists()
    again = place.runtime()
    await again.observe()
    assert the_daemon(place.state) != daemon


# d. Replicas outlive the daemon --------------------------------------------------------------


async def kill_daemon(place: Place, runtimes: list[Changes]) -> int:
    """SIGKILL the daemon; wait until every runtime heard it go (its ``on_change`` runs)."""
    daemon = the_daemon(place.state)
    before = [changes.calls for changes in runtimes]
    os.kill(daemon, signal.SIGKILL)
    for changes, calls in zip(runtimes, before, strict=True):
        await changes.after(calls)
    await asyncio.to_thread(gone, daemon)
    return daemon


async def test_a_replica_ending_while_no_daemon_runs_records_its_exit_and_is_seen_after(
    place: Place,
) -> None:
    runtime = place.runtime()
    changes = Changes(runtime)
    one = long_running(place, "orphan", spawn=True)
    await runtime.create(one, names(one))
    await logged(runtime, pod(one), "ready")
    fields = record(runtime, pod(one))
    killed = await kill_daemon(place, [changes])
    assert alive(fields["pid"])  # the replica runs on without a daemon
    place.release("orphan")
    # No daemon, so no event: the exit file and the supervisor's end are all there is.
    await until(lambda: exists(fields["exit"]), "the exit status")
    await asyncio.to_thread(gone, fields["pid"])
    assert not exists(fields["work"])  # it cleaned up on its own
    assert not sleepers(place.marker)
    assert await state(runtime, pod(one)) == SUCCEEDED  # starts a new daemon
    assert the_daemon(place.state) != killed


async def test_a_new_daemon_adopts_a_replica_the_killed_one_started_and_pushes_its_exit(
    place: Place,
) -> None:
    runtime = place.runtime()
    changes = Changes(runtime)
    one = long_running(place, "adopted")
    await runtime.create(one, names(one))
    await logged(runtime, pod(one), "ready")
    supervisor = record(runtime, pod(one))["pid"]
    killed = await kill_daemon(place, [changes])
    assert alive(supervisor)
    assert await state(runtime, pod(one)) == RUNNING_NOW
    assert the_daemon(place.state) != killed
    calls = changes.calls
    place.release("adopted")
    # The adopted supervisor reports to the dead daemon: the new one sees it end by its pidfd.
    await changes.after(calls)
    assert await state(runtime, pod(one)) == SUCCEEDED


async def test_a_start_whose_gateway_died_before_the_answer_still_runs_and_is_seen(
    place: Place,
) -> None:
    first = place.runtime()
    await first.observe()
    link = first._daemon
    one = long_running(place, "unanswered")

    async def ask_and_die(message: dict[str, Any]) -> dict[str, Any]:
        # The gateway sends the start and is gone before the daemon answers.
        assert link._writer is not None
        link._writer.write(json.dumps({"id": 1, **message}).encode() + b"\n")
        await link._writer.drain()
        link._writer.transport.abort()
        raise ConnectionError("killed")

    link._ask = ask_and_die  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await first.create(one, names(one))
    # The daemon wrote the record before the replica ran: no orphan, nothing unknown.
    await until(lambda: record_path(first, pod(one)).exists(), "the record")
    second = place.runtime()
    changes = Changes(second)
    assert await state(second, pod(one)) == RUNNING_NOW
    assert len(supervisors(place.state)) == 1
    place.release("unanswered")
    await changes.after(0)
    assert await state(second, pod(one)) == SUCCEEDED


# e. Deleting ---------------------------------------------------------------------------------

#: A replica that ignores SIGTERM, with a child and a double-forked, setsid sleeper that do too.
STUBBORN = (
    "trap '' TERM; sleep {marker} & setsid sh -c \"trap '' TERM; sleep {marker} & wait\" & "
    "echo ready; wait"
)


@pytest.mark.parametrize("place", [CONTAINED, UNISOLATED], indirect=True)
async def test_delete_stops_the_whole_tree_of_a_running_replica_and_twice_is_harmless(
    place: Place,
) -> None:
    runtime = place.runtime(grace=1.0)
    one = gang("stubborn", STUBBORN.format(marker=place.marker))
    key = pod(one)
    await runtime.create(one, names(one))
    await logged(runtime, key, "ready")
    await until(lambda: len(sleepers(place.marker)) == 2, "both sleepers")
    fields = record(runtime, key)
    await runtime.delete(*key)
    # Answered once the supervisor is gone: nothing of the tree is left at that moment.
    assert not alive(fields["pid"])
    assert not sleepers(place.marker)
    assert key not in await runtime.observe()
    assert not record_path(runtime, key).exists()
    assert not exists(fields["work"])
    assert not any(exists(d) for d in fields.get("cgroups") or ())
    await runtime.delete(*key)  # again: nothing to do, no error
    await runtime.delete("no-such-job", "no-such-pod")
    assert key not in await runtime.observe()


async def test_a_delete_cut_short_by_the_daemon_dying_is_finished_by_the_next(
    place: Place,
) -> None:
    runtime = place.runtime(grace=60)
    changes = Changes(runtime)
    # It ignores the first SIGTERM and ends at the second: the next delete gives it the same
    # grace of 60 s (its record's), but need not wait for it.
    one = gang(
        "cut",
        "import signal, subprocess, sys\n"
        f"subprocess.Popen(['sleep', {place.marker!r}])\n"
        "terms = []\n"
        "def term(*_):\n"
        "    terms.append(1)\n"
        "    print('term', flush=True)\n"
        "    if len(terms) > 1: sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('ready', flush=True)\n"
        "while True: signal.pause()\n",
        program="python3",
    )
    key = pod(one)
    await runtime.create(one, names(one))
    await logged(runtime, key, "ready")
    stopping = asyncio.create_task(runtime.delete(*key))
    await logged(runtime, key, "term")  # SIGTERM reached it; the SIGKILL waits on the grace
    await kill_daemon(place, [changes])
    with pytest.raises(ConnectionError):
        await stopping
    fields = record(runtime, key)
    assert alive(fields["pid"])  # the replica ignored SIGTERM and the escalation died
    await runtime.delete(*key)  # a new daemon adopts it and stops it
    assert not alive(fields["pid"])
    assert not sleepers(place.marker)
    assert key not in await runtime.observe()


def exit_codes(runtime: LocalRuntime, key: tuple[str, str]) -> Callable[[], int | None]:
    """A ``Changes`` probe: the exit status recorded for the pod, read as its exit is heard (its
    record and exit file are gone once ``delete`` returns)."""

    def probe() -> int | None:
        with contextlib.suppress(OSError):
            return int(Path(record(runtime, key)["exit"]).read_text().strip())
        return None

    return probe


@pytest.mark.parametrize("restarted", [False, True], ids=["same-gateway", "restarted-gateway"])
@pytest.mark.parametrize("place", [CONTAINED, UNISOLATED], indirect=True)
async def test_a_replica_that_handles_sigterm_is_given_its_own_grace_to_end_well(
    place: Place, restarted: bool
) -> None:
    """Its spec gives it 5 s; the gateway's default of 0 would kill it before it saved."""
    first = place.runtime(grace=0)
    one = gang("tidy", TIDY, program="python3", grace=5)
    key = pod(one)
    await first.create(one, names(one))
    await logged(first, key, "ready")
    assert record(first, key)["grace"] == 5
    runtime = first
    if restarted:  # a gateway started since, with the same default: it has only the record
        await first.close()
        runtime = place.runtime(grace=0)
    changes = Changes(runtime, exit_codes(runtime, key))

    await runtime.delete(*key)

    assert "saved" in runtime.log_path(*key).read_text()
    await changes.after(0)
    assert changes.seen[0] == 0  # it ended on its own, well
    assert key not in await runtime.observe()


@pytest.mark.parametrize("place", [CONTAINED, UNISOLATED], indirect=True)
async def test_a_replica_that_ignores_sigterm_is_killed_once_its_own_grace_is_over(
    place: Place,
) -> None:
    """Its spec gives it 1 s; the gateway's default of 60 s would hold delete for a minute."""
    runtime = place.runtime(grace=60)
    one = gang("deaf", DEAF, program="python3", grace=1)
    key = pod(one)
    changes = Changes(runtime, exit_codes(runtime, key))
    await runtime.create(one, names(one))
    await logged(runtime, key, "ready")
    supervisor = record(runtime, key)["pid"]

    began = time.monotonic()
    await runtime.delete(*key)
    took = time.monotonic() - began

    assert "term" in runtime.log_path(*key).read_text()  # SIGTERM came first, and was ignored
    assert changes.seen == [128 + signal.SIGKILL]
    assert not alive(supervisor)
    assert 1.0 <= took < 30.0  # not before its grace, and not after the default's minute


# f. Starting is idempotent -------------------------------------------------------------------


def counting(
    request: Callable[..., Coroutine[Any, Any, dict[str, Any]]], asked: list[str]
) -> Callable[..., Coroutine[Any, Any, dict[str, Any]]]:
    """``request``, noting each operation asked for in ``asked``."""

    async def counted(op: str, **fields: Any) -> dict[str, Any]:
        asked.append(op)
        return await request(op, **fields)

    return counted


async def test_creating_a_running_replica_again_starts_no_second_process(place: Place) -> None:
    first, second = place.runtime(), place.runtime()
    if second._claims is not None:
        # Two gateways are two processes. In one, their uid claims of one job at once would
        # collide on a temporary file named by the pid (see UidClaims.claim): the second
        # gateway claims in a directory of its own, and picks the same uid all the same.
        second._claims = UidClaims(second._claims.instance, root=place.base / "claims")
    await asyncio.gather(first.observe(), second.observe())
    asked: list[str] = []
    for runtime in (first, second):
        runtime._daemon.request = counting(runtime._daemon.request, asked)  # type: ignore[method-assign]
    one = long_running(place, "once")
    key = pod(one)
    # At once from one gateway, and from two: each start reaches the daemon.
    await asyncio.gather(
        first.create(one, names(one)),
        first.create(one, names(one)),
        second.create(one, names(one)),
    )
    assert asked.count("start") == 3
    fields = record(first, key)
    await first.create(one, names(one))  # and later, while it runs
    await second.create(one, names(one))
    assert record(first, key) == fields
    assert [p.pid for p in supervisors(place.state)] == [fields["pid"]]
    await logged(first, key, "ready")
    assert first.log_path(*key).read_text().count("ready") == 1
    changes = Changes(first)
    place.release("once")
    await changes.after(0)
    assert await state(first, key) == SUCCEEDED


async def test_a_replica_restarted_while_its_last_supervisor_cleans_up_starts_anew(
    place: Place,
) -> None:
    """Delete then create at once after an exit (a restart): the exited start's supervisor may
    still be cleaning up (here: held stopped), and must not stand for the new start."""
    runtime = place.runtime()
    one = gang("again", "echo run; exit 1")
    key = pod(one)
    held: list[int] = []

    def hold() -> None:
        # At the exit event: keep its supervisor from finishing its cleanup.
        pid = record(runtime, key)["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
            held.append(pid)

    changes = Changes(runtime, hold)
    try:
        await runtime.create(one, names(one))
        await changes.after(0)
        first = record(runtime, key)
        assert await state(runtime, key) == (ReplicaPhase.FAILED, 1)
        await runtime.delete(*key)
        await runtime.create(one, names(one))
        second = record(runtime, key)
        assert second["start"] != first["start"]
        await changes.after(1)
        assert await state(runtime, key) == (ReplicaPhase.FAILED, 1)
        assert runtime.log_path(*key).read_text().count("run") == 2
    finally:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# g. Nothing of the gateway in the daemon, nothing of the daemon in a replica -----------------


def descriptors(pid: int) -> dict[tuple[int, int], str]:
    """What ``pid`` holds open: (device, inode) of each descriptor's file, pipe or socket, with
    its link text. Left out: /dev/null, which everyone may hold, and anonymous inodes (epoll,
    eventfd, pidfd: one inode for all of them, and nothing another process can share)."""
    held = {}
    directory = f"/proc/{pid}/fd"
    for fd in os.listdir(directory):
        with contextlib.suppress(FileNotFoundError):
            link = os.readlink(f"{directory}/{fd}")
            info = os.stat(f"{directory}/{fd}")
            if link != os.devnull and not link.startswith("anon_inode:"):
                held[(info.st_dev, info.st_ino)] = f"{pid}:{fd} -> {link}"
    return held


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_daemon_and_replicas_hold_no_descriptor_of_the_gateway(place: Place, loop: str) -> None:
    """uvloop (the gateway's loop) passes a spawned process every inheritable descriptor: the
    daemon must close what its launcher got, or it holds the gateway's pipes and sockets."""
    if loop == "uvloop":
        run: Callable[[Coroutine[Any, Any, Any]], Any] = pytest.importorskip("uvloop").run
    else:
        run = asyncio.run
    pipe = os.pipe()
    pair = socket.socketpair()
    for fd in (*pipe, *(s.fileno() for s in pair)):
        os.set_inheritable(fd, True)

    async def scenario() -> tuple[dict[tuple[int, int], str], dict[tuple[int, int], str]]:
        runtime = place.runtime(track=False)
        try:
            one = long_running(place, "fds")
            await runtime.create(one, names(one))
            await logged(runtime, pod(one), "ready")
            theirs: dict[tuple[int, int], str] = {}
            for process in supervision(place.state):  # daemon, supervisor, namespace init
                theirs.update(descriptors(process.pid))
            mine = descriptors(os.getpid())
            changes = Changes(runtime)
            place.release("fds")
            await changes.after(0)
            return mine, theirs
        finally:
            await runtime.close()

    try:
        mine, theirs = run(scenario())
        inherited = {(s.st_dev, s.st_ino) for s in map(os.fstat, (*pipe, pair[0].fileno()))}
    finally:
        for fd in pipe:
            os.close(fd)
        for sock in pair:
            sock.close()
    assert inherited <= mine.keys()
    shared = {theirs[k]: mine[k] for k in mine.keys() & theirs.keys()}
    assert shared == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="replicas are contained only as root")
async def test_a_replica_reaches_neither_the_daemon_socket_nor_any_descriptor_beyond_its_output(
    place: Place,
) -> None:
    assert place.isolation.namespaces, place.isolation.describe()
    runtime = place.runtime()
    changes = Changes(runtime)
    await runtime.observe()
    sock = place.state / SOCKET
    assert stat.S_ISSOCK(sock.stat().st_mode)
    check = (
        "import os, socket\n"
        f"path = {str(sock)!r}\n"
        "found = []\n"
        "try:\n"
        "    os.stat(path); found.append('stat')\n"
        "except OSError: pass\n"
        "try:\n"
        "    socket.socket(socket.AF_UNIX).connect(path); found.append('connect')\n"
        "except OSError: pass\n"
        "for fd in range(3, 4096):\n"
        "    try:\n"
        "        os.fstat(fd); found.append(f'fd {fd}: ' + os.readlink(f'/proc/self/fd/{fd}'))\n"
        "    except OSError: pass\n"
        "print('found', found, flush=True)\n"
        "raise SystemExit(1 if found else 0)\n"
    )
    one = gang("reach", check, program="python3")
    await runtime.create(one, names(one))
    await changes.after(0)
    found = await state(runtime, pod(one))
    log = runtime.log_path(*pod(one)).read_text()
    assert found == SUCCEEDED, log
    assert "found []" in log


# h. What a lost event costs ------------------------------------------------------------------


async def test_a_lost_exit_event_is_made_up_by_the_exit_file_at_the_next_observe(
    place: Place,
) -> None:
    deaf, hearing = place.runtime(), place.runtime()
    link = deaf._daemon
    heard = link.on_event
    link.on_event = lambda event: None if event.get("event") == "exited" else heard(event)
    deaf_changes, changes = Changes(deaf), Changes(hearing)
    await asyncio.gather(deaf.observe(), hearing.observe())
    one = long_running(place, "lost")
    await deaf.create(one, names(one))
    assert await state(deaf, pod(one)) == RUNNING_NOW
    place.release("lost")
    await changes.after(0)  # the other gateway heard the exit: it has happened
    assert deaf_changes.calls == 0
    assert await state(deaf, pod(one)) == SUCCEEDED


async def test_twelve_replicas_ending_together_are_each_heard_and_end_final(place: Place) -> None:
    """Many replicas ending together: every exit is heard, none lost in the daemon's loop."""
    runtime = place.runtime()
    changes = Changes(runtime)
    many = gang("many", "exit 0", count=12)
    await runtime.create(many, names(many))
    await changes.after(11)
    statuses = await runtime.observe()
    assert {statuses[pod(many, i)].phase for i in range(12)} == {ReplicaPhase.SUCCEEDED}


# Uid claims ----------------------------------------------------------------------------------


def claims_of(place: Place) -> dict[int, str]:
    """This data directory's uid claims: uid -> job."""
    tag = instance_name(place.data) + " "
    found = {}
    for claim in CLAIMS.iterdir():
        with contextlib.suppress(OSError, ValueError):
            text = claim.read_text("utf-8")
            if text.startswith(tag):
                found[int(claim.name)] = text[len(tag) :]
    return found


async def looked_until(runtime: LocalRuntime, predicate: Callable[[], bool], what: str) -> None:
    """Look (``observe()``, as the reconciler's passes do) until ``predicate`` holds: a
    supervisor's end after its cleanup is announced by no event."""
    deadline = time.monotonic() + WAIT
    while True:
        await runtime.observe()
        if await asyncio.to_thread(predicate):
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.skipif(os.geteuid() != 0, reason="jobs get uids of their own only as root")
async def test_a_finished_jobs_uid_claim_is_released_though_its_pods_are_kept(
    place: Place,
) -> None:
    runtime = place.runtime()
    changes = Changes(runtime)
    done, running = gang("done", "exit 0"), long_running(place, "running")
    await runtime.create(running, names(running))
    await runtime.create(done, names(done))
    assert sorted(claims_of(place).values()) == ["done", "running"]
    await changes.after(0)
    # The finished replica is kept (clean_pod_policy: Running keeps finished pods): once its
    # supervisor has cleaned up, its uid is free for the next job; the running one keeps its.
    await looked_until(
        runtime,
        lambda: list(claims_of(place).values()) == ["running"],
        "the finished job's claim released",
    )
    assert await state(runtime, pod(done)) == SUCCEEDED
    assert record_path(runtime, pod(done)).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="jobs get uids of their own only as root")
async def test_claims_a_killed_gateway_left_are_released_by_the_next_once_their_jobs_are_over(
    place: Place,
) -> None:
    first = place.runtime()
    changes = Changes(first)
    done = gang("done", "exit 0")
    await first.create(done, names(done))
    await changes.after(0)
    await first.close()  # as if killed before it looked again: the claim is still held
    assert list(claims_of(place).values()) == ["done"]
    second = place.runtime()
    await looked_until(second, lambda: not claims_of(place), "the claim released by the next")
    assert await state(second, pod(done)) == SUCCEEDED


async def test_removing_a_finished_job_forgets_its_kept_replicas_and_keeps_their_logs(
    place: Place,
) -> None:
    runtime = place.runtime()
    changes = Changes(runtime)
    done = gang("done", "echo bye; exit 0", count=2)
    await runtime.create(done, names(done))
    await changes.after(0)
    await looked_until(
        runtime,
        lambda: all(record_path(runtime, pod(done, i)).exists() for i in range(2)),
        "both records",
    )
    for index in range(2):
        await until(lambda i=index: exists(record(runtime, pod(done, i))["exit"]), "the exits")
        assert await state(runtime, pod(done, index)) == SUCCEEDED  # kept by clean_pod_policy

    await runtime.remove("done", "done", "t")  # the job's TTL after finishing passed

    assert not [key for key in await runtime.observe() if key[0] == "done"]
    assert not (runtime.state_dir / "done").exists()
    log = b"".join([chunk async for chunk in runtime.logs(*pod(done), follow=False)])
    assert b"bye" in log  # the log stays readable
    await runtime.remove("done", "done", "t")  # twice is harmless
