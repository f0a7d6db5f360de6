"""Login-path benchmarks (targets: book, Internals): ``python -m benchmarks.login``.

1. **Cost of a refused attempt.** A login refused by the lockout (user lever
   locked) against a normal attempt that runs Argon2id (wrong password, not
   locked), with the default ``PasswordHasher()`` parameters. Anchors from
   the same run: one raw Argon2id verification, and a request to a route
   that does nothing behind the same stack. Target: refused < 1 ms and no
   hash (the number of hashes during the refused attempts is printed).
2. **Other requests while logins hash.** A real uvicorn server on
   127.0.0.1; one client sends sequential ``GET /ping`` requests (the route
   reads the session) and records each latency, first alone, then while 8
   tasks keep posting logins that each run a default Argon2id hash. Target:
   p99 unaffected (the hash runs off the event loop).

Both use the memory store, so only axess and Argon2 are measured.

3. **Store round trips per attempt, on real stores.** The guess budget is
   reserved in the store before any hash. On PostgreSQL (every substore
   there; statements counted client-side, by verb) and on Valkey (the
   lockout there, identities in memory; commands counted by the server's
   client-side): what a refused, a failed and a successful
   attempt cost in round trips, and the time of a refused attempt.
   ``--no-servers`` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import socket
import statistics
import time
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from axess import Axess, Keyring, get_session
from axess.authn import PasswordHasher
from axess.authn.http import outcome_response
from axess.authn.lockout import Lever, LockoutPolicy
from axess.net import client_ip
from axess.stores import CompositeStore, MemoryStore
from benchmarks.counting import (
    AsyncpgStatementCounter,
    CommandCounter,
    ValkeyClientCounter,
    per_request,
)
from benchmarks.variants import Unavailable, valkey_server

PASSWORD = "correct horse battery staple"
LOGINS = 8


def build(policy: LockoutPolicy) -> tuple[Axess, Starlette]:
    auth = Axess(
        store=MemoryStore(),
        keys=Keyring.generate(),
        lockout=policy,
        password_hasher=PasswordHasher(),  # default max_concurrency: cores - 1
        csrf=False,
        rate_limits=[],
        debug=True,
        cleanup_interval=None,
    )

    async def login(request: Request) -> Response:
        assert auth.authn is not None
        q = request.query_params
        outcome = await auth.authn.login_password(request, q["u"], q["p"])
        return outcome_response(outcome)

    async def ping(request: Request) -> Response:
        return PlainTextResponse(get_session(request).user_id or client_ip(request))

    app = Starlette(
        routes=[Route("/login", login, methods=["POST"]), Route("/ping", ping)],
        lifespan=auth.lifespan,
    )
    auth.install(app)
    return auth, app


async def add_user(auth: Axess, user_id: str) -> None:
    assert auth.users is not None
    await auth.users.create_user(f"{user_id}@example.com", password=PASSWORD, user_id=user_id)


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99, ordered[-1]


# -- 1. refused vs hashed attempts (in-process) ---------------------------------------
async def asgi_post(app: Starlette, path: str) -> int:
    status = 0

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])  # type: ignore[call-overload]

    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST" if path == "/login" else "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
        "client": ("203.0.113.9", 40000),
        "server": ("bench", 443),
        "state": {},
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    return status


async def per_call(app: Starlette, path: str, n: int, expect: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        status = await asgi_post(app, path)
        assert status == expect, (path, status)
    return (time.perf_counter() - start) / n


async def refused_vs_hashed(n_fast: int, n_hash: int) -> list[str]:
    lots = Lever(threshold=10**9, window=60, lock_for=60)
    auth, app = build(LockoutPolicy(user=Lever(threshold=3, window=3600, lock_for=3600), ip=lots))
    assert auth.authn is not None
    hasher = auth.authn.hasher
    await add_user(auth, "alice")
    await add_user(auth, "bob")
    wrong_bob = "/login?u=bob@example.com&p=nope"
    wrong_alice = "/login?u=alice@example.com&p=nope"
    # Hashed: wrong passwords for bob, spread so his lever never trips.
    hashed = []
    for _ in range(n_hash):
        hashed.append(await per_call(app, wrong_bob, 1, 401))
        assert auth.users is not None
        await auth.users.unlock("bob")
    # Refused: alice's user lever locked, then attempts (even the right password).
    for _ in range(3):
        await asgi_post(app, wrong_alice)
    before = hasher.hash_calls
    refused = await per_call(app, f"/login?u=alice@example.com&p={PASSWORD}", n_fast, 429)
    refused_hashes = hasher.hash_calls - before
    noop = await per_call(app, "/ping", n_fast, 200)
    phc = await hasher.hash(PASSWORD)
    start = time.perf_counter()
    for _ in range(n_hash):
        hasher.verify_sync(phc, "nope")
    raw = (time.perf_counter() - start) / n_hash
    med = statistics.median(hashed)
    return [
        "## 1. Cost of a login attempt (in-process, default Argon2id parameters)",
        "",
        f"PasswordHasher(): time_cost={hasher.time_cost}, memory_cost={hasher.memory_cost} KiB, "
        f"parallelism={hasher.parallelism}",
        "",
        "| attempt | per attempt | ratio to hashed | Argon2 runs |",
        "|---|---:|---:|---:|",
        f"| refused by the lockout (user lever locked, right password) | {refused * 1e6:.0f} µs "
        f"| {refused / med:.4f}x | {refused_hashes} in {n_fast} |",
        f"| hashed (wrong password, not locked), median of {n_hash} | {med * 1e3:.1f} ms | 1x "
        f"| 1 each |",
        f"| anchor: raw Argon2id verify | {raw * 1e3:.1f} ms | {raw / med:.2f}x | 1 each |",
        f"| anchor: GET /ping through the same stack | {noop * 1e6:.0f} µs "
        f"| {noop / med:.4f}x | 0 |",
        "",
        f"Refused attempt: {'meets' if refused < 1e-3 and refused_hashes == 0 else 'MISSES'} "
        "the target (< 1 ms, no hash).",
    ]


# -- 2. latency of other requests while logins hash (uvicorn) -------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn offers no "started" event to wait on
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def latencies(client: httpx.AsyncClient, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = await client.get("/ping")
        out.append(time.perf_counter() - start)
        assert r.status_code == 200
    return out


async def under_login_load(n: int) -> list[str]:
    never = Lever(threshold=10**9, window=60, lock_for=60)
    auth, app = build(LockoutPolicy(user=never, ip=never, tenant=never))
    assert auth.authn is not None
    await add_user(auth, "alice")
    logins = 0
    async with serve(app) as base:
        async with (
            httpx.AsyncClient(base_url=base) as quiet,
            httpx.AsyncClient(
                base_url=base, limits=httpx.Limits(max_connections=LOGINS)
            ) as loaders,
        ):
            await latencies(quiet, 50)  # warm-up
            alone = await latencies(quiet, n)
            stop = asyncio.Event()

            async def hammer() -> None:
                nonlocal logins
                while not stop.is_set():
                    r = await loaders.post("/login", params={"u": "alice@example.com", "p": "x"})
                    assert r.status_code == 401
                    logins += 1

            tasks = [asyncio.create_task(hammer()) for _ in range(LOGINS)]
            await asyncio.sleep(0.5)  # all 8 hashing
            started, before = time.perf_counter(), logins
            loaded = await latencies(quiet, n)
            rate = (logins - before) / (time.perf_counter() - started)
            stop.set()
            await asyncio.gather(*tasks)
    a50, a99, amax = quantiles(alone)
    l50, l99, lmax = quantiles(loaded)
    return [
        f"## 2. GET /ping latency while {LOGINS} logins hash (uvicorn, 127.0.0.1, {n} requests)",
        "",
        "| phase | p50 | p99 | max |",
        "|---|---:|---:|---:|",
        f"| no logins | {a50 * 1e3:.2f} ms | {a99 * 1e3:.2f} ms | {amax * 1e3:.2f} ms |",
        f"| {LOGINS} concurrent logins ({rate:.0f} hashes/s) | {l50 * 1e3:.2f} ms "
        f"| {l99 * 1e3:.2f} ms | {lmax * 1e3:.2f} ms |",
        f"| ratio | {l50 / a50:.2f}x | {l99 / a99:.2f}x | — |",
        "",
        f"{os.cpu_count()} CPU cores; max_concurrency={auth.authn.hasher.max_concurrency}"
        " (default: cores - 1, at most 4). The hashes run in worker threads without"
        " the GIL, so the event loop keeps serving; what remains is CPU contention"
        " (client and server share this process).",
    ]


# -- 3. store round trips per attempt on PostgreSQL and Valkey -----------------------
async def _attempts_on(store: object, counter: CommandCounter, n: int) -> list[str]:
    policy = LockoutPolicy(user=Lever(threshold=3, window=3600, lock_for=3600))
    auth = Axess(
        store=store,  # type: ignore[arg-type]
        keys=Keyring.generate(),
        lockout=policy,
        password_hasher=PasswordHasher(time_cost=1, memory_cost=64, parallelism=1),
        csrf=False,
        rate_limits=[],
        debug=True,
        cleanup_interval=None,
    )
    assert auth.authn is not None and auth.users is not None
    authn = auth.authn

    async def login(request: Request) -> Response:
        q = request.query_params
        return outcome_response(await authn.login_password(request, q["u"], q["p"]))

    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    auth.install(app)
    for name in ("alice", "bob", "carol", "dave"):
        await add_user(auth, name)
    await asgi_post(app, "/login?u=dave@example.com&p=x")  # warm-up (Valkey loads its script)
    rows = []

    async def count(path: str, expect: int, times: int = 1) -> str:
        async def run() -> None:
            for _ in range(times):
                assert await asgi_post(app, path) == expect

        return per_request(await counter.measure(run), times)

    rows.append(("failed (wrong password)", await count("/login?u=bob@example.com&p=x", 401)))
    rows.append(("successful", await count(f"/login?u=carol@example.com&p={PASSWORD}", 200)))
    for _ in range(3):
        await asgi_post(app, "/login?u=alice@example.com&p=x")
    refused_path = f"/login?u=alice@example.com&p={PASSWORD}"
    rows.append(("refused (user lever locked)", await count(refused_path, 429)))
    hashes = authn.hasher.hash_calls
    refused = await per_call(app, refused_path, n, 429)
    assert authn.hasher.hash_calls == hashes
    lines = ["| attempt | round trips per attempt |", "|---|---|"]
    lines += [f"| {what} | {calls} |" for what, calls in rows]
    lines += ["", f"Refused attempt: {refused * 1e6:.0f} µs, no hash ({n} attempts)."]
    return lines


async def store_round_trips(n: int) -> list[str]:
    out = ["## 3. Store round trips per login attempt (the guess budget)", ""]
    try:
        import asyncpg

        from axess.stores.sql import PostgresStore

        dsn = os.environ.get("AXESS_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
        admin = await asyncio.wait_for(asyncpg.connect(dsn), 5)
    except Exception as exc:
        out += [f"PostgreSQL: unavailable ({type(exc).__name__})", ""]
    else:
        schema = "axess_bench_login"
        store = PostgresStore(dsn, schema=schema, auto_migrate=True)
        try:
            await store.open()
            out += ["### PostgreSQL (client-side asyncpg statements, by verb)", ""]
            out += await _attempts_on(store, AsyncpgStatementCounter(), n)
            out.append("")
        finally:
            await store.close()
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await admin.close()
    try:
        from axess.stores.valkey import ValkeyStore

        with valkey_server() as (url, _admin, where):
            valkey = ValkeyStore(url, prefix="axess-bench-login:", allow_insecure=True)
            await valkey.open()
            try:
                composite = CompositeStore(default=MemoryStore(), lockout=valkey)
                out += [f"### Valkey ({where}; commands sent by the store)", ""]
                out += await _attempts_on(composite, ValkeyClientCounter(valkey), n)
            finally:
                await valkey.close()
    except Unavailable as exc:
        out.append(f"Valkey: {exc}")
    return out


async def amain(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)  # the debug keyring warns; not part of the result
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    print()
    n_fast, n_hash, n_lat = (200, 5, 200) if args.quick else (2000, 20, 1000)
    print("\n".join(await refused_vs_hashed(n_fast, n_hash)))
    print()
    print("\n".join(await under_login_load(n_lat)))
    if not args.no_servers:
        print()
        print("\n".join(await store_round_trips(n_fast // 4)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    parser.add_argument(
        "--no-servers", action="store_true", help="skip the PostgreSQL / Valkey section"
    )
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
