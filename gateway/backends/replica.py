"""A replica's supervisor, from the daemon's fork to its cleanup.

The gateway asks the data directory's supervisor daemon (``daemon``) to start a replica from a
launch plan: the command, its environment, working directory, user, cgroups, log and what to
hide. The daemon forks (no new interpreter), writes the pod's record, and lets the fork go on
(``run``): it makes the replica's work directory (with a directory per emptyDir volume, under
``volumes/``) and cgroups, runs it contained
(``supervisor.run_contained``), writes its exit status into the plan's exit file, atomically,
tells the daemon at once (a datagram, which the daemon pushes to the gateways), and cleans up.

The supervisor is no child of the gateway and no part of the daemon: either may die, and the
replica still runs to its end, its status is still recorded and it is still cleaned up; the next
daemon adopts it, the next gateway reads its status.

A fork inherits everything of the daemon: its socket and lock, other replicas' descriptors, its
signal handlers. So a supervisor first takes SIGTERM and SIGINT for itself (the daemon blocks
them across the fork, so a stop that comes early is kept, not lost), then leaves the daemon's
session and closes every descriptor but its own.

Invariants: nothing runs before the pod's record is written (the supervisor waits for the
daemon's word, and does nothing if the daemon died first); the work directory is made as root by
path only while the job can reach none of it, and handed over by descriptor; the exit status is
recorded before anything is cleaned up; when the job's uid is released, its kernel keyrings are
cleared, so the next job given that uid inherits nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gateway.backends import cgroups
from gateway.backends.supervisor import (
    SANDBOX_FAILED,
    VOLUMES,
    SandboxError,
    keep_only,
    libc,
    run_contained,
    say,
    signal_replica,
)

PR_SET_NAME = 15
#: What ``ps`` shows for a replica's supervisor (and its namespace's init, a fork of it).
PROCESS_NAME = b"muster-replica"
#: The daemon's word that the pod's record is written: the replica may start.
GO = b"1"
#: Signals that stop a replica; the daemon blocks them across its fork.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# keyctl(2): clear a uid's keyrings when the uid is released.
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
KEYCTL_CLEAR = 7
KEYCTL_GET_PERSISTENT = 22
KEY_SPEC_PROCESS_KEYRING = -2
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5


def run(plan: dict[str, Any], go: int, report: int) -> NoReturn:
    """Supervise one replica, in a fresh fork of the daemon; never returns.

    ``go`` is read once: the daemon writes a byte once the pod's record is written, and an end of
    file instead means the daemon died first, so nothing is started. ``report`` is the daemon's
    datagram socket, told ``<start> <code>`` as soon as the status is recorded.
    """
    stopping: list[int] = []
    child = [0]  # the replica's first process, once started
    try:
        _take_signals(plan, stopping, child)  # first: a stop that comes from now on is kept
        os.setsid()
        keep_only(go, report)
        libc().prctl(PR_SET_NAME, PROCESS_NAME, 0, 0, 0)  # a name only: no harm if refused
        if os.read(go, 1) != GO:
            os._exit(0)
        os.close(go)
        _supervise(plan, stopping, child, report)
    finally:
        os._exit(0)


def _take_signals(plan: dict[str, Any], stopping: list[int], child: list[int]) -> None:
    """SIGTERM and SIGINT stop the replica, from the first moment (the daemon blocked them
    across the fork, so none was lost or taken by its handlers)."""

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        signal_replica(plan, child[0], signum)

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _supervise(plan: dict[str, Any], stopping: list[int], child: list[int], report: int) -> None:
    """Prepare the replica's container, run it to its end, record and report its status, and
    clean up."""
    exit_file = Path(plan["exit"])
    state_dir = os.open(exit_file.parent, os.O_RDONLY | os.O_DIRECTORY)
    code = SANDBOX_FAILED
    try:
        _log_to(plan["log"])
        say(plan["banner"])
        _prepare(plan)
        code = run_contained(plan, stopping, child)
    except (SandboxError, OSError) as exc:
        say(f"muster: cannot set up the replica's sandbox: {exc}\n")
    finally:
        # The status first: the gateway learns the replica ended even if a cleanup step fails.
        record(state_dir, exit_file.name, code)
        with contextlib.suppress(OSError):
            os.write(report, f"{plan['start']} {code}".encode())
    _clean_up(plan)


def _log_to(path: str) -> None:
    """Make the replica's log (0600, in a directory of the gateway's user only) this process's
    stdout and stderr, for appending."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def _prepare(plan: dict[str, Any]) -> None:
    """The replica's work directory and cgroups, made for this start (both named with its start
    id, so nothing of another start is touched)."""
    volumes = [str(v["name"]) for v in plan.get("volumes") or ()]
    _make_work_dir(plan["cwd"], plan["uid"], plan["gid"], volumes)
    spec = plan["cgroup"]
    if spec is not None:
        groups = cgroups.Cgroups(
            version=spec["version"], parents=tuple((c, Path(p)) for c, p in spec["parents"])
        )
        limits = cgroups.PodLimits(
            memory_bytes=spec["memory_bytes"], cpu_millis=spec["cpu_millis"], pids=spec["pids"]
        )
        groups.create(spec["name"], limits)


def _make_work_dir(
    path: str, uid: int | None, gid: int | None, volumes: Sequence[str] = ()
) -> None:
    """An empty work directory for one start of a replica, owned by the job's user, with a
    private tmp inside and, for each of its emptyDir ``volumes``, an empty ``volumes/<name>``
    (0700, the job's, mounted where the replica asks by its supervisor); the job's directory
    above it is the gateway's (searchable only).

    Made as root by path only while the job can reach none of it: the directory is root's
    (0700) until everything in it is made, and given to the job last, through a descriptor.
    """
    work = Path(path)
    job_dir = work.parent
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
    made = [tmp]
    if volumes:
        made.append(work / VOLUMES)
        made[-1].mkdir(mode=0o700)
        for name in volumes:
            made.append(work / VOLUMES / name)
            made[-1].mkdir(mode=0o700)
    if uid is None or gid is None:
        return
    for directory in made:
        os.chown(directory, uid, gid)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _private_dir(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    path.chmod(mode)


def record(state_dir: int, name: str, exit_code: int) -> None:
    """Write the exit status as ``name`` in the directory ``state_dir`` (an open fd), atomically."""
    partial = name + ".partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=state_dir)
    with os.fdopen(fd, "w") as file:
        file.write(str(exit_code))
    os.replace(partial, name, src_dir_fd=state_dir, dst_dir_fd=state_dir)


def _clean_up(plan: dict[str, Any]) -> None:
    """After the replica: everything of it is gone (its namespace ended with its init, or the
    subreaper killed what was left), so its cgroups, its work directory (a pod's scratch space:
    nothing waits there for the next job given the uid) and its uid's keyrings can go."""
    cgroups.kill(plan["cgroups"])
    cgroups.remove(plan["cgroups"])
    _remove_work_dir(plan["cwd"])
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(plan["cwd"]))  # the job's directory, if this was its last
    if plan["uid"] is not None:
        _clear_keyrings(plan["uid"], plan["gid"])


def _remove_work_dir(path: str) -> None:
    """Remove a replica's work directory: at once where the job left nothing but its empty
    tmp (two rmdirs, which never follow a link), else with ``remove_tree``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError:
        remove_tree(path)
        return
    try:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir("tmp", dir_fd=fd)
        os.rmdir(path)  # in the job's directory, which is the gateway's
        return
    except OSError:
        pass  # not empty, or tmp is no longer a directory: the careful way
    finally:
        os.close(fd)
    remove_tree(path)


def remove_tree(path: str) -> None:
    """Remove a directory tree however deep, never following a link and never leaving its file
    system (coreutils rm: iterative, unlike Python 3.11's shutil.rmtree)."""
    subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", path],
        env={"PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


def _clear_keyrings(uid: int, gid: int) -> None:
    """Clear the kernel keyrings of ``uid``, which outlive its processes (a secret a job put
    there would reach the next job given the uid)."""
    number = SYS_KEYCTL.get(os.uname().machine)
    if number is None:
        return
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            c = libc()
            for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
                c.syscall(number, KEYCTL_CLEAR, ring)
            persistent = c.syscall(number, KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_PROCESS_KEYRING)
            if persistent > 0:
                c.syscall(number, KEYCTL_CLEAR, persistent)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
