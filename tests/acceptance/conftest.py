"""Fixtures shared by the acceptance tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_serve import _stop_leftover_postgres


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A gateway's data directory directly under /tmp (the embedded server's Unix socket path
    must stay short); its embedded PostgreSQL is stopped and the directory removed after."""
    path = Path(tempfile.mkdtemp(prefix="ma-", dir="/tmp"))
    try:
        yield path
    finally:
        _stop_leftover_postgres(path)
        shutil.rmtree(path, ignore_errors=True)
