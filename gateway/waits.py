"""Waiting on an event with a deadline, in a way that cancellation always ends.

``asyncio.wait_for(event.wait(), seconds)`` on Python 3.11 swallows a cancellation that arrives
just as the event is set (the wait's result wins, CPython gh-86296): a loop that waits that way
and is cancelled at that moment carries on, and its next wait may last a whole interval, so a
shutdown hangs. ``woken`` waits under ``asyncio.timeout`` instead, which never loses a cancel.

The same holds for ``asyncio.wait_for(anything, seconds)``: a cancellation that arrives as the
awaited thing completes is dropped, and the task goes on as if nothing had asked it to stop.
``within`` is ``wait_for`` under ``asyncio.timeout``. Muster's shutdown cancels each loop once
and waits for it: a loop that drops that one cancellation never ends, and neither does the
process (the shutdown flake of ``test_serve_keeps_jobs_across_restart``: the admission loop
rested in ``wait_for(self.wake.wait(), interval)`` and a SIGTERM met a wake-up).

Invariants: ``woken`` returns whether ``event`` was set before ``seconds`` passed and always
yields to the event loop at least once; ``within`` returns what it awaited or raises
``TimeoutError`` past ``seconds``; a cancellation of the waiting task always raises
``CancelledError`` out of either (on Python 3.11.3 and later, whose ``asyncio.timeout`` also
holds inside a task already being cancelled: gh-102780). Nothing in ``gateway`` calls
``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, for ``seconds`` at most (``TimeoutError`` past them; what it awaits
    is cancelled), as ``asyncio.wait_for`` without its lost cancellations."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True when it was set. Always yields to
    the event loop, even for an event already set: a loop whose event stays set then still
    lets every other task run (a follower once spun that way and starved its process)."""
    if event.is_set():
        await asyncio.sleep(0)
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
