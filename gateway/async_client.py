"""Muster's Python client on asyncio (aiohttp): what ``gateway.client.Client`` offers, for
services that call Muster from an event loop.

``AsyncClient(url, token)`` is an async context manager holding one aiohttp session:

- ``submit`` sends a job with an Idempotency-Key and retries a request that broke off or met
  429/502/503/504 with the same key, so there is one job whichever attempt arrived;
- ``job`` reads one; ``wait`` follows it to its end or raises ``WaitTimedOut`` at its timeout;
- ``events`` iterates over ``GET /v1/events`` and resumes after the last event it gave when the
  connection drops (Last-Event-ID).

Errors are the synchronous client's: ``ApiProblem`` (the problem document's status, title,
detail and errors), ``Unreachable``, ``WaitTimedOut``. Redirects are not followed: the token goes
only to the gateway named.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp

from gateway.client import RETRIES, retry_delay
from gateway.client_models import Job, JobEvent, JobRequest, SseReader, SubmitResult
from gateway.errors import ApiProblem, Unreachable, WaitTimedOut

__all__ = ["AsyncClient"]

TIMEOUT = aiohttp.ClientTimeout(total=30)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)


class AsyncClient:
    """One gateway at ``url``, with bearer ``token``; see the module docstring."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(headers=headers)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use AsyncClient as `async with AsyncClient(...) as client`")
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Any, int]:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        try:
            async with self.session.request(
                method,
                self.url + path,
                params=params,
                json=body,
                headers=dict(headers or {}),
                allow_redirects=False,
                timeout=TIMEOUT,
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Unreachable(self.url, str(exc) or type(exc).__name__) from exc
        try:
            data = json.loads(raw) if raw else None
        except ValueError as exc:
            if status >= 400:
                raise ApiProblem(
                    status, f"HTTP {status}", raw.decode(errors="replace")[:200]
                ) from exc
            raise Unreachable(self.url, f"{method} {path} answered something not JSON") from exc
        if status >= 400:
            raise _problem(status, data)
        return data, status

    async def submit(
        self,
        document: JobRequest | Mapping[str, Any],
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        retries: int = RETRIES,
    ) -> SubmitResult:
        key = idempotency_key or f"muster-client-{uuid.uuid4()}"
        body = document.to_json() if isinstance(document, JobRequest) else document
        for attempt in range(retries + 1):
            try:
                data, status = await self._call(
                    "POST",
                    "/v1/jobs",
                    query={"tenant": tenant},
                    body=body,
                    headers={"Idempotency-Key": key},
                )
            except (Unreachable, ApiProblem) as exc:
                wait = retry_delay(exc, attempt, retries)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            return SubmitResult(job=Job.from_json(data), created=status == 201, idempotency_key=key)
        raise AssertionError("unreachable")  # pragma: no cover

    async def job(self, job_id: str) -> Job:
        data, _ = await self._call("GET", f"/v1/jobs/{job_id}")
        return Job.from_json(data)

    async def cancel(self, job_id: str, reason: str | None = None) -> Job:
        body = {"reason": reason} if reason else {}
        data, _ = await self._call("POST", f"/v1/jobs/{job_id}/cancel", body=body)
        return Job.from_json(data)

    async def wait(self, job_id: str, *, timeout: float, poll: float = 0.5) -> Job:  # noqa: ASYNC109 - the sync client's signature
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        job = await self.job(job_id)
        while not job.finished:
            left = deadline - loop.time()
            if left <= 0:
                raise WaitTimedOut(job, timeout)
            await asyncio.sleep(min(poll, left))
            job = await self.job(job_id)
        return job

    async def events(
        self,
        *,
        tenant: str | None = None,
        job: str | None = None,
        after: str | None = None,
        reconnect_seconds: float = 1.0,
    ) -> AsyncIterator[JobEvent]:
        last = after
        params = {k: v for k, v in (("tenant", tenant), ("job", job)) if v is not None}
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                async with self.session.get(
                    self.url + "/v1/events",
                    params=params,
                    headers=headers,
                    allow_redirects=False,
                    timeout=STREAM_TIMEOUT,
                ) as response:
                    if response.status >= 400:
                        raise _problem(response.status, await _json_or_none(response))
                    reader = SseReader()
                    async for raw in response.content:
                        event = reader.line(raw)
                        if event is None:
                            continue
                        last = event.stream_id
                        yield event
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(reconnect_seconds)


async def _json_or_none(response: aiohttp.ClientResponse) -> Any:
    try:
        return json.loads(await response.read())
    except ValueError:
        return None


def _problem(status: int, body: Any) -> ApiProblem:
    if not isinstance(body, dict):
        return ApiProblem(status, f"HTTP {status}", f"HTTP {status}")
    errors = tuple(
        (str(item.get("pointer", "")), str(item.get("detail", "")))
        for item in body.get("errors") or ()
        if isinstance(item, dict)
    )
    title = str(body.get("title") or f"HTTP {status}")
    return ApiProblem(status, title, str(body.get("detail") or title), errors)
