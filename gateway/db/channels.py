"""The LISTEN/NOTIFY channels: every channel Muster NOTIFYs on or LISTENs to, named here only.

A NOTIFY is only a wake-up. It carries no payload, it reaches only the sessions listening at
commit, and it may be lost (a dropped connection, a gateway starting), so every loop it wakes
also ticks on a timer: a lost NOTIFY delays work, never loses it. PostgreSQL delivers a NOTIFY
when the transaction that sent it commits, so a woken loop always sees what that transaction
wrote.

Who sends on each channel is said below; who is woken is wired in one place,
``gateway.loops.runtime``, which owns the one LISTEN connection of each gateway process.
"""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    """The channels Muster NOTIFYs on; each value is the channel's name in PostgreSQL."""

    #: A job was queued or cancelled, so the queue or the free capacity changed. Sent after the
    #: API's transaction commits, coalesced (``gateway.db.notify.Notifier``).
    JOBS = "muster_jobs"
    #: A job left the cluster (ended, was cancelled or evicted), so capacity came free: the
    #: leader admits at once. Sent at commit by the transition that released its placements
    #: (``gateway.db.transitions``).
    FREED = "muster_freed"
    #: An admission cycle admitted jobs (``gateway.db.admission``): there are pods to create and
    #: ``job.admitted`` webhooks to send.
    ADMITTED = "muster_admitted"
    #: A transition wrote a webhook outbox row, or a delivery was asked for again
    #: (``gateway.db.webhooks``).
    WEBHOOKS = "muster_webhooks"


def notify_sql(channel: Channel) -> str:
    """The statement that NOTIFYs ``channel`` (delivered when its transaction commits)."""
    return f"SELECT pg_notify('{channel.value}', '')"
