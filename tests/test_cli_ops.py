"""The operations commands end cleanly: a bounded run, a one-line error and a
non-zero exit status, never a hang or a traceback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from axess.cli import main


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening port nobody accepts on: the kernel completes the TCP
    handshake, then the client waits for a server greeting that never comes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_purge_timeout_covers_opening_the_store(
    silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("aiomysql")
    url = f"mysql://u:hunter2@127.0.0.1:{silent_port}/db"
    started = time.monotonic()
    assert main(["purge", "--timeout", "500ms", url]) == 1
    assert time.monotonic() - started < 3  # the store's own connect limit is 5 s
    err = capsys.readouterr().err
    assert "timed out after 0.5s" in err and "opening the store, nothing purged" in err
    assert "hunter2" not in err
