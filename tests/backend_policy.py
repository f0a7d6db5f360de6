"""The skip/require rule (book: Testing) for tests that need a real server.

An unreachable backend skips its tests with a clear reason, unless
``AXESS_REQUIRE_BACKENDS=1`` (set by ``.ci/run``): then it fails them.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

POSTGRES_DSN = os.environ.get(
    "AXESS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_DSN = os.environ.get("AXESS_TEST_MYSQL_DSN", "mysql://root@127.0.0.1:3306/test")
VALKEY_URL = os.environ.get("AXESS_TEST_VALKEY_URL", "")


def backends_required() -> bool:
    return os.environ.get("AXESS_REQUIRE_BACKENDS", "") == "1"


def unavailable(backend: str, reason: str) -> NoReturn:
    """Skip (or, under AXESS_REQUIRE_BACKENDS=1, fail) the current test."""
    message = f"{backend} unavailable: {reason}"
    if backends_required():
        pytest.fail(message + " (AXESS_REQUIRE_BACKENDS=1)", pytrace=False)
    pytest.skip(message)
