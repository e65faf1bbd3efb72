"""How the local backend contains a job: whom it runs as, where it works, what it sees.

Every job is hostile code. ``probe_isolation`` decides once, at start, what this machine lets
Muster enforce, and the result (``Isolation``) shapes every replica's launch plan:

- Users. When the gateway runs as root, each job runs under a uid of its own from
  ``MUSTER_LOCAL_RUN_AS`` (a range; default 1900000000-1900065535, numbers no distribution hands
  out), or under one named user. A job's uid never reads the gateway's data directory, the issuer
  key, the database's socket, another job's work directory, or another job's processes.
- Containers. With the privilege to make namespaces, each replica has its own PID, mount and IPC
  namespace (``supervisor``), so stopping it ends everything it started; and with cgroups, its
  memory, CPU and process count are limited to what it asked for (``cgroups``).
- Unprivileged. A gateway that is not root cannot change users: its jobs run as itself and could
  read everything it can. It says so at start and runs jobs only of the tenants in
  ``MUSTER_LOCAL_TRUSTED_TENANTS`` (default: demo, the tenant a fresh install makes).

A replica's environment is an allow-list (``process_env``): PATH (``MUSTER_LOCAL_PATH``), HOME
and TMPDIR in its own work directory, LANG, USER and LOGNAME, then the job's own variables and
Muster's contract (TF_CONFIG, ranks, CUDA_VISIBLE_DEVICES, ...). Nothing of the gateway's
environment reaches it.

Invariants: ``Isolation.isolated`` is true only when jobs run under users other than the
gateway's; ``refusal`` names the reason a tenant's jobs may not run here, or is None; a uid is
never given to two live jobs at once (``choose_uid``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.backends.cgroups import Cgroups, probe_cgroups
from gateway.errors import ConfigError

DEFAULT_RUN_AS = "1900000000-1900065535"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
JOB_USER = "muster-job"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunAs:
    """Whom replicas run as: uids ``first``..``last`` (one per job), or one user for all."""

    first: int
    last: int
    gid: int | None = None  # a named user's group; a range's uids use their own number
    name: str = JOB_USER

    @property
    def shared(self) -> bool:
        return self.first == self.last


def parse_run_as(text: str) -> RunAs:
    """``FIRST-LAST`` (a uid range) or a user name or uid (every job as that user)."""
    first, dash, last = text.partition("-")
    if dash and first.isdigit() and last.isdigit():
        low, high = int(first), int(last)
        if not 0 < low <= high < 2**32 - 1:
            raise ConfigError(
                f"MUSTER_LOCAL_RUN_AS={text!r}: give a uid range such as {DEFAULT_RUN_AS}"
            )
        if low < 1000:
            raise ConfigError(f"MUSTER_LOCAL_RUN_AS={text!r}: uids under 1000 belong to the system")
        taken = sorted((e.pw_uid, e.pw_name) for e in pwd.getpwall() if low <= e.pw_uid <= high)
        if taken:
            uid, name = taken[0]
            raise ConfigError(
                f"MUSTER_LOCAL_RUN_AS={text!r}: uid {uid} is the user {name}, whose files a job "
                "would own; give a range no user has"
            )
        return RunAs(first=low, last=high)
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, OverflowError):
        raise ConfigError(
            f"MUSTER_LOCAL_RUN_AS={text!r}: no such user; give a user or a uid range "
            "such as 1900000000-1900065535"
        ) from None
    if entry.pw_uid == 0:
        raise ConfigError("MUSTER_LOCAL_RUN_AS: replicas never run as root")
    return RunAs(first=entry.pw_uid, last=entry.pw_uid, gid=entry.pw_gid, name=entry.pw_name)


@dataclass(frozen=True, kw_only=True, slots=True)
class Isolation:
    """What this machine lets the local backend enforce on jobs."""

    run_as: RunAs | None  # None: replicas run as the gateway's own user
    namespaces: bool
    cgroups: Cgroups | None
    trusted_tenants: frozenset[str] | None  # None: every tenant (only read when not isolated)
    notes: tuple[str, ...] = ()

    @property
    def isolated(self) -> bool:
        return self.run_as is not None

    def refusal(self, tenant: str) -> str | None:
        """Why ``tenant``'s jobs may not run here, or None."""
        if self.isolated or self.trusted_tenants is None or tenant in self.trusted_tenants:
            return None
        trusted = ", ".join(sorted(self.trusted_tenants)) or "none"
        return (
            f"this gateway cannot isolate local jobs from each other and from itself (it does "
            f"not run as root), so it runs jobs of trusted tenants only ({trusted}); an "
            f"operator may trust {tenant} with MUSTER_LOCAL_TRUSTED_TENANTS"
        )

    def describe(self) -> str:
        """One line for the start banner."""
        if self.run_as is None:
            trusted = (
                "every tenant"
                if self.trusted_tenants is None
                else "tenants " + (", ".join(sorted(self.trusted_tenants)) or "none")
            )
            return (
                f"NOT isolated: jobs run as this gateway's user (uid {os.geteuid()}) and can "
                f"read its data directory; they run only for {trusted} "
                "(MUSTER_LOCAL_TRUSTED_TENANTS)"
            )
        users = (
            f"as {self.run_as.name}"
            if self.run_as.shared
            else f"each job as its own uid ({self.run_as.first}-{self.run_as.last})"
        )
        parts = [users]
        parts.append("own PID namespace" if self.namespaces else "no PID namespace")
        parts.append(self.cgroups.describe() if self.cgroups else "no cgroup limits")
        return "isolated: " + ", ".join(parts)


def probe_isolation(
    run_as: str, trusted_tenants: Collection[str], *, instance: str, probe: bool = True
) -> Isolation:
    """Decide what the local backend can enforce here (``probe=False``: assume nothing).
    ``instance`` names this data directory's cgroups."""
    trusted = None if "*" in trusted_tenants else frozenset(trusted_tenants)
    if os.geteuid() != 0 or not probe:
        return Isolation(run_as=None, namespaces=False, cgroups=None, trusted_tenants=trusted)
    users = parse_run_as(run_as)
    can = _probe_privileges(users.first)
    notes: list[str] = []
    if not can.get("setuid"):
        notes.append(f"cannot change to uid {users.first}: {can.get('setuid_error')}")
        return Isolation(
            run_as=None, namespaces=False, cgroups=None, trusted_tenants=trusted, notes=tuple(notes)
        )
    namespaces = bool(can.get("namespaces"))
    if not namespaces:
        notes.append(f"no namespaces: {can.get('namespaces_error')}")
    groups, why = probe_cgroups(instance)
    if groups is None or why:
        notes.append(f"cgroups: {why}")
    return Isolation(
        run_as=users,
        namespaces=namespaces,
        cgroups=groups,
        trusted_tenants=trusted,
        notes=tuple(notes),
    )


_PROBE = """
import ctypes, json, os, sys
result = {}
uid = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    try:
        os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
        os._exit(0)
    except OSError as exc:
        os.write(2, str(exc).encode()); os._exit(1)
result["setuid"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x20000000 | 0x00020000 | 0x08000000) == 0:
    result["namespaces"] = True
else:
    result["namespaces_error"] = os.strerror(ctypes.get_errno())
print(json.dumps(result))
"""


def _probe_privileges(uid: int) -> dict[str, object]:
    """Ask a short-lived child whether it may change users and make namespaces (trying either
    in this process would change it)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(uid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={"PATH": DEFAULT_PATH},
        )
        result: dict[str, object] = json.loads(done.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return {"setuid": False, "setuid_error": str(exc)}
    if not result.get("setuid"):
        result["setuid_error"] = done.stderr.strip() or "refused"
    return result


def instance_name(data_dir: Path) -> str:
    """A name for what belongs to one data directory (its cgroups): ``muster-<digest>``."""
    return "muster-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def claim_work_dir(work_dir: Path, data_dir: Path) -> None:
    """Mark ``work_dir`` as the data directory's; refuse one that another data directory uses
    (each sweeps what its records do not claim, and would remove the other's jobs' files)."""
    marker = work_dir / ".muster-data-dir"
    mine = str(data_dir.resolve())
    try:
        owner = marker.read_text("utf-8").strip()
    except FileNotFoundError:
        marker.write_text(mine + "\n", "utf-8")
        return
    if owner != mine:
        raise ConfigError(
            f"MUSTER_LOCAL_WORK_DIR={work_dir} is used by the data directory {owner}; "
            "give each data directory a work directory of its own"
        )


def choose_uid(job_id: str, users: RunAs, in_use: Mapping[str, int]) -> int:
    """The uid for ``job_id``: the one it already has, else a free one of the range, starting
    from a place derived from the job id (so restarts rarely move it)."""
    if job_id in in_use:
        return in_use[job_id]
    if users.shared:
        return users.first
    size = users.last - users.first + 1
    taken = set(in_use.values())
    start = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % size
    for step in range(size):
        uid = users.first + (start + step) % size
        if uid not in taken:
            return uid
    raise RuntimeError(f"every uid of {users.first}-{users.last} is in use")


class UidClaims:
    """Machine-wide claims on job uids: gateways of different data directories, each picking
    uids from the same range, never give one uid to two live jobs.

    A claim is a file ``<root>/<uid>`` made exclusively, naming the data directory's instance
    and the job. A claim of another job is honoured while it is fresh or a process of that uid
    runs; an older one whose uid runs nothing (its gateway was killed) is taken over.
    """

    FRESH_SECONDS = 60.0

    def __init__(self, instance: str, root: Path = Path("/run/muster/uids")) -> None:
        self.instance = instance
        self.root = root
        root.parent.mkdir(mode=0o755, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)

    def claim(self, uid: int, job_id: str) -> bool:
        path = self.root / str(uid)
        tag = f"{self.instance} {job_id}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                held = path.read_text("utf-8")
                age = time.time() - path.stat().st_mtime
            except OSError:
                return False
            if held != tag and (age < self.FRESH_SECONDS or _uid_runs(uid)):
                return False
            # A name of its own: two claims at once (two jobs, two processes) never share one.
            fd, partial = tempfile.mkstemp(prefix=f".{uid}.", dir=self.root)
            with os.fdopen(fd, "w") as file:
                file.write(tag)
            os.replace(partial, path)  # also refreshes the claim's time
            return True
        with os.fdopen(fd, "w") as file:
            file.write(tag)
        return True

    def held(self) -> list[tuple[int, str]]:
        """(uid, job) of every claim this instance holds."""
        mine = []
        prefix = f"{self.instance} "
        for path in self.root.iterdir():
            with contextlib.suppress(OSError, ValueError):
                held = path.read_text("utf-8")
                if held.startswith(prefix) and not path.name.startswith("."):
                    mine.append((int(path.name), held[len(prefix) :]))
        return mine

    def release(self, uid: int, job_id: str) -> None:
        path = self.root / str(uid)
        with contextlib.suppress(OSError):
            if path.read_text("utf-8") == f"{self.instance} {job_id}":
                path.unlink()


def _uid_runs(uid: int) -> bool:
    import psutil

    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            return True
    return False


def process_env(
    contract: Mapping[str, str], *, home: Path, tmp: Path, path: str, user: str
) -> dict[str, str]:
    """A replica's whole environment: a minimal base, then the job's variables and Muster's."""
    env = {
        "PATH": path,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "USER": user,
        "LOGNAME": user,
    }
    env.update(contract)
    return env


def check_reachable(path: Path, uid: int) -> None:
    """Refuse a work directory that the job's user could not reach (an ancestor it cannot
    search, such as a 0700 home directory)."""
    for ancestor in [path, *path.parents]:
        try:
            info = ancestor.stat()
        except FileNotFoundError:
            continue
        if info.st_uid == uid:
            continue
        if not info.st_mode & 0o001:
            raise ConfigError(
                f"MUSTER_LOCAL_WORK_DIR={path}: jobs (uid {uid}) cannot reach it because "
                f"{ancestor} is not searchable by others (mode {info.st_mode & 0o777:o}); "
                "choose a directory such as /var/lib/muster/work"
            )
