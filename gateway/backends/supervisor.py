"""The local backend's replica supervisor: ``python -m gateway.backends.supervisor PLAN``.

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

Logs: the replica writes to a pipe; the supervisor copies it into the log file (its own stdout,
which the replica never holds, so it cannot truncate, preallocate or rewrite it) up to the plan's
``log_bytes``, then notes the cut and discards the rest. A full disk stops the copy, never the
replica.

Invariants: the command never runs as root when the plan names a user; it gets exactly the plan's
environment, nothing of the supervisor's; a sandbox step that fails stops the replica (status 126)
rather than running it with less isolation than planned; as root, nothing is done by path inside
a directory the job owns (its tmp is opened without following links, checked, and mounted from
the open descriptor); the exit status is recorded before anything is cleaned up; when the job's
uid is released, its kernel keyrings are cleared, so the next job given that uid inherits nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
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
# keyctl(2): clear a uid's keyrings when the uid is released.
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
KEYCTL_CLEAR = 7
KEYCTL_GET_PERSISTENT = 22
KEY_SPEC_PROCESS_KEYRING = -2
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
PUMP_CHUNK = 64 * 1024
#: Seconds the supervisor waits, after the replica ended, for the rest of its output.
DRAIN_SECONDS = 5.0

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
        print("usage: python -m gateway.backends.supervisor PLAN", file=sys.stderr)
        return 2
    plan: dict[str, Any] = json.loads(Path(argv[0]).read_text("utf-8"))
    exit_file = Path(plan["exit"])
    state_dir = os.open(exit_file.parent, os.O_RDONLY | os.O_DIRECTORY)
    stopping: list[int] = []
    code = SANDBOX_FAILED
    try:
        code = _supervise(plan, stopping)
    finally:
        # The status first: the gateway learns the replica ended even if a cleanup step fails.
        record(state_dir, exit_file.name, code)
    _clean_up(plan)
    return 0


def _supervise(plan: dict[str, Any], stopping: list[int]) -> int:
    """Run the replica to its end; its status as a shell reports it."""
    child = [0]  # the replica's first process, once started

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        _signal_replica(plan, child[0], signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # Children made after the replica's namespace ended (its init gone) could not be made in
    # it: the supervisor's own namespace comes back for them, through this descriptor.
    own = os.open("/proc/self/ns/pid", os.O_RDONLY) if plan["namespaces"] else -1
    try:
        return _contain(plan, stopping, child)
    finally:
        if own >= 0:
            _call(_libc().setns(own, CLONE_NEWPID), "return to the supervisor's PID namespace")
            os.close(own)


def _contain(plan: dict[str, Any], stopping: list[int], child: list[int]) -> int:
    """Start the replica in its container (its pid into ``child``) and wait for it."""
    try:
        if plan["namespaces"]:
            _call(_libc().unshare(CLONE_NEWPID), "unshare a PID namespace")
        else:
            _call(_libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become a subreaper")
    except SandboxError as exc:
        print(f"muster: cannot contain the replica: {exc}", file=sys.stderr, flush=True)
        return SANDBOX_FAILED
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        _child(plan)  # never returns
    child[0] = pid
    os.close(write_end)
    if stopping:  # a stop that came before the fork
        _signal_replica(plan, pid, stopping[0])
    code = _wait_for(pid, plan, read_end, _Log(1, int(plan["log_bytes"])))
    if code == 128 + signal.SIGKILL and cgroups.oom_killed(plan["cgroups"]):
        _note(
            f"the replica used more memory than it requested "
            f"({_quantity(plan['memory_bytes'])}) and was killed"
        )
    return code


def _note(text: str) -> None:
    """A line of the supervisor's own in the replica's log."""
    with contextlib.suppress(OSError):
        os.write(1, f"muster: {text}\n".encode())


class _Log:
    """The replica's log: what it wrote, up to ``limit`` bytes; then the rest is dropped."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.written = 0
        self.failed = False

    def write(self, chunk: bytes) -> None:
        if self.failed or self.written >= self.limit:
            return
        take = chunk[: self.limit - self.written]
        try:
            view = memoryview(take)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            self.failed = True  # a full disk: the replica goes on, its log does not
            return
        self.written += len(take)
        if self.written >= self.limit:
            _note(
                f"log cut at {_quantity(self.limit)}; the rest of the replica's output is dropped"
            )


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, PUMP_CHUNK)
    except BlockingIOError:
        return b"-"  # nothing now: not the end
    except OSError:
        return b""


def _clean_up(plan: dict[str, Any]) -> None:
    """After the replica: everything of it is gone (its namespace ended with its init, or the
    subreaper killed what was left), so its cgroups, its work directory (a pod's scratch space:
    nothing waits there for the next job given the uid) and its uid's keyrings can go."""
    cgroups.kill(plan["cgroups"])
    cgroups.remove(plan["cgroups"])
    remove_tree(plan["cwd"])
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(plan["cwd"]))  # the job's directory, if this was its last
    if plan["uid"] is not None:
        _clear_keyrings(plan["uid"], plan["gid"])


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
            libc = _libc()
            for ring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
                libc.syscall(number, KEYCTL_CLEAR, ring)
            persistent = libc.syscall(number, KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_PROCESS_KEYRING)
            if persistent > 0:
                libc.syscall(number, KEYCTL_CLEAR, persistent)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _wait_for(child: int, plan: dict[str, Any], output: int, log: _Log) -> int:
    """Copy the replica's output into its log until every writer is gone, and wait for the
    command (the namespace's init, or the command itself), reaping orphans on the way.

    One thread (a process that made a PID namespace for its children may start no thread):
    SIGCHLD wakes the poll through a wakeup pipe, so an exit is seen at once.
    """
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    poller = select.poll()
    poller.register(output, select.POLLIN)
    poller.register(wake_read, select.POLLIN)
    status: int | None = None
    open_output = True
    ended_at = 0.0
    while open_output or status is None:
        timeout = None if status is None else max(0.0, ended_at + DRAIN_SECONDS - time.monotonic())
        events = poller.poll(None if timeout is None else int(timeout * 1000) + 1)
        for fd, _ in events:
            if fd == wake_read:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 64):
                        pass
            elif open_output:
                chunk = _read(output)
                if not chunk:
                    open_output = False
                    poller.unregister(output)
                elif chunk != b"-":
                    log.write(chunk)
        if status is None:
            status = _reap(child)
            if status is not None:
                ended_at = time.monotonic()
                if not plan["namespaces"]:
                    _kill_descendants()
        elif open_output and time.monotonic() >= ended_at + DRAIN_SECONDS:
            break  # a writer outlived the replica (it cannot, contained): stop waiting for it
    signal.set_wakeup_fd(-1)
    for fd in (wake_read, wake_write, output):
        with contextlib.suppress(OSError):
            os.close(fd)
    return exit_code(status) if status is not None else SANDBOX_FAILED


def _reap(child: int) -> int | None:
    """Reap every child that has ended; the command's wait status if it was one of them."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = status


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
    tmp = _own_directory(plan["tmp"], plan["uid"])
    for target in ("/var/tmp", "/tmp"):  # /tmp last: it may hold the others
        if os.path.isdir(target):
            _mount(f"/proc/self/fd/{tmp}", target, None, MS_BIND)
    os.close(tmp)
    for shared in ("/dev/shm", "/run/lock"):  # other directories every user may write to
        if os.path.isdir(shared):
            _mount("tmpfs", shared, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
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


def _own_directory(path: str, uid: int | None) -> int:
    """An open descriptor of the directory ``path``, refused if its last component is a link or
    it is not ``uid``'s (the job may replace it: this is root, acting in the job's directory)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY)
    info = os.fstat(fd)
    if uid is not None and info.st_uid != uid:
        os.close(fd)
        raise SandboxError(f"{path} is not the job's own directory")
    return fd


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
