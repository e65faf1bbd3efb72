"""The Kubernetes backend at scale: API calls, bytes and memory of the informers, and how fast a
pod's end reaches the reconciler, against an emulated API server of 5,000 nodes and 50,000 pods.

    python bench/kubernetes_scale.py                 # 5,000 nodes (8 GPUs), 50,000 pods
    python bench/kubernetes_scale.py --quick         # 500 nodes, 5,000 pods

The emulator (``Emulator``, below) runs in a child process, so the gateway side's memory is its
own. It behaves like an API server where the backend depends on it: uids and resourceVersions,
paged lists with ``continue``, label selectors (``k=v``, ``k!=v``) and the field selectors the
backend sends (``status.phase!=``), watches from a resourceVersion with bookmarks,
``timeoutSeconds`` and 410 Gone for a version older than its history. kmock's emulator is not
used: it matches every request against its whole request log, which at this size is the
bottleneck, not the backend.

The gateway side is the backend as ``muster serve`` wires it (``NodeCache``,
``KubernetesInventory``, ``KubernetesRuntime``, one client with the default rate limit), without
the database: what is measured is what the backend asks of the API server. A fifth of the pods
are Muster's (labelled as its own), the rest other workloads'.

Phases, each reported per minute of its own length:

1. start-up: the three informers' first lists (time, requests, bytes read);
2. idle (``--idle`` s): nothing changes; goal: no list call, only watches and bookmarks;
3. churn (``--churn`` s): the emulator ends and replaces others' pods and ends Muster's at
   ``--rate`` a second each, and Muster creates gangs (8 pods and Services each) at a tenth of
   that; goal: Muster's calls are its own writes plus a constant number of watches;
4. latency: for every Muster pod ended during churn, the time from the emulator's write to the
   runtime's ``on_change`` (what wakes the reconciler, whose pass ends the job and wakes
   admission); goal p99 <= 100 ms;
5. memory: the gateway process's peak RSS; goal <= 400 MB, cache included.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30
MUSTER_SHARE = 5  # one pod in five is Muster's
HISTORY = 200_000


# -- the emulated API server (child process) -------------------------------------------------------


def _labels_match(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value:
                return False
    return True


def _fields_match(selector: str, obj: dict[str, Any]) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            path, value = term.split("!=", 1)
            current: Any = obj
            for part in path.split("."):
                current = current.get(part, {}) if isinstance(current, dict) else {}
            if current == value:
                return False
    return True


class Emulator:
    """Nodes and pods in dicts, a change history for watches, and request/byte counters."""

    def __init__(self) -> None:
        self.version = 1
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"nodes": {}, "pods": {}}
        self.other: dict[str, dict[str, Any]] = {}  # services, configmaps: stored, not watched
        self.history: collections.deque[tuple[int, str, str, dict[str, Any], bool]] = (
            collections.deque(maxlen=HISTORY)
        )
        self.changed = asyncio.Condition()
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_out = 0
        self.ended_at: dict[str, float] = {}

    def _stamp(self, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)

    async def change(self, plural: str, kind: str, obj: dict[str, Any], before: bool) -> None:
        key = f"{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"
        self._stamp(obj)
        if kind == "DELETED":
            self.objects[plural].pop(key, None)
        else:
            self.objects[plural][key] = obj
        self.history.append((self.version, kind, plural, obj, before))
        async with self.changed:
            self.changed.notify_all()

    def seed(self, nodes: int, pods: int) -> None:
        for i in range(nodes):
            self.version += 1
            name = f"node-{i:05d}"
            allocatable = {"cpu": "96", "memory": "768Gi", "nvidia.com/gpu": "8", "pods": "110"}
            self.objects["nodes"][name] = {
                "metadata": {
                    "name": name,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self.version),
                    "labels": {"kubernetes.io/hostname": name, "zone": f"z{i % 3}"},
                },
                "status": {
                    "allocatable": allocatable,
                    "capacity": allocatable,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        for i in range(pods):
            self.version += 1
            pod = _pod(i, f"node-{i % nodes:05d}", mine=i % MUSTER_SHARE == 0)
            pod["metadata"]["resourceVersion"] = str(self.version)
            self.objects["pods"][f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"] = pod

    # -- HTTP ---------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = path.strip("/").split("/")
        if path == "/stats":
            return web.json_response(
                {"requests": dict(self.requests), "bytes": self.bytes_out, "ended": self.ended_at}
            )
        if path == "/churn":
            body = await request.json()
            asyncio.get_running_loop().create_task(self.churn(**body))
            return web.json_response({})
        if path == "/reset":
            self.requests.clear()
            self.bytes_out = 0
            self.ended_at.clear()
            return web.json_response({})
        plural = parts[-1] if len(parts) in (3, 5) else parts[-2]
        watching = request.query.get("watch") == "true"
        verb = request.method + (
            " watch"
            if watching
            else (" list" if len(parts) in (3, 5) and request.method == "GET" else "")
        )
        self.requests[f"{verb} {plural}"] += 1
        if request.method == "GET" and watching:
            return await self.watch(request, plural)
        if request.method == "GET" and len(parts) in (3, 5):
            return self._reply(self.list(request, plural))
        if request.method == "GET":
            key = f"{parts[3]}/{parts[5]}" if len(parts) == 6 else parts[-1]
            found = self.objects.get(plural, {}).get(key) or self.other.get(f"{plural}/{key}")
            if found is None:
                return self._reply({"kind": "Status", "code": 404}, 404)
            return self._reply(found)
        if request.method == "POST":
            obj = await request.json()
            obj["metadata"]["uid"] = str(uuid.uuid4())
            obj["metadata"]["namespace"] = parts[3]
            key = f"{parts[3]}/{obj['metadata']['name']}"
            if plural == "pods":
                obj.setdefault("status", {})["phase"] = "Running"
                obj["spec"]["nodeName"] = obj["metadata"]["annotations"]["muster.dev/node"]
                await self.change("pods", "ADDED", obj, False)
            else:
                self.other[f"{plural}/{key}"] = obj
            return self._reply(obj, 201)
        if request.method == "DELETE":
            key = f"{parts[3]}/{parts[5]}"
            found = self.objects.get(plural, {}).get(key)
            if found is not None:
                await self.change(plural, "DELETED", found, True)
            self.other.pop(f"{plural}/{key}", None)
            return self._reply({"kind": "Status", "status": "Success"})
        return self._reply({"kind": "Status", "code": 405}, 405)

    def _reply(self, body: Any, status: int = 200) -> web.Response:
        data = json.dumps(body).encode()
        self.bytes_out += len(data)
        return web.Response(body=data, status=status, content_type="application/json")

    def _selected(self, request: web.Request, obj: dict[str, Any]) -> bool:
        labels, fields = request.query.get("labelSelector"), request.query.get("fieldSelector")
        return (not labels or _labels_match(labels, obj["metadata"].get("labels") or {})) and (
            not fields or _fields_match(fields, obj)
        )

    def list(self, request: web.Request, plural: str) -> dict[str, Any]:
        limit = int(request.query.get("limit", "0") or 0) or 10**9
        start = int(request.query.get("continue", "0") or 0)
        chosen = [o for o in self.objects[plural].values() if self._selected(request, o)]
        page = chosen[start : start + limit]
        metadata: dict[str, Any] = {"resourceVersion": str(self.version)}
        if start + limit < len(chosen):
            metadata["continue"] = str(start + limit)
        return {"kind": "List", "metadata": metadata, "items": page}

    async def watch(self, request: web.Request, plural: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        last = int(request.query.get("resourceVersion") or self.version)
        if self.history and last < self.history[0][0] - 1:
            await self._send(response, {"type": "ERROR", "object": {"code": 410}})
            return response
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds") or 300)
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        try:
            while time.monotonic() < deadline:
                for version, kind, where, obj, _ in list(self.history):
                    if version <= last:
                        continue
                    last = version
                    if where == plural and self._selected(request, obj):
                        await self._send(response, {"type": kind, "object": obj})
                async with self.changed:
                    try:
                        await asyncio.wait_for(self.changed.wait(), 10.0)
                    except TimeoutError:
                        # As the API server does: a bookmark after a quiet while.
                        if bookmarks:
                            bookmark = {"metadata": {"resourceVersion": str(last)}}
                            await self._send(response, {"type": "BOOKMARK", "object": bookmark})
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _send(self, response: web.StreamResponse, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.bytes_out += len(data)
        await response.write(data)

    async def churn(self, *, seconds: float, rate: int) -> None:
        """Others' pods end and are replaced, and Muster's pods end, ``rate`` a second each."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        serial = 10**7
        while loop.time() < end:
            mine = [
                p
                for p in list(self.objects["pods"].values())
                if _mine(p) and p["status"]["phase"] == "Running"
            ][:rate]
            others = [p for p in list(self.objects["pods"].values()) if not _mine(p)][:rate]
            for pod in others:
                await self.change("pods", "DELETED", pod, True)
                serial += 1
                fresh = _pod(serial, pod["spec"]["nodeName"], mine=False)
                fresh["metadata"]["uid"] = str(uuid.uuid4())
                await self.change("pods", "ADDED", fresh, False)
            for pod in mine:
                ended = json.loads(json.dumps(pod))
                ended["status"] = {
                    "phase": "Succeeded",
                    "containerStatuses": [{"state": {"terminated": {"exitCode": 0}}}],
                }
                self.ended_at[ended["metadata"]["name"]] = time.time()
                await self.change("pods", "MODIFIED", ended, True)
            await asyncio.sleep(1.0)


def _mine(pod: dict[str, Any]) -> bool:
    return pod["metadata"]["labels"].get("app.kubernetes.io/managed-by") == "muster"


def _pod(i: int, node: str, *, mine: bool) -> dict[str, Any]:
    labels = {"app": f"svc-{i % 97}"}
    if mine:
        labels.update(
            {
                "app.kubernetes.io/managed-by": "muster",
                "muster.dev/job-id": f"job-{i // 8:06d}",
                "muster.dev/attempt": "0",
            }
        )
    return {
        "metadata": {
            "name": f"pod-{i:07d}",
            "namespace": f"team-{i % 40}",
            "uid": str(uuid.uuid4()),
            "labels": labels,
            "annotations": {"muster.dev/node": node} if mine else {},
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example.com/app:1",
                    "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
                }
            ],
        },
        "status": {"phase": "Running"},
    }


def serve(port: int, nodes: int, pods: int, ready: Any) -> None:
    async def main() -> None:
        emulator = Emulator()
        emulator.seed(nodes, pods)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", emulator.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the gateway side ------------------------------------------------------------------------------


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(args: argparse.Namespace, port: int) -> int:
    from aiohttp import ClientSession

    from gateway.backends.base import Gang
    from gateway.backends.kubernetes.client import kube_client
    from gateway.backends.kubernetes.inventory import KubernetesInventory, NodeCache
    from gateway.backends.kubernetes.runtime import KubernetesRuntime
    from gateway.domain.jobs.check import check_job_spec
    from gateway.domain.jobs.pods import pod_name
    from gateway.domain.jobs.spec import JobSpec
    from gateway.domain.scheduling.queueing import Placement
    from tests.integration.kube import kubeconfig

    base = f"http://127.0.0.1:{port}"
    http = ClientSession()

    async def stats() -> dict[str, Any]:
        async with http.get(f"{base}/stats") as response:
            result: dict[str, Any] = await response.json()
            return result

    async def reset() -> None:
        async with http.get(f"{base}/reset"):
            pass

    with tempfile.TemporaryDirectory() as tmp:
        api = await kube_client(kubeconfig(Path(tmp) / "kubeconfig", base), qps=50, burst=100)
    nodes = NodeCache(api)
    inventory = KubernetesInventory(api, nodes=nodes)
    runtime = KubernetesRuntime(api, cluster_domain=None, nodes=nodes)
    heard: dict[str, float] = {}

    def pod_changed(key: str, old: Any, new: Any) -> None:
        if new is not None and new["status"].get("phase") == "Succeeded":
            heard.setdefault(new["metadata"]["name"], time.time())

    runtime.pods.on_change(pod_changed)
    before_rss = rss_mib()
    start = time.perf_counter()
    for informer in (*inventory.informers, runtime.pods):
        informer.start()
    for informer in (*inventory.informers, runtime.pods):
        await informer.wait_synced(600)  # a first list of 50,000 pods may take a while
    offered = await inventory.nodes()
    await runtime.observe()
    took = time.perf_counter() - start
    first = await stats()
    print(
        f"start-up: {len(offered)} nodes, {len(runtime.pods.items)} Muster pods and "
        f"{len(inventory.others.items)} others' pods cached in {took:.1f} s; "
        f"{sum(first['requests'].values())} requests, {first['bytes'] / 2**20:.1f} MiB read; "
        f"RSS {before_rss:.0f} -> {rss_mib():.0f} MiB"
    )

    await reset()
    await asyncio.sleep(args.idle)
    idle = await stats()
    per_minute = 60 / args.idle
    print(f"\nidle {args.idle:.0f} s (per minute):")
    for call, count in sorted(idle["requests"].items()):
        print(f"  {call:<28} {count * per_minute:8.1f}")
    print(f"  {'bytes read':<28} {idle['bytes'] * per_minute / 1024:8.1f} KiB")
    idle_lists = sum(c for k, c in idle["requests"].items() if " list " in f" {k} ")

    await reset()
    spec_doc = {
        "name": "gang",
        "tenant": "bench",
        "framework": "generic",
        "replicas": {"worker": {"count": 8, "image": "reg/x:1", "resources": {"cpu": "1"}}},
    }
    async with http.post(f"{base}/churn", json={"seconds": args.churn, "rate": args.rate}):
        pass
    created = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + args.churn
    while loop.time() < end:
        for _ in range(max(1, args.rate // 10)):
            job = f"{uuid.uuid4()}"
            spec_doc["name"] = f"g{created}"
            spec = check_job_spec(spec_doc)
            assert isinstance(spec, JobSpec)
            gang = Gang(
                job_id=job,
                spec=spec,
                namespace="bench",
                attempt=0,
                placements=tuple(
                    Placement(
                        pod_name=pod_name(f"g{created}", "worker", k),
                        role="worker",
                        index=k,
                        node=offered[(created * 8 + k) % len(offered)].name,
                        cpu_millis=1000,
                        memory_bytes=GIB,
                    )
                    for k in range(8)
                ),
            )
            await runtime.create(gang, tuple(p.pod_name for p in gang.placements))
            created += 1
        await asyncio.sleep(1.0)
    await asyncio.sleep(1.0)
    churn = await stats()
    per_minute = 60 / args.churn
    writes = sum(c for k, c in churn["requests"].items() if k.startswith(("POST", "DELETE")))
    reads = {k: c for k, c in churn["requests"].items() if not k.startswith(("POST", "DELETE"))}
    print(
        f"\nchurn {args.churn:.0f} s at {args.rate}/s ended and replaced, {created} gangs of 8 "
        f"created (per minute):"
    )
    for call, count in sorted(churn["requests"].items()):
        print(f"  {call:<28} {count * per_minute:8.1f}")
    print(f"  {'bytes read':<28} {churn['bytes'] * per_minute / 2**20:8.1f} MiB")

    latencies = sorted(
        (heard[name] - at) * 1000 for name, at in churn["ended"].items() if name in heard
    )
    missed = len(churn["ended"]) - len(latencies)
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = (
        latencies[int(len(latencies) * 0.99) - 1]
        if len(latencies) >= 100
        else max(latencies or [0.0])
    )
    print(
        f"\npod end -> runtime on_change: {len(latencies)} ends, p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, not heard {missed}"
    )
    peak = rss_mib()
    print(f"gateway peak RSS: {peak:.0f} MiB")

    print("\ngoals:")
    verdicts = [
        ("idle: no list call after start-up", idle_lists == 0, f"{idle_lists} lists"),
        (
            "churn: calls are writes plus a constant number of watches",
            sum(c for k, c in reads.items() if "watch" not in k) == 0,
            f"{writes} writes, reads {reads}",
        ),
        ("pod end reaches the loop within 100 ms at p99", p99 <= 100, f"p99 {p99:.1f} ms"),
        ("gateway RSS <= 400 MB", peak * 2**20 <= 400e6, f"{peak:.0f} MiB"),
    ]
    for goal, met, figure in verdicts:
        print(f"  {'PASS' if met else 'MISS'}  {goal}: {figure}")
    await runtime.pods.stop()
    await inventory.close()
    await api.close()
    await http.close()
    return 0 if all(met for _, met, _ in verdicts) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="500 nodes and 5,000 pods")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of the idle phase")
    parser.add_argument("--churn", type=float, default=60.0, help="seconds of the churn phase")
    parser.add_argument("--rate", type=int, default=50, help="pods ended a second, each kind")
    parser.add_argument("--port", type=int, default=18765)
    args = parser.parse_args()
    nodes, pods = (500, 5_000) if args.quick else (5_000, 50_000)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
        f"{nodes} nodes x 8 GPUs, {pods} pods ({pods // MUSTER_SHARE} Muster's)\n"
    )
    ready = multiprocessing.Event()
    child = multiprocessing.Process(target=serve, args=(args.port, nodes, pods, ready), daemon=True)
    child.start()
    ready.wait(300)
    try:
        return asyncio.run(measure(args, args.port))
    finally:
        child.terminate()


if __name__ == "__main__":
    sys.exit(main())
