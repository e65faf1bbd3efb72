"""Control groups for local replicas: one per pod, with its memory, CPU and process limits.

Each replica of the local backend runs in a cgroup of its own, made before any of its processes
starts, under a parent that Muster owns:

- cgroup v2 (one unified hierarchy): ``<mount>/<parent>/<pod>``, with the memory, cpu and pids
  controllers enabled for the parent's children;
- cgroup v1 (a hierarchy per controller): ``<mount of memory|cpu|pids>/<this process's
  cgroup>/<parent>/<pod>`` in each hierarchy that is mounted and writable.

The parent is named after the data directory (``muster-<digest>``), so gateways of different
data directories never take each other's pods for strays.

Limits: ``memory.max`` (v1 ``memory.limit_in_bytes``, and the memory+swap limit where swap is
accounted) is the replica's memory request; ``cpu.max`` (v1 the CFS quota) is its CPU request;
``pids.max`` bounds its processes and threads, so a fork bomb stays inside, and the parent's
``pids.max`` bounds all replicas together to half the machine's process ids. The memory limit makes
the kernel's OOM killer end the replica, and ``oom_killed`` tells the supervisor so.

Invariants: a pod's cgroup dirs are recorded with the pod, so a restarted gateway removes what an
earlier one made; ``kill`` ends every process in the cgroups whatever it did (setsid, double fork);
a cgroup is removed only once it is empty; a host without usable cgroups gets ``None`` from
``probe_cgroups`` and the reason, never an error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

V2_CONTROLLERS = ("memory", "cpu", "pids")
V1_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, kw_only=True, slots=True)
class PodLimits:
    memory_bytes: int
    cpu_millis: int
    pids: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Cgroups:
    """Where pod cgroups go: one parent dir (v2) or one per controller (v1)."""

    version: int
    parents: tuple[tuple[str, Path], ...]  # (controller, parent dir); v2 has one ("", dir)

    def describe(self) -> str:
        names = ", ".join(sorted({c for c, _ in self.parents if c} or V2_CONTROLLERS))
        return f"cgroup v{self.version} ({names})"

    @property
    def controllers(self) -> frozenset[str]:
        if self.version == 2:
            return frozenset(V2_CONTROLLERS)
        return frozenset(c for c, _ in self.parents)

    def dirs(self, name: str) -> tuple[str, ...]:
        """The pod cgroup dirs ``create`` makes for ``name``, in the same order."""
        return tuple(str(parent / name) for _, parent in self.parents)

    def create(self, name: str, limits: PodLimits) -> tuple[str, ...]:
        """Make the pod's cgroup dirs with their limits; return them (for the pod's record)."""
        made: list[str] = []
        try:
            for controller, parent in self.parents:
                path = parent / name
                with contextlib.suppress(FileExistsError):
                    path.mkdir(mode=0o755)
                made.append(str(path))
                if self.version == 2:
                    _write(path / "memory.max", str(limits.memory_bytes))
                    _write_if_present(path / "memory.swap.max", "0")
                    _write(path / "cpu.max", f"{_cpu_quota(limits.cpu_millis)} {CPU_PERIOD_US}")
                    _write(path / "pids.max", str(limits.pids))
                elif controller == "memory":
                    _write(path / "memory.limit_in_bytes", str(limits.memory_bytes))
                    # Where swap is accounted, memory+swap gets the same limit: no swapping out.
                    memsw = path / "memory.memsw.limit_in_bytes"
                    _write_if_present(memsw, str(limits.memory_bytes))
                elif controller == "cpu":
                    _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    _write(path / "cpu.cfs_quota_us", str(_cpu_quota(limits.cpu_millis)))
                elif controller == "pids":
                    _write(path / "pids.max", str(limits.pids))
        except OSError:
            remove(made)
            raise
        return tuple(made)

    def orphans(self, live: Iterable[str]) -> list[tuple[str, ...]]:
        """Pod cgroups under the parents whose name is not in ``live``, grouped by name."""
        keep = set(live)
        found: dict[str, list[str]] = {}
        for _, parent in self.parents:
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir() and child.name not in keep:
                        found.setdefault(child.name, []).append(str(child))
        return [tuple(dirs) for _, dirs in sorted(found.items())]


def _cpu_quota(cpu_millis: int) -> int:
    # At least 1 ms per period: the kernel refuses quotas under 1000 us.
    return max(1000, cpu_millis * CPU_PERIOD_US // 1000)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)


def _write_if_present(path: Path, value: str) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):
        _write(path, value)


def join(dirs: Sequence[str], pid: int) -> None:
    """Move process ``pid`` into every dir of a pod's cgroup."""
    for path in dirs:
        _write(Path(path) / "cgroup.procs", str(pid))


def members(dirs: Sequence[str]) -> set[int]:
    pids: set[int] = set()
    for path in dirs:
        with contextlib.suppress(OSError, ValueError):
            text = (Path(path) / "cgroup.procs").read_text()
            pids.update(int(line) for line in text.split())
    return pids


def kill(dirs: Sequence[str], *, timeout: float = 5.0) -> bool:
    """SIGKILL every process in the pod's cgroups until they are empty; True once empty."""
    deadline = time.monotonic() + timeout
    for path in dirs:
        # cgroup v2 (Linux 5.14+) kills the whole subtree in one write, racing no fork.
        with contextlib.suppress(OSError):
            _write(Path(path) / "cgroup.kill", "1")
    while True:
        pids = members(dirs)
        if not pids:
            return True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def remove(dirs: Sequence[str], *, timeout: float = 2.0) -> None:
    """Remove a pod's cgroup dirs; a dir still busy (a dying process) is retried briefly."""
    deadline = time.monotonic() + timeout
    for path in dirs:
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    break
                time.sleep(0.01)


def oom_killed(dirs: Sequence[str]) -> bool:
    """Whether the kernel's OOM killer ended a process in the pod's memory cgroup."""
    for path in dirs:
        for name in ("memory.events", "memory.oom_control"):
            with contextlib.suppress(OSError, ValueError):
                for line in (Path(path) / name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return True
    return False


# Finding a place for pod cgroups ----------------------------------------------------------------


def probe_cgroups(
    parent: str,
    *,
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
) -> tuple[Cgroups | None, str]:
    """Where this process may make pod cgroups (in dirs named ``parent``), or None and why
    not."""
    try:
        own = _own_cgroups(proc_cgroup.read_text())
        mounts = _cgroup_mounts(mountinfo.read_text())
    except OSError as exc:
        return None, f"cannot read the cgroup layout ({exc})"
    unified = mounts.get("")
    if unified is not None and (unified[0] / "cgroup.controllers").exists() and len(mounts) == 1:
        return _probe_v2(unified[0], parent)
    return _probe_v1(own, mounts, parent)


def _probe_v2(mount: Path, name: str) -> tuple[Cgroups | None, str]:
    available = set((mount / "cgroup.controllers").read_text().split())
    missing = [c for c in V2_CONTROLLERS if c not in available]
    if missing:
        return None, f"cgroup v2 lacks the {', '.join(missing)} controller(s)"
    parent = mount / name
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    try:
        parent.mkdir(mode=0o755, exist_ok=True)
        _write(mount / "cgroup.subtree_control", enable)
        _write(parent / "cgroup.subtree_control", enable)
        _write(parent / "pids.max", str(_machine_pids()))
    except OSError as exc:
        wanted = ", ".join(V2_CONTROLLERS)
        return None, f"cannot make {parent} with the {wanted} controllers ({exc})"
    return Cgroups(version=2, parents=(("", parent),)), ""


def _probe_v1(
    own: dict[str, str], mounts: dict[str, tuple[Path, str]], name: str
) -> tuple[Cgroups | None, str]:
    parents: list[tuple[str, Path]] = []
    problems: list[str] = []
    for controller in V1_CONTROLLERS:
        if controller not in mounts or controller not in own:
            problems.append(f"no {controller} hierarchy")
            continue
        mount, root = mounts[controller]
        relative = own[controller]
        if root != "/" and relative.startswith(root):
            relative = relative[len(root) :]
        parent = mount / relative.lstrip("/") / name
        try:
            parent.mkdir(mode=0o755, exist_ok=True)
            probe = parent / f".probe-{os.getpid()}"
            probe.mkdir(exist_ok=True)
            probe.rmdir()
            if controller == "pids":
                _write(parent / "pids.max", str(_machine_pids()))
        except OSError as exc:
            problems.append(f"cannot make cgroups in {parent.parent} ({exc.strerror})")
            continue
        parents.append((controller, parent))
    if not any(c == "memory" for c, _ in parents):
        return None, "; ".join(problems) or "no memory cgroup"
    return Cgroups(version=1, parents=tuple(parents)), "; ".join(problems)


def _machine_pids() -> int:
    """What all of one gateway's replicas together may hold of the machine's process ids: half,
    so that replicas of many tenants cannot leave the gateway and PostgreSQL unable to fork."""
    try:
        return max(1024, int(Path("/proc/sys/kernel/pid_max").read_text()) // 2)
    except (OSError, ValueError):
        return 16384


def _own_cgroups(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> path (the v2 entry under the key "")."""
    own: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


def _cgroup_mounts(text: str) -> dict[str, tuple[Path, str]]:
    """cgroup mounts from ``/proc/self/mountinfo`` as controller -> (mount point, its root);
    the unified (v2) hierarchy under the key ""."""
    mounts: dict[str, tuple[Path, str]] = {}
    for line in text.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype = fields[3], Path(_unescape(fields[4])), tail[0]
        if fstype == "cgroup2":
            mounts.setdefault("", (point, root))
        elif fstype == "cgroup":
            for option in tail[2].split(","):
                if option in V1_CONTROLLERS:
                    mounts.setdefault(option, (point, root))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field
