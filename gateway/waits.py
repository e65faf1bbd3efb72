"""Waiting on an event with a deadline, in a way that cancellation always ends.

``asyncio.wait_for(event.wait(), seconds)`` on Python 3.11 swallows a cancellation that arrives
just as the event is set (the wait's result wins, CPython gh-86296): a loop that waits that way
and is cancelled at that moment carries on, and its next wait may last a whole interval, so a
shutdown hangs. ``woken`` waits under ``asyncio.timeout`` instead, which never loses a cancel.

Invariant: ``woken`` returns whether ``event`` was set before ``seconds`` passed, and a
cancellation of the waiting task always raises ``CancelledError`` out of it.
"""

from __future__ import annotations

import asyncio


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True when it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
