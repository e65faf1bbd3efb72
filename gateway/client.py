"""Muster's Python client (synchronous), which the ``muster`` client commands are built on.

``Client`` has the API's calls, returning its JSON as it is, and on top of them what a service
that calls Muster needs, with the typed models of ``gateway.client_models``:

- ``submit`` sends a job with an Idempotency-Key (its own, or a fresh one) and retries a request
  that broke off or met 429/502/503/504 with the same key, so a retry never makes a second job;
- ``job`` reads one; ``wait`` follows one to its end, or raises ``WaitTimedOut`` at its timeout;
- ``events`` iterates over ``GET /v1/events`` and, when the connection drops, resumes after the
  last event it gave (Last-Event-ID): nothing is lost, nothing repeated.

``gateway.async_client.AsyncClient`` offers the same on asyncio.

It speaks plain ``urllib`` so that ``muster jobs`` starts fast and imports nothing of the server.
Every failure leaves this module as ``gateway.errors.BadDocument`` or one of the
``gateway.errors.RequestFailed`` branch (``ApiProblem``, ``Unreachable``, ``Unproven``), drawn with
the rest of the tree in ``gateway.errors``.

Invariants: requests to a loopback address never go through a proxy (other hosts honour the
usual ``*_proxy`` variables); the token, when set, travels only as ``Authorization: Bearer``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import yaml

from gateway.client_models import Job, JobEvent, JobRequest, SseReader, SubmitResult
from gateway.domain.names import ID_PREFIX
from gateway.errors import ApiProblem, BadDocument, Unreachable, WaitTimedOut
from gateway.settings import ClientSettings

TIMEOUT = 30.0
#: Answers a submit is retried after (with the same Idempotency-Key).
RETRIED = frozenset({429, 502, 503, 504})
RETRIES = 4
RETRY_FIRST_SECONDS = 0.5
#: Without ``follow``, the event stream is read until it has been quiet this long.
QUIET_SECONDS = 1.0
CHUNK = 64 * 1024
FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Query = Mapping[str, str | int | None]


def load_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Every job spec or TFJob manifest of a file: one JSON document, or YAML documents separated
    by ``---`` (empty ones skipped), each returned as JSON data."""
    try:
        loaded = [json.loads(text)]
    except ValueError:
        try:
            loaded = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        except yaml.YAMLError as exc:
            raise BadDocument(f"{source} is neither JSON nor YAML: {exc}") from exc
    if not loaded or loaded == [None]:
        raise BadDocument(f"{source} is empty")
    documents = []
    for number, document in enumerate(loaded, start=1):
        where = source if len(loaded) == 1 else f"{source} (document {number})"
        if not isinstance(document, dict):
            kind = type(document).__name__
            raise BadDocument(f"{where} must hold one job spec or TFJob (a mapping), not a {kind}")
        try:
            documents.append(json.loads(json.dumps(document, default=str)))
        except (TypeError, ValueError) as exc:
            raise BadDocument(f"{where} cannot be sent as JSON: {exc}") from exc
    return documents


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (localhost or a loopback address)."""
    if host is None or host == "localhost":
        return host is not None
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problem(exc: urllib.error.HTTPError) -> ApiProblem:
    """An HTTP error answer -> ApiProblem, whether or not its body is a problem document."""
    with exc:
        try:
            raw = exc.read()
        except (OSError, http.client.HTTPException):
            raw = b""
    title = exc.reason if isinstance(exc.reason, str) and exc.reason else f"HTTP {exc.code}"
    if 300 <= exc.code < 400:
        where = exc.headers.get("Location", "elsewhere") if exc.headers else "elsewhere"
        return ApiProblem(
            exc.code,
            title,
            f"the gateway redirects to {where}; redirects are not followed, so a token never "
            "leaves for another host: point MUSTER_URL (or --url) at the final address",
        )
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = raw.decode(errors="replace").strip()
        return ApiProblem(exc.code, title, text[:200] or title)
    errors = tuple(
        (str(item.get("pointer", "")), str(item.get("detail", "")))
        for item in body.get("errors") or ()
        if isinstance(item, dict)
    )
    return ApiProblem(
        exc.code,
        str(body.get("title") or title),
        str(body.get("detail") or body.get("title") or title),
        errors,
    )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Answer a 3xx as the error it is here, instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """One gateway, addressed by ``settings.url``. Methods return the API's JSON as-is."""

    def __init__(self, settings: ClientSettings, *, timeout: float = TIMEOUT) -> None:
        self.url = settings.url
        self.token = settings.token
        self.timeout = timeout
        # Redirects are never followed: the request carries a bearer token, which must only
        # ever reach the gateway the user named.
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        if is_loopback(urlsplit(self.url).hostname):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    # --- transport ---------------------------------------------------------------------------

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        params = {key: str(value) for key, value in (query or {}).items() if value is not None}
        url = self.url + path + ("?" + urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json, application/problem+json, text/plain")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        # A stream (a followed log) may stay quiet for hours: no read timeout for it.
        timeout = (read_timeout if stream else self.timeout) or None
        try:
            response: http.client.HTTPResponse = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _problem(exc) from exc
        except urllib.error.URLError as exc:
            refused = isinstance(exc.reason, ConnectionRefusedError)
            raise Unreachable(self.url, str(exc.reason), refused=refused) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.url, str(exc) or type(exc).__name__) from exc
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._json_status(method, path, **kwargs)[0]

    def _json_status(self, method: str, path: str, **kwargs: Any) -> tuple[Any, int]:
        response = self._open(method, path, **kwargs)
        try:
            with response:
                raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.url, f"the answer broke off: {exc}") from exc
        try:
            return json.loads(raw), response.status
        except ValueError as exc:
            raise Unreachable(self.url, f"{method} {path} answered something not JSON") from exc

    # --- the local issuer ----------------------------------------------------------------------

    def issuer_proof(self, challenge: str) -> Any:
        """GET /v1/issuer/proof: the gateway's proof that it holds the local issuer's key."""
        return self._json("GET", "/v1/issuer/proof", query={"challenge": challenge})

    # --- jobs ----------------------------------------------------------------------------------

    def submit_job(
        self,
        document: Mapping[str, Any],
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        dry_run: bool = False,
    ) -> Any:
        """POST /v1/jobs; ``tenant`` goes in the query (the way a TFJob names its tenant). A
        ``dry_run`` writes nothing and answers what would be stored and what the next
        admission cycle would do with the job."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        query = {"tenant": tenant, "dry_run": "true" if dry_run else None}
        return self._json("POST", "/v1/jobs", query=query, body=document, headers=headers)

    def submit(
        self,
        document: JobRequest | Mapping[str, Any],
        *,
        tenant: str | None = None,
        idempotency_key: str | None = None,
        retries: int = RETRIES,
    ) -> SubmitResult:
        """Submit one job spec or manifest, retrying a request that broke off or met a busy
        gateway (429, 502, 503, 504) up to ``retries`` times with the same Idempotency-Key:
        whichever attempt reached the gateway, there is one job."""
        key = idempotency_key or f"muster-client-{uuid.uuid4()}"
        body = document.to_json() if isinstance(document, JobRequest) else document
        for attempt in range(retries + 1):
            try:
                answer, status = self._json_status(
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
                time.sleep(wait)
                continue
            return SubmitResult(
                job=Job.from_json(answer), created=status == 201, idempotency_key=key
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def job(self, job_id: str) -> Job:
        return Job.from_json(self.get_job(job_id))

    def wait(self, job_id: str, *, timeout: float, poll: float = 0.5) -> Job:
        """The job once it has ended; ``WaitTimedOut`` (with the job as last read) if it has not
        within ``timeout`` seconds. Nothing is cancelled either way."""
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while not job.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimedOut(job, timeout)
            time.sleep(min(poll, left))
            job = self.job(job_id)
        return job

    def events(
        self,
        *,
        tenant: str | None = None,
        job: str | None = None,
        after: str | None = None,
        reconnect_seconds: float = 1.0,
        follow: bool = True,
    ) -> Iterator[JobEvent]:
        """Every job event from ``GET /v1/events`` (after stream id ``after``, else from the
        beginning), for ever: a dropped connection is resumed after the last event given.
        Without ``follow``, the events recorded so far: it stops once the stream has been quiet
        for ``QUIET_SECONDS``."""
        last = after
        while True:
            headers = {"Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                response = self._open(
                    "GET",
                    "/v1/events",
                    query={"tenant": tenant, "job": job},
                    headers=headers,
                    stream=True,
                    read_timeout=None if follow else QUIET_SECONDS,
                )
                with response:
                    for event in _sse_events(response):
                        last = event.stream_id
                        yield event
            except (Unreachable, OSError, http.client.HTTPException) as exc:
                if not follow and isinstance(exc.__cause__ or exc, TimeoutError):
                    return
            if not follow:
                return
            time.sleep(reconnect_seconds)

    def submit_batch(self, items: Sequence[Mapping[str, Any]], *, tenant: str | None = None) -> Any:
        """POST /v1/jobs:batch: ``items`` are ``{"job": ..., "idempotency_key": ...}`` (at most
        1,000); the answer holds one item per job, in order."""
        return self._json(
            "POST", "/v1/jobs:batch", query={"tenant": tenant}, body={"jobs": list(items)}
        )

    def list_jobs(
        self,
        *,
        tenant: str | None = None,
        state: str | None = None,
        label: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        id_prefix: str | None = None,
    ) -> Any:
        query = {
            "tenant": tenant,
            "state": state,
            "label": label,
            "limit": limit,
            "cursor": cursor,
            "id_prefix": id_prefix,
        }
        return self._json("GET", "/v1/jobs", query=query)

    def resolve_id(self, given: str) -> str:
        """The id of the one job whose id starts with ``given`` (a full id is itself): a
        ``BadDocument`` naming the problem when none does or several do."""
        text = given.strip().lower()
        if FULL_ID.fullmatch(text):
            return text
        if not ID_PREFIX.fullmatch(text):
            raise BadDocument(f"{given!r} is not a job id or the start of one (hex digits and -)")
        found = [job["id"] for job in self.list_jobs(id_prefix=text, limit=2)["items"]]
        if not found:
            raise BadDocument(f"no job you may see has an id starting with {given!r}")
        if len(found) > 1:
            raise BadDocument(
                f"{given!r} is ambiguous: it starts {found[0]} and {found[1]} (at least); give "
                "more of the id"
            )
        return str(found[0])

    def get_job(self, job_id: str) -> Any:
        return self._json("GET", f"/v1/jobs/{quote(job_id, safe='')}")

    def job_events(self, job_id: str) -> Any:
        return self._json("GET", f"/v1/jobs/{quote(job_id, safe='')}/events")

    def cancel_job(self, job_id: str) -> Any:
        return self._json("POST", f"/v1/jobs/{quote(job_id, safe='')}/cancel")

    def job_logs(self, job_id: str, *, replica: str | None, follow: bool) -> Iterator[bytes]:
        """The job's log text, chunk by chunk as the gateway sends it."""
        response = self._open(
            "GET",
            f"/v1/jobs/{quote(job_id, safe='')}/logs",
            query={"replica": replica, "follow": "true" if follow else "false"},
            stream=follow,
        )
        with response:
            while True:
                try:
                    chunk = response.read1(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise Unreachable(self.url, f"the log stream broke off: {exc}") from exc
                if not chunk:
                    return
                yield chunk

    # --- tenants -------------------------------------------------------------------------------

    def list_tenants(self) -> Any:
        return self._json("GET", "/v1/admin/tenants")

    def list_cohorts(self) -> Any:
        return self._json("GET", "/v1/admin/cohorts")

    def cohort_status(self, cohort: str) -> Any:
        return self._json("GET", f"/v1/cohorts/{quote(cohort, safe='')}")

    def list_priority_classes(self) -> Any:
        return self._json("GET", "/v1/admin/priority-classes")

    def tenant_status(self, tenant: str) -> Any:
        return self._json("GET", f"/v1/tenants/{quote(tenant, safe='')}")


def retry_delay(failure: Unreachable | ApiProblem, attempt: int, retries: int) -> float | None:
    """How long to wait before trying a submit again after ``failure`` on try ``attempt`` (from
    0) of ``retries`` more, or None when it is not tried again: only a request that broke off
    or met a busy gateway (``RETRIED``) is, with the same Idempotency-Key, backing off by
    doubling."""
    retry = isinstance(failure, Unreachable) or failure.status in RETRIED
    if not retry or attempt >= retries:
        return None
    return float(RETRY_FIRST_SECONDS * 2**attempt)


def _sse_events(response: http.client.HTTPResponse) -> Iterator[JobEvent]:
    """The events of a Server-Sent Events body, as they arrive (``SseReader``)."""
    reader = SseReader()
    for raw in response:
        event = reader.line(raw)
        if event is not None:
            yield event
