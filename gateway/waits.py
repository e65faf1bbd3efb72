"""Waiting on an event with a deadline, in a way that cancellation always ends.

``asyncio.wait_for(event.wait(), seconds)`` on Python 3.11 swallows a cancellation that arrives
just as the event is set (the wait's result wins, CPython gh-86296): a loop that waits that way
and is cancelled at that moment carries on, and its next wait may last a whole interval, so a
shutdown hangs. ``woken`` waits under ``asyncio.timeout`` instead, which never loses a cancel.

Invariant: ``woken`` returns whether ``event`` was set before ``seconds`` passed, always yields
to the event loop at least once, and a cancellation of the waiting task always raises
``CancelledError`` out of it.
"""

from __future__ import annotations

import asyncio


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
