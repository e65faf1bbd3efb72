"""Kubernetes backend throughput: pods + Services created per second against kmock's emulator.

Side by side in one run: the client's rate limit at QPS 50 (burst 100, the defaults) and
unlimited; and the time from "admitted" (create() called) to every pod and Service of the gang
created, for gangs of 1, 8 and 64 pods. Everything is on 127.0.0.1; the emulator is in-process.

Read the large-gang rows with care: kmock matches every request against its whole request log
(cProfile shows kmock's filtering as most of the time at 64 pods), so the emulator, not the
backend, sets the pace there; against a real API server the client limit is what binds.

    python bench/kubernetes.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.backends.base import Gang
from gateway.backends.kubernetes.client import kube_client
from gateway.backends.kubernetes.inventory import NodeCache
from gateway.backends.kubernetes.runtime import KubernetesRuntime
from gateway.domain.jobs.check import check_job_spec
from gateway.domain.jobs.pods import pod_name
from gateway.domain.jobs.spec import JobSpec
from gateway.domain.scheduling.queueing import Placement
from tests.integration.kube import kubeconfig, node, running_cluster, seed

NAMESPACE = "bench"


def gang(job: int, size: int) -> Gang:
    workers = size - 1
    replicas: dict[str, dict[str, object]] = {"chief": {"image": "img"}}
    if workers:
        replicas["worker"] = {"count": workers, "image": "img"}
    spec = check_job_spec(
        {"name": f"j{job}", "tenant": "bench", "framework": "tensorflow", "replicas": replicas}
    )
    assert isinstance(spec, JobSpec), spec
    placements = tuple(
        Placement(
            pod_name=pod_name(spec.name, r.role, i),
            role=r.role,
            index=i,
            node=f"n-{i % 4}",
            cpu_millis=1000,
            memory_bytes=2**30,
            gpu=(),
        )
        for r in spec.replicas
        for i in range(r.count)
    )
    return Gang(
        job_id=f"00000000-0000-4000-8000-{job:012d}",
        spec=spec,
        namespace=NAMESPACE,
        attempt=0,
        placements=placements,
    )


async def measure(qps: float, burst: int, size: int, repeat: int) -> tuple[float, float]:
    """(objects created per second, median seconds from create() to the whole gang created)"""
    seconds = []
    objects = 0
    async with running_cluster() as cluster:
        seed(cluster, *(node(f"n-{i}", cpu="64", memory="256Gi") for i in range(4)))
        with tempfile.TemporaryDirectory() as tmp:
            api = await kube_client(
                kubeconfig(Path(tmp) / "kubeconfig", str(cluster.url)), qps=qps, burst=burst
            )
            try:
                runtime = KubernetesRuntime(api, cluster_domain=None, nodes=NodeCache(api))
                for job in range(repeat):
                    g = gang(job, size)
                    started = time.perf_counter()
                    await runtime.create(g, tuple(p.pod_name for p in g.placements))
                    seconds.append(time.perf_counter() - started)
                    objects += 2 * size
            finally:
                await api.close()
    return objects / sum(seconds), statistics.median(seconds)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    limits = (("QPS 50, burst 100", 50.0, 100), ("unlimited", 1e9, 10**9))
    print(f"{'gang':>5} {'client limit':>18} {'objects/s':>10} {'admitted->created s':>20}")
    for size in (1, 8, 64):
        rates = []
        for label, qps, burst in limits:
            rate, median = await measure(qps, burst, size, args.repeat)
            rates.append(rate)
            print(f"{size:>5} {label:>18} {rate:>10.0f} {median:>20.3f}")
        print(f"{'':>5} {'limited/unlimited':>18} {rates[0] / rates[1]:>10.2f}")


if __name__ == "__main__":
    asyncio.run(main())
