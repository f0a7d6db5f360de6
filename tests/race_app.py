"""A FastAPI app with the auth router on any backend, whose sessions backend
can run a competing request at a chosen point of another one: the
deterministic interleavings of tests/test_logout_races.py and
tests/test_session_cap.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from authn_app import fast_hasher
from fastapi import FastAPI, Request
from helpers import CSRF_COOKIE

from axess import Axess, Keyring, MockClock, SessionConfig, get_session
from axess.authn.lockout import LockoutPolicy
from axess.session.events import SessionEvent
from axess.stores import CompositeStore, MemoryStore
from axess.stores.base import SessionRecord

PASSWORD = "correct horse battery"
Hook = Callable[[], Awaitable[None]]


class Interleaved:
    """The sessions backend ``inner``, which runs a hook once at the next
    of the points armed: ``after_list`` when a listing of a user's sessions
    has been read (between a list and the deletes that follow it),
    ``before_list`` before it is read, ``before_delete_user`` before a
    "log out everywhere" of the store. Everything else is ``inner``'s."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.after_list: Hook | None = None
        self.before_list: Hook | None = None
        self.before_delete_user: Hook | None = None
        self.fired = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _fire(self, which: str) -> None:
        hook = getattr(self, which)
        if hook is not None:
            self.after_list = self.before_list = self.before_delete_user = None
            self.fired += 1
            await hook()

    async def list_user_sessions(
        self, user_id: str, now: float, *, tenant_id: str | None = None
    ) -> list[SessionRecord]:
        await self._fire("before_list")
        rows: list[SessionRecord] = await self.inner.list_user_sessions(
            user_id, now, tenant_id=tenant_id
        )
        await self._fire("after_list")
        return rows

    async def delete_user_sessions(
        self, user_id: str, *, tenant_id: str | None = None, except_key: str | None = None
    ) -> int:
        await self._fire("before_delete_user")
        count: int = await self.inner.delete_user_sessions(
            user_id, tenant_id=tenant_id, except_key=except_key
        )
        return count


#: The backends every race test runs on (as tests/conftest.py's ``login_store``).
BACKENDS = ("memory", "sqlite", "postgres", "mysql", "valkey")


def race_store(request: pytest.FixtureRequest) -> CompositeStore:
    """The store of backend ``request.param`` (a fixture parametrized over
    :data:`BACKENDS`) with its sessions going through :class:`Interleaved`;
    users live in the SQL store, else in memory."""
    if request.param == "memory":
        default: Any = MemoryStore()
        sessions: Any = default
        lockout: Any = default
    elif request.param == "valkey":
        default = MemoryStore()
        sessions = lockout = request.getfixturevalue("valkey_store")
    else:
        default = sessions = lockout = request.getfixturevalue(f"{request.param}_store")
    return CompositeStore(default=default, sessions=Interleaved(sessions), lockout=lockout)


def interleaved(store: CompositeStore) -> Interleaved:
    backend = store.backend_for("sessions")
    assert isinstance(backend, Interleaved)
    return backend


@dataclass
class RaceApi:
    auth: Axess
    app: FastAPI
    clock: MockClock
    store: Interleaved
    events: list[SessionEvent] = field(default_factory=list)

    def client(self) -> Client:
        return Client(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.app), base_url="https://testserver"
            )
        )

    async def add_user(self, identifier: str) -> str:
        assert self.auth.users is not None
        return (await self.auth.users.create_user(identifier, password=PASSWORD)).id


def race_api(
    store: CompositeStore,
    session: SessionConfig | None = None,
    lockout: LockoutPolicy | None = None,
) -> RaceApi:
    from axess.fastapi import auth_router

    clock = MockClock()
    events: list[SessionEvent] = []
    auth = Axess(
        store=store,
        keys=Keyring.generate(),
        clock=clock,
        session=session,
        password_hasher=fast_hasher(),
        lockout=lockout,
        debug=True,
        cleanup_interval=None,
        on_session_event=events.append,
    )
    app = FastAPI()
    auth.install(app)
    app.include_router(auth_router(auth))

    @app.post("/rotate")
    async def rotate(request: Request) -> dict[str, bool]:
        """An app route that rotates the session id (a privilege change)."""
        get_session(request).regenerate()
        return {"ok": True}

    @app.post("/sso/{tenant}/{uid}")
    async def sso(request: Request, tenant: str, uid: str) -> dict[str, bool]:
        """A login the app verified itself; tenant ``-`` is the default one."""
        get_session(request).authenticate(uid, None if tenant == "-" else tenant)
        return {"ok": True}

    return RaceApi(auth, app, clock, interleaved(store), events)


class Client:
    """A JSON client that sends the CSRF cookie's token back in the header."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        if CSRF_COOKIE not in self.http.cookies:
            await self.http.get("/auth/csrf")
        token = self.http.cookies[CSRF_COOKIE]
        return await self.http.request(method, path, json=body, headers={"x-csrf-token": token})

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        return await self.send("POST", path, body)

    async def login(self, identifier: str) -> httpx.Response:
        return await self.post("/auth/login", {"username": identifier, "password": PASSWORD})

    async def sso(self, uid: str, tenant: str | None) -> None:
        r = await self.post(f"/sso/{tenant or '-'}/{uid}")
        assert r.status_code == 200, r.text

    async def rotate(self) -> None:
        r = await self.post("/rotate")
        assert r.status_code == 200, r.text

    async def state(self) -> str:
        r = await self.http.get("/auth/me")
        assert r.status_code == 200
        return str(r.json()["auth_state"])

    async def sessions(self) -> list[dict[str, Any]]:
        r = await self.http.get("/auth/sessions")
        assert r.status_code == 200, r.text
        return list(r.json()["sessions"])
