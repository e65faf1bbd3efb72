"""NOTIFY and LISTEN: wake loops in every gateway process when the database changed.

Sending (``Notifier``). PostgreSQL serializes the commits of all transactions that issued NOTIFY
(a global lock is held through commit). Notifying inside every submit would cap submits at one
commit at a time, so writers call ``Notifier.poke()`` after their transaction commits, and one
background task sends at most one NOTIFY per channel every ``min_interval`` seconds. A poke is
never lost: one that arrives while a NOTIFY is being sent causes another after the interval.

Receiving (``Listener``). One dedicated connection per process LISTENs on every channel that
something in the process waits for, and calls that channel's hand-offs (setting a loop's wake-up
event, typically). The channels are named in ``gateway.db.channels``; which hand-offs each
channel has is wired in ``gateway.loops.runtime``.

The loops also tick on a timer, so even a lost wake-up only delays work, never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.channels import Channel, notify_sql
from gateway.logs import loop_failed

log = logging.getLogger(__name__)

#: Something to do when a channel is notified; it runs on the event loop, so it must not block.
HandOff = Callable[[], None]


class Notifier:
    """Sends NOTIFY on one channel for the pokes of this process, at most one every
    ``min_interval`` seconds (while ``run`` runs); a poke is never lost, only coalesced with
    others (see the module docstring)."""

    def __init__(
        self, engine: AsyncEngine, channel: Channel, *, min_interval: float = 0.05
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._notify = text(notify_sql(channel))
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
                    await conn.execute(self._notify)
            except Exception as exc:
                log.warning(
                    "could not send NOTIFY %s; the loops' timer will pick up the work (%s)",
                    self._channel,
                    exc,
                )
            await asyncio.sleep(self._min_interval)

    async def flush(self) -> None:
        """Send a pending poke now (used at shutdown and in tests)."""
        if self._pending.is_set():
            self._pending.clear()
            with contextlib.suppress(Exception):
                async with self._engine.begin() as conn:
                    await conn.execute(self._notify)


class Listener:
    """LISTEN on one dedicated connection; on each NOTIFY, call the channel's hand-offs.

    ``run`` keeps the connection: it checks it every ``interval`` seconds and opens a new one
    when it is gone (without one the loops only tick). After every (re)connection each hand-off
    is called once, because what was notified while nobody listened is lost. The connection is
    never handed back to the pool (its listeners live on it): it is closed when ``run`` ends.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        handoffs: Mapping[Channel, Sequence[HandOff]],
        *,
        interval: float = 1.0,
    ) -> None:
        self._engine = engine
        self._handoffs = {channel: tuple(calls) for channel, calls in handoffs.items() if calls}
        self._interval = interval
        self._conn: AsyncConnection | None = None
        self._driver: Any = None

    @property
    def listening(self) -> bool:
        return self._driver is not None and not self._driver.is_closed()

    def _notified(self, _connection: Any, _pid: int, channel: str, _payload: str) -> None:
        for handoff in self._handoffs.get(Channel(channel), ()):
            handoff()

    def _all(self) -> None:
        for calls in self._handoffs.values():
            for handoff in calls:
                handoff()

    async def run(self) -> None:
        try:
            while True:
                if not self.listening:
                    await self._connect()
                await asyncio.sleep(self._interval)
        finally:
            await self._close()

    async def _connect(self) -> None:
        await self._close()
        try:
            conn = await self._engine.connect()
        except Exception as exc:
            loop_failed(log, "cannot LISTEN for wake-ups; the loops tick only", exc)
            return
        try:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            for channel in self._handoffs:
                await driver.add_listener(channel.value, self._notified)
        except Exception as exc:
            loop_failed(log, "cannot LISTEN for wake-ups; the loops tick only", exc)
            with contextlib.suppress(Exception):
                await conn.invalidate()
            return
        self._conn, self._driver = conn, driver
        self._all()  # work may have been notified while nobody listened

    async def _close(self) -> None:
        conn, driver, self._conn, self._driver = self._conn, self._driver, None, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            for channel in self._handoffs:
                await driver.remove_listener(channel.value, self._notified)
        # Listeners live on the connection: drop it rather than hand it back to the pool.
        with contextlib.suppress(Exception):
            await conn.invalidate()
        with contextlib.suppress(Exception):
            await conn.close()
