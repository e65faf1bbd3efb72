"""What one replica costs on the local backend, from its start to the gateway knowing it ended.

    python bench/local_replicas.py [--replicas 1000] [--live 20] [--tick 1.0] [--unprivileged]

Drives ``LocalRuntime`` as the reconciler does, without a database: each replica (the command
``true``) is a one-pod job, at most ``--live`` run at once, and their ends are learnt as the
reconciler learns them: woken by the exits the runtime pushes (``on_change``) where it has them,
else by calling ``observe()`` every ``--tick`` seconds (the reconciler's interval). Finished
pods are kept, as a job's ``clean_pod_policy: Running`` keeps them. As root, every replica is
contained as the hostile tier runs it: a uid of its own, namespaces, cgroups.

Printed: wall time; CPU per replica in the gateway's process and in supervision (supervisors,
namespace inits, the commands, cleanup), summed; supervision memory at its peak (RSS and USS
summed over every supervision process, sampled by a separate process) and the long-lived
supervisor's own RSS; how long ``create()`` takes; and exit to told: from the exit record
written (its mtime) to ``observe()`` reporting the replica ended, p50 and p99.

The same script measures the tree it sits in: run a copy of it in an older checkout for
"before".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from gateway.backends.base import Gang
from gateway.backends.local import LocalRuntime
from gateway.backends.sandbox import DEFAULT_RUN_AS, instance_name, probe_isolation
from gateway.domain.jobs.spec import Framework, JobSpec, ReplicaSpec
from gateway.domain.lifecycle.decisions import ReplicaPhase
from gateway.domain.resources import Resources
from gateway.domain.scheduling.queueing import Placement

#: The command line of supervision processes: the daemon and its forks (each replica's
#: supervisor and its namespace's init keep the daemon's), or (before the daemon) one
#: supervisor per replica and its namespace's init.
MARKERS = ("gateway.backends.daemon", "gateway.backends.supervisor")
#: The process name (``ps``) of a replica's supervisor and of its namespace's init.
NAMES = ("muster-replica",)
ENDED = (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED)
MIB = 2**20


def _exit_lags(
    runtime: LocalRuntime, told: dict[tuple[str, str], float]
) -> tuple[list[float], list[str]]:
    """From each replica's exit record written (its mtime) to the runtime telling of its end;
    and the log tails of the replicas that failed."""
    lags = []
    failed: list[str] = []
    for (job_id, name), when in told.items():
        record = json.loads((runtime.state_dir / job_id / "0" / f"{name}.json").read_text())
        exit_file = Path(record["exit"])
        lags.append(when - exit_file.stat().st_mtime)
        if exit_file.read_text().strip() != "0":
            failed.append(runtime.log_path(job_id, name).read_text()[-400:])
    return lags, failed


def gang(index: int) -> Gang:
    replica = ReplicaSpec(
        role="worker",
        count=1,
        image="none",
        command=("true",),
        resources=Resources(cpu_millis=1000, memory_bytes=256 * MIB),
    )
    spec = JobSpec(name="t", tenant="bench", framework=Framework.GENERIC, replicas=(replica,))
    placement = Placement(
        pod_name="t-worker-0",
        role="worker",
        index=0,
        node="local",
        cpu_millis=1000,
        memory_bytes=256 * MIB,
    )
    return Gang(
        job_id=f"bench-{index:05d}",
        spec=spec,
        namespace="bench",
        attempt=0,
        placements=(placement,),
    )


def supervision(data: Path) -> list[psutil.Process]:
    """The daemon of ``data`` and every replica supervisor (and namespace init) of it."""
    found = []
    for process in psutil.process_iter(["cmdline", "name"]):
        cmdline = process.info["cmdline"] or []
        ours = process.info["name"] in NAMES or any(marker in cmdline for marker in MARKERS)
        if ours and any(str(data) in part for part in cmdline):
            found.append(process)
    return found


def sample(data: Path, out: Path) -> None:
    """The memory sampler (a process of its own, so its work is nobody's CPU): peaks, written
    to ``out`` when SIGTERM comes."""
    peak = {"rss": 0, "uss": 0, "processes": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        rss = uss = 0
        processes = supervision(data)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                info = process.memory_full_info()
                rss += info.rss
                uss += info.uss
        peak = {
            "rss": max(peak["rss"], rss),
            "uss": max(peak["uss"], uss),
            "processes": max(peak["processes"], len(processes)),
        }
        time.sleep(0.1)
    out.write_text(json.dumps(peak))


def daemon_of(data: Path) -> psutil.Process | None:
    """The long-lived supervisor of the data directory, where there is one."""
    with contextlib.suppress(OSError, ValueError, psutil.Error):
        return psutil.Process(int((data / "local" / "supervisor.pid").read_text().split()[0]))
    return None


def cpu_of(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        times = process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system
    return 0.0


def own_cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


async def drive(runtime: LocalRuntime, count: int, live_cap: int, tick: float) -> dict[str, Any]:
    changed = asyncio.Event()
    on_change = getattr(runtime, "on_change", None)
    if on_change is not None:
        on_change(changed.set)
    live: set[tuple[str, str]] = set()
    told: dict[tuple[str, str], float] = {}
    creates: list[float] = []
    room = asyncio.Event()
    created_all = False

    async def watch() -> None:
        while not created_all or live:
            if on_change is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), tick)
                changed.clear()
            else:
                await asyncio.sleep(tick)
            statuses = await runtime.observe()
            now = time.time()
            for key in list(live):
                status = statuses.get(key)
                if status is not None and status.phase in ENDED:
                    told[key] = now
                    live.discard(key)
            room.set()

    watcher = asyncio.create_task(watch(), name="watch")
    for index in range(count):
        while len(live) >= live_cap:
            room.clear()
            await room.wait()
        one = gang(index)
        name = one.placements[0].pod_name
        live.add((one.job_id, name))
        started = time.perf_counter()
        await runtime.create(one, (name,))
        creates.append(time.perf_counter() - started)
    created_all = True
    room.set()
    await watcher
    lags, failed = _exit_lags(runtime, told)
    if failed:
        print(f"{len(failed)} replicas failed; the first one's log:\n{failed[0]}", file=sys.stderr)
    return {
        "pushed": on_change is not None,
        "failed": len(failed),
        "create_p50": statistics.median(creates),
        "create_p99": statistics.quantiles(creates, n=100)[98],
        "told_p50": statistics.median(lags),
        "told_p99": statistics.quantiles(lags, n=100)[98],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--live", type=int, default=20, help="replicas running at once, at most")
    parser.add_argument("--tick", type=float, default=1.0, help="the reconciler's interval")
    parser.add_argument("--unprivileged", action="store_true", help="no uid, namespaces, cgroups")
    parser.add_argument("--sample", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sample:
        sample(Path(args.sample[0]), Path(args.sample[1]))
        return

    isolated = os.geteuid() == 0 and not args.unprivileged
    parent = Path("/var/lib/muster-bench") if os.geteuid() == 0 else Path(tempfile.gettempdir())
    parent.mkdir(mode=0o755, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="lr-", dir=parent))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir(mode=0o700)
    os.umask(0o077)
    isolation = probe_isolation(DEFAULT_RUN_AS, ["*"], instance=instance_name(data), probe=isolated)
    runtime = LocalRuntime(data, work_dir=base / "work", isolation=isolation, path="/usr/bin:/bin")
    peaks = base / "peaks.json"
    sampler = subprocess.Popen([sys.executable, __file__, "--sample", str(data), str(peaks)])
    try:
        own_before, children_before = own_cpu()
        started = time.monotonic()
        result = asyncio.run(drive(runtime, args.replicas, args.live, args.tick))
        wall = time.monotonic() - started
        own_after, children_after = own_cpu()
        daemon = daemon_of(data)
        daemon_rss = daemon.memory_info().rss if daemon is not None else 0
        supervision_cpu = children_after - children_before + cpu_of(daemon)
    finally:
        sampler.terminate()
        sampler.wait()
        peak = json.loads(peaks.read_text()) if peaks.exists() else {"rss": 0, "uss": 0}
        with contextlib.suppress(Exception):
            asyncio.run(runtime.close())
        daemon = daemon_of(data)
        if daemon is not None:
            with contextlib.suppress(psutil.Error):
                daemon.kill()
        shutil.rmtree(base, ignore_errors=True)
    count = args.replicas
    rows = [
        ("replicas (`true`), at most live", f"{count}, {args.live}"),
        ("contained", isolation.describe()),
        (
            "ends learnt by",
            "pushed exits" if result["pushed"] else f"observe() every {args.tick} s",
        ),
        ("replicas that failed", str(result["failed"])),
        ("wall time", f"{wall:.1f} s"),
        ("gateway CPU per replica", f"{(own_after - own_before) / count * 1000:.1f} ms"),
        ("supervision CPU per replica", f"{supervision_cpu / count * 1000:.1f} ms"),
        ("supervision RSS at peak (all processes)", f"{peak['rss'] / MIB:.0f} MiB"),
        ("supervision USS at peak (all processes)", f"{peak['uss'] / MIB:.0f} MiB"),
        ("long-lived supervisor RSS", f"{daemon_rss / MIB:.0f} MiB" if daemon_rss else "none"),
        (
            "create() p50 / p99",
            f"{result['create_p50'] * 1000:.1f} / {result['create_p99'] * 1000:.1f} ms",
        ),
        (
            "exit to told p50 / p99",
            f"{result['told_p50'] * 1000:.1f} / {result['told_p99'] * 1000:.1f} ms",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
