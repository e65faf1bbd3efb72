"""Leadership: the replica that holds a session-level PostgreSQL advisory lock runs the leader's
loops (admission, reconciliation).

The lock lives on one dedicated connection. PostgreSQL releases it when that session ends, so a
replica that dies (even by SIGKILL) hands leadership over as soon as its connection is gone; the
others try to take it every interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.logs import loop_failed

log = logging.getLogger(__name__)

LEADER_LOCK = 0x6D75_0000
#: How long stepping down on shutdown may wait for the unlock before dropping the connection.
RELEASE_TIMEOUT = 5.0


class Leadership:
    """Holds, or tries every ``interval`` seconds to take, the leader lock.

    Invariants:
    - ``is_leader`` is True only while the lock connection answers: ``check`` runs a statement on
      it every interval, and any error on it drops leadership at once (the connection is
      discarded, so PostgreSQL frees the lock for another replica).
    - The lock connection is never inside a transaction between checks, and is never handed back
      to the pool while it may hold the lock.
    - ``on_elected`` is called each time this replica becomes the leader, so the leader's loops
      start at once instead of at their next tick.
    - Safety never rests on this flag alone: admission cycles also serialize on a
      transaction-level lock (see ``gateway.db.admission``), so two replicas that both believe
      they lead still cannot admit a job twice.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        interval: float,
        on_elected: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._on_elected = tuple(on_elected)
        self._conn: AsyncConnection | None = None

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    async def run(self) -> None:
        """Check (or try to take) the lock every interval; step down when cancelled."""
        try:
            while True:
                try:
                    await self.check()
                except Exception as exc:
                    loop_failed(log, "cannot take the leader lock; retrying", exc)
                await asyncio.sleep(self._interval)
        finally:
            await self.release()

    async def check(self) -> bool:
        """Keep or try to take the lock. Returns whether this replica leads now."""
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                # End the transaction, so the lock connection never sits "idle in transaction".
                await self._conn.commit()
                return True
            except Exception as exc:
                loop_failed(log, "lost the leader connection; stepping down", exc)
                await self._drop()
                return False
        conn = await self._engine.connect()
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK})
            # Session-level locks outlive transactions; end the implicit one so the
            # connection does not sit "idle in transaction".
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        log.info("this replica is now the leader")
        for elected in self._on_elected:
            elected()
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def release(self) -> None:
        """Step down cleanly (shutdown): unlock, then close the connection. If the unlock fails
        or hangs, the connection is discarded instead, which frees the lock as well."""
        if self._conn is None:
            return
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await self._conn.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK}
                )
                await self._conn.commit()
        except Exception:
            await self._drop()
        else:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close()
        log.info("released leadership")
