"""The guess budget across processes: two uvicorn processes share one store
(SQLite file, PostgreSQL, MariaDB, Valkey) and take a burst of 200
concurrent guesses for one identifier. Credential checks are counted across
both workers (``budget_app`` appends a line per check): at most the lever's
threshold, and the correct password sent after the budget is spent is
refused. The same for second-factor codes of one pending login.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
import pytest

from axess import Keyring, SessionConfig
from axess.authn import PasswordHasher
from axess.authn.lockout import normalize_identifier
from axess.authn.totp import TOTPSecretSealer, generate_secret, totp
from axess.stores.base import DEFAULT_TENANT, UserRecord
from axess.stores.sql import SQLiteStore

TESTS = Path(__file__).parent
#: budget_app serves plain http (secure=False): the session cookie has no __Host- prefix.
SESSION_COOKIE = SessionConfig(secure=False).resolved_cookie_name
THRESHOLD = 5
BURST = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workers:
    """Two uvicorn processes serving ``budget_app:app`` on the same store,
    each on its own port, so every burst is split between them exactly
    (request ``i`` goes to process ``i % 2``) instead of trusting the kernel
    to spread connections over the workers of one socket."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.log = tmp / "checks.log"
        self.log.touch()
        self.outputs = []
        self.procs = []
        self.urls = []
        for n in range(2):
            port = _free_port()
            self.urls.append(f"http://127.0.0.1:{port}")
            output = open(tmp / f"uvicorn{n}.log", "wb")
            self.outputs.append(output)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "budget_app:app",
                        "--app-dir",
                        str(TESTS),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--no-access-log",
                        "--log-level",
                        "warning",
                    ],
                    env={**os.environ, "BUDGET_LOG": str(self.log), **env},
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )

    def url(self, i: int) -> str:
        return self.urls[i % 2]

    def server_log(self) -> str:
        text = ""
        for output in self.outputs:
            if not output.closed:
                output.flush()
            text += Path(output.name).read_text(errors="replace")[-3000:]
        return text

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient() as client:
            for proc, url in zip(self.procs, self.urls, strict=True):
                while True:
                    if proc.poll() is not None:
                        pytest.fail(f"uvicorn exited early: {self.server_log()}")
                    try:
                        if (await client.get(url + "/ready", timeout=1)).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        pytest.fail(f"uvicorn did not come up: {self.server_log()}")
                    await asyncio.sleep(0.05)

    def checks(self, kind: str) -> int:
        return self.log.read_text().split().count(kind)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for output in self.outputs:
            output.close()


@pytest.fixture
def keyring_env() -> Iterator[tuple[Keyring, dict[str, str]]]:
    keys = Keyring.generate()
    yield keys, dict(line.split("=", 1) for line in keys.env_lines())


async def _seed(identity: Any, keys: Keyring) -> bytes:
    """Two users with the test password; ``second`` also has TOTP."""
    hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    for name in ("victim", "second"):
        record = UserRecord(f"u-{name}", DEFAULT_TENANT, normalize_identifier(name), created_at=0)
        assert await identity.create_user(record)
        await identity.set_password_hash(record.id, await hasher.hash("correct horse"))
    secret = generate_secret()
    await identity.set_totp_secret("u-second", TOTPSecretSealer(keys).seal(secret, "u-second"))
    return secret


async def _run(tmp: Path, keys: Keyring, env: dict[str, str], secret: bytes) -> None:
    workers = Workers(tmp, env)
    try:
        await workers.ready()
        # One connection pool, but no cookie jar: every guess is a stranger.
        no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        # No keep-alive: a connection the server closed while idle is never reused.
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
        async with httpx.AsyncClient(cookies=no_cookies, limits=limits, timeout=60) as client:
            await _password_burst(client, workers)
            await _code_burst(client, workers, secret)
    finally:
        workers.close()
    assert "Traceback" not in workers.server_log()


async def _post(
    client: httpx.AsyncClient,
    url: str,
    path: str,
    body: dict[str, str],
    cookie: str | None = None,
) -> httpx.Response:
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
    return await client.post(url + path, json=body, headers=headers)


def _locked_for_a_lock_period(response: httpx.Response) -> bool:
    # Real time passes between the lock and this answer: 15 minutes, give or take.
    return response.status_code == 429 and 880 <= int(response.headers["retry-after"]) <= 900


async def _password_burst(client: httpx.AsyncClient, workers: Workers) -> None:
    async def attempt(i: int, password: str) -> httpx.Response:
        body = {"identifier": "victim", "password": password}
        return await _post(client, workers.url(i), "/login", body)

    results = await asyncio.gather(*(attempt(i, f"guess-{i}") for i in range(BURST)))
    statuses = [r.status_code for r in results]
    assert len({r.headers["x-worker"] for r in results}) == 2  # both processes took guesses
    assert workers.checks("hash") == THRESHOLD
    assert statuses.count(401) == THRESHOLD and statuses.count(429) == BURST - THRESHOLD
    for i in range(2):  # on either process
        assert _locked_for_a_lock_period(await attempt(i, "correct horse"))
    assert workers.checks("hash") == THRESHOLD  # refused without a hash


async def _code_burst(client: httpx.AsyncClient, workers: Workers, secret: bytes) -> None:
    body = {"identifier": "second", "password": "correct horse"}
    r = await _post(client, workers.url(0), "/login", body)
    assert r.json() == {"factor_required": "totp"}  # the password took one unit
    sid = r.cookies[SESSION_COOKIE]
    now = time.time()
    valid = {totp(secret, now + d * 30) for d in (-2, -1, 0, 1, 2)}
    wrong = [c for c in (f"{i:06d}" for i in range(1000)) if c not in valid][:BURST]
    guesses = [{"totp": c} if i % 2 else {"recovery": f"rc-{c}"} for i, c in enumerate(wrong)]
    results = await asyncio.gather(
        *(_post(client, workers.url(i), "/factor", g, sid) for i, g in enumerate(guesses))
    )
    statuses = [r.status_code for r in results]
    assert len({r.headers["x-worker"] for r in results}) == 2
    assert workers.checks("code") == THRESHOLD - 1
    assert statuses.count(401) == THRESHOLD - 1 and statuses.count(429) == BURST - THRESHOLD + 1
    for i in range(2):
        right = await _post(
            client, workers.url(i), "/factor", {"totp": totp(secret, time.time())}, sid
        )
        assert _locked_for_a_lock_period(right)


async def test_two_workers_on_sqlite(tmp_path: Path, keyring_env: Any) -> None:
    keys, env = keyring_env
    path = tmp_path / "budget.db"
    store = SQLiteStore(path)
    await store.open()
    secret = await _seed(store, keys)
    await store.close()
    await _run(
        tmp_path, keys, {**env, "BUDGET_STORE": "sqlite", "BUDGET_SQLITE": str(path)}, secret
    )


@pytest.mark.backend("postgres")
async def test_two_workers_on_postgres(
    tmp_path: Path, keyring_env: Any, postgres_store: Any, pg_schema: str
) -> None:
    from backend_policy import POSTGRES_DSN

    keys, env = keyring_env
    secret = await _seed(postgres_store, keys)
    settings = {"BUDGET_STORE": "postgres", "BUDGET_DSN": POSTGRES_DSN, "BUDGET_SCHEMA": pg_schema}
    await _run(tmp_path, keys, {**env, **settings}, secret)


@pytest.mark.backend("mysql")
async def test_two_workers_on_mariadb(
    tmp_path: Path, keyring_env: Any, mysql_store: Any, mysql_dsn: str
) -> None:
    keys, env = keyring_env
    secret = await _seed(mysql_store, keys)
    await _run(tmp_path, keys, {**env, "BUDGET_STORE": "mysql", "BUDGET_DSN": mysql_dsn}, secret)


async def test_two_workers_on_valkey(
    tmp_path: Path, keyring_env: Any, valkey_target: Any, valkey_prefix: str
) -> None:
    keys, env = keyring_env
    path = tmp_path / "identity.db"
    store = SQLiteStore(path)
    await store.open()
    secret = await _seed(store, keys)
    await store.close()
    settings = {
        "BUDGET_STORE": "valkey",
        "BUDGET_SQLITE": str(path),
        "BUDGET_VALKEY_URL": valkey_target.url,
        "BUDGET_VALKEY_PREFIX": valkey_prefix,
    }
    await _run(tmp_path, keys, {**env, **settings}, secret)
