"""The connection cap a process can honour, and the deadlines handed to aiohttp's handlers."""

from __future__ import annotations

import pytest

from gateway.api.connections import RESERVED_DESCRIPTORS, connection_cap, handler_args
from gateway.settings import ApiSettings, Settings


@pytest.mark.parametrize(
    ("wanted", "open_files", "cap"),
    [
        (1000, None, 1000),  # no limit
        (1000, 1000 + RESERVED_DESCRIPTORS, 1000),  # raised to fit
        (1000, 1_048_576, 1000),  # a container's usual limit
        (1000, 1024, 1024 - RESERVED_DESCRIPTORS),  # Linux's usual soft limit, not raised
        (100, 1024, 100),
        (1000, RESERVED_DESCRIPTORS, 1),  # absurdly low: still serve one at a time
    ],
)
def test_the_cap_leaves_descriptors_for_everything_else(
    wanted: int, open_files: int | None, cap: int
) -> None:
    assert connection_cap(wanted, open_files) == cap


@pytest.mark.parametrize(
    ("body_timeout", "lingering"),
    [(30.0, 10.0), (10.0, 10.0), (2.0, 2.0)],
)
def test_handlers_get_the_idle_deadline_and_discard_unread_bodies_for_the_body_deadline(
    body_timeout: float, lingering: float
) -> None:
    settings = Settings(api=ApiSettings(keepalive_timeout=5.0, body_timeout=body_timeout))

    assert handler_args(settings) == {"keepalive_timeout": 5.0, "lingering_time": lingering}
