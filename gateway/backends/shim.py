"""The local backend's replica supervisor: ``python -m gateway.backends.shim PLAN``.

The gateway writes a launch plan (``sandbox.LaunchPlan`` as JSON: the command, its environment,
working directory, user, cgroups and what to hide) and starts this supervisor, which outlives the
gateway. It runs the command in a container of its own, waits for it, and writes its exit status
into the plan's exit file, atomically: a gateway cannot wait for a process that is not its child,
but the supervisor can, so a replica that outlives a gateway restart is still adopted.

Two ways to contain a replica:

- With namespaces (the gateway runs as root): the supervisor makes a PID namespace and forks its
  init. The init makes a mount and IPC namespace (its own /proc, a private /tmp, /var/tmp and
  /dev/shm, the data directory and issuer key hidden), moves into the pod's cgroups, and forks the
  command, which drops to the job's user with no new privileges. When the command exits, the init
  exits with its status and the kernel kills everything else in the namespace: no process the
  command started survives it, setsid or double fork or not.
- Without (the gateway is unprivileged): the supervisor is a child subreaper, so every orphaned
  descendant is re-parented to it; when the command exits, every descendant left is killed.

Signals: SIGTERM or SIGINT sent to the supervisor is passed to every process of the replica (the
init does this inside its namespace); the supervisor keeps waiting, so the exit status is recorded
even on cancel. A command killed by signal N is recorded as 128 + N, as a shell reports it.

Invariants: the command never runs as root when the plan names a user; it gets exactly the plan's
environment, nothing of the supervisor's; a sandbox step that fails stops the replica (status 126)
rather than running it with less isolation than planned.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gateway.backends import cgroups

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

SANDBOX_FAILED = 126
NOT_FOUND = 127


class SandboxError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _call(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    libc = _libc()
    _call(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def record(state_dir: int, name: str, exit_code: int) -> None:
    """Write the exit status as ``name`` in the directory ``state_dir`` (an open fd), atomically."""
    partial = name + ".partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=state_dir)
    with os.fdopen(fd, "w") as file:
        file.write(str(exit_code))
    os.replace(partial, name, src_dir_fd=state_dir, dst_dir_fd=state_dir)


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _quantity(size: int) -> str:
    """Bytes as Kubernetes writes them: 64Mi, 1536Ki, 1000."""
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gateway.backends.shim PLAN", file=sys.stderr)
        return 2
    plan: dict[str, Any] = json.loads(Path(argv[0]).read_text("utf-8"))
    exit_file = Path(plan["exit"])
    state_dir = os.open(exit_file.parent, os.O_RDONLY | os.O_DIRECTORY)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        _signal_replica(plan, child, signum)

    child = 0
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        if plan["namespaces"]:
            _call(_libc().unshare(CLONE_NEWPID), "unshare a PID namespace")
        else:
            _call(_libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become a subreaper")
    except SandboxError as exc:
        print(f"muster: cannot contain the replica: {exc}", file=sys.stderr, flush=True)
        record(state_dir, exit_file.name, SANDBOX_FAILED)
        return 0
    child = os.fork()
    if child == 0:
        _child(plan)  # never returns
    if stopping:  # a stop that came before the fork
        _signal_replica(plan, child, stopping[0])
    code = _wait_for(child, plan)
    if code == 128 + signal.SIGKILL and cgroups.oom_killed(plan["cgroups"]):
        print(
            f"muster: the replica used more memory than it requested "
            f"({_quantity(plan['memory_bytes'])}) and was killed",
            file=sys.stderr,
            flush=True,
        )
    # Everything of the replica is gone now (its namespace ended with its init, or the
    # subreaper killed what was left); its cgroups can go.
    cgroups.kill(plan["cgroups"])
    cgroups.remove(plan["cgroups"])
    # Its work directory goes with it, as a pod's scratch space does: nothing a job wrote
    # waits there for the next job that gets the same uid.
    shutil.rmtree(plan["cwd"], ignore_errors=True)
    record(state_dir, exit_file.name, code)
    return 0


def _wait_for(child: int, plan: dict[str, Any]) -> int:
    """Wait for the command (the namespace's init, or the command itself); reap orphans."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return SANDBOX_FAILED
        if pid == child:
            break
    code = exit_code(status)
    if not plan["namespaces"]:
        _kill_descendants()
    return code


def _descendants() -> list[int]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return [p.pid for p in psutil.Process().children(recursive=True)]
    return []


def _kill_descendants() -> None:
    """As a subreaper: kill every process left under this one, and reap them, until none."""
    for _ in range(1000):
        pids = _descendants()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        time.sleep(0.005)


def _signal_replica(plan: dict[str, Any], child: int, signum: int) -> None:
    if child <= 0:
        return
    if plan["namespaces"]:
        with contextlib.suppress(OSError):
            os.kill(child, signum)  # the init passes it to every process of its namespace
        return
    for pid in _descendants():
        with contextlib.suppress(OSError):
            os.kill(pid, signum)


def _child(plan: dict[str, Any]) -> None:
    """The forked child: the namespace's init (which forks the command), or the command."""
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        if plan["cgroups"]:
            cgroups.join(plan["cgroups"], 0)  # 0: the writing process itself
        if plan["namespaces"]:
            _init(plan)
        _exec(plan)
    except SandboxError as exc:
        print(f"muster: cannot set up the replica's sandbox: {exc}", file=sys.stderr, flush=True)
    except OSError as exc:
        print(f"muster: cannot set up the replica's sandbox: {exc}", file=sys.stderr, flush=True)
    os._exit(SANDBOX_FAILED)


def _init(plan: dict[str, Any]) -> None:
    """PID 1 of the replica's namespace: set up its mounts, start the command, reap, and exit
    with the command's status (which ends every other process of the namespace)."""
    # The init of a namespace gets only the signals it handles: handle them from the start.
    stopped: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopped.append(signum)
        with contextlib.suppress(OSError):
            os.kill(-1, signum)  # every process of the namespace but this one

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _call(_libc().unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare mount and IPC namespaces")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in plan["hide_dirs"]:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "mode=0")
    for path in plan["hide_files"]:
        if os.path.isfile(path):
            _mount("/dev/null", path, None, MS_BIND)
    tmp = plan["tmp"]
    for target in ("/var/tmp", "/tmp"):  # /tmp last: it may hold the others
        if os.path.isdir(target):
            _mount(tmp, target, None, MS_BIND)
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    command = os.fork()
    if command == 0:
        _exec(plan)
    if stopped:  # stopped while the sandbox was set up: the command gets the signal too
        stop(stopped[0], None)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(SANDBOX_FAILED)
        if pid == command:
            os._exit(exit_code(status))


def _exec(plan: dict[str, Any]) -> None:
    """Become the replica's command: its own session, the job's user, the plan's environment."""
    os.setsid()
    # Python ignores SIGPIPE and SIGXFSZ; a command expects the defaults (exec keeps "ignored").
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    if plan["uid"] is not None:
        os.setgroups([])
        os.setresgid(plan["gid"], plan["gid"], plan["gid"])
        os.setresuid(plan["uid"], plan["uid"], plan["uid"])
    _call(_libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    os.umask(0o022)
    os.chdir(plan["cwd"])
    command = plan["command"]
    try:
        os.execvpe(command[0], command, plan["env"])
    except OSError as exc:
        print(f"muster: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(NOT_FOUND)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
