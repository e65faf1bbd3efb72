"""JSON out, at orjson's speed: the bodies the API sends and the documents stored in PostgreSQL.

orjson writes job documents several times faster than the standard library. What it refuses
(integers beyond 64 bits, strings with unpaired surrogates) the standard library writes instead,
so encoding never fails a request: what cannot be stored is refused by the checks before it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def json_bytes(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(value, default=str).encode()


def json_text(value: Any) -> str:
    return json_bytes(value).decode()
