"""A login app for the cross-process guess-budget test
(``tests/test_guess_budget_process.py``), run as two uvicorn processes on one store.

Settings come from the environment: ``BUDGET_STORE`` (``sqlite``,
``postgres``, ``mysql`` or ``valkey``) with ``BUDGET_SQLITE``,
``BUDGET_DSN``, ``BUDGET_SCHEMA``, ``BUDGET_VALKEY_URL`` and
``BUDGET_VALKEY_PREFIX``; the keys from ``AXESS_*_KEYS``. Every credential
check appends one line to ``BUDGET_LOG`` (``hash`` for a password hash,
``code`` for a second-factor code that was checked), so the test counts
checks across both worker processes. Each response names its process in
``X-Worker``.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, SessionConfig, StoreError
from axess.authn import Password, PasswordHasher, RecoveryCode, TOTPCode
from axess.authn.http import outcome_response, unavailable_response
from axess.authn.service import AuthnEvent, AuthnService
from axess.stores import CompositeStore, MySQLStore, PostgresStore, SQLiteStore, ValkeyStore

ENV = os.environ
LOG = ENV["BUDGET_LOG"]
PID = str(os.getpid())


def _store() -> Any:
    kind = ENV["BUDGET_STORE"]
    if kind == "sqlite":
        return SQLiteStore(ENV["BUDGET_SQLITE"])
    if kind == "postgres":
        return PostgresStore(ENV["BUDGET_DSN"], schema=ENV["BUDGET_SCHEMA"])
    if kind == "mysql":
        return MySQLStore(ENV["BUDGET_DSN"])
    valkey = ValkeyStore(
        ENV["BUDGET_VALKEY_URL"], prefix=ENV["BUDGET_VALKEY_PREFIX"], allow_insecure=True
    )
    return CompositeStore(
        default=SQLiteStore(ENV["BUDGET_SQLITE"]), sessions=valkey, lockout=valkey
    )


def _note(what: str) -> None:
    # O_APPEND writes of one short line do not interleave across processes.
    with open(LOG, "a") as f:
        f.write(what + "\n")


def _on_event(event: AuthnEvent) -> None:
    if event.type == "factor_failed" and event.reason == "wrong_code":
        _note("code")


store = _store()
keys = Keyring.from_env()
auth = Axess(
    store=store,
    keys=keys,
    session=SessionConfig(secure=False),
    csrf=False,
    cleanup_interval=None,
)
authn = AuthnService(
    store,
    keys,
    hasher=PasswordHasher(
        time_cost=1, memory_cost=64, parallelism=1, on_hash=lambda: _note("hash")
    ),
    on_event=_on_event,
)


async def _answer(call: Any) -> Response:
    try:
        response: Response = outcome_response(await call)
    except StoreError:
        response = unavailable_response()
    response.headers["X-Worker"] = PID
    return response


async def login(request: Request) -> Response:
    body = await request.json()
    return await _answer(authn.login_password(request, body["identifier"], body["password"]))


async def factor(request: Request) -> Response:
    body = await request.json()
    credential: Password | TOTPCode | RecoveryCode
    credential = TOTPCode(body["totp"]) if "totp" in body else RecoveryCode(body["recovery"])
    return await _answer(authn.verify_factor(request, credential))


async def ready(request: Request) -> Response:
    return JSONResponse({"pid": PID})


app = Starlette(
    routes=[
        Route("/login", login, methods=["POST"]),
        Route("/factor", factor, methods=["POST"]),
        Route("/ready", ready),
    ],
    lifespan=auth.lifespan,
)
auth.install(app)
