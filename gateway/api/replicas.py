"""GET /v1/jobs/{id}/replicas: where the job's pods run, with their nodes and GPU devices."""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import check_job
from gateway.api.context import ENGINE
from gateway.api.serializers import json_response, timestamp
from gateway.db import jobs as job_store
from gateway.db import replicas as replica_store
from gateway.domain.resources import format_cpu, format_extended, format_gpu, format_memory

routes = web.RouteTableDef()


@routes.get("/v1/jobs/{id}/replicas")
async def list_replicas(request: web.Request) -> web.Response:
    job = await job_store.get(request.app[ENGINE], request.match_info["id"])
    check_job(request, job)
    placed = await replica_store.of_job(request.app[ENGINE], job.id)
    return json_response(
        {
            "items": [
                {
                    "name": replica.pod_name,
                    "role": replica.role,
                    "index": replica.index,
                    "attempt": replica.attempt,
                    "node": replica.node,
                    "cpu": format_cpu(replica.cpu_millis),
                    "memory": format_memory(replica.memory_bytes),
                    "gpu": format_gpu(replica.gpu_shares),
                    "gpu_devices": [
                        {"index": piece.device, "shares": piece.shares} for piece in replica.gpu
                    ],
                    "extended": {
                        name: format_extended(name, amount) for name, amount in replica.extended
                    },
                    "started_at": timestamp(replica.started_at),
                    "released_at": timestamp(replica.released_at),
                }
                for replica in placed
            ]
        }
    )
