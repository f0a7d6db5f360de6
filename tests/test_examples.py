"""The examples in examples/ (book: Examples): each is imported as a user
would run it and driven over HTTP."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from axess import ConfigurationError, Key

ROOT = Path(__file__).resolve().parent.parent
Loader = Callable[..., ModuleType]
KEY_VARS = (
    "AXESS_SIGNING_KEYS",
    "AXESS_ENVELOPE_KEYS",
    "AXESS_FINGERPRINT_KEYS",
    "AXESS_CSRF_KEYS",
    "AXESS_DEVICE_KEYS",
)


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Iterator[Loader]:
    """``load(name, store_url)``: a fresh import of ``examples.<name>`` in
    development mode (no keys in the environment) on ``store_url``."""
    monkeypatch.syspath_prepend(str(ROOT))
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    loaded: list[str] = []

    def load(name: str, store_url: str = "memory") -> ModuleType:
        monkeypatch.setenv("AXESS_STORE_URL", store_url)
        for module in ("examples.settings", f"examples.{name}"):
            sys.modules.pop(module, None)
            loaded.append(module)
        return importlib.import_module(f"examples.{name}")

    yield load
    for module in loaded:
        sys.modules.pop(module, None)


def csrf_field(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@pytest.fixture
async def starlette_example(load: Loader, tmp_path: Path) -> AsyncIterator[ModuleType]:
    module = load("starlette_app", f"sqlite:///{tmp_path / 'app.db'}")
    async with module.lifespan(module.app):
        yield module


def client(module: ModuleType) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=module.app)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# -- examples/starlette_app.py ------------------------------------------------------
async def test_starlette_example_signs_in_shows_the_account_and_signs_out(
    starlette_example: ModuleType,
) -> None:
    app = starlette_example
    async with client(app) as c:
        r = await c.get("/account")
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/account"
        form = (await c.get(r.headers["location"])).text
        assert 'action="/login?next=%2Faccount"' in form

        r = await c.post(
            "/login?next=/account",
            data={"csrf_token": csrf_field(form), "email": app.USER, "password": "wrong"},
        )
        assert r.status_code == 401 and "Wrong e-mail or password" in r.text
        r = await c.post(
            "/login?next=/account",
            data={"csrf_token": csrf_field(r.text), "email": app.USER, "password": app.PASSWORD},
        )
        assert r.status_code == 303 and r.headers["location"] == "/account"

        page = (await c.get("/account")).text
        assert "Signed in as <strong>alice@example.com</strong>" in page
        assert "page views this session: 1" in page
        page = (await c.get("/account")).text
        assert "page views this session: 2" in page
        assert (await c.get("/")).headers["location"] == "/account"

        assert (await c.post("/logout")).status_code == 403  # no CSRF token
        r = await c.post("/logout", data={"csrf_token": csrf_field(page)})
        assert r.status_code == 303
        assert (await c.get("/account")).status_code == 303  # signed out

        health = await c.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "healthy"


async def test_starlette_example_follows_only_local_next_paths(
    starlette_example: ModuleType,
) -> None:
    app = starlette_example
    async with client(app) as c:
        form = (await c.get("/login")).text
        r = await c.post(
            "/login?next=//evil.example/",
            data={"csrf_token": csrf_field(form), "email": app.USER, "password": app.PASSWORD},
        )
        assert r.status_code == 303 and r.headers["location"] == "/account"


async def test_examples_read_keys_from_the_environment(
    load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, kid in zip(KEY_VARS, "sefcd", strict=True):
        monkeypatch.setenv(var, Key.generate(kid + "1").encode())
    # ``load`` clears the key variables only when it is set up, so set them after.
    app = load("starlette_app")
    assert not app.DEV and not app.auth.debug and not app.auth.keys.ephemeral
    async with app.lifespan(app.app):
        transport = httpx.ASGITransport(app=app.app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as c:
            r = await c.get("/login")
            cookies = r.headers.get_list("set-cookie")
            assert cookies and all("secure" in cookie.lower() for cookie in cookies)


def test_examples_refuse_a_store_url_they_cannot_use(load: Loader) -> None:
    with pytest.raises(ConfigurationError, match="AXESS_STORE_URL"):
        load("starlette_app", "valkey://127.0.0.1:6379/0")


# -- examples/multitenant_app.py -----------------------------------------------------
@pytest.fixture
async def tenants(load: Loader) -> AsyncIterator[ModuleType]:
    module = load("multitenant_app")
    async with module.lifespan(module.app):
        yield module


async def sign_in(c: httpx.AsyncClient, tenant: str, email: str, password: str) -> httpx.Response:
    form = (await c.get(f"/t/{tenant}/")).text
    return await c.post(
        f"/t/{tenant}/login",
        data={"csrf_token": csrf_field(form), "email": email, "password": password},
    )


async def test_multitenant_example_keeps_a_session_inside_its_tenant(
    tenants: ModuleType,
) -> None:
    async with client(tenants) as c:
        assert (await sign_in(c, "globex", "alice@example.com", "alice at acme")).status_code == 401
        r = await sign_in(c, "acme", "alice@example.com", "alice at acme")
        assert r.status_code == 303 and r.headers["location"] == "/t/acme/"
        page = (await c.get("/t/acme/")).text
        assert "session tenant: <code>acme</code>" in page
        r = await c.post("/t/acme/notes", data={"csrf_token": csrf_field(page), "text": "hi"})
        assert r.status_code == 303 and tenants.NOTES["acme"] == ["hi"]

        # Signed in to acme: globex's pages and actions are refused.
        r = await c.get("/t/globex/")
        assert r.status_code == 403 and "signed in to acme" in r.text
        token = csrf_field(page)
        r = await c.post("/t/globex/notes", data={"csrf_token": token, "text": "x"})
        assert r.status_code == 403 and tenants.NOTES["globex"] == []
        r = await c.post("/t/globex/logout", data={"csrf_token": token})
        assert (await c.get("/t/acme/")).status_code == 200  # still signed in to acme

        # Signing in to globex replaces the acme sign-in (one session per browser).
        r = await sign_in(c, "globex", "alice@example.com", "alice at globex")
        assert r.status_code == 303
        assert (await c.get("/t/acme/")).status_code == 403
        page = (await c.get("/t/globex/")).text
        assert "session tenant: <code>globex</code>" in page

        r = await c.post("/t/globex/logout", data={"csrf_token": csrf_field(page)})
        assert r.status_code == 303
        assert "Sign in to acme" in (await c.get("/t/acme/")).text

    async with client(tenants) as c:  # Bob exists at acme only
        assert (await sign_in(c, "globex", "bob@example.com", "bob at acme")).status_code == 401
        assert (await sign_in(c, "acme", "bob@example.com", "bob at acme")).status_code == 303
        assert (await c.get("/t/nowhere/")).status_code == 404


async def test_multitenant_example_locks_per_tenant_with_the_tenant_levers(
    tenants: ModuleType,
) -> None:
    async with client(tenants) as c:
        for _ in range(3):  # globex's record: three failures lock
            r = await sign_in(c, "globex", "alice@example.com", "wrong")
            assert r.status_code == 401
        r = await sign_in(c, "globex", "alice@example.com", "alice at globex")
        assert r.status_code == 429 and "Too many attempts" in r.text
        assert int(r.headers["retry-after"]) > 0

        # The same e-mail at acme is another user with its own counters.
        r = await sign_in(c, "acme", "alice@example.com", "alice at acme")
        assert r.status_code == 303
        assert "session tenant: <code>acme</code>" in (await c.get("/t/acme/")).text

    async with client(tenants) as c:  # acme keeps the policy's levers: 5 failures
        for _ in range(3):
            assert (await sign_in(c, "acme", "bob@example.com", "wrong")).status_code == 401
        assert (await sign_in(c, "acme", "bob@example.com", "bob at acme")).status_code == 303


# -- examples/fastapi_app.py and examples/api_client.py ---------------------------------
@pytest.fixture
async def fastapi_example(load: Loader, tmp_path: Path) -> AsyncIterator[ModuleType]:
    module = load("fastapi_app", f"sqlite:///{tmp_path / 'app.db'}")
    async with module.lifespan(module.app):
        yield module


def metric(exposition: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", exposition, re.MULTILINE)
    assert found, name
    return float(found.group(1))


async def test_fastapi_example_serves_the_auth_routes_health_and_metrics(
    fastapi_example: ModuleType,
) -> None:
    async with client(fastapi_example) as c:
        assert (await c.get("/greeting")).json()["error"] == "unauthenticated"
        health = await c.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        before = metric((await c.get("/metrics")).text, "axess_auth_success_total")

        token = (await c.get("/auth/csrf")).json()["csrf_token"]
        credentials = {"email": fastapi_example.USER, "password": fastapi_example.PASSWORD}
        assert (await c.post("/auth/login", json=credentials)).status_code == 403  # no token
        r = await c.post("/auth/login", json=credentials, headers={"X-CSRF-Token": token})
        assert r.status_code == 200 and r.json()["factors"] == ["password"]
        greeting = await c.get("/greeting")
        assert greeting.json() == {"greeting": "Hello, alice@example.com!"}

        exposition = await c.get("/metrics")
        assert exposition.headers["content-type"].startswith("text/plain")
        assert metric(exposition.text, "axess_auth_success_total") == before + 1


def test_fastapi_example_limits_both_login_steps(fastapi_example: ModuleType) -> None:
    """The code step is a guess too: the same login rules cover it."""
    rules = fastapi_example.auth.rate_limiter.rules
    for path in ("/auth/login", "/auth/login/factor"):
        assert {r.name for r in rules if r.matches("POST", path)} >= {"login-ip", "login-id"}


async def test_api_client_signs_in_and_out_through_the_fastapi_example(
    fastapi_example: ModuleType, load: Loader
) -> None:
    api_client = load("api_client")
    transport = httpx.ASGITransport(app=fastapi_example.app)
    me = await api_client.main("http://testserver", transport=transport)
    assert me["auth_state"] == "authenticated" and me["factors"] == ["password"]
    user = await fastapi_example.users.find_user(fastapi_example.USER)
    assert me["user_id"] == user.id
    assert await fastapi_example.auth.list_sessions(user.id) == []  # signed out

    with pytest.raises(api_client.ApiError) as refused:
        await api_client.main("http://testserver", password="wrong", transport=transport)
    assert (refused.value.status, refused.value.error) == (401, "invalid_credentials")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fastapi_server(tmp_path: Path) -> Iterator[str]:
    """``uvicorn examples.fastapi_app:app`` in a subprocess, as its docstring says."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS}
    env["AXESS_STORE_URL"] = f"sqlite:///{tmp_path / 'app.db'}"
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a real server takes real time to start
            if server.poll() is not None:
                pytest.fail(f"uvicorn exited ({server.returncode}):\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"uvicorn did not answer within 30 s:\n{log.read_text()}")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_api_client_command_against_a_real_server(fastapi_server: str) -> None:
    command = [sys.executable, "-m", "examples.api_client", fastapi_server]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "signed out again" in done.stdout

    wrong = subprocess.run(
        [*command, "--password", "wrong"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 1 and "invalid_credentials" in wrong.stderr
