"""Problems found in client input, each located by an RFC 6901 JSON pointer.

The core reports problems as values; the shell turns a non-empty list into a 422 response.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldProblem:
    """One problem in a request body. ``pointer`` is "" for the whole document."""

    pointer: str
    detail: str


def pointer(*parts: str | int) -> str:
    """Build a JSON pointer, escaping ``~`` and ``/`` inside keys as RFC 6901 requires."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)
