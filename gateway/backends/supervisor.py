"""How a replica's supervisor contains the replica, copies its output and waits for it.

The supervisor is a fork of the data directory's supervisor daemon (``daemon``); ``replica``
is its life from that fork to its cleanup, and this module the part in the middle:
``run_contained`` starts the command in a container and returns its status.

Two ways to contain a replica:

- With namespaces (the gateway runs as root): the supervisor makes a PID namespace and forks its
  init. The init makes a mount and IPC namespace (its own /proc, a private /tmp, /var/tmp and
  /dev/shm, the data directory and issuer key hidden), moves into the pod's cgroups, and forks the
  command, which drops to the job's user with no new privileges. When the command exits, the init
  exits with its status and the kernel kills everything else in the namespace: no process the
  command started survives it, setsid or double fork or not.
- Without (the gateway is unprivileged): the supervisor is a child subreaper, so every orphaned
  descendant is re-parented to it; when the command exits, every descendant left is killed.

The pod fields the local backend honours (``gateway.domain.jobs.policy.process_unsupported``):

- ``working_dir``: the command starts there. It changes directory after it became the job's user,
  so the kernel checks the job's access, not root's; a directory missing or closed to it stops
  the replica (status 126, ``workingDir /x: No such file or directory`` in its log), never starts
  it elsewhere. HOME and TMPDIR stay its work directory.
- emptyDir volumes: ``replica`` makes each an empty ``volumes/<name>`` (0700, the job's) in the
  work directory, which goes with it. The init mounts each at its mountPath in the replica's
  mount namespace, after the private /tmp and /dev/shm: the directory bound there (reached from
  the work directory one component at a time, no link followed, each the job's), or for medium
  Memory a tmpfs of the plan's size; readOnly mounts are made so last. A mountPath must be a
  directory already, as the replica sees it (nothing is made outside the work directory, and a
  mount only hides what is under it); a missing one stops the replica. Without namespaces a
  plan with mounts is refused (status 126), never run without its volumes.

Signals: SIGTERM or SIGINT sent to the supervisor is passed to every process of the replica (the
init does this inside its namespace); the supervisor keeps waiting, so the exit status is recorded
even on cancel. A command killed by signal N is recorded as 128 + N, as a shell reports it.

Logs: the replica writes to a pipe; the supervisor copies it into the log file (its own stdout,
which the replica never holds, so it cannot truncate, preallocate or rewrite it). At the plan's
``log_bytes`` the file is rotated (kept as ``<log>.1``, a new one begun), so the newest output is
kept and at most twice ``log_bytes`` is on disk. A full disk stops the copy, never the replica.

Kernel rules kept here: a process that unshared CLONE_NEWPID may start no thread (one thread,
poll, and a SIGCHLD wakeup pipe); once the namespace's init died, forking into it fails (ENOMEM),
so the supervisor returns to its own PID namespace first.

Invariants: the command never runs as root when the plan names a user; it gets exactly the plan's
environment, nothing of the supervisor's, and no descriptor but its output pipe; a sandbox step
that fails stops the replica (status 126) rather than running it with less isolation than
planned; as root, nothing is done by path inside a directory the job owns (its tmp is opened
without following links, checked, and mounted from the open descriptor).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import time
from typing import Any

from gateway.backends import cgroups

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PUMP_CHUNK = 64 * 1024
#: Seconds the supervisor waits, after the replica ended, for the rest of its output.
DRAIN_SECONDS = 5.0

SANDBOX_FAILED = 126
NOT_FOUND = 127
#: The directory of a replica's work directory that holds its emptyDir volumes, one each.
VOLUMES = "volumes"


class SandboxError(Exception):
    pass


def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def checked(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    c = libc()
    checked(
        c.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


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


def keep_only(*keep: int) -> None:
    """Close every descriptor inherited from the daemon but stdio and ``keep``."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


def run_contained(plan: dict[str, Any], stopping: list[int], child: list[int]) -> int:
    """Run the replica to its end; its status as a shell reports it."""
    # Children made after the replica's namespace ended (its init gone) could not be made in
    # it: the supervisor's own namespace comes back for them, through this descriptor.
    own = os.open("/proc/self/ns/pid", os.O_RDONLY) if plan["namespaces"] else -1
    try:
        return _contain(plan, stopping, child)
    finally:
        if own >= 0:
            checked(libc().setns(own, CLONE_NEWPID), "return to the supervisor's PID namespace")
            os.close(own)


def _contain(plan: dict[str, Any], stopping: list[int], child: list[int]) -> int:
    """Start the replica in its container (its pid into ``child``) and wait for it."""
    try:
        if plan["namespaces"]:
            checked(libc().unshare(CLONE_NEWPID), "unshare a PID namespace")
        else:
            checked(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "become a subreaper")
    except SandboxError as exc:
        say(f"muster: cannot contain the replica: {exc}\n")
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
        signal_replica(plan, pid, stopping[0])
    code = _wait_for(child, plan, read_end, _Log(1, int(plan["log_bytes"]), plan.get("log")))
    if code == 128 + signal.SIGKILL and cgroups.oom_killed(plan["cgroups"]):
        _note(
            f"the replica used more memory than it requested "
            f"({_quantity(plan['memory_bytes'])}) and was killed"
        )
    return code


def _note(text: str, *, after_partial_line: bool = False) -> None:
    """A line of the supervisor's own in the replica's log (on a line of its own, after a line
    of the replica's that was cut)."""
    with contextlib.suppress(OSError):
        os.write(1, f"{chr(10) if after_partial_line else ''}muster: {text}\n".encode())


class _Log:
    """The replica's log: what it wrote, ``limit`` bytes to a file. When the file is full it is
    rotated: renamed ``<log>.1`` (replacing an older one) and a new file begun, so the newest
    output is always kept and at most twice ``limit`` is on disk. Without a path to rotate
    (or when a rotation fails) the rest is dropped, with a note. The file's size when the
    supervisor starts counts (a restarted replica appends to its log)."""

    def __init__(self, fd: int, limit: int, path: str | None = None) -> None:
        self.fd = fd
        self.limit = limit
        self.path = path
        self.failed = False
        self.dropping = False
        self.line_open = False  # the last byte written was not a line's end
        try:
            self.written = os.fstat(fd).st_size
        except OSError:
            self.written = 0

    def write(self, chunk: bytes) -> None:
        while chunk and not self.failed and not self.dropping:
            if self.written >= self.limit and not self._rotate():
                self.dropping = True
                _note(
                    f"log cut at {_quantity(self.limit)}; the rest of the replica's output is "
                    "dropped"
                )
                return
            take = chunk[: self.limit - self.written]
            if len(take) < len(chunk) and self.path is not None:
                # Rotate at a line's end where the chunk has one, so no line is split in two.
                end = take.rfind(b"\n") + 1
                if end:
                    take = take[:end]
                elif self.written:
                    self.written = self.limit  # the line goes whole to the next file
                    continue
            chunk = chunk[len(take) :]
            try:
                view = memoryview(take)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                self.failed = True  # a full disk: the replica goes on, its log does not
                return
            self.written += len(take)
            self.line_open = not take.endswith(b"\n")

    def _rotate(self) -> bool:
        """Begin a new log file, the full one kept as ``<log>.1``; False if that cannot be."""
        if self.path is None:
            return False
        try:
            os.replace(self.path, self.path + ".1")
            fd = os.open(
                self.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
            )
        except OSError:
            return False
        os.dup2(fd, self.fd)
        if self.fd == 1:
            os.dup2(fd, 2)  # the supervisor's own notes go to the new file too
        os.close(fd)
        self.written = 0
        _note(
            f"log rotated at {_quantity(self.limit)}; the part before is kept as the .1 log",
            after_partial_line=self.line_open,
        )
        self.line_open = False
        return True


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, PUMP_CHUNK)
    except BlockingIOError:
        return b"-"  # nothing now: not the end
    except OSError:
        return b""


def _wait_for(child: list[int], plan: dict[str, Any], output: int, log: _Log) -> int:
    """Copy the replica's output into its log until every writer is gone, and wait for the
    command (the namespace's init, or the command itself: ``child[0]``), reaping orphans on the
    way. Once reaped, ``child[0]`` is 0: its pid may belong to another process by then, which no
    forwarded signal must reach.

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
            status = _reap(child[0])
            if status is not None:
                child[0] = 0
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


def signal_replica(plan: dict[str, Any], child: int, signum: int) -> None:
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
        # Nothing of the supervisor's (its state directory, the daemon's socket) stays open in
        # the init, which runs as root in the job's namespace.
        keep_only()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        if plan["cgroups"]:
            cgroups.join(plan["cgroups"], 0)  # 0: the writing process itself
        if plan["namespaces"]:
            _init(plan)
        elif plan.get("mounts"):
            raise SandboxError(
                "volume_mounts need a mount namespace of the replica's own, which this gateway "
                "cannot make (it does not run as root); the Kubernetes backend mounts volumes"
            )
        _exec(plan)
    except (SandboxError, OSError) as exc:
        say(f"muster: cannot set up the replica's sandbox: {exc}\n")
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
    checked(libc().unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare mount and IPC namespaces")
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
    _mount_volumes(plan)  # last: a volume may be mounted over /tmp or /dev/shm
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


def _mount_volumes(plan: dict[str, Any]) -> None:
    """Mount each of the replica's emptyDir volumes at its mountPath, in this (the replica's
    own) mount namespace: its directory in the work directory, bound there, or for medium
    Memory a tmpfs of the plan's size, 0700 and the job's. A volume mounted twice is one
    volume: the second mount binds the first. A mountPath must be a directory already (on
    this machine, as the replica sees it): none is made outside the work directory, and a
    missing one stops the replica. Read-only mounts are made so last (a bind copies its
    source's flags)."""
    volumes = {str(v["name"]): v for v in plan.get("volumes") or ()}
    sources: dict[str, int] = {}  # volume -> a descriptor of its first mount
    mounted: list[tuple[int, dict[str, Any]]] = []  # (descriptor of the mount's root, mount)
    try:
        for mount in plan.get("mounts") or ():
            name, target = str(mount["volume"]), str(mount["path"])
            if not os.path.isdir(target):
                raise SandboxError(
                    f"volume {name}: mountPath {target} is no directory on this machine; the "
                    "local backend mounts a volume only over a directory that exists"
                )
            volume = volumes[name]
            if name in sources:
                _mount(f"/proc/self/fd/{sources[name]}", target, None, MS_BIND)
            elif volume.get("medium") == "Memory":
                options = "mode=0700"
                if plan["uid"] is not None:
                    options += f",uid={plan['uid']},gid={plan['gid']}"
                if volume.get("size_bytes"):
                    options += f",size={int(volume['size_bytes'])}"
                _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
            else:
                directory = _volume_directory(plan, name)
                try:
                    _mount(f"/proc/self/fd/{directory}", target, None, MS_BIND)
                finally:
                    os.close(directory)
            # The mount's root, now on top of the path.
            root = os.open(target, os.O_PATH | os.O_DIRECTORY)
            mounted.append((root, mount))
            sources.setdefault(name, root)
        for root, mount in mounted:
            if mount.get("read_only"):
                flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
                _mount(None, f"/proc/self/fd/{root}", None, flags)
    finally:
        for root, _ in mounted:
            os.close(root)


def _volume_directory(plan: dict[str, Any], name: str) -> int:
    """An open descriptor of the volume ``name``'s directory in the work directory, reached
    one component at a time, none a link and each the job's (which may have replaced them)."""
    uid = plan["uid"]
    fd = _own_directory(plan["cwd"], uid)
    try:
        for part in (VOLUMES, name):
            inner = _own_directory(part, uid, fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own_directory(path: str, uid: int | None, dir_fd: int | None = None) -> int:
    """An open descriptor of the directory ``path`` (in ``dir_fd``, if given), refused if its
    last component is a link or it is not ``uid``'s (the job may replace it: this is root,
    acting in the job's directory)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
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
    checked(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    os.umask(0o022)
    # As the job's user: a directory it may not enter stops it, with the reason in its log.
    working_dir = plan.get("working_dir")
    try:
        os.chdir(working_dir or plan["cwd"])
    except OSError as exc:
        if working_dir is None:
            raise
        who = "" if plan["uid"] is None else f" (the job runs as uid {plan['uid']})"
        say(f"muster: workingDir {working_dir}: {exc.strerror}{who}\n")
        os._exit(SANDBOX_FAILED)
    command = plan["command"]
    try:
        os.execvpe(command[0], command, plan["env"])
    except OSError as exc:
        say(f"muster: cannot start {command[0]!r}: {exc.strerror}\n")
        os._exit(NOT_FOUND)
