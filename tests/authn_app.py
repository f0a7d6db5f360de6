"""A small app around AuthnService for the login, HTTP and guard tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, MockClock, SessionConfig, StoreError, get_session
from axess.authn import Password, PasswordHasher, RecoveryCode, TOTPCode
from axess.authn.http import outcome_response, unavailable_response
from axess.authn.lockout import normalize_identifier
from axess.authn.service import AuthnEvent, AuthnService
from axess.authn.totp import generate_secret, totp
from axess.observability.metrics import NoopMetrics
from axess.stores import MemoryStore
from axess.stores.base import DEFAULT_TENANT, UserRecord
from axess.testing import SeededRandom


class CountingMetrics(NoopMetrics):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name in {
            "auth_attempt",
            "auth_success",
            "auth_failure",
            "factor_attempt",
            "factor_success",
            "factor_failure",
        }:
            counts = object.__getattribute__(self, "counts")

            def counted(*args: Any) -> None:
                counts[name] += 1

            return counted
        return attr

    def account_locked(self, lever: str) -> None:
        self.counts[f"account_locked:{lever}"] += 1


async def enrol_totp(env: Env, uid: str) -> bytes:
    """Turn TOTP on for ``uid`` (stored at once, as an admin import would);
    returns the secret."""
    secret = generate_secret()
    await env.store.set_totp_secret(uid, env.authn.sealer.seal(secret, uid))
    return secret


def wrong_codes(secret: bytes, now: float) -> Iterator[str]:
    """Six-digit codes in order, none of them accepted at ``now`` (±1 step)."""
    valid = {totp(secret, now + d * 30) for d in (-1, 0, 1)}
    return (c for c in (f"{i:06d}" for i in range(1_000_000)) if c not in valid)


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


@dataclass
class Env:
    store: MemoryStore
    keys: Keyring
    clock: MockClock
    auth: Axess
    authn: AuthnService
    metrics: CountingMetrics
    app: Starlette
    events: list[AuthnEvent] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="https://testserver"
        )

    async def add_user(
        self,
        identifier: str,
        password: str | None = "correct horse",
        *,
        user_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
        status: str = "active",
    ) -> str:
        uid = user_id or f"u-{identifier}"
        ident = normalize_identifier(identifier)
        ok = await self.store.create_user(
            UserRecord(uid, tenant, ident, status=status, created_at=self.clock.time())
        )
        assert ok
        if password is not None:
            await self.store.set_password_hash(uid, await self.authn.hasher.hash(password))
        return uid

    @property
    def event_types(self) -> list[str]:
        return [e.type for e in self.events]


def make_env(store: MemoryStore | None = None, **authn: Any) -> Env:
    store = store if store is not None else MemoryStore()
    keys = Keyring.generate()
    clock = MockClock()
    metrics = CountingMetrics()
    auth = Axess(
        store=store,
        keys=keys,
        session=SessionConfig(),
        clock=clock,
        random=SeededRandom(1),
        debug=True,
        cleanup_interval=None,
        csrf=False,
    )
    events: list[AuthnEvent] = []
    service = AuthnService(
        store,
        keys,
        hasher=authn.pop("hasher", None) or fast_hasher(),
        clock=clock,
        random=SeededRandom(2),
        metrics=metrics,
        on_event=events.append,
        **authn,
    )

    async def guarded(call: Any) -> Response:
        try:
            return outcome_response(await call)
        except StoreError:
            return unavailable_response()

    async def login(request: Request) -> Response:
        body = await request.json()
        return await guarded(
            service.login_password(
                request, body.get("identifier", ""), body.get("password", ""), body.get("tenant")
            )
        )

    async def begin(request: Request) -> Response:
        body = await request.json()
        return await guarded(
            service.begin_login(request, body.get("identifier", ""), body.get("tenant"))
        )

    def credential(body: dict[str, str]) -> Password | TOTPCode | RecoveryCode:
        if "password" in body:
            return Password(body["password"])
        if "totp" in body:
            return TOTPCode(body["totp"])
        return RecoveryCode(body["recovery"])

    async def factor(request: Request) -> Response:
        return await guarded(service.verify_factor(request, credential(await request.json())))

    async def reverify(request: Request) -> Response:
        return await guarded(service.reverify(request, credential(await request.json())))

    async def logout(request: Request) -> Response:
        await service.logout(request)
        return JSONResponse({"ok": True})

    async def me(request: Request) -> Response:
        s = get_session(request)
        state = s.auth_state
        return JSONResponse(
            {"kind": state.kind, "user": s.user_id, "tenant": s.tenant_id, "key": s.storage_key}
        )

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/begin", begin, methods=["POST"]),
            Route("/factor", factor, methods=["POST"]),
            Route("/reverify", reverify, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/me", me),
        ]
    )
    auth.install(app)
    env = Env(store, keys, clock, auth, service, metrics, app, events)
    return env
