"""The examples in examples/ (book: Examples): each is imported as a user
would run it and driven over HTTP."""

from __future__ import annotations

import importlib
import re
import sys
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

        r = await c.post("/t/acme/logout", data={"csrf_token": token})
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
