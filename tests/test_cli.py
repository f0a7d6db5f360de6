from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from axess import Keyring
from axess.cli import keygen, main


def test_keygen_output_loads_with_from_env() -> None:
    out = io.StringIO()
    keygen(out)
    env = dict(
        line.split("=", 1)
        for line in out.getvalue().splitlines()
        if "=" in line and not line.startswith("#")
    )
    ring = Keyring.from_env(env)
    assert not ring.ephemeral
    out2 = io.StringIO()
    keygen(out2)
    assert out2.getvalue() != out.getvalue()


def test_migrate_twice_and_purge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "a.db")
    assert main(["migrate", "--store", db]) == 0
    assert "from version 0 to" in capsys.readouterr().out
    assert main(["migrate", "--store", f"sqlite:///{db}"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["purge", "--store", db, "--only", "sessions"]) == 0
    assert "sessions: 0" in capsys.readouterr().out
    assert main(["purge", "--store", db, "--only", "bogus"]) == 1
    assert "unknown purge target" in capsys.readouterr().err


def test_bad_store_url_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--store", "ftp://user:hunter2@host/x"]) == 1
    err = capsys.readouterr().err
    assert "unsupported store URL" in err and "hunter2" not in err


def test_console_script_runs() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "axess.cli", "keygen"], capture_output=True, text=True, check=True
    )
    assert "AXESS_SIGNING_KEYS=" in r.stdout
