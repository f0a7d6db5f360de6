"""The operations commands end cleanly: a bounded run, a one-line error and a
non-zero exit status, never a hang or a traceback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

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


# -- SQLite URLs ---------------------------------------------------------------------
def test_sqlite_urls_three_slashes_relative_four_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cwd, elsewhere = tmp_path / "cwd", tmp_path / "srv"
    cwd.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["migrate", "sqlite:///app.db"]) == 0
    out = capsys.readouterr().out
    assert (cwd / "app.db").is_file()
    assert f"created a new SQLite database at {cwd / 'app.db'}" in out
    absolute = elsewhere / "axess.db"
    assert str(absolute).startswith("/")
    assert main(["migrate", f"sqlite:///{absolute}"]) == 0  # sqlite:////tmp/…/axess.db
    assert f"created a new SQLite database at {absolute}\n" in capsys.readouterr().out
    assert absolute.is_file() and not (cwd / str(absolute).lstrip("/")).exists()
    assert main(["migrate", f"sqlite:///{absolute}"]) == 0
    assert "created" not in capsys.readouterr().out  # an existing file is not news
    for bad in ("sqlite://app.db", "sqlite:///", "sqlite:app.db"):
        assert main(["migrate", bad]) == 1
        assert "names no SQLite file: use sqlite:////" in capsys.readouterr().err
    assert {p.name for p in cwd.iterdir()} <= {"app.db", "app.db-wal", "app.db-shm"}


def test_help_shows_both_sqlite_url_forms(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["migrate", "--help"])
    out = capsys.readouterr().out
    assert "sqlite:////srv/app/axess.db    SQLite file at an absolute path (4 slashes)" in out
    assert "sqlite:///axess.db             SQLite file relative to the current directory" in out
