"""``woken``: a deadline on an event wait that never loses a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.waits import within, woken


async def test_a_cancel_that_arrives_as_the_event_is_set_still_cancels() -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(woken(event, 3600))
    await asyncio.sleep(0)  # it waits now
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_it_says_whether_the_event_was_set_before_the_deadline() -> None:
    event = asyncio.Event()
    assert await woken(event, 0.001) is False
    event.set()
    assert await woken(event, 0) is True


@pytest.mark.timeout(20)
async def test_a_loop_whose_event_stays_set_still_lets_other_tasks_run() -> None:
    event = asyncio.Event()
    event.set()
    ran = asyncio.Event()

    async def spinning() -> None:
        while not ran.is_set():
            await woken(event, 3600)

    other = asyncio.get_running_loop().call_soon(ran.set)
    async with asyncio.timeout(5):
        await spinning()  # returns only because the other callback got its turn
    assert ran.is_set()
    other.cancel()


@pytest.mark.parametrize(("kind", "turns"), [("future", 0), ("task", 0), ("task", 1)])
async def test_within_keeps_a_cancel_that_arrives_as_what_it_awaits_ends(
    kind: str, turns: int
) -> None:
    # asyncio.wait_for returns the result in each of these (Python 3.11, gh-86296).
    ended = asyncio.Event()

    async def work() -> str:
        await ended.wait()
        return "done"

    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    awaited = future if kind == "future" else asyncio.ensure_future(work())
    waiting = asyncio.create_task(within(awaited, 3600))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    if kind == "future":
        future.set_result("done")
    else:
        ended.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    assert not waiting.done()  # the cancel below meets the end of what it awaits
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_within_returns_what_it_awaited_or_times_out() -> None:
    assert await within(asyncio.sleep(0, "ok"), 1) == "ok"
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(3600), 0.001)
