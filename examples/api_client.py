"""An API client for the FastAPI example (``examples/fastapi_app.py``): it
signs in over HTTP with httpx, asks who it is, and signs out.

With the example running (``.venv/bin/uvicorn examples.fastapi_app:app``)::

    .venv/bin/python -m examples.api_client http://127.0.0.1:8000
    .venv/bin/python -m examples.api_client http://127.0.0.1:8000 --code 123456  # TOTP on

What a client of the JSON routes does:

1. ``GET /auth/csrf``: a CSRF token (and its cookie). Every POST and DELETE
   sends the token back in the ``X-CSRF-Token`` header.
2. ``POST /auth/login`` with ``{"email", "password"}``. The answer is either
   the login (``authenticated``) or the next factor (``factor_required``:
   ``POST /auth/login/factor`` with a TOTP code). Each answer carries the
   token to use next: the session id, and with it the token, changes at login.
3. ``GET /auth/me``: who this session is.
4. ``POST /auth/logout``.

A refusal is JSON ``{"error", "detail"}`` (plus ``retry_after`` with 429 and
503); :class:`ApiError` carries it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import httpx

#: The user examples/fastapi_app.py creates.
USER = "alice@example.com"
PASSWORD = "correct horse battery staple"


class ApiError(Exception):
    """A refusal: the HTTP status and the body's ``error`` and ``detail``."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error


def checked(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a successful answer; :class:`ApiError` otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    if not isinstance(body, dict):
        body = {}
    error = str(body.get("error", "http_error"))
    raise ApiError(response.status_code, error, str(body.get("detail", response.reason_phrase)))


async def main(
    base_url: str,
    *,
    email: str = USER,
    password: str = PASSWORD,
    code: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Sign in at ``base_url``, read ``/auth/me``, sign out; returns the
    ``/auth/me`` answer while signed in. ``transport`` replaces the network
    (``httpx.ASGITransport(app=...)`` drives an app in-process).

    Raises :class:`ApiError` for a refusal (a wrong password, a lock, a TOTP
    login without ``code``)."""
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=10) as client:
        token = checked(await client.get("/auth/csrf"))["csrf_token"]
        login = checked(
            await client.post(
                "/auth/login",
                json={"email": email, "password": password},
                headers={"X-CSRF-Token": token},
            )
        )
        if login.get("factor_required"):
            if code is None:
                raise ApiError(401, "factor_required", "this account needs a TOTP code (--code)")
            login = checked(
                await client.post(
                    "/auth/login/factor",
                    json={"code": code},
                    headers={"X-CSRF-Token": login["csrf_token"]},
                )
            )
        me = checked(await client.get("/auth/me"))
        checked(await client.post("/auth/logout", headers={"X-CSRF-Token": login["csrf_token"]}))
        return me


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("base_url", nargs="?", default="http://127.0.0.1:8000")
    parser.add_argument("--email", default=USER)
    parser.add_argument("--password", default=PASSWORD)
    parser.add_argument("--code", help="a TOTP code, when the account has TOTP")
    args = parser.parse_args(argv)
    try:
        me = asyncio.run(
            main(args.base_url, email=args.email, password=args.password, code=args.code)
        )
    except ApiError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"cannot reach {args.base_url}: {exc}", file=sys.stderr)
        return 2
    print(f"signed in as {me['user_id']} with {', '.join(me['factors'])}; signed out again")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
