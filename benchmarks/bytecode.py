"""Where a request's work goes, by function: ``python -m benchmarks.bytecode``.

Counts the Python bytecode instructions each function executes per warm
read-only request (the scenario of ``python -m benchmarks``), with
``sys.settrace`` opcode events. The counts are exact and the same on every
run and machine with the same code and Python version, so they show which
function a change made cheaper or dearer when wall-clock timings are too
noisy to tell. Instructions executed inside C (dict lookups, HMAC, JSON) are
not counted: ``python -m benchmarks.instructions`` measures those, in
machine instructions. Takes a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from types import FrameType
from typing import Any

from benchmarks.asgi import run_requests
from benchmarks.variants import VARIANTS

_DEFAULT = ("bare Starlette", "axess memory (warm)")


def _where(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "/axess/", "/benchmarks/"):
        cut = path.rfind(marker)
        if cut >= 0:
            path = path[cut + len(marker) :] if marker == "site-packages/" else path[cut + 1 :]
            break
    return f"{path}:{code.co_name}"


async def _count(name: str, n: int) -> Counter[str]:
    counts: Counter[str] = Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            counts[_where(frame)] += 1
        return trace

    async with dict(VARIANTS)[name]() as bench:
        await run_requests(bench.app, bench.scopes, 200)  # warm: memos, first-call paths
        sys.settrace(trace)
        try:
            await run_requests(bench.app, bench.scopes, n)
        finally:
            sys.settrace(None)
    counts.pop("benchmarks/asgi.py:run_requests", None)  # the loop itself
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", default=list(_DEFAULT), help="rows to count")
    parser.add_argument("--n", type=int, default=200, help="requests counted (default 200)")
    parser.add_argument("--top", type=int, default=25, help="functions listed per row")
    args = parser.parse_args()
    known = dict(VARIANTS)
    for name in args.variants:
        if name not in known:
            parser.error(f"unknown variant {name!r}; one of: {', '.join(known)}")
    for name in args.variants:
        counts = asyncio.run(_count(name, args.n))
        total = sum(counts.values()) / args.n
        mine = sum(v for k, v in counts.items() if k.startswith("axess/")) / args.n
        print(f"## {name}: {total:.0f} bytecodes per request ({mine:.0f} in axess)\n")
        print("| function | bytecodes per request |")
        print("|---|---:|")
        for where, count in counts.most_common(args.top):
            print(f"| `{where}` | {count / args.n:.0f} |")
        print()


if __name__ == "__main__":
    main()
