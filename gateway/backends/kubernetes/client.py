"""The connection to the Kubernetes API: configuration, a client-side rate limit, raw JSON calls.

- ``kube_client`` loads a kubeconfig file when one is given (``MUSTER_KUBECONFIG``) and the
  pod's service account otherwise, and returns a ``RateLimitedApiClient``: every request it sends,
  whichever API class or helper builds it, first takes a token from a ``TokenBucket``
  (``MUSTER_KUBE_QPS`` tokens a second, at most ``MUSTER_KUBE_BURST`` saved up), as client-go does.
- ``Kube`` is what the backend talks through: API paths in, plain JSON values out (the manifests
  are plain dicts already, and decoding thousands of pods into generated models every reconcile
  pass would cost more than the request). It is the boundary where ``ApiException`` and aiohttp's
  errors become ``gateway.errors.KubernetesError``s (``gateway.backends.kubernetes.errors``
  translates the status codes).

Invariants: a ``Kube`` call either returns a 2xx response's body or raises a ``KubernetesError``;
the bucket hands out tokens in the order they are asked for, so in any ``t`` seconds at most
``burst + qps * t`` requests start, and at most ``burst`` without waiting.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, ApiException, Configuration

from gateway.backends.kubernetes.errors import from_status
from gateway.errors import ConfigError, KubernetesError, KubernetesUnavailable

__all__ = ["Kube", "RateLimitedApiClient", "TokenBucket", "kube_client"]

USER_AGENT = "muster-gateway"
# Large lists come in pages, so neither side holds one huge response.
PAGE_SIZE = 500
# A plain call that takes longer than this is treated as an unavailable server; a streamed log
# has no overall limit, only one on connecting.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
STREAM_TIMEOUT = aiohttp.ClientTimeout(sock_connect=10)
_AUTH = ["BearerToken"]
_JSON = {200: "object", 201: "object", 202: "object"}


class TokenBucket:
    """``qps`` tokens a second, at most ``burst`` saved up; each request takes one.

    A request reserves its token when it asks, so waiting requests are served in arrival order
    and the wait is computed once. ``throttled`` and ``waited_seconds`` count the requests that
    had to wait and how long they were told to.
    """

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not qps > 0:
            raise ValueError(f"qps must be positive, not {qps}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self.throttled = 0
        self.waited_seconds = 0.0

    def reserve(self) -> float:
        """Take a token now; returns how many seconds to wait before using it (0: use it now)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.qps)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            self.throttled += 1
            self.waited_seconds += delay
            await asyncio.sleep(delay)


class RateLimitedApiClient(ApiClient):
    """kubernetes-asyncio's client with every request admitted by ``limiter`` first."""

    def __init__(self, configuration: Configuration, *, limiter: TokenBucket) -> None:
        super().__init__(configuration)
        self.limiter = limiter
        self.user_agent = USER_AGENT

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        # ApiClient.__call_api awaits what request() returns; every generated API method, the
        # watch helper and ``Kube`` go through here.
        await self.limiter.acquire()
        return await super().request(*args, **kwargs)


async def kube_client(kubeconfig: Path | None, *, qps: float, burst: int) -> RateLimitedApiClient:
    """A client for the cluster in ``kubeconfig`` (its current context), or for the cluster this
    process runs in when it is None. Raises ``ConfigError`` when neither can be loaded."""
    configuration = Configuration()
    try:
        if kubeconfig is not None:
            # persist_config=False: refreshing a token must never rewrite the user's file.
            await kube_config.load_kube_config(
                config_file=str(kubeconfig),
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (kube_config.ConfigException, OSError, ValueError) as exc:
        where = f"MUSTER_KUBECONFIG={kubeconfig}" if kubeconfig else "in-cluster configuration"
        raise ConfigError(f"cannot load the Kubernetes configuration ({where}): {exc}") from exc
    try:
        limiter = TokenBucket(qps, burst)
    except ValueError as exc:
        raise ConfigError(f"MUSTER_KUBE_QPS / MUSTER_KUBE_BURST: {exc}") from exc
    return RateLimitedApiClient(configuration, limiter=limiter)


Query = Mapping[str, str | int]


class Kube:
    """Raw JSON calls on API paths (``/api/v1/namespaces/ns/pods``), errors translated."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def get(self, path: str, query: Query | None = None) -> dict[str, Any]:
        return await self._json("GET", path, query=query)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("POST", path, body=body)

    async def delete(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self._json("DELETE", path, body=body)

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every item of a collection, page by page."""
        items, _ = await self.list_versioned(
            path, label_selector=label_selector, field_selector=field_selector
        )
        return items

    async def list_versioned(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str | None]:
        """Every item of a collection, page by page, and the list's resourceVersion (what a
        watch resumes from; None when the server gives none)."""
        query: dict[str, str | int] = {"limit": PAGE_SIZE}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items: builtins.list[dict[str, Any]] = []
        version: str | None = None
        while True:
            page = await self._json("GET", path, query=query)
            items.extend(item for item in page.get("items") or () if isinstance(item, dict))
            metadata = page.get("metadata") or {}
            if version is None and isinstance(metadata.get("resourceVersion"), str):
                version = metadata["resourceVersion"]
            token = metadata.get("continue")
            if not token:
                return items, version
            query["continue"] = token

    async def stream(
        self,
        path: str,
        query: Query | None = None,
        *,
        limits: aiohttp.ClientTimeout = STREAM_TIMEOUT,
    ) -> AsyncIterator[bytes]:
        """The body of a GET as it arrives (pod logs with follow=true, watches); ``limits``
        bound connecting and, for a watch, the silence between two reads. The first chunk is
        empty, as soon as the server has answered with success (a watch is open then)."""
        what = f"GET {path}"
        try:
            response = await self.client.call_api(
                path,
                "GET",
                query_params=list((query or {}).items()),
                header_params={"Accept": "*/*"},
                auth_settings=_AUTH,
                _preload_content=False,
                _request_timeout=limits,
            )
        except ApiException as exc:
            raise from_status(exc.status or 0, exc.body, what=what) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubernetesUnavailable(f"{what}: {exc!r}") from exc
        try:
            # Unread, an error response is not checked by the REST layer: check it here.
            if response.status >= 300:
                raise from_status(response.status, await response.read(), what=what)
            yield b""
            async for chunk in response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubernetesUnavailable(f"{what}: {exc!r}") from exc
        finally:
            response.release()

    async def _json(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        what = f"{method} {path}"
        try:
            result = await self.client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                response_types_map=_JSON,
                auth_settings=_AUTH,
                _return_http_data_only=True,
                _request_timeout=CALL_TIMEOUT,
            )
        except ApiException as exc:
            creating = method == "POST"
            raise from_status(exc.status or 0, exc.body, what=what, creating=creating) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubernetesUnavailable(f"{what}: {exc!r}") from exc
        if not isinstance(result, dict):
            raise KubernetesError(f"{what}: expected a JSON object, got {type(result).__name__}")
        return result
