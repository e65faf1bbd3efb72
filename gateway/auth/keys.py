"""Signing keys: the local issuer's key file, and a cache of an issuer's published keys.

The local issuer keeps a private JSON Web Key set in one file (``MUSTER_ISSUER_KEY``, by default
in the data directory). ``local_key_set`` creates it on first use, atomically: two processes
starting at once (a gateway and ``muster token``) end up with the same key, never one each. The
first key in the file signs; every key in it verifies, so a key is rotated by putting a new one
first and keeping the old one until its tokens expire.

``CachedKeys`` serves verification keys by ``kid`` for any issuer, local or external, from a
loader that returns a JWKS document. Invariants: keys are loaded at most every ``min_refresh``
seconds when a token names an unknown ``kid`` (so a stream of forged kids causes no refetch
storm), and about every ``max_age`` seconds otherwise, in the background (requests keep using
the keys already loaded while a slow issuer answers); a failed load keeps the keys it had. Only
the first load, and a token naming an unknown kid, wait for the issuer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from gateway.errors import IssuerUnavailable

Key = RSAKey | ECKey | OKPKey
JwksLoader = Callable[[], Awaitable[Mapping[str, Any]]]

LOCAL_ALGORITHM = "RS256"


def new_private_key() -> RSAKey:
    parameters: dict[str, Any] = {"use": "sig", "alg": LOCAL_ALGORITHM}
    return RSAKey.generate_key(2048, parameters=parameters, auto_kid=True)  # type: ignore[arg-type]


def local_key_set(path: Path) -> KeySet:
    """The local issuer's private key set, created (mode 0600) if the file does not exist."""
    try:
        return _read_key_set(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    document = json.dumps(KeySet([new_private_key()]).as_dict(private=True))
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".issuer-key-")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(document)
        with contextlib.suppress(FileExistsError):  # another process won the race: use theirs
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
    return _read_key_set(path)


def _read_key_set(path: Path) -> KeySet:
    """The key set in ``path``; ValueError when the file is not a JWKS with a private key."""
    try:
        keys = KeySet.import_key_set(json.loads(path.read_text()))
    except (JoseError, TypeError, KeyError) as exc:
        raise ValueError(f"{path} is not a JSON Web Key Set: {exc}") from exc
    if not keys.keys or not keys.keys[0].is_private:
        raise ValueError(f"{path} holds no private key")
    return keys


def public_jwks(keys: KeySet) -> dict[str, Any]:
    """The JWKS document that verifies the key set's signatures: public parts only."""
    return {"keys": [key.as_dict(private=False) for key in keys.keys]}


def signing_key(keys: KeySet) -> Key:
    key = keys.keys[0]
    if not isinstance(key, RSAKey | ECKey | OKPKey):
        raise ValueError("the local issuer's key must be an asymmetric key")
    return key


def local_loader(path: Path) -> JwksLoader:
    """A loader of the local issuer's public keys, read from its key file."""

    async def load() -> Mapping[str, Any]:
        keys = await asyncio.to_thread(local_key_set, path)
        return public_jwks(keys)

    return load


class CachedKeys:
    """Verification keys by kid, loaded lazily and refreshed as described in the module."""

    def __init__(
        self,
        loader: JwksLoader,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_refresh: float = 10.0,
        max_age: float = 3600.0,
    ) -> None:
        self._loader = loader
        self._clock = clock
        self._min_refresh = min_refresh
        self._max_age = max_age
        self._keys: dict[str | None, Key] = {}
        self._loaded_at: float | None = None  # last successful load
        self._attempted_at: float | None = None  # last load, successful or not
        self._error = ""
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self.loads = 0  # load attempts, for tests and metrics

    async def get(self, kid: str | None) -> Key | None:
        """The key named ``kid`` (or the only key, for a token without a kid); None when the
        issuer does not publish it, even after the refresh this call was allowed.

        Raises IssuerUnavailable when no keys were ever loaded.
        """
        if self._loaded_at is None:
            await self._refresh()
        elif self._clock() - self._loaded_at >= self._max_age:
            self._refresh_soon()  # keys we have still serve: nobody waits for an old-age reload
        key = self._find(kid)
        if key is None:
            await self._refresh()
            key = self._find(kid)
        if self._loaded_at is None:
            raise IssuerUnavailable(f"the token issuer's keys cannot be loaded: {self._error}")
        return key

    def _refresh_soon(self) -> None:
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self._refresh(), name="jwks-refresh")

    def _find(self, kid: str | None) -> Key | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        """Load the keys, unless a load was attempted less than ``min_refresh`` seconds ago."""
        async with self._lock:
            if (
                self._attempted_at is not None
                and self._clock() - self._attempted_at < self._min_refresh
            ):
                return
            self._attempted_at = self._clock()
            self.loads += 1
            try:
                document = await self._loader()
                keys = KeySet.import_key_set(dict(document))  # type: ignore[arg-type]
            except (OSError, ValueError, KeyError, TypeError, JoseError) as exc:
                self._error = str(exc) or type(exc).__name__
                return  # keep serving the keys we had
            self._keys = {
                key.kid: key for key in keys.keys if isinstance(key, RSAKey | ECKey | OKPKey)
            }
            self._loaded_at = self._clock()
