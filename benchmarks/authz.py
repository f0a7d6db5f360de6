"""Cedar authorization benchmark: ``python -m benchmarks.authz``.

Prints, as Markdown tables (best of ``--repeat`` interleaved repetitions):

* µs per decision for the multi-tenant document app of
  ``tests/policies/docs``: ``CedarAuthorizer.evaluate`` with the policy set
  and schema parsed once (strict: the schema checks every request) against
  a raw ``cedarpy.is_authorized`` call given the policy and schema *text*
  with the same request and entities, in the same run (goal: the pre-parsed
  decision at least 5x cheaper). Also shown: raw cedarpy with the pre-parsed
  handles (axess's own overhead is the difference), raw cedarpy from policy
  text without a schema, and axess with ``strict=False``;
* µs per request of a guarded route (``authz.require``) over the same route
  unguarded, through the whole axess stack (ASGI app called directly, as in
  ``benchmarks/asgi.py``), for a signed-in session.

Options: ``--n`` decisions per repetition (default 2 000), ``--requests``
requests per repetition (default 2 000), ``--repeat`` (default 5).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cedarpy
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, MockClock, get_session
from axess.authz import CedarAuthorizer, Entity, EntityUid, Principal
from axess.authz.model import context_record, principal_entity
from axess.stores import MemoryStore
from axess.testing import SeededRandom
from benchmarks.asgi import Client, call, make_scope, time_requests

DOCS = Path(__file__).resolve().parent.parent / "tests" / "policies" / "docs"
GOAL_RATIO = 5.0
LOGIN = 1_700_000_000
X = "\u00d7"


def _document() -> Entity:
    return Entity(
        EntityUid("Docs::Document", "d1"),
        {
            "tenant": EntityUid("Docs::Tenant", "acme"),
            "owner": EntityUid("Docs::User", "alice"),
            "classification": "internal",
        },
    )


def decision_runs(n: int) -> tuple[dict[str, Callable[[], float]], list[str]]:
    """The timed decision variants (µs per decision) and a correctness note."""
    policy_text = (DOCS / "policies.cedar").read_text()
    schema_text = (DOCS / "schema.cedarschema").read_text()
    strict = CedarAuthorizer(policies=policy_text, schema=schema_text, namespace="Docs")
    loose = CedarAuthorizer(
        policies=policy_text, schema=schema_text, namespace="Docs", strict=False
    )
    bob = Principal("bob", "acme", ("password",), LOGIN, (EntityUid("Docs::Role", "editor"),))
    doc = _document()
    now = LOGIN + 30
    # The same request and entities, as raw cedarpy gets them.
    request = {
        "principal": {"type": "Docs::User", "id": "bob"},
        "action": {"type": "Docs::Action", "id": "view"},
        "resource": doc.uid.json(),
        "context": context_record(bob, ip="192.0.2.1", method="GET", path="/", now=now),
    }
    entities = json.dumps([principal_entity(bob, strict.types).json(), doc.json()])
    ps = strict.policies.policy_set
    schema = strict.policies.schema
    checks = [
        strict.evaluate(bob, "view", doc, ip="192.0.2.1", now=now).allowed,
        cedarpy.is_authorized(request, policy_text, entities, schema=schema_text).allowed,
        cedarpy.is_authorized(request, ps, entities, schema=schema).allowed,
    ]
    notes = [] if all(checks) else [f"MISMATCH: every variant must allow ({checks})"]

    def timed(op: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                op()
            return (time.perf_counter() - start) / n * 1e6

        return run

    return {
        "axess evaluate (pre-parsed, strict)": timed(
            lambda: strict.evaluate(bob, "view", doc, ip="192.0.2.1", now=now)
        ),
        "cedarpy.is_authorized from text (policies + schema)": timed(
            lambda: cedarpy.is_authorized(request, policy_text, entities, schema=schema_text)
        ),
        "cedarpy.is_authorized, pre-parsed handles": timed(
            lambda: cedarpy.is_authorized(request, ps, entities, schema=schema)
        ),
        "axess evaluate (pre-parsed, strict=False)": timed(
            lambda: loose.evaluate(bob, "view", doc, ip="192.0.2.1", now=now)
        ),
        "cedarpy.is_authorized from policy text, no schema": timed(
            lambda: cedarpy.is_authorized(request, policy_text, entities)
        ),
    }, notes


async def route_runs(n: int) -> tuple[dict[str, Callable[[], Any]], list[str]]:
    """Guarded vs unguarded route through the whole stack, signed in."""
    authz = CedarAuthorizer(
        policies=DOCS / "policies.cedar", schema=DOCS / "schema.cedarschema", namespace="Docs"
    )
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        clock=MockClock(LOGIN),
        random=SeededRandom(1),
        debug=True,
        cleanup_interval=None,
        authz=authz,
    )
    doc = _document()

    async def login(request: Request) -> Response:
        get_session(request).authenticate("bob", "acme", ("password",))
        return PlainTextResponse("ok")

    async def plain(request: Request) -> Response:
        return PlainTextResponse(get_session(request).user_id or "")

    @authz.require('Action::"view"', resource=lambda conn: doc)
    async def guarded(request: Request) -> Response:
        return PlainTextResponse(get_session(request).user_id or "")

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/plain", plain),
            Route("/guarded", guarded),
        ]
    )
    auth.install(app)
    client = Client()
    cookies = (await call(app, make_scope("POST", "/login", client))).set_cookies()
    plain_scope = make_scope("GET", "/plain", client, cookies)
    guarded_scope = make_scope("GET", "/guarded", client, cookies)
    notes = []
    for scope in (plain_scope, guarded_scope):
        r = await call(app, scope)
        if r.status != 200 or r.body != b"bob":
            notes.append(f"MISMATCH: {scope['path']} answered {r.status} {r.body!r}")

    def timed(scope: dict[str, Any]) -> Callable[[], Any]:
        async def run() -> float:
            return await time_requests(app, [scope], n) / n * 1e6

        return run

    return {"unguarded route": timed(plain_scope), "guarded route": timed(guarded_scope)}, notes


async def main_async(args: argparse.Namespace) -> int:
    runs, notes = decision_runs(args.n)
    for run in runs.values():  # warm-up
        run()
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeat):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    anchor = best["axess evaluate (pre-parsed, strict)"]
    print("## µs per decision (multi-tenant document app)\n")
    print(f"| variant | µs/decision | {X} the pre-parsed axess decision |")
    print("|---|---:|---:|")
    for name, us in best.items():
        print(f"| {name} | {us:.1f} | {us / anchor:.2f}{X} |")
    ratio = best["cedarpy.is_authorized from text (policies + schema)"] / anchor
    loose = (
        best["cedarpy.is_authorized from policy text, no schema"]
        / best["axess evaluate (pre-parsed, strict=False)"]
    )
    own = anchor - best["cedarpy.is_authorized, pre-parsed handles"]
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    print(
        f"\nRe-parsing policies and schema per call costs {ratio:.1f}{X} a pre-parsed "
        f"decision (goal >= {GOAL_RATIO:.0f}{X}: {verdict}). Without a schema on either "
        f"side: {loose:.1f}{X}. axess's own work per decision (principal, context and "
        f"entities built, diagnostics read, metrics, tenancy rail): {own:.1f} µs.\n"
    )

    routes, route_notes = await route_runs(args.requests)
    notes += route_notes
    for run in routes.values():
        await run()
    rbest = {name: float("inf") for name in routes}
    for _ in range(args.repeat):
        for name, run in routes.items():
            rbest[name] = min(rbest[name], await run())
    print("## Guarded vs unguarded route (full stack, signed in)\n")
    print("| route | µs/request |")
    print("|---|---:|")
    for name, us in rbest.items():
        print(f"| {name} | {us:.1f} |")
    overhead = rbest["guarded route"] - rbest["unguarded route"]
    print(f"\nOverhead of the guard: {overhead:.1f} µs per request.\n")
    for note in notes:
        print(note)
    return 1 if notes else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.authz", description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="decisions per repetition")
    parser.add_argument("--requests", type=int, default=2000, help="requests per repetition")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (best reported)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
