"""Who holds each GPU device: the live placements' slices, device by device, with their jobs.

A placement's ``gpu`` column lists its slices (``[{"device": d, "shares": s}, ...]``); each slice
of a live placement (``released_at IS NULL``) is one ``DeviceHolder``. These are the rows whose
shares ``gateway.db.admission.load_holdings`` subtracts from the devices, so on every device the
holders' shares and its free shares add up to what the device offers (when no placement changed
between the two reads).

What a caller may learn of a holder (its tenant and job) is the API's to decide; this module
returns every holder, in (node, device, tenant, job name, job id, pod) order.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceHolder:
    """One live placement's slice of one GPU device: ``shares`` of device ``device`` of
    ``node``, held by a pod of job ``job_id`` (named ``job_name``) of ``tenant``."""

    node: str
    device: int
    tenant: str
    job_id: str
    job_name: str
    shares: int


_HOLDERS = text(
    """
    SELECT p.node, CAST(slice ->> 'device' AS integer) AS device,
           CAST(slice ->> 'shares' AS integer) AS shares,
           j.tenant, CAST(j.id AS text) AS job_id, j.name AS job_name
    FROM placements p
    JOIN jobs j ON j.id = p.job_id
    CROSS JOIN LATERAL jsonb_array_elements(p.gpu) AS slice
    WHERE p.released_at IS NULL
    ORDER BY p.node, device, j.tenant, j.name, j.id, p.pod_name
    """
)


async def load_device_holders(conn: AsyncConnection) -> tuple[DeviceHolder, ...]:
    """Every slice of every live placement, with its job (module docstring)."""
    return tuple(
        DeviceHolder(
            node=row["node"],
            device=row["device"],
            tenant=row["tenant"],
            job_id=row["job_id"],
            job_name=row["job_name"],
            shares=row["shares"],
        )
        for row in (await conn.execute(_HOLDERS)).mappings()
    )
