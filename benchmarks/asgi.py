"""Driving an ASGI app directly, without a server or an HTTP client.

A request is an HTTP scope built once and shallow-copied per call (with a
fresh ``"state"`` dict), a ``receive`` that returns an empty body and a
``send`` that discards everything. :func:`call` is the checked, recording
variant used outside the timed loops.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message

ScopeTemplate = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Client:
    """What identifies a browser to the server: its User-Agent and address."""

    user_agent: str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
    ip: str = "203.0.113.7"


def make_scope(
    method: str,
    path: str,
    client: Client,
    cookies: Mapping[str, str] | None = None,
) -> ScopeTemplate:
    """An HTTPS request scope as uvicorn would build it."""
    headers: list[tuple[bytes, bytes]] = [
        (b"host", b"testserver"),
        (b"user-agent", client.user_agent.encode("latin-1")),
        (b"accept", b"text/html,*/*;q=0.8"),
        (b"accept-language", b"en-US,en;q=0.5"),
    ]
    if cookies:
        value = "; ".join(f"{name}={val}" for name, val in cookies.items())
        headers.append((b"cookie", value.encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode("ascii"),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (client.ip, 51234),
        "server": ("testserver", 443),
        "state": {},
    }


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header_values(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]

    def set_cookies(self) -> dict[str, str]:
        """Cookie name -> value for every Set-Cookie header."""
        out: dict[str, str] = {}
        for raw in self.header_values(b"set-cookie"):
            name, _, rest = raw.decode("latin-1").partition("=")
            out[name.strip()] = rest.split(";", 1)[0].strip()
        return out


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


async def call(app: ASGIApp, template: ScopeTemplate) -> Response:
    """One request, recording the response (not for timed loops)."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = template.copy()
    scope["state"] = {}
    await app(scope, _receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Response(int(start["status"]), list(start.get("headers", [])), body)


async def run_requests(app: ASGIApp, templates: Sequence[ScopeTemplate], n: int) -> None:
    """``n`` requests, cycling over ``templates`` (untimed: warm-up, counting)."""
    k = len(templates)
    for i in range(n):
        scope = templates[i % k].copy()
        scope["state"] = {}
        await app(scope, _receive, _discard)


async def time_requests(app: ASGIApp, templates: Sequence[ScopeTemplate], n: int) -> float:
    """Seconds for ``n`` requests, cycling over ``templates``.

    Every variant goes through this same loop (including the modulo for a
    single template), so the loop's own cost cancels out in differences to
    the bare-Starlette anchor. The garbage collector stays on (its cost is
    part of a request's cost) but starts each run from a clean heap.
    """
    k = len(templates)
    receive, send = _receive, _discard
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        scope = templates[i % k].copy()
        scope["state"] = {}
        await app(scope, receive, send)
    return time.perf_counter() - start
