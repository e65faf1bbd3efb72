"""Coalesced NOTIFY: wake the leader's loops without serializing every commit.

PostgreSQL serializes the commits of all transactions that issued NOTIFY (a global lock is held
through commit). Notifying inside every submit would cap submits at one commit at a time, so
writers call ``Notifier.poke()`` after their transaction commits, and one background task sends at
most one NOTIFY per channel every ``min_interval`` seconds. A poke is never lost: one that arrives
while a NOTIFY is being sent causes another after the interval. The loops also tick on a timer, so
even a lost wake-up only delays work, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, engine: AsyncEngine, channel: str, *, min_interval: float = 0.05) -> None:
        self._engine = engine
        self._channel = channel
        self._min_interval = min_interval
        self._pending = asyncio.Event()

    def poke(self) -> None:
        self._pending.set()

    async def run(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(
                        text("SELECT pg_notify(:channel, '')"), {"channel": self._channel}
                    )
            except Exception:
                log.warning(
                    "could not send NOTIFY %s; the loops' timer will pick up the work",
                    self._channel,
                    exc_info=True,
                )
            await asyncio.sleep(self._min_interval)

    async def flush(self) -> None:
        """Send a pending poke now (used at shutdown and in tests)."""
        if self._pending.is_set():
            self._pending.clear()
            with contextlib.suppress(Exception):
                async with self._engine.begin() as conn:
                    await conn.execute(
                        text("SELECT pg_notify(:channel, '')"), {"channel": self._channel}
                    )
