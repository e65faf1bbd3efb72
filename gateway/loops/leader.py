"""Leadership: the replica that holds a session-level PostgreSQL advisory lock runs the loops.

The lock lives on one dedicated connection. PostgreSQL releases it when that session ends, so a
replica that dies (even by SIGKILL) hands leadership over as soon as its connection is gone; the
others try to take it every interval. The same connection LISTENs for wake-ups.

Invariant: ``is_leader`` is True only while the lock connection answers; any error on it drops
leadership at once. Safety never rests on this flag alone: admission cycles also serialize on a
transaction-level lock (see ``gateway.db.admission``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

LEADER_LOCK = 0x6D75_0000


class Leadership:
    def __init__(self, engine: AsyncEngine, channels: Iterable[str], wake: asyncio.Event) -> None:
        self._engine = engine
        self._channels = tuple(channels)
        self._wake = wake
        self._conn: AsyncConnection | None = None

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def check(self) -> bool:
        """Keep or try to take the lock. Returns whether this replica leads now."""
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                # End the transaction: PostgreSQL delivers NOTIFY only to sessions that are
                # not inside one, so an open transaction here would mute every wake-up.
                await self._conn.commit()
                return True
            except Exception:
                log.warning("lost the leader connection; stepping down", exc_info=True)
                await self._drop()
                return False
        conn = await self._engine.connect()
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK})
            # Session-level locks outlive transactions; end the implicit one so the
            # connection does not sit "idle in transaction".
            await conn.commit()
            if not got:
                await conn.close()
                return False
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            for channel in self._channels:
                await driver.add_listener(channel, self._notified)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        log.info("this replica is now the leader")
        self._wake.set()
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def release(self) -> None:
        """Step down cleanly (shutdown): unlock, then close the connection."""
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK})
            await conn.commit()
        self._conn = None
        with contextlib.suppress(Exception):
            await conn.close()
        log.info("released leadership")
