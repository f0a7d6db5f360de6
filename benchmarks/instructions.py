"""Instructions per request under callgrind: ``python -m benchmarks.instructions``.

Wall-clock timings on a shared machine drift; instruction counts do not.
This runs the warm read-only request of ``python -m benchmarks`` (bare
Starlette, Starlette's ``SessionMiddleware``, starsessions and the full axess
stack on the memory store) twice under
``valgrind --tool=callgrind`` with a fixed hash seed, once with ``--small``
requests and once with ``--small + --delta`` requests, and reports
``(large - small) / delta``: the instructions one more request costs, with
start-up and warm-up cancelled out; and axess's overhead over bare as a
fraction of each baseline's (the in-process target: at most 0.35 of
``SessionMiddleware``'s). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys

from benchmarks.asgi import run_requests
from benchmarks.variants import VARIANTS

_ROWS = (
    "bare Starlette",
    "Starlette SessionMiddleware",
    "starsessions (memory)",
    "axess memory (warm)",
)
_AXESS = "axess memory (warm)"


async def _serve(name: str, n: int) -> None:
    variant = dict(VARIANTS)[name]
    async with variant() as bench:
        await run_requests(bench.app, bench.scopes, max(1, n // 10))  # warm
        await run_requests(bench.app, bench.scopes, n)


def _collected(name: str, n: int) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        name,
        "--n",
        str(n),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    match = re.search(r"Collected : (\d+)", out)
    if match is None:
        raise RuntimeError(f"no callgrind total in: {out[-500:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--delta", type=int, default=5000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_serve(args.child, args.n))
        return
    per: dict[str, float] = {}
    print("| variant | instructions per request | ratio to bare |")
    print("|---|---:|---:|")
    for name in _ROWS:
        small = _collected(name, args.small)
        large = _collected(name, args.small + args.delta)
        per[name] = (large - small) / args.delta
        print(f"| {name} | {per[name] / 1000:.1f}k | {per[name] / per[_ROWS[0]]:.2f}x |")
    bare = per[_ROWS[0]]
    print()
    for baseline in _ROWS[1:3]:
        share = (per[_AXESS] - bare) / (per[baseline] - bare)
        print(f"axess's overhead = {share:.2f} of {baseline}'s (by instructions)")


if __name__ == "__main__":
    main()
