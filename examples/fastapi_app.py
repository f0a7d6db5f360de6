"""A FastAPI app on axess: the ready JSON auth routes (``axess.fastapi.auth_router``),
a route of its own for signed-in users, Prometheus ``/metrics`` and ``/healthz``.

Run it from the repository root::

    .venv/bin/uvicorn examples.fastapi_app:app

The routes are listed at http://127.0.0.1:8000/docs (OpenAPI). The user
``alice@example.com`` with the password ``correct horse battery staple`` is
created at start when missing; ``examples/api_client.py`` signs in as her
over HTTP::

    .venv/bin/python -m examples.api_client http://127.0.0.1:8000

Keys and ``AXESS_STORE_URL`` as in ``examples/settings.py`` (default: the
SQLite file ``fastapi_app.db`` in the current directory).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI

from axess import Axess, CSRFConfig, LoginFields, Session, SessionConfig, require_authn
from axess.fastapi import auth_router
from axess.observability.prometheus import PrometheusMetrics
from axess.ratelimit import auth_rules
from examples.settings import DEV, keyring, store_from_env

USER = "alice@example.com"
PASSWORD = "correct horse battery staple"
#: The login body's identifier field; the login rate limits count the same one.
LOGIN_FIELDS = LoginFields("email")

auth = Axess(
    store=store_from_env("sqlite:///fastapi_app.db"),
    keys=keyring(),
    session=SessionConfig(secure=not DEV),
    csrf=CSRFConfig(secure=not DEV),
    metrics=PrometheusMetrics(),  # on prometheus_client's default registry
    # Both login steps: the code step is a guess too.
    rate_limits=auth_rules(
        login_paths=["/auth/login", "/auth/login/factor"], login_fields=LOGIN_FIELDS
    ),
    debug=DEV,
)
assert auth.users is not None  # the SQL and memory stores hold users
users = auth.users


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with auth.lifespan():
        if await users.find_user(USER) is None:
            await users.create_user(USER, password=PASSWORD)
        yield


app = FastAPI(title="axess FastAPI example", lifespan=lifespan)
auth.install(app)
# /auth/csrf, /auth/login, /auth/me, /auth/logout, /auth/sessions, /auth/totp/…
app.include_router(auth_router(auth))
app.add_route("/healthz", auth.healthz)
app.add_route("/metrics", auth.metrics_endpoint)  # serve it to your scraper only


@app.get("/greeting")
async def greeting(session: Annotated[Session, Depends(require_authn())]) -> dict[str, str]:
    """A route of the app's own: signed-in users only (401 otherwise)."""
    assert session.user_id is not None
    user = await users.get_user(session.user_id)
    return {"greeting": f"Hello, {user.identifier if user else session.user_id}!"}
