"""The local backend's supervisor daemon: one long-lived process per data directory that starts,
stops and watches every replica, and pushes each exit to the gateways as it happens.

    python -m gateway.backends.daemon STATE_DIR        (STATE_DIR: <data dir>/local)

A gateway starts it when none runs (``daemon_client``). It takes ``supervisor.lock`` in
STATE_DIR (flock, held for its whole life: at most one daemon per data directory, however many
gateways start one at once), listens on ``supervisor.sock`` there (0600, in the data directory,
which only the gateway's user reaches: jobs never can), forks itself into its own session and
says ``ready <pid>`` on stdout. It outlives the gateway, as its replicas do, and leaves once no
gateway has been connected and no replica has run for ``IDLE_SECONDS``.

Each replica is a fork of this process (no new interpreter): ``replica.run`` in the child,
which waits until the daemon has written the pod's record, then runs the replica contained,
records its exit status and cleans up. The child is no part of the daemon: if the daemon dies,
replicas run on, record their exits and clean up, and the next daemon adopts the ones still
running (``adopt``: it reads every pod record and watches the live ones through pidfds).

The protocol: one JSON object per line over the socket. A request has an ``id`` that its answer
repeats, and an ``op``:

==================================================  ============================================
request                                             answer
==================================================  ============================================
``{"op": "start", "plan": PLAN}``                   ``{"record": RECORD}``, once the pod's record
                                                    (pid, start time, start id, uid, cgroups,
                                                    work directory, exit file, the plan's grace
                                                    period) is written; a plan whose record
                                                    already runs is not started twice
``{"op": "stop", "start": S, "grace": SECONDS}``    ``{"stopped": true}``, once the replica's
                                                    supervisor is gone: SIGTERM, then after the
                                                    grace (the gateway sends the record's) SIGKILL
                                                    to every process of its container, then to
                                                    the supervisor
``{"op": "subscribe"}``                             ``{}``; events follow on this connection
``{"op": "features"}``                              ``{"features": [...]}``: what of a plan this
                                                    daemon honours beyond the first protocol
                                                    (``FEATURES``; a daemon from before answers
                                                    an error: none)
``{"op": "recorded", "record": PATH,                ``{}``, after ``started`` went out (a record
"fields": RECORD}``                                 the gateway wrote: a replica not run)
``{"op": "forget", "record": PATH, "start": S}``    ``{}``, after ``removed`` went out
==================================================  ============================================

An answer may be ``{"error": TEXT}`` instead. Events, to every subscriber, in the order they
happened: ``{"event": "started", "record": PATH, "fields": RECORD}``, ``{"event": "exited",
"record": PATH, "start": S, "code": CODE}`` (``code`` null: the supervisor vanished without a
status) and ``{"event": "removed", "record": PATH, "start": S}`` (a gateway deleted the pod).

Invariants: no replica runs before its record is written; the daemon never waits on a replica
(one thread, one selector; stops escalate on timers); the exit files stay the source of truth:
an event only says "look now", so a lost event, a daemon restart or a gateway restart costs
time, never an exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import heapq
import itertools
import json
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gateway.backends import cgroups, replica

LOCK = "supervisor.lock"
SOCKET = "supervisor.sock"
PID_FILE = "supervisor.pid"
LOG = "supervisor.log"
#: The launcher's one line: the daemon listens (and its pid), or another daemon holds the lock.
READY = "ready"
RUNNING = "running"
#: With no gateway connected and no replica running for this long, the daemon leaves.
IDLE_SECONDS = 5.0
#: What of a plan this daemon honours beyond the first protocol: a daemon outlives gateways, so
#: an upgraded gateway asks before it sends a plan that needs one (``working_dir``; ``mounts``:
#: emptyDir volumes mounted in the replica's namespace).
FEATURES = ("mounts", "working_dir")
#: After a stopped replica's processes were killed, how long its supervisor has to record that.
KILL_AFTER_SECONDS = 2.0
#: A subscriber that reads nothing while this much waits for it is dropped (it relists).
MAX_PENDING_BYTES = 64 * 2**20
RECORD_NAMES_SKIPPED = ("ports.json",)


@dataclass(eq=False, slots=True)
class Replica:
    """A replica's supervisor that the daemon watches: forked here, or adopted."""

    start: str
    record: str  # the pod record's path
    exit: str  # the exit file's path
    pid: int
    pidfd: int
    child: bool  # forked by this daemon (so reaped here), or adopted from an earlier one
    cgroups: tuple[str, ...]
    reported: bool = False
    stopping: bool = False
    waiters: list[tuple[Client, object]] = field(default_factory=list)


class Client:
    """One gateway's connection: a line buffer each way."""

    def __init__(self, daemon: Daemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.subscribed = False
        self.closed = False
        self._events = selectors.EVENT_READ

    def ready(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ and not self.closed:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.daemon.drop(self)
                return
            self.inbox += data
            while not self.closed and (end := self.inbox.find(b"\n")) >= 0:
                line = bytes(self.inbox[:end])
                del self.inbox[: end + 1]
                self.daemon.handle(self, line)

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self.outbox += json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(self.outbox) > MAX_PENDING_BYTES:
            self.daemon.drop(self)
            return
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbox) if self.outbox else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.daemon.drop(self)
            return
        del self.outbox[:sent]
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        if wanted != self._events:
            self._events = wanted
            self.daemon.selector.modify(self.sock, wanted, self.ready)


class Daemon:
    """The supervisor of one data directory's replicas. See the module docstring."""

    def __init__(self, state_dir: Path, listener: socket.socket) -> None:
        self.state_dir = state_dir
        self.listener = listener
        # Supervisors report a recorded exit here at once (a datagram each); the pidfd of a
        # supervisor that ends without one (killed, or adopted) says so later.
        self.reports, self.report_to = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.reports.setblocking(False)
        self.report_to.setblocking(False)
        self.selector: selectors.BaseSelector = selectors.DefaultSelector()
        self.clients: set[Client] = set()
        self.replicas: dict[str, Replica] = {}  # by start id
        self.by_record: dict[str, Replica] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._idle_since: float | None = None

    # The loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until idle for ``IDLE_SECONDS``."""
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self.reports, selectors.EVENT_READ, self._read_reports)
        for watched in self.replicas.values():
            self._watch(watched)
        while True:
            for key, mask in self.selector.select(self._timeout()):
                _guarded(functools.partial(key.data, mask))
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, due = heapq.heappop(self._timers)
                _guarded(due)
            if self.clients or self.replicas:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= IDLE_SECONDS:
                return

    def _timeout(self) -> float | None:
        deadlines = [self._timers[0][0]] if self._timers else []
        if self._idle_since is not None:
            deadlines.append(self._idle_since + IDLE_SECONDS)
        if not self.clients and not self.replicas and self._idle_since is None:
            deadlines.append(time.monotonic())  # start the idle clock at once
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def later(self, seconds: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + seconds, next(self._sequence), action))

    def _accept(self, _mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = Client(self, sock)
        self.clients.add(client)
        self.selector.register(sock, selectors.EVENT_READ, client.ready)

    def drop(self, client: Client) -> None:
        if client.closed:
            return
        client.closed = True
        self.clients.discard(client)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        client.sock.close()

    def broadcast(self, event: dict[str, Any]) -> None:
        for client in list(self.clients):
            if client.subscribed:
                client.send(event)

    # Requests ------------------------------------------------------------------------------

    def handle(self, client: Client, line: bytes) -> None:
        ident: object = None
        try:
            request = json.loads(line)
            ident = request.get("id")
            op = request["op"]
            if op == "start":
                answer: dict[str, Any] = {"record": self.start(request["plan"])}
            elif op == "stop":
                self.stop(client, ident, str(request["start"]), float(request["grace"]))
                return  # answered once the replica is gone
            elif op == "subscribe":
                client.subscribed = True
                answer = {}
            elif op == "features":
                answer = {"features": list(FEATURES)}
            elif op == "recorded":  # a record a gateway wrote itself (a replica not run)
                event = {"record": request["record"], "fields": request["fields"]}
                self.broadcast({"event": "started", **event})
                answer = {}
            elif op == "forget":
                event = {"record": request["record"], "start": request["start"]}
                self.broadcast({"event": "removed", **event})
                answer = {}
            else:
                answer = {"error": f"no such operation: {op!r}"}
        except Exception as exc:
            _log(f"request failed: {traceback.format_exc()}")
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        client.send({"id": ident, **answer})

    def start(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Fork the replica's supervisor, write the pod's record, then let the supervisor go."""
        record = str(plan["record"])
        running = self.by_record.get(record)
        if running is not None and not running.reported and _read_exit(running.exit) is None:
            # Started already: starting is idempotent. A supervisor that recorded its exit and
            # still cleans up, or whose record was removed since, stands for no start.
            with contextlib.suppress(OSError, ValueError):
                fields = _read_record(record)
                if str(fields.get("start")) == running.start:
                    return fields
        go_read, go_write = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing buffered here is written again by the child
        # Blocked across the fork: a stop that reaches the child before it took the signals
        # waits for it instead of running the daemon's handlers there.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, replica.STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(go_read)
            os.close(go_write)
            raise
        if pid == 0:
            replica.run(plan, go_read, self.report_to.fileno())  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(go_read)
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
            fields = {
                "pid": pid,
                "create_time": psutil.Process(pid).create_time(),
                "start": plan["start"],
                "uid": plan["uid"],
                "cgroups": plan["cgroups"],
                "work": plan["cwd"],
                "exit": plan["exit"],
                # How long a stop waits between SIGTERM and SIGKILL: kept for whoever deletes it.
                "grace": plan.get("grace"),
            }
            _write_record(record, fields)
            os.write(go_write, replica.GO)
        except BaseException:
            os.close(go_write)  # the child reads the end of the pipe and leaves, untouched
            if pidfd >= 0:
                os.close(pidfd)  # a start that fails on every pass must not leak one each time
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            raise
        os.close(go_write)
        started = Replica(
            start=str(plan["start"]),
            record=record,
            exit=str(plan["exit"]),
            pid=pid,
            pidfd=pidfd,
            child=True,
            cgroups=tuple(plan["cgroups"]),
        )
        self._track(started)
        self._watch(started)
        self.broadcast({"event": "started", "record": record, "fields": fields})
        return fields

    def stop(self, client: Client, ident: object, start: str, grace: float) -> None:
        """SIGTERM the replica's supervisor (it passes the signal to every process of the
        container); after ``grace``, kill every process of the container; answer once the
        supervisor is gone."""
        stopped = self.replicas.get(start)
        if stopped is None:
            client.send({"id": ident, "stopped": True})
            return
        stopped.waiters.append((client, ident))
        if stopped.stopping:
            return
        stopped.stopping = True
        self._signal(stopped, signal.SIGTERM)
        self.later(grace, lambda: self._kill(stopped))

    def _kill(self, stopped: Replica) -> None:
        if self.replicas.get(stopped.start) is not stopped:
            return
        if stopped.cgroups:
            cgroups.kill(stopped.cgroups, timeout=0)  # one pass: the loop never waits
        else:
            # The supervisor's children: the namespace's init (killing it ends the namespace)
            # or, as a subreaper, every descendant of the command.
            with contextlib.suppress(psutil.Error):
                for process in psutil.Process(stopped.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        process.kill()
        self.later(KILL_AFTER_SECONDS, lambda: self._kill_supervisor(stopped))

    def _kill_supervisor(self, stopped: Replica) -> None:
        """A supervisor that has not reported its replica's exit by now is stuck: kill it. One
        that has is cleaning up (the work directory, the uid's keyrings), which must finish for
        the next job given the uid to find nothing of this one: it is left to end."""
        if not stopped.reported:
            self._signal(stopped, signal.SIGKILL)

    def _signal(self, target: Replica, signum: int) -> None:
        if self.replicas.get(target.start) is target:  # its pidfd is still open
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(target.pidfd, signum)

    # Watching replicas ---------------------------------------------------------------------

    def adopt(self) -> None:
        """Watch every replica an earlier daemon started that still runs (its record names a
        live process, the same one, and no exit status)."""
        for path in sorted(self.state_dir.glob("*/*/*.json")):
            if path.name in RECORD_NAMES_SKIPPED or path.name.endswith(".plan.json"):
                continue
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                fields = _read_record(str(path))
                exit_file = str(fields.get("exit") or path.with_suffix(".exit"))
                pid = int(fields.get("pid") or 0)
                if pid <= 0 or os.path.exists(exit_file):
                    continue
                created = float(fields["create_time"])  # a bad record fails before the pidfd
                pidfd = os.pidfd_open(pid)
                # Checked once the pidfd holds the process: no pid reuse can slip in between.
                if not _same_process(pid, created):
                    os.close(pidfd)
                    continue
                self._track(
                    Replica(
                        start=str(fields.get("start") or path),
                        record=str(path),
                        exit=exit_file,
                        pid=pid,
                        pidfd=pidfd,
                        child=False,
                        cgroups=tuple(fields.get("cgroups") or ()),
                    )
                )

    def _track(self, watched: Replica) -> None:
        self.replicas[watched.start] = watched
        self.by_record[watched.record] = watched

    def _watch(self, watched: Replica) -> None:
        self.selector.register(watched.pidfd, selectors.EVENT_READ, lambda _: self._gone(watched))

    def _read_reports(self, _mask: int) -> None:
        while True:
            try:
                report = self.reports.recv(256).decode()
            except BlockingIOError:
                return
            start, _, code = report.partition(" ")
            reported = self.replicas.get(start)
            if reported is not None:
                self._exited(reported, int(code))

    def _exited(self, ended: Replica, code: int | None) -> None:
        if ended.reported:
            return
        ended.reported = True
        self.broadcast(
            {"event": "exited", "record": ended.record, "start": ended.start, "code": code}
        )

    def _gone(self, ended: Replica) -> None:
        """The replica's supervisor ended (cleanup done): reap it, and say so if its own report
        did not (it was killed, or was adopted and reports to an earlier daemon)."""
        self.selector.unregister(ended.pidfd)
        os.close(ended.pidfd)
        if ended.child:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(ended.pid, 0)
        self._exited(ended, _read_exit(ended.exit))
        del self.replicas[ended.start]
        if self.by_record.get(ended.record) is ended:
            del self.by_record[ended.record]
        for client, ident in ended.waiters:
            client.send({"id": ident, "stopped": True})


def _guarded(action: Callable[[], None]) -> None:
    """Run one handler or timer; a failure is logged and the daemon goes on (replicas must never
    lose their daemon to one bad request)."""
    try:
        action()
    except Exception:
        _log(f"handler failed: {traceback.format_exc()}")


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} {text}", file=sys.stderr, flush=True)


def _read_record(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as file:
        fields: dict[str, Any] = json.load(file)
    return fields


def _write_record(path: str, fields: dict[str, Any]) -> None:
    """Write a pod record atomically (its directory made, 0700, if it is the job's first)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as file:
        json.dump(fields, file)
    os.replace(partial, path)


def _read_exit(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def _same_process(pid: int, create_time: float) -> bool:
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


@contextlib.contextmanager
def short_path(directory: Path, name: str) -> Iterator[str]:
    """A path to ``directory/name`` short enough for a socket address (108 bytes) however deep
    the directory is: through an open descriptor of it, valid while the block runs."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def _listen(state_dir: Path) -> socket.socket:
    """The daemon's socket, 0600 (a stale one of a dead daemon is replaced: the lock is ours)."""
    path = state_dir / SOCKET
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        with short_path(state_dir, SOCKET) as address:
            listener.bind(address)
    finally:
        os.umask(old)
    listener.listen(128)
    listener.setblocking(False)
    return listener


def _detach(log: Path) -> None:
    """Leave the launcher's session and output: stdin from /dev/null, stdout and stderr to the
    daemon's own log (the gateway that started it may be long gone)."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gateway.backends.daemon STATE_DIR", file=sys.stderr)
        return 2
    state_dir = Path(argv[0])
    # Whatever the launcher's parent left open beyond stdio (an event loop's spawn may pass the
    # gateway's sockets or its output pipe) is no business of the daemon: held here, a pipe
    # would keep the gateway's reader waiting for an end that never comes.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    os.closerange(3, soft if soft > 3 else 1 << 20)
    lock = os.open(state_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(RUNNING, flush=True)
        return 0
    listener = _listen(state_dir)
    daemon = Daemon(state_dir, listener)
    daemon.adopt()
    pid = os.fork()
    if pid != 0:  # the launcher: the daemon listens; say so and leave
        print(f"{READY} {pid}", flush=True)
        os._exit(0)
    _detach(state_dir / LOG)
    pid_file = state_dir / PID_FILE
    pid_file.write_text(f"{os.getpid()}\n", "utf-8")
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    gc.freeze()  # what start-up made stays shared with every fork, untouched by collections
    try:
        daemon.serve()
    finally:
        # The lock is released only when this process ends, after these are gone.
        (state_dir / SOCKET).unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
