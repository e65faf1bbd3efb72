"""The gateway's side of the supervisor daemon (``daemon``): start it when none runs, ask it to
start and stop replicas, and hear what happens to them.

One connection per runtime, made on first use and subscribed at once, so the daemon's events
(``started``, ``exited``, ``removed``) reach ``on_event`` as they happen. When no daemon listens,
the link starts one (``python -m gateway.backends.daemon STATE_DIR``, in its own session, with
nothing of the gateway's environment but the path to Muster's code) and connects to whichever
daemon took the data directory's lock: two gateways starting one at once share one.

If the connection ends (the daemon was killed), every request in flight fails with
``ConnectionError`` and ``on_lost`` is called; the next request starts a new daemon, which
adopts the replicas still running. Nothing is lost meanwhile: replicas record their exits in
files, and the runtime reads those.

Invariants: requests are answered in the order the daemon handled them, each matched by its id;
``connect`` reports a new connection only after its subscription is answered, so an event of any
change made after it reaches ``on_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

import gateway
from gateway.backends.daemon import LOG, READY, RUNNING, SOCKET, short_path
from gateway.waits import within

#: Where the daemon finds Muster's code and psutil, its one dependency, and nothing else: not
#: the gateway's whole ``sys.path``, which holds the directory it was started from (the daemon
#: runs with ``python -P``, so its own working directory is not searched either).
IMPORT_PATH = os.pathsep.join(
    dict.fromkeys(str(Path(str(m.__file__)).resolve().parent.parent) for m in (gateway, psutil))
)
#: How long starting (or finding) the daemon may take.
START_SECONDS = 30.0
#: The longest line the daemon sends (an event or an answer is far shorter).
LINE_LIMIT = 2**24

Event = dict[str, Any]


class DaemonLink:
    """The connection to the daemon of ``state_dir``. See the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        *,
        on_event: Callable[[Event], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.state_dir = state_dir
        self.on_event = on_event
        self.on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._connecting = asyncio.Lock()
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._writer is not None

    async def connect(self) -> bool:
        """Connect (starting the daemon if none runs) unless connected; whether it connected now
        (then the caller must read the state afresh: events before this were not heard)."""
        async with self._connecting:
            if self._writer is not None:
                return False
            reader, writer = await self._open()
            self._writer = writer
            self._reader = asyncio.create_task(
                self._read(reader, writer), name="local supervisor events"
            )
            await self._ask({"op": "subscribe"})
            return True

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request (connecting first if needed); its answer. ``ConnectionError`` if
        the daemon went away before answering, ``RuntimeError`` if it refused."""
        await self.connect()
        answer = await self._ask({"op": op, **fields})
        if "error" in answer:
            raise RuntimeError(f"the local supervisor refused {op}: {answer['error']}")
        return answer

    async def features(self) -> frozenset[str]:
        """What of a plan the daemon honours beyond the first protocol (``daemon.FEATURES``);
        none from a daemon started by an older gateway, which outlived it."""
        answer = await self._ask_connected({"op": "features"})
        return (
            frozenset(map(str, answer.get("features", ())))
            if "error" not in answer
            else frozenset()
        )

    async def _ask_connected(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.connect()
        return await self._ask(message)

    async def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        writer = self._writer
        if writer is None:
            raise ConnectionError("the local supervisor went away")
        ident = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = answer
        try:
            writer.write(json.dumps({"id": ident, **message}).encode() + b"\n")
            await writer.drain()
            return await answer
        finally:
            self._pending.pop(ident, None)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to the daemon, starting one when none listens."""
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with short_path(self.state_dir, SOCKET) as address:
                    return await asyncio.open_unix_connection(address, limit=LINE_LIMIT)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"the local supervisor of {self.state_dir} did not start; "
                        f"see {self.state_dir / LOG}"
                    ) from None
            said = await self._launch()
            if said == RUNNING:
                # Another daemon holds the lock: it is about to listen, or about to leave.
                await asyncio.sleep(0.05)
            elif said != READY:
                raise ConnectionError(
                    f"the local supervisor of {self.state_dir} failed to start (its error is "
                    "in this process's output)"
                )

    async def _launch(self) -> str:
        """Start a daemon; what it said: ``ready`` (it listens now) or ``running``."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "gateway.backends.daemon",
            str(self.state_dir),
            cwd="/",
            # Only what finding Muster's own code needs: nothing else of the gateway's
            # environment (its settings, credentials) reaches the daemon or a replica.
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": IMPORT_PATH},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdout is not None
        try:
            line = await within(process.stdout.readline(), START_SECONDS)
        finally:
            with contextlib.suppress(ProcessLookupError):
                await within(process.wait(), START_SECONDS)
        return line.decode().split(" ")[0].strip()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "event" in message:
                    self.on_event(message)
                    continue
                answer = self._pending.get(message.get("id"))
                if answer is not None and not answer.done():
                    answer.set_result(message)
        except (OSError, ValueError):
            pass  # a broken connection: as if the daemon went away
        finally:
            self._lost(writer)

    def _lost(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is writer:
            self._writer = None
        writer.close()
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the local supervisor went away"))
        if not self._closed:
            self.on_lost()

    async def close(self) -> None:
        """Disconnect; the daemon and its replicas run on."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
