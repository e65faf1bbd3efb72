"""Priority class routes: admins create, replace, read, list and delete classes
(``/v1/admin/priority-classes``); tenants are granted classes through their own settings
(``gateway.api.admin``).

Invariants: platform admins only, for reading too (a class's name and value would tell a
tenant what others may run at); a name that is no DNS label is refused before anything is read
or written (422 on a PUT, 404 otherwise, as for a class that does not exist).
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import actor, require_admin
from gateway.api.body import read_checked
from gateway.api.context import ENGINE, SETTINGS
from gateway.api.serializers import json_response, priority_class_view
from gateway.db import priority_classes as class_store
from gateway.domain.names import DNS_1123_LABEL
from gateway.domain.problems import FieldProblem
from gateway.domain.scheduling.priority import PriorityClass
from gateway.errors import ValidationFailed

routes = web.RouteTableDef()


def _class_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not DNS_1123_LABEL.fullmatch(name):
        raise class_store.missing(name)
    return name


@routes.put("/v1/admin/priority-classes/{name}")
async def put_priority_class(request: web.Request) -> web.Response:
    """Create or replace a class. Jobs already submitted with it keep what they were given."""
    require_admin(request)
    name = request.match_info["name"]
    if not DNS_1123_LABEL.fullmatch(name):
        detail = f"priority class name {name[:80]!r} is not a DNS-1123 label"
        raise ValidationFailed([FieldProblem(pointer="", detail=detail)])
    body = await read_checked(request, request.app[SETTINGS].api.max_body_bytes, "PriorityClassPut")
    record, created = await class_store.put(
        request.app[ENGINE],
        PriorityClass(
            name=name,
            # The schema bounds it to the job priority range; JSON Schema counts 7.0 as an integer.
            value=int(body["value"]),
            preemptible=body.get("preemptible", True),
        ),
        description=body.get("description", ""),
        actor=actor(request),
    )
    headers = {"Location": f"/v1/admin/priority-classes/{name}"} if created else None
    return json_response(
        priority_class_view(record), status=201 if created else 200, headers=headers
    )


@routes.get("/v1/admin/priority-classes/{name}")
async def get_priority_class(request: web.Request) -> web.Response:
    require_admin(request)
    record = await class_store.get(request.app[ENGINE], _class_name(request))
    return json_response(priority_class_view(record))


@routes.get("/v1/admin/priority-classes")
async def list_priority_classes(request: web.Request) -> web.Response:
    require_admin(request)
    records = await class_store.list_all(request.app[ENGINE])
    return json_response({"items": [priority_class_view(record) for record in records]})


@routes.delete("/v1/admin/priority-classes/{name}")
async def delete_priority_class(request: web.Request) -> web.Response:
    """Delete a class; 409 while it is granted to a tenant or named by a live job."""
    require_admin(request)
    await class_store.delete(request.app[ENGINE], _class_name(request), actor=actor(request))
    return web.Response(status=204)
