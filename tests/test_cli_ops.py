"""The operations commands end cleanly: a bounded run, a one-line error and a
non-zero exit status, never a hang or a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

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


# -- never a traceback ---------------------------------------------------------------
def _axess(*args: str, env: dict[str, str] | None = None, **kw: Any) -> CompletedProcess[str]:
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run(
        [sys.executable, "-m", "axess.cli", *args],
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        **kw,
    )


def test_a_bad_web_concurrency_breaks_only_check_and_as_a_usage_error(tmp_path: Path) -> None:
    bad = {"WEB_CONCURRENCY": "abc"}
    r = _axess("--help", env=bad)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    r = _axess("migrate", str(tmp_path / "a.db"), env=bad)
    assert r.returncode == 0, r.stderr
    r = _axess("check", "app:auth", env=bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "WEB_CONCURRENCY: not a number of workers: 'abc' (or pass --workers)" in r.stderr
    r = _axess("check", "--workers", "0", "app:auth")
    assert r.returncode == 2 and "workers must be >= 1" in r.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["keygen", "migrate"])
def test_output_to_a_full_disk_is_a_clean_error(tmp_path: Path, command: str) -> None:
    args = [command] + ([str(tmp_path / "a.db")] if command == "migrate" else [])
    with open("/dev/full", "w") as full:
        r = _axess(*args, stdout=full, stderr=subprocess.PIPE)
    assert r.returncode == 1
    assert r.stderr == f"axess {command}: OSError: [Errno 28] No space left on device\n"


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("raise RuntimeError('no DATABASE_URL')", "RuntimeError: no DATABASE_URL"),
        ("x = (\n", "SyntaxError: '(' was never closed"),
        ("import sys\nsys.exit(3)", "SystemExit: 3"),
    ],
)
def test_check_names_a_module_that_fails_to_import(tmp_path: Path, source: str, error: str) -> None:
    (tmp_path / "brokenapp.py").write_text(source)
    r = _axess("check", "brokenapp:auth", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"axess check: importing brokenapp failed: {error}"), r.stderr


# -- check changes nothing ------------------------------------------------------------
MISSING_DB_APP = """
import os
from axess import Axess, Keyring
from axess.stores.sql import SQLiteStore

store = SQLiteStore(os.environ["CHECK_DB"], auto_migrate=False)
auth = Axess(store=store, keys=Keyring.generate(), debug=True)
"""


def test_check_reports_a_missing_sqlite_file_without_creating_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "nowhere.db"
    monkeypatch.setenv("CHECK_DB", str(db))
    (tmp_path / "missing_db_app.py").write_text(MISSING_DB_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "missing_db_app:auth"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  schema       sqlite: no database at {db} (run `axess migrate`)" in out
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["missing_db_app.py"]


# -- purge --only ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("only", "error"),
    [
        (",", "--only ',' names no target"),
        ("", "--only '' names no target"),
        ("sessions,bogus", "unknown purge target(s) ['bogus']"),
    ],
)
def test_purge_only_naming_nothing_or_a_bogus_target_is_a_usage_error(
    tmp_path: Path, only: str, error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "missing.db"  # checked before the store: not "no SQLite database"
    with pytest.raises(SystemExit) as exc:
        main(["purge", str(db), "--only", only])
    assert exc.value.code == 2
    assert error in capsys.readouterr().err
    assert not db.exists()
